from __future__ import annotations

import sqlite3
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import keycache, secrets, services
from accounts.models import ApiKey, AuditEvent, Scope
from tests.conftest import key_client

pytestmark = pytest.mark.django_db


def test_created_key_is_shown_once_and_authenticates(api):
    created = api.post("/api/v1/keys", {"name": "ci", "scopes": ["inference"]}, format="json")
    assert created.status_code == 201
    assert created["Cache-Control"] == "private, no-store"  # the secret is kept by no cache
    secret = created.json()["key"]
    assert secret.startswith("mm_live_")
    # A public page keeps its own caching (none said): only a caller's own answers are marked.
    assert not APIClient().get("/catalogue/").has_header("Cache-Control")

    listed = api.get("/api/v1/keys").json()["results"]
    fetched = api.get(f"/api/v1/keys/{created.json()['id']}").json()
    assert all("key" not in item for item in listed)
    assert "key" not in fetched and secret not in str(listed)

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    me = client.get("/api/v1/organisation")
    assert me.status_code == 200
    assert me.json()["scopes"] == ["inference"]


@pytest.mark.django_db(transaction=True)
def test_secret_is_never_stored_in_the_clear(tenant):
    _key, secret = services.api_key_create(
        tenant=tenant, name="scan", scopes=["inference"], actor=services.SYSTEM
    )
    secret_part = secret.split("_")[-1]
    # Read every text column of every table straight from the database file.
    raw = sqlite3.connect(connection.settings_dict["NAME"])
    dump = "\n".join(raw.iterdump())
    raw.close()
    assert "mm_live_" not in dump
    assert secret_part[:20] not in dump


def test_missing_key_is_401_with_www_authenticate(client):
    response = client.get("/api/v1/organisation")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header, message",
    [
        ("Bearer mm_live_nothing", "Malformed API key"),
        ("Basic dXNlcjpwYXNz", "Unsupported authorization scheme"),
        ("Bearer ", "no API key"),
    ],
)
def test_malformed_credentials_are_401_saying_why(client, header, message):
    response = client.get("/api/v1/organisation", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert message in response.json()["detail"]
    assert "WWW-Authenticate" in response


def test_key_with_a_valid_checksum_but_unknown_secret_is_rejected(api, tenant):
    fake, _prefix = secrets.new_api_key()
    response = APIClient().get("/api/v1/organisation", HTTP_AUTHORIZATION=f"Bearer {fake}")
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid API key."


def test_key_with_right_prefix_but_wrong_secret_is_rejected(api):
    real = api.secret
    assert api.get("/api/v1/organisation").status_code == 200  # the real key is now cached
    prefix = real.split("_")[2]
    body = f"mm_live_{prefix}_{'A' * 43}"
    forged = body + secrets._checksum(body)
    response = APIClient().get("/api/v1/organisation", HTTP_AUTHORIZATION=f"Bearer {forged}")
    assert response.status_code == 401


def test_revoked_key_is_rejected(api, tenant):
    victim = key_client(tenant, scopes=[Scope.INFERENCE])
    key_id = ApiKey.objects.get(prefix=victim.secret.split("_")[2]).public_id
    assert victim.get("/api/v1/organisation").status_code == 200

    revoked = api.post(f"/api/v1/keys/{key_id}/revoke")

    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    response = victim.get("/api/v1/organisation")
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]
    assert AuditEvent.objects.filter(action="api_key.revoke", target_id=key_id).exists()

    # Once: a second revocation (a retry, a double click) was 200 and audited again.
    again = api.post(f"/api/v1/keys/{key_id}/revoke")
    assert again.status_code == 409 and "already revoked" in again.json()["detail"]
    assert AuditEvent.objects.filter(action="api_key.revoke", target_id=key_id).count() == 1


