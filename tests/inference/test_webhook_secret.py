"""The webhook signing secret: an organisation's admins read it (API and dashboard) to verify
deliveries, and rotate it; for a day after a rotation each delivery carries a signature by
the old secret beside the new one's, as Standard Webhooks allows."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from io import StringIO

import numpy as np
import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from accounts.models import AuditEvent, Scope
from inference import tensors, webhooks
from inference.models import Prediction, WebhookSigningKey
from marketplace.models import SealedSecret
from marketplace.vault import VaultIntegrityError
from marketplace.vault.keys import kek_backend
from tests.conftest import key_client
from tests.vault.test_no_plaintext_at_rest import _database_bytes, _forms

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
    assert shown["Cache-Control"] == "private, no-store"  # kept by no cache
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
    WebhookSigningKey.objects.update(previous_valid_until="2000-01-01T00:00:00Z")
    headers, body = delivered(classifier, settings, monkeypatch)
    assert verifies(new, headers, body) and not verifies(old, headers, body)


def test_the_dashboard_shows_admins_the_secret_and_rotates_it(tenant, alice, bob):
    owner = Client()
    owner.force_login(alice)
    developer = Client()
    developer.force_login(bob)

    page = owner.get("/dashboard/webhooks/secret/")
    secret = webhooks.signing_secret(webhooks.signing_record(tenant))

    assert page.status_code == 200 and secret in page.content.decode()
    assert page["Cache-Control"] == "private, no-store"
    assert developer.get("/dashboard/webhooks/secret/").status_code == 403
    after = owner.post("/dashboard/webhooks/secret/", follow=True).content.decode()
    new = webhooks.signing_secret(webhooks.signing_record(tenant))
    assert new != secret
    assert new in after and "signature by the old one too" in after
    assert "webhook signing secret" in owner.get("/dashboard/keys/").content.decode()


def _raw(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def test_the_database_alone_does_not_reveal_a_secret(api, outsider):
    """Sealed under the key-encryption key, as tenant data keys are: before, a copy of the
    database (a backup, a read replica) gave anyone the secrets to forge every organisation's
    deliveries."""
    old = api.get("/api/v1/webhooks/secret").json()["secret"]
    new = api.post("/api/v1/webhooks/secret/rotate").json()["secret"]  # both in force now
    theirs = key_client(outsider).get("/api/v1/webhooks/secret").json()["secret"]

    stored = _database_bytes()

    for secret in (old, new, theirs):
        assert not any(form in stored for form in [secret.encode(), *_forms(_raw(secret))])


def test_kek_rotation_rewraps_the_secrets_and_the_old_kek_can_be_retired(api, settings):
    secret = api.get("/api/v1/webhooks/secret").json()["secret"]
    old_kek = kek_backend().primary_id

    call_command("rotate_kek", "--new", stdout=open(os.devnull, "w"))  # noqa: SIM115
    call_command("rotate_kek", "--retire", old_kek, stdout=open(os.devnull, "w"))  # noqa: SIM115

    assert old_kek not in settings.KEK_FILE.read_text()
    assert set(SealedSecret.objects.values_list("kek_id", flat=True)) == {kek_backend().primary_id}
    assert api.get("/api/v1/webhooks/secret").json()["secret"] == secret


def test_a_kek_that_still_seals_a_secret_cannot_be_retired(api):
    """Before, the KEK check counted tenant keys only: retiring the KEK would have left every
    webhook unsignable."""
    from django.core.management.base import CommandError

    secret = api.get("/api/v1/webhooks/secret").json()["secret"]

    with pytest.raises(CommandError, match="still wraps 1 key"):
        call_command("rotate_kek", "--retire", kek_backend().primary_id, stdout=StringIO())
    assert api.get("/api/v1/webhooks/secret").json()["secret"] == secret


def test_a_sealed_secret_moved_to_another_organisation_does_not_open(tenant, outsider):
    mine = webhooks.signing_record(tenant)
    theirs = webhooks.signing_record(outsider)
    SealedSecret.objects.filter(pk=theirs.sealed_id).update(
        kek_id=mine.sealed.kek_id, wrapped=mine.sealed.wrapped
    )

    with pytest.raises(VaultIntegrityError):
        webhooks.signing_secret(webhooks.signing_record(outsider))


def test_a_rotation_destroys_the_secret_two_back(api, tenant):
    first = api.get("/api/v1/webhooks/secret").json()["secret"]
    api.post("/api/v1/webhooks/secret/rotate")
    WebhookSigningKey.objects.update(created_at=timezone.now() - webhooks.ROTATION_REPEAT)
    api.post("/api/v1/webhooks/secret/rotate")

    kept = SealedSecret.objects.filter(tenant=tenant, purpose=webhooks.PURPOSE)
    assert kept.count() == 2
    assert _raw(first) not in [webhooks.secret_reveal(sealed) for sealed in kept]


UPGRADE_SCRIPT = """
import json, django
django.setup()
from django.core.management import call_command
from django.db import connection
call_command("migrate", "inference", "0011", verbosity=0)
call_command("migrate", "accounts", verbosity=0)  # the organisation is made with today's model
from accounts import services
owner = services.User.objects.create_user("o@old.example")
tenant = services.tenant_create(slug="old", name="Old", owner=owner)
with connection.cursor() as cursor:
    cursor.execute(
        "INSERT INTO inference_webhooksigningkey (tenant_id, secret, previous_secret, created_at,"
        " previous_valid_until) VALUES (%s, %s, %s, '2026-11-01', '2999-01-01')",
        [tenant.pk, {current!r}, {previous!r}],
    )
call_command("migrate", verbosity=0)
from inference import webhooks
key = webhooks.signing_record(tenant)
print(json.dumps(webhooks.signing_secrets(key)))
"""


def test_an_upgrade_seals_the_secrets_stored_before_and_they_still_sign(tmp_path):
    """Receivers keep verifying across the upgrade: the secrets in force are the same ones,
    now sealed, and the plaintext columns are gone."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    current = "whsec_" + base64.b64encode(b"c" * 32).decode()
    previous = "whsec_" + base64.b64encode(b"p" * 32).decode()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "MM_VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }
    script = UPGRADE_SCRIPT.format(current=current, previous=previous)
    result = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == [current, previous]
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("db.sqlite3*"))  # WAL too
    assert current.encode() not in stored and previous.encode() not in stored


def test_a_repeated_rotation_answers_with_the_secret_just_made(api, tenant):
    """A double-clicked Rotate or a retried request: each made its own secret, and a third
    destroyed the first's, which its caller had just stored; both now get one secret, and
    the one before it still signs."""
    old = api.get("/api/v1/webhooks/secret").json()["secret"]

    first = api.post("/api/v1/webhooks/secret/rotate").json()
    again = api.post("/api/v1/webhooks/secret/rotate").json()
    third = api.post("/api/v1/webhooks/secret/rotate").json()

    assert first["secret"] == again["secret"] == third["secret"] != old
    key = webhooks.signing_record(tenant)
    assert webhooks.signing_secrets(key) == [first["secret"], old]
    assert AuditEvent.objects.filter(action="webhooks.secret.rotate").count() == 1
