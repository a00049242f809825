"""The Content-Security-Policy of the site's pages (django-csp; the policy is
``settings.CONTENT_SECURITY_POLICY``).

Pages load scripts, styles, images and fonts from this site only, connect to it only, embed
nothing and may not be framed. A model card is a publisher's Markdown: sanitised (nh3), it
carries no script, but an image it names on another host would be fetched by every viewer's
browser, which hands that host the viewer's address and the time of each visit. The policy's
``img-src`` keeps those requests from being made (``marketplace.listings.card_render`` shows
such an image as a link instead). The card page of Stripe.js adds Stripe's origins
(``billing.views.payment_method``).
"""

from __future__ import annotations

from csp.middleware import CSPMiddleware
from django.http import HttpRequest, HttpResponseBase


class PageCSPMiddleware(CSPMiddleware):
    """django-csp's middleware, for HTML responses only. A browser applies a policy to the
    documents it renders; JSON, files and metrics need none, and the API's predictions skip
    building it."""

    def process_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        if not response.get("Content-Type", "").startswith("text/html"):
            return response
        return super().process_response(request, response)