def test_keys_listed_as_active_are_the_keys_that_work(api, tenant, client, alice):
    """An expired key was listed under ?status=active and counted on the dashboard."""
    lapsed = key_client(tenant, scopes=[Scope.INFERENCE])
    lapsed_key = ApiKey.objects.get(prefix=lapsed.secret.split("_")[2])
    ApiKey.objects.filter(pk=lapsed_key.pk).update(expires_at=timezone.now() - timedelta(1))
    assert lapsed.get("/api/v1/organisation").status_code == 401

    def listed(status: str) -> set[str]:
        return {k["id"] for k in api.get(f"/api/v1/keys?status={status}").json()["results"]}

    assert lapsed_key.public_id not in listed("active")
    assert listed("expired") == {lapsed_key.public_id}
    assert lapsed_key.public_id not in listed("revoked")
    client.force_login(alice)
    home = client.get("/dashboard/")
    assert home.context["active_key_count"] == len(listed("active")) == 1


def test_expired_key_is_rejected(tenant):
    client = key_client(tenant, expires_at=timezone.now() + timedelta(seconds=30))
    assert client.get("/api/v1/organisation").status_code == 200
    ApiKey.objects.filter(tenant=tenant).update(expires_at=timezone.now() - timedelta(seconds=1))
    keycache.clear()  # what every process sees once the cache TTL has passed

    response = client.get("/api/v1/organisation")

    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


def test_missing_scope_is_403_naming_the_scope(tenant):
    client = key_client(tenant, scopes=[Scope.INFERENCE])
    response = client.get("/api/v1/keys")
    assert response.status_code == 403
    assert "'admin' scope" in response.json()["detail"]


def test_suspended_tenant_is_403_saying_so(api, tenant):
    services.tenant_suspend(tenant=tenant, reason="Unpaid invoices", actor=services.SYSTEM)
    response = api.get("/api/v1/organisation")
    assert response.status_code == 403
    assert (
        "suspended" in response.json()["detail"] and "Unpaid invoices" in response.json()["detail"]
    )


def test_suspended_tenants_key_is_403_on_the_catalogue_too(api, tenant, outsider):
    """The catalogue answers signed-out callers, but a key acts for its organisation: a
    suspended one's key read the listings shared with it there, and nothing else."""
    from marketplace import listings
    from marketplace import services as registry

    model = registry.model_create(tenant=outsider, name="shared", actor=services.SYSTEM)
    listings.listing_publish(model=model, actor=services.SYSTEM, visibility="private")
    listings.model_share(model=model, tenant_slug="acme", actor=services.SYSTEM)
    assert api.get("/api/v1/catalogue/globex/shared").status_code == 200
    services.tenant_suspend(tenant=tenant, reason="Unpaid invoices", actor=services.SYSTEM)
    for path in ("/api/v1/catalogue/globex/shared", "/api/v1/catalogue"):
        response = api.get(path)
        assert response.status_code == 403
        assert "suspended" in response.json()["detail"]
    assert APIClient().get("/api/v1/catalogue").status_code == 200  # signed out, still open


def test_ip_allowlist_admits_listed_networks_only(tenant):
    client = key_client(tenant, allowed_ips=["10.0.0.0/8"])
    assert client.get("/api/v1/organisation", REMOTE_ADDR="10.1.2.3").status_code == 200
    refused = client.get("/api/v1/organisation", REMOTE_ADDR="203.0.113.9")
    assert refused.status_code == 403
    assert "203.0.113.9" in refused.json()["detail"]


def test_a_key_cannot_grant_scopes_it_does_not_hold(tenant):
    limited = key_client(tenant, scopes=[Scope.ADMIN, Scope.MODELS_READ])
    response = limited.post("/api/v1/keys", {"name": "x", "scopes": ["inference"]}, format="json")
    assert response.status_code == 403
    assert "inference" in response.json()["detail"]


