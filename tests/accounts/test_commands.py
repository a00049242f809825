from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from accounts.models import ApiKey, Membership, Tenant

pytestmark = pytest.mark.django_db


def _run(*args) -> dict:
    out = StringIO()
    call_command(*args, stdout=out)
    return json.loads(out.getvalue())


def test_create_tenant_and_key_print_json_and_the_key_works():
    tenant = _run("create_tenant", "initech", "--owner", "peter@initech.example", "--json")
    assert tenant["tenant"] == "initech" and tenant["owner_created"] is True
    assert Membership.objects.get(tenant__slug="initech").role == "owner"

    key = _run(
        "create_api_key",
        "initech",
        "--scopes",
        "inference",
        "models:read",
        "--expires",
        "2999-01-01",
        "--json",
    )

    assert key["scopes"] == ["inference", "models:read"]
    assert key["expires_at"].startswith("2999-01-01")
    client = APIClient()
    response = client.get("/api/v1/organisation", HTTP_AUTHORIZATION=f"Bearer {key['key']}")
    assert response.status_code == 200
    assert response.json()["organisation"]["slug"] == "initech"


def test_create_tenant_with_a_taken_slug_fails_clearly(tenant):
    with pytest.raises(CommandError, match="taken"):
        call_command("create_tenant", "acme", "--owner", "x@y.example")


def test_create_api_key_for_unknown_tenant_fails_clearly():
    with pytest.raises(CommandError, match="No organisation"):
        call_command("create_api_key", "nope", "--scopes", "inference")


def test_create_api_key_rejects_a_bad_date(tenant):
    with pytest.raises(CommandError, match="ISO 8601"):
        call_command("create_api_key", "acme", "--scopes", "inference", "--expires", "soon")


def test_seed_demo_is_idempotent_and_prints_keys_once():
    first = _run("seed_demo", "--json")
    second = _run("seed_demo", "--json")

    assert [t["created"] for t in first["tenants"]] == [True, True]
    assert [t["created"] for t in second["tenants"]] == [False, False]
    assert all("api_key" not in t for t in second["tenants"])
    assert Tenant.objects.count() == 2 and ApiKey.objects.count() == 2
    publisher_key = first["tenants"][0]["api_key"]
    me = APIClient().get("/api/v1/organisation", HTTP_AUTHORIZATION=f"Bearer {publisher_key}")
    assert me.json()["organisation"]["slug"] == "acme-ai"
