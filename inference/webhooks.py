"""Prediction webhooks, signed per the Standard Webhooks specification
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256>``) and
retried with backoff; every attempt is recorded."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError

from accounts.models import Tenant
from inference.models import Prediction, WebhookDelivery, WebhookSigningKey


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect could point anywhere, past ``check_url``: a 3xx counts as a failed attempt."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def signing_key(tenant: Tenant) -> str:
    key = WebhookSigningKey.objects.filter(tenant=tenant).first()
    if key is None:
        try:
            key = WebhookSigningKey.objects.create(
                tenant=tenant, secret="whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
            )
        except IntegrityError:
            key = WebhookSigningKey.objects.get(tenant=tenant)
    return key.secret


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    message = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def check_url(url: str) -> None:
    """Refuse webhook targets inside our own network (SSRF), unless allowed for development."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("Webhook URLs must be http(s) URLs.")
    if settings.WEBHOOK_ALLOW_PRIVATE:
        return
    for info in socket.getaddrinfo(parts.hostname, parts.port or 443):
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise ValueError(f"Webhook URL {url} resolves to a private address.")


def deliver(prediction: Prediction, event: str, attempt: int) -> bool:
    """One delivery attempt; True when the receiver answered 2xx."""
    from inference.api.predictions import PredictionSerializer

    webhook_id = f"msg_{prediction.public_id}_{event}"
    body = json.dumps(
        {"type": f"prediction.{event}", "data": PredictionSerializer(prediction).data}, default=str
    ).encode()
    timestamp = int(time.time())
    request = urllib.request.Request(  # noqa: S310 - scheme checked in check_url
        prediction.webhook_url,
        data=body,
        method="POST",
        headers={
            "content-type": "application/json",
            "user-agent": "Modelmarket-Webhooks/1",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(signing_key(prediction.tenant), webhook_id, timestamp, body),
        },
    )
    status, error = None, ""
    try:
        check_url(prediction.webhook_url)
        with _OPENER.open(request, timeout=settings.WEBHOOK_TIMEOUT) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status, error = exc.code, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        error = str(getattr(exc, "reason", exc))[:500]
    delivered = status is not None and 200 <= status < 300
    WebhookDelivery.objects.create(
        prediction=prediction,
        event=event,
        webhook_id=webhook_id,
        attempt=attempt,
        status_code=status,
        error=error,
        delivered=delivered,
    )
    return delivered
