"""Prediction webhooks, signed per the Standard Webhooks specification
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256>``) and
retried with backoff; every attempt is recorded."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import ipaddress
import json
import secrets
import socket
import time
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError

from accounts.models import Tenant
from inference.models import Prediction, WebhookDelivery, WebhookSigningKey


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


def check_url(url: str) -> str | None:
    """Refuse webhook targets inside our own network (SSRF), unless allowed for development;
    the address checked, which the delivery connects to (a second lookup could answer with
    another one: DNS rebinding). ``None`` where private targets are allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("Webhook URLs must be http(s) URLs.")
    if settings.WEBHOOK_ALLOW_PRIVATE:
        return None
    found = socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    for info in found:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise ValueError(f"Webhook URL {url} resolves to a private address.")
    return found[0][4][0]


def _post(url: str, body: bytes, headers: dict, address: str | None) -> int:
    """POST ``body`` to ``url`` (to ``address``, when given, whatever the name resolves to
    now; TLS still checks the certificate against the name) and return the status. Redirects
    are not followed: they could point anywhere, past ``check_url``."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    kind = http.client.HTTPSConnection if secure else http.client.HTTPConnection
    connection = kind(parts.hostname, parts.port, timeout=settings.WEBHOOK_TIMEOUT)
    if address is not None:
        connect = connection._create_connection  # socket.create_connection

        def pinned(where, *args, **kwargs):
            return connect((address, where[1]), *args, **kwargs)

        connection._create_connection = pinned
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("POST", target, body=body, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def deliver(prediction: Prediction, event: str, attempt: int) -> bool:
    """One delivery attempt; True when the receiver answered 2xx."""
    from inference.api.predictions import PredictionSerializer

    webhook_id = f"msg_{prediction.public_id}_{event}"
    body = json.dumps(
        {"type": f"prediction.{event}", "data": PredictionSerializer(prediction).data}, default=str
    ).encode()
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "Modelmarket-Webhooks/1",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(signing_key(prediction.tenant), webhook_id, timestamp, body),
    }
    status, error = None, ""
    try:
        address = check_url(prediction.webhook_url)
        status = _post(prediction.webhook_url, body, headers, address)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        error = str(exc)[:500] or type(exc).__name__
    delivered = status is not None and 200 <= status < 300
    if status is not None and not delivered:
        error = f"HTTP {status}"
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
