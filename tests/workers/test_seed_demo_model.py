"""The demo of ``make run``: seeding trains and publishes acme-ai/strokes, globex subscribes,
and the globex key printed by ``seed_demo`` runs it through a live worker."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from accounts.models import AuditEvent
from marketplace.models import Alias, Entitlement, Listing, Model, ModelVersion
from workers.management.commands.seed_demo_model import CLASSES, request_file, stroke

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def seed() -> dict[str, str]:
    """Seed the demo as ``make run`` does; the API keys by tenant."""
    out = io.StringIO()
    call_command("seed_demo", json=True, stdout=out)
    call_command("seed_demo_model", stdout=io.StringIO())
    return {t["tenant"]: t["api_key"] for t in json.loads(out.getvalue())["tenants"]}


def test_seeding_twice_publishes_one_ready_model_the_consumer_can_run(celery_worker_process):
    # The seed validates the version itself while the live worker gets the validation the
    # upload queued: whichever claims it first validates it, the other leaves it alone.
    keys = seed()
    decrypts = AuditEvent.objects.filter(action="artifact.decrypt")
    assert sorted(e.data["purpose"] for e in decrypts) == ["assemble", "validate"]
    events = AuditEvent.objects.count()
    again = io.StringIO()

    call_command("seed_demo_model", stdout=again)

    assert "already seeded" in again.getvalue()
    assert AuditEvent.objects.count() == events
    model = Model.objects.get()
    assert model.ref == "acme-ai/strokes" and model.task == "image-classification"
    version = ModelVersion.objects.get()
    assert version.status == "ready"
    assert version.signature["inputs"][0]["shape"] == [-1, 1, 28, 28]
    assert Alias.objects.get(name="production").version == version
    listing = Listing.objects.get()
    assert listing.visibility == "public" and listing.is_free and listing.example_input
    assert "| 5 | cross |" in listing.card_markdown
    assert Entitlement.objects.get(revoked_at__isnull=True).tenant.slug == "globex"

    globex = APIClient()
    globex.credentials(HTTP_AUTHORIZATION=f"Bearer {keys['globex']}")
    demo = globex.post(
        "/api/v1/predictions",
        json.loads(request_file().read_text()),
        format="json",
        HTTP_PREFER="wait",
    )
    every_class = globex.post(
        "/api/v1/predictions",
        {"model": "acme-ai/strokes", "input": {"x": [[stroke(k).tolist()] for k in CLASSES]}},
        format="json",
        HTTP_PREFER="wait",
    )

    assert demo.status_code == 201, demo.json()
    body = demo.json()
    assert body["status"] == "succeeded" and body["version"] == 1
    logits = body["output"]["output"][0]
    assert logits.index(max(logits)) == CLASSES.index("horizontal")
    assert body["cost"]["amount"] == "0.000000"
    rows = every_class.json()["output"]["output"]
    assert [row.index(max(row)) for row in rows] == list(range(len(CLASSES)))


def test_a_validation_another_worker_never_finishes_stops_the_seed_with_the_reason(monkeypatch):
    """The seed waits for a worker that claimed the validation, but not for ever."""
    from datetime import timedelta

    from django.core.management.base import CommandError
    from django.utils import timezone

    from accounts.models import Tenant
    from accounts.services import SYSTEM
    from marketplace import services as registry
    from marketplace.vault.store import artifact_create
    from workers import services as worker_services

    call_command("seed_demo", json=True, stdout=io.StringIO())
    publisher = Tenant.objects.get(slug="acme-ai")
    model = registry.model_create(tenant=publisher, name="strokes", actor=SYSTEM)
    ModelVersion.objects.create(
        model=model,
        number=1,
        format="pt2",
        status=ModelVersion.Status.VALIDATING,
        artifact=artifact_create(tenant=publisher, chunks=[b"not read: the claim is held"]),
        validation_claimed_until=timezone.now() + timedelta(hours=1),
    )
    monkeypatch.setattr(worker_services, "validation_claim_seconds", lambda: 1)

    with pytest.raises(CommandError) as stopped:
        call_command("seed_demo_model", stdout=io.StringIO())

    assert "is still validating after" in str(stopped.value)
    assert ModelVersion.objects.get().status == ModelVersion.Status.VALIDATING
    assert not AuditEvent.objects.filter(action="artifact.decrypt").exists()


def test_the_curl_hint_names_the_configured_site(settings):
    # The hint said http://127.0.0.1:8000 whatever MM_SITE_URL served.
    settings.SITE_URL = "http://127.0.0.1:8001"
    call_command("seed_demo", json=True, stdout=io.StringIO())
    out = io.StringIO()

    call_command("seed_demo_model", stdout=out)

    assert "http://127.0.0.1:8001/api/v1/predictions" in out.getvalue()
    assert "127.0.0.1:8000" not in out.getvalue()
