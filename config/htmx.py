"""The dashboard's boosted navigation (``hx-boost`` on ``<main>``) kept honest about the
address bar."""

from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS


class BoostedPostMiddleware:
    """A boosted form's answer that is a page rather than a redirect (the form again with its
    errors, an error page, a page shown once such as a rotated key's secret) leaves the
    address bar where it was. htmx put the form's action there, and reloading a POST-only
    action (Rotate), or coming Back to it, was a 405 page."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        htmx = getattr(request, "htmx", None)
        if (
            htmx
            and htmx.boosted
            and request.method not in SAFE_METHODS
            and not 300 <= response.status_code < 400
            and "HX-Push-Url" not in response
        ):
            response["HX-Push-Url"] = "false"
        return response
