"""Requests that cannot be served as sent answer 400 with what is wrong, never 500.

- A NUL character in the path or the query string, or in a form field of a dashboard view:
  PostgreSQL's text refuses it, so a lookup by such an id failed as a 500 there (SQLite let
  it through). Django's forms and DRF's fields refuse NUL in the values they validate, not in
  URLs or in fields a view reads itself. Only plain Django views that the CSRF check covers
  have their form read here (the CSRF check has parsed it by then): API and OIP views read
  their own bodies, which may be binary whatever their Content-Type says.
- A request body that breaks off (the client reset or timed out mid-body): the client's
  failure, logged at info. The API's exception handler does the same for DRF views; this
  covers plain Django views (the Stripe webhook, the dashboard's forms).

Put last in ``MIDDLEWARE``, so that its ``process_view`` runs after the CSRF check's and a
view's exception reaches its ``process_exception`` first.
"""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse, JsonResponse, UnreadablePostError
from django.views.defaults import bad_request

log = logging.getLogger("django.request")
FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


NUL_REFUSED = "NUL characters are not allowed in URLs or form fields; remove them."


def _refused(request: HttpRequest) -> HttpResponse:
    """In the error shape of where it was sent: the API's ``{"detail", "code"}``, the v2
    protocol's ``{"error"}`` (tritonclient reads it), else text."""
    path = request.path
    if path.startswith("/api/"):
        return JsonResponse({"detail": NUL_REFUSED, "code": "invalid"}, status=400)
    if path.startswith("/v2/") or path == "/v2":
        return JsonResponse({"error": NUL_REFUSED}, status=400)
    return HttpResponse(NUL_REFUSED, status=400, content_type="text/plain")


def _hung_up(request: HttpRequest, exc: UnreadablePostError) -> HttpResponse:
    log.info("Request body unreadable: %s %s: %s", request.method, request.path, exc)
    return bad_request(request, exc)


class BadInputMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "\x00" in request.path or "%00" in request.META.get("QUERY_STRING", ""):
            return _refused(request)
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view_func, view_args, view_kwargs):
        plain = getattr(view_func, "cls", None) is None  # DRF's views carry their class
        if not plain or getattr(view_func, "csrf_exempt", False):
            return None
        if request.method != "POST" or request.content_type not in FORMS:
            return None
        try:
            fields = request.POST
        except UnreadablePostError as exc:
            # Read again, the body would be an empty form: the view must not see that.
            return _hung_up(request, exc)
        if any("\x00" in value for _, values in fields.lists() for value in values):
            return _refused(request)
        return None

    def process_exception(self, request: HttpRequest, exception: Exception):
        if isinstance(exception, UnreadablePostError):
            return _hung_up(request, exception)
        return None
