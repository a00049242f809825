"""Crypto-shredding reaches the worker's memory: a deleted organisation's model, decrypted
into a model host that the worker keeps warm, does not stay loaded once its keys are gone."""

from __future__ import annotations

import pytest

from accounts import services as accounts
from marketplace.vault.store import tenant_destroy
from tests.workers.conftest import validated
from workers.pool import HOSTS
from workers.services import version_key, worker_device

pytestmark = pytest.mark.django_db


def test_a_destroyed_organisations_loaded_model_is_killed_at_the_next_health_check(
    tenant, outsider, model_files, fresh_hosts
):
    example = {"example_input": {"input": {"shape": [1, 4]}}}
    shredded = validated(tenant, "secret", model_files["torchscript"], **example)
    kept = validated(outsider, "other", model_files["torchscript"], **example)
    loaded = HOSTS.loaded(worker_device())
    host = loaded.get(version_key(shredded))
    assert host is not None and host.alive

    tenant_destroy(tenant=tenant, actor=accounts.SYSTEM)
    HOSTS.health_check()

    assert loaded.keys() == [version_key(kept)]
    assert not host.alive
    assert loaded.get(version_key(kept)).alive


def test_an_organisation_with_billing_history_is_erased_and_its_ledger_kept(
    tenant, outsider, model_files, fresh_hosts
):
    """Every organisation that made or served a prediction has usage records, which the
    ledger keeps: deleting one failed on them, with a traceback and nothing erased."""
    from decimal import Decimal
    from io import StringIO

    from django.core.management import call_command

    from accounts.models import ApiKey, Membership, Tenant
    from billing.models import UsageRecord
    from billing.services import usage_record_create
    from marketplace.listings import listing_publish
    from marketplace.models import Listing, TenantKey
    from tests.conftest import key_client

    example = {"example_input": {"input": {"shape": [1, 4]}}}
    shredded = validated(tenant, "secret", model_files["torchscript"], **example)
    listing_publish(model=shredded.model, actor=accounts.SYSTEM, visibility="public", title="S")
    usage_record_create(
        kind="prediction",
        source_id="pred_history",
        consumer=outsider,
        model=shredded.model,
        compute_seconds=Decimal("0.01"),
    )
    key_client(tenant)  # an API key of the organisation
    loaded = HOSTS.loaded(worker_device())
    assert loaded.get(version_key(shredded)) is not None

    out = StringIO()
    call_command("delete_tenant", "acme", "--yes", stdout=out)

    assert "Erased acme: 1 artifact(s) crypto-shredded" in out.getvalue()
    erased = Tenant.objects.get(slug="acme")
    assert erased.status == Tenant.Status.SUSPENDED and "acme" in erased.name
    assert not TenantKey.objects.filter(tenant=erased).exclude(status="destroyed").exists()
    assert not Membership.objects.filter(tenant=erased).exists()
    assert not ApiKey.objects.filter(tenant=erased, revoked_at=None).exists()
    assert Listing.objects.get(model=shredded.model).taken_down_at is not None
    assert UsageRecord.objects.filter(source_id="pred_history").count() == 1  # the ledger
    HOSTS.health_check()
    assert loaded.get(version_key(shredded)) is None  # its decrypted weights left memory
