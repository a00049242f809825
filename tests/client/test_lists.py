"""Lists follow the API's pages to the end."""

from __future__ import annotations

import pytest

from accounts import services as accounts
from marketplace import services as registry

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_models_lists_every_page(mm, tenant):
    for i in range(55):  # the API pages 50 at a time
        registry.model_create(tenant=tenant, name=f"m{i:02d}", actor=accounts.SYSTEM)

    listed = mm("models", "--json")

    assert listed.code == 0, listed.err
    assert sorted(m["name"] for m in listed.json()) == [f"m{i:02d}" for i in range(55)]
