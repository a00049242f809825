"""Prediction webhooks, signed per the Standard Webhooks specification
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256>``) and
retried with backoff; every attempt is recorded."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import socket
import time
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Tenant
from accounts.services import Actor, audit_record
from config import tasks
from inference.models import Prediction, WebhookDelivery, WebhookSigningKey
from marketplace.models import SealedSecret
from marketplace.vault.sealed import secret_reveal, secret_seal

logger = logging.getLogger(__name__)

# How long a rotated-out secret still signs (a second signature beside the new one's).
ROTATION_GRACE = timedelta(hours=24)
# A rotation this soon after the last one answers with the secret that one made: a
# double-clicked Rotate (or a script's retry) handed each caller its own new secret, and the
# third destroyed the first's, which its caller had just stored.
ROTATION_REPEAT = timedelta(seconds=10)


PURPOSE = "webhook-signing"  # of the tenant's SealedSecret rows that hold the secrets


def signing_record(tenant: Tenant) -> WebhookSigningKey:
    """The tenant's signing key, made on first use."""
    records = WebhookSigningKey.objects.select_related("sealed", "previous_sealed")
    key = records.filter(tenant=tenant).first()
    if key is None:
        try:
            with transaction.atomic():  # the sealed secret too, when another request won
                key = WebhookSigningKey.objects.create(
                    tenant=tenant, sealed=secret_seal(tenant, PURPOSE)
                )
        except IntegrityError:
            key = records.get(tenant=tenant)
    return key


def _unsealed(sealed: SealedSecret) -> str:
    """A secret as receivers take it: ``whsec_`` and the base64 key."""
    return "whsec_" + base64.b64encode(secret_reveal(sealed)).decode()


def signing_secret(key: WebhookSigningKey) -> str:
    return _unsealed(key.sealed)


def signing_key_reveal(tenant: Tenant, actor: Actor) -> tuple[WebhookSigningKey, str]:
    """The signing key and its secret, for a member to read; each read is in the audit log."""
    key = signing_record(tenant)
    audit_record(action="webhooks.secret.read", actor=actor, tenant=tenant)
    return key, signing_secret(key)


def in_grace(key: WebhookSigningKey) -> bool:
    """Whether the secret a rotation replaced still signs."""
    if key.previous_sealed_id is None or key.previous_valid_until is None:
        return False
    return key.previous_valid_until > timezone.now()


def signing_secrets(key: WebhookSigningKey) -> list[str]:
    """What a delivery is signed with now: the secret, and the one it replaced during the
    grace after a rotation."""
    if in_grace(key):
        return [_unsealed(key.sealed), _unsealed(key.previous_sealed)]
    return [_unsealed(key.sealed)]


def signing_key_rotate(tenant: Tenant, actor: Actor) -> WebhookSigningKey:
    """A new secret; the old one still signs (a second signature) for ``ROTATION_GRACE``, and
    the one before it is destroyed. Within ``ROTATION_REPEAT`` of the last rotation, the key
    it made, unchanged."""
    with transaction.atomic():
        signing_record(tenant)
        key = WebhookSigningKey.objects.select_for_update().get(tenant=tenant)
        if in_grace(key) and timezone.now() - key.created_at < ROTATION_REPEAT:
            return key
        dropped = key.previous_sealed
        key.previous_sealed, key.sealed = key.sealed, secret_seal(tenant, PURPOSE)
        key.previous_valid_until = timezone.now() + ROTATION_GRACE
        key.created_at = timezone.now()
        key.save()
        if dropped is not None:
            dropped.delete()
        audit_record(
            action="webhooks.secret.rotate",
            actor=actor,
            tenant=tenant,
            data={"previous_valid_until": key.previous_valid_until.isoformat()},
        )
    return key


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
        if not _public(ipaddress.ip_address(info[4][0])):
            raise ValueError(f"Webhook URL {url} resolves to a private address.")
    return found[0][4][0]


# IPv6 ranges that carry an IPv4 address a gateway may route to: NAT64 (RFC 6052, 8215) and
# the deprecated IPv4-compatible form. Python's is_global calls them global.
_IPV4_CARRIERS = [ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "::/96")]


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a webhook may go to ``address``: a global one, and for IPv6 one that does not
    lead to a private IPv4 address (mapped, 6to4, Teredo, NAT64 or IPv4-compatible)."""
    if not address.is_global:
        return False
    if address.version == 6:
        if any(address in network for network in _IPV4_CARRIERS):
            return False
        embedded = [address.ipv4_mapped, address.sixtofour]
        if address.teredo is not None:
            embedded += list(address.teredo)
        return all(v4 is None or v4.is_global for v4 in embedded)
    return True


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


def as_at(prediction: Prediction, event: str) -> Prediction:
    """The prediction as it was at ``event``. A start is delivered after the run began, often
    after it finished (and retried later still): it says running, without the result, which
    the completed event carries."""
    if event != "start":
        return prediction
    started = copy.copy(prediction)
    started.status = Prediction.Status.RUNNING
    started.output_data = None
    started.error = started.error_kind = ""
    started.completed_at = started.compute_ms = None
    started.batched_with = 1
    return started


def deliver(prediction: Prediction, event: str, attempt: int) -> bool:
    """One delivery attempt; True when the receiver answered 2xx."""
    from inference.api.predictions import PredictionSerializer

    webhook_id = f"msg_{prediction.public_id}_{event}"
    body = json.dumps(
        {
            "type": f"prediction.{event}",
            "data": PredictionSerializer(as_at(prediction, event)).data,
        },
        default=str,
    ).encode()
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "Modelmarket-Webhooks/1",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        # Space-separated signatures, one per secret in force (Standard Webhooks).
        "webhook-signature": " ".join(
            sign(secret, webhook_id, timestamp, body)
            for secret in signing_secrets(signing_record(prediction.tenant))
        ),
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


# A finished prediction's webhook with no attempt this long after is taken to be lost (its
# sending failed after the result was recorded: Redis was down); sooner, its task may only be
# waiting in the queue. Older than a day, it is not sent any more.
MISSED_AFTER = timedelta(minutes=5)
MISSED_WITHIN = timedelta(days=1)


MAX_RESENT = 1000  # webhooks one sweep sends again


def resend_missed() -> int:
    """Send the completed event of every prediction that finished with a webhook and has no
    attempt recorded for it (``MISSED_AFTER`` to ``MISSED_WITHIN`` ago). Delivery is at least
    once: a receiver tells a repeat by its ``webhook-id``."""
    now = timezone.now()
    missed = (
        Prediction.objects.filter(
            status__in=Prediction.TERMINAL,
            completed_at__lt=now - MISSED_AFTER,
            completed_at__gte=now - MISSED_WITHIN,
        )
        .exclude(webhook_url="")
        .exclude(deliveries__event="completed")
        .only("public_id", "webhook_events")
        .order_by("completed_at")
    )
    sent = 0
    # Filtered here (SQLite has no JSON "contains"), so counted here: cut at 1,000 rows
    # before, predictions that asked for no "completed" event, never delivered and so back
    # every sweep for a day, could fill the cut and hide the ones missed.
    for prediction in missed.iterator(chunk_size=500):
        if "completed" not in prediction.webhook_events:
            continue
        tasks.send("inference.deliver_webhook", prediction.public_id, "completed")
        sent += 1
        if sent >= MAX_RESENT:
            break
    if sent:
        logger.warning("sent %d webhooks missed when their predictions finished", sent)
    return sent
