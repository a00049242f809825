"""The webhook signing secret: an organisation's admins read it (API and dashboard) to verify
deliveries, and rotate it; for a day after a rotation each delivery carries a signature by
the old secret beside the new one's, as Standard Webhooks allows."""

from __future__ import annotations

import base64
import hashlib
import hmac

import numpy as np
import pytest
from django.test import Client

from accounts.models import AuditEvent, Scope
from inference import tensors, webhooks
from inference.models import Prediction
from tests.conftest import key_client

pytestmark = pytest.mark.django_db


def verifies(secret: str, headers: dict, body: bytes) -> bool:
    """A receiver's check, as the Standard Webhooks spec writes it: any one signature."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(expected, s) for s in headers["webhook-signature"].split())


def delivered(classifier, settings, monkeypatch) -> tuple[dict, bytes]:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    sent = []
    monkeypatch.setattr(
        webhooks, "_post", lambda url, body, headers, address: sent.append((headers, body)) or 204
    )
    prediction = Prediction.objects.create(
        tenant=classifier.model.tenant,
        model=classifier.model,
        version=classifier,
        status=Prediction.Status.SUCCEEDED,
        webhook_url="https://example.com/hook",
        output_data=tensors.encode({"output": np.zeros((1, 3), np.float32)}),
    )
    assert webhooks.deliver(prediction, "completed", attempt=1)
    return sent[-1]


def test_an_admin_reads_the_secret_that_verifies_deliveries(api, classifier, settings, monkeypatch):
    # Before, nothing showed it: receivers could not verify a signature.
    shown = api.get("/api/v1/webhooks/secret")

    assert shown.status_code == 200
    secret = shown.json()["secret"]
    assert secret.startswith("whsec_") and shown.json()["previous_valid_until"] is None
    headers, body = delivered(classifier, settings, monkeypatch)
    assert verifies(secret, headers, body)
    assert api.get("/api/v1/webhooks/secret").json()["secret"] == secret  # the same each time
    assert AuditEvent.objects.filter(action="webhooks.secret.read").count() == 2


def test_only_admins_read_or_rotate_it(tenant, outsider):
    developer = key_client(tenant, scopes=[Scope.INFERENCE, Scope.MODELS_READ])

    assert developer.get("/api/v1/webhooks/secret").status_code == 403
    assert developer.post("/api/v1/webhooks/secret/rotate").status_code == 403
    mine = key_client(tenant).get("/api/v1/webhooks/secret").json()["secret"]
    theirs = key_client(outsider).get("/api/v1/webhooks/secret").json()["secret"]
    assert mine != theirs  # each organisation its own


def test_after_a_rotation_deliveries_verify_with_the_old_and_the_new_secret(
    api, classifier, settings, monkeypatch
):
    old = api.get("/api/v1/webhooks/secret").json()["secret"]

    rotated = api.post("/api/v1/webhooks/secret/rotate")

    assert rotated.status_code == 200
    new = rotated.json()["secret"]
    assert new != old and rotated.json()["previous_valid_until"] is not None
    headers, body = delivered(classifier, settings, monkeypatch)
    assert len(headers["webhook-signature"].split()) == 2
    assert verifies(new, headers, body) and verifies(old, headers, body)
    assert AuditEvent.objects.filter(action="webhooks.secret.rotate").count() == 1

    # The grace over, the old one no longer signs.
    from inference.models import WebhookSigningKey

    WebhookSigningKey.objects.update(previous_valid_until="2000-01-01T00:00:00Z")
    headers, body = delivered(classifier, settings, monkeypatch)
    assert verifies(new, headers, body) and not verifies(old, headers, body)


def test_the_dashboard_shows_admins_the_secret_and_rotates_it(tenant, alice, bob):
    owner = Client()
    owner.force_login(alice)
    developer = Client()
    developer.force_login(bob)

    page = owner.get("/dashboard/webhooks/secret/")
    secret = webhooks.signing_record(tenant).secret

    assert page.status_code == 200 and secret in page.content.decode()
    assert developer.get("/dashboard/webhooks/secret/").status_code == 403
    after = owner.post("/dashboard/webhooks/secret/", follow=True).content.decode()
    new = webhooks.signing_record(tenant).secret
    assert new != secret
    assert new in after and "signature by the old one too" in after
    assert "webhook signing secret" in owner.get("/dashboard/keys/").content.decode()
