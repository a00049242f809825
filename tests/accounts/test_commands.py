from __future__ import annotations

import json
import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from accounts.models import ApiKey, Membership, Tenant, User

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


def test_a_new_owner_is_emailed_a_link_to_choose_a_password_and_signs_in(
    client, mailoutbox, settings, django_capture_on_commit_callbacks
):
    """Made with an unusable password, the owner could not sign in, and the password reset
    form sends nothing to such an account."""
    settings.SITE_URL = "https://models.example"
    with django_capture_on_commit_callbacks(execute=True):
        made = _run("create_tenant", "initech", "--owner", "peter@initech.example", "--json")

    (sent,) = mailoutbox
    link = re.search(r"https://models\.example(/password/reset/\S+/)", sent.body).group(1)
    form = client.get(link, follow=True)
    chosen = client.post(
        form.redirect_chain[-1][0],
        {"new_password1": "a fresh horse battery", "new_password2": "a fresh horse battery"},
    )
    signed_in = client.post(
        "/login/", {"username": "peter@initech.example", "password": "a fresh horse battery"}
    )

    assert made["owner_emailed_password_link"] is True and sent.to == ["peter@initech.example"]
    assert chosen.status_code == 302
    assert signed_in.status_code == 302


def test_create_tenant_with_a_taken_slug_fails_clearly(tenant, mailoutbox):
    with pytest.raises(CommandError, match="taken"):
        call_command("create_tenant", "acme", "--owner", "x@y.example")

    # Nothing half made: no owner account without an organisation, no e-mail.
    assert not User.objects.filter(email="x@y.example").exists() and mailoutbox == []


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
