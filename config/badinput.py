"""Requests that cannot be served as sent answer 400 with what is wrong, never 500.

- A NUL character in the path, the query string or a form field: PostgreSQL's text refuses
  it, so a lookup by such an id failed as a 500 there (SQLite let it through). Django's forms
  and DRF's fields refuse NUL in the values they validate, not in URLs or raw fields.
- A request body that breaks off (the client reset or timed out mid-body): the client's
  failure, logged at info. The API's exception handler does the same for DRF views; this
  covers plain Django views (the Stripe webhook, the dashboard's forms).

Put last in ``MIDDLEWARE``: a view's exception reaches it first, and by then the CSRF check
has parsed any form body already.
"""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse, UnreadablePostError
from django.views.defaults import bad_request

log = logging.getLogger("django.request")
FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


def _has_nul(request: HttpRequest) -> bool:
    if "\x00" in request.path or "%00" in request.META.get("QUERY_STRING", ""):
        return True
    if request.method == "POST" and request.content_type in FORMS:
        fields = request.POST  # parsed once; the CSRF check has usually done it already
        return any("\x00" in value for _, values in fields.lists() for value in values)
    return False


class BadInputMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            nul = _has_nul(request)
        except UnreadablePostError as exc:
            # Read again, the body would be an empty form: the view must not see that.
            return self._hung_up(request, exc)
        if nul:
            return HttpResponse(
                "NUL characters are not allowed in URLs or form fields; remove them.",
                status=400,
                content_type="text/plain",
            )
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception):
        if not isinstance(exception, UnreadablePostError):
            return None
        return self._hung_up(request, exception)

    @staticmethod
    def _hung_up(request: HttpRequest, exc: UnreadablePostError) -> HttpResponse:
        log.info("Request body unreadable: %s %s: %s", request.method, request.path, exc)
        return bad_request(request, exc)