def test_a_limited_key_makes_keys_only_within_its_own_limits(tenant):
    tomorrow = timezone.now() + timedelta(days=1)
    limited = key_client(
        tenant,
        scopes=[Scope.ADMIN, Scope.INFERENCE],
        allowed_ips=["10.9.0.0/16"],
        allowed_models=["acme/only"],
        expires_at=tomorrow,
    )

    def create(**fields):
        body = {"name": "made", "scopes": ["inference"], **fields}
        return limited.post("/api/v1/keys", body, format="json", REMOTE_ADDR="10.9.9.9")

    made = create()  # left unlimited: it gets the maker's limits
    assert made.status_code == 201, made.json()
    body = made.json()
    assert body["allowed_ips"] == ["10.9.0.0/16"] and body["allowed_models"] == ["acme/only"]
    assert body["expires_at"] == tomorrow.isoformat().replace("+00:00", "Z")
    escaped = APIClient()
    escaped.credentials(HTTP_AUTHORIZATION=f"Bearer {body['key']}")
    assert escaped.get("/api/v1/organisation", REMOTE_ADDR="203.0.113.5").status_code == 403

    narrower = create(allowed_ips=["10.9.9.0/24"], allowed_models=["acme/only"])
    assert narrower.status_code == 201
    for wider in (
        {"allowed_ips": ["0.0.0.0/0"]},
        {"allowed_models": ["acme/only", "acme/other"]},
        {"expires_at": (tomorrow + timedelta(days=1)).isoformat()},
    ):
        refused = create(**wider)
        assert refused.status_code == 403, (wider, refused.json())
        assert "could not act as itself" in refused.json()["detail"]
    not_a_network = create(allowed_ips=["10.9.not.an.ip"])
    assert not_a_network.status_code == 400  # what is wrong with it, not a refusal
    assert "allowed_ips" in not_a_network.json()["detail"]


def test_a_limited_key_cannot_rotate_a_wider_key_to_get_its_secret(tenant):
    wide = key_client(tenant, scopes=[Scope.INFERENCE])
    wide_id = ApiKey.objects.get(prefix=wide.secret.split("_")[2]).public_id
    limited = key_client(tenant, scopes=[Scope.ADMIN, Scope.INFERENCE], allowed_ips=["10.0.0.0/8"])

    refused = limited.post(f"/api/v1/keys/{wide_id}/rotate", REMOTE_ADDR="10.1.1.1")

    assert refused.status_code == 403
    assert "networks beyond this key's (10.0.0.0/8)" in refused.json()["detail"]
    assert not ApiKey.objects.filter(rotated_from__public_id=wide_id).exists()


def test_head_needs_the_scope_get_needs(tenant):
    billing_only = key_client(tenant, scopes=[Scope.BILLING_READ])
    inference_only = key_client(tenant, scopes=[Scope.INFERENCE])

    assert billing_only.head("/api/v1/predictions").status_code == 403
    assert inference_only.head("/api/v1/billing/settings").status_code == 403
    assert inference_only.head("/api/v1/predictions").status_code == 200
    assert billing_only.options("/api/v1/predictions").status_code == 200  # describes, reads none


def test_rotated_key_keeps_working_through_the_grace_period(api, tenant, settings):
    old = key_client(tenant, scopes=[Scope.INFERENCE])
    old_id = ApiKey.objects.get(prefix=old.secret.split("_")[2]).public_id

    rotated = api.post(f"/api/v1/keys/{old_id}/rotate")

    assert rotated.status_code == 201
    body = rotated.json()
    assert body["rotated_from"] == old_id and body["scopes"] == ["inference"]
    new = APIClient()
    new.credentials(HTTP_AUTHORIZATION=f"Bearer {body['key']}")
    assert new.get("/api/v1/organisation").status_code == 200
    assert old.get("/api/v1/organisation").status_code == 200  # grace period
    old_key = ApiKey.objects.get(public_id=old_id)
    assert (
        timedelta(hours=23) < old_key.expires_at - timezone.now() <= settings.API_KEY_ROTATION_GRACE
    )
    # Once the grace period is over the old key stops working.
    ApiKey.objects.filter(public_id=old_id).update(expires_at=timezone.now())
    keycache.clear()
    assert old.get("/api/v1/organisation").status_code == 401
    assert api.post(f"/api/v1/keys/{old_id}/rotate").status_code == 400


