"""Two moves of one alias at once: on PostgreSQL they overlap, and both must land, one after
the other, with a history that reads as a chain."""

from __future__ import annotations

import pytest

from accounts import services as accounts
from accounts.models import ALL_SCOPES
from accounts.tenancy import Access
from marketplace import services as registry
from marketplace.models import Alias, AliasMove, ModelVersion
from tests.marketplace.test_registry_edges import public_model, version_of
from tests.races import race

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def moved_to(model, version: ModelVersion):
    return lambda: registry.alias_set(
        model=model,
        name="staging",
        version=ModelVersion.objects.get(pk=version.pk),
        access=Access(tenant=model.tenant, scopes=ALL_SCOPES),
        actor=accounts.SYSTEM,
    )


def test_two_first_moves_of_an_alias_at_once_both_land_and_chain(monkeypatch, tenant):
    model = public_model(tenant)
    one, two = version_of(model, "ready"), version_of(model, "ready")

    first, second = race(
        monkeypatch,
        pause_before=(Alias.objects, "create"),  # found no alias yet
        first=moved_to(model, one),
        second=moved_to(model, two),
    )

    assert isinstance(first, Alias) and isinstance(second, Alias), (first, second)
    alias = Alias.objects.get(model=model, name="staging")
    history = list(AliasMove.objects.filter(alias=alias).order_by("pk"))
    assert [m.from_version_id for m in history] == [None, history[0].to_version_id]
    assert alias.version_id == history[-1].to_version_id