def test_last_used_time_is_recorded(api, tenant):
    key = ApiKey.objects.get(prefix=api.secret.split("_")[2])
    assert key.last_used_at is None
    api.get("/api/v1/organisation")
    key.refresh_from_db()
    assert key.last_used_at is not None


def test_key_creation_writes_audit_row_with_actor(api, tenant):
    api.post("/api/v1/keys", {"name": "audited", "scopes": ["models:read"]}, format="json")
    event = AuditEvent.objects.get(tenant=tenant, action="api_key.create", data__name="audited")
    assert event.actor_label.startswith("key mm_live_")


def test_key_in_query_string_is_not_accepted(api):
    response = APIClient().get(f"/api/v1/organisation?api_key={api.secret}")
    assert response.status_code == 401


def test_key_revoked_by_another_process_is_refused_once_the_cache_expires(api, settings):
    settings.API_KEY_CACHE_SECONDS = 0.2
    assert api.get("/api/v1/organisation").status_code == 200
    # Another web process revokes the key: this one learns of it when its cache entry expires.
    ApiKey.objects.filter(prefix=api.secret.split("_")[2]).update(revoked_at=timezone.now())
    time.sleep(0.25)
    assert api.get("/api/v1/organisation").status_code == 401


def test_key_revoked_in_this_process_is_refused_at_once(api, tenant):
    assert api.get("/api/v1/organisation").status_code == 200
    services.api_key_revoke(
        key=ApiKey.objects.get(prefix=api.secret.split("_")[2]), actor=services.SYSTEM
    )
    assert api.get("/api/v1/organisation").status_code == 401


def test_suspension_applies_at_once_to_cached_keys(api, tenant):
    assert api.get("/api/v1/organisation").status_code == 200
    services.tenant_suspend(tenant=tenant, reason="Abuse", actor=services.SYSTEM)
    assert api.get("/api/v1/organisation").status_code == 403


def test_keys_made_before_billing_write_keep_setting_the_spend_cap(tenant):
    """An admin key could PUT billing/settings before the scope existed; the migration that
    added it grants it to every key holding admin, and to no other."""
    import importlib

    from django.apps import apps

    grant = importlib.import_module("accounts.migrations.0002_billing_write_scope").grant
    old = ["admin", "billing:read", "inference", "models:read", "models:write"]
    admin_key = key_client(tenant, scopes=old)
    reader_key = key_client(tenant, scopes=["billing:read"])
    prefix = admin_key.secret.split("_")[2]
    ApiKey.objects.filter(prefix=prefix).update(scopes=old)  # as it was stored back then
    keycache.clear()
    refused = admin_key.put("/api/v1/billing/settings", {"spend_cap": "9"}, format="json")

    grant(apps, None)
    keycache.clear()

    assert refused.status_code == 403
    cap = admin_key.put("/api/v1/billing/settings", {"spend_cap": "9"}, format="json")
    assert cap.status_code == 200
    assert (
        reader_key.put("/api/v1/billing/settings", {"spend_cap": "9"}, format="json").status_code
        == 403
    )


def test_the_audit_events_api_names_targets_as_the_dashboard_does(api, tenant, bob):
    """``target_id`` of a member's user is a sequential number; ``target_name`` says who."""
    api.post("/api/v1/keys", {"name": "ci", "scopes": ["inference"]}, format="json")
    services.audit_record(
        action="user.login", actor=services.Actor(user=bob), tenant=tenant, target=bob
    )

    events = api.get("/api/v1/audit-events").json()["results"]

    key = ApiKey.objects.get(name="ci")
    created = next(e for e in events if e["target_id"] == key.public_id)
    login = next(e for e in events if e["action"] == "user.login")
    assert created["target_name"] == f"ci (mm_live_{key.prefix}_…)"
    assert login["target_id"] == str(bob.pk)
    assert login["target_name"] == "bob@acme.example"
