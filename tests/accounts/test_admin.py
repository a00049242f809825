from __future__ import annotations

import pytest

from accounts.models import ApiKey, AuditEvent, Tenant, User

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client) -> User:
    staff = User.objects.create_superuser(email="ops@modelmarket.example", password="x")
    client.force_login(staff)
    return staff


def test_operator_suspends_a_tenant_and_its_keys_stop_working(client, operator, api, tenant):
    response = client.post(
        "/admin/accounts/tenant/",
        {
            "action": "suspend",
            "_selected_action": [tenant.pk],
        },
    )
    assert response.status_code == 302
    assert Tenant.objects.get(pk=tenant.pk).status == "suspended"
    assert AuditEvent.objects.get(action="tenant.suspend").actor_label == operator.email
    assert api.get("/api/v1/organisation").status_code == 403

    client.post(
        "/admin/accounts/tenant/", {"action": "reactivate", "_selected_action": [tenant.pk]}
    )
    assert api.get("/api/v1/organisation").status_code == 200


def test_admin_key_page_never_shows_the_digest(client, operator, api):
    key = ApiKey.objects.get(prefix=api.secret.split("_")[2])
    page = client.get(f"/admin/accounts/apikey/{key.pk}/change/").content.decode()
    assert key.prefix in page
    assert key.digest not in page


def test_console_is_staff_only(client, alice):
    client.force_login(alice)
    response = client.get("/admin/accounts/tenant/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def _staff(client, *codenames: str) -> User:
    """A staff member (not a superuser) holding only the named model permissions."""
    from django.contrib.auth.models import Permission

    staff = User.objects.create_user(email="support@modelmarket.example", password="x")
    staff.is_staff = True
    staff.save()
    staff.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client.force_login(staff)
    return staff


def test_staff_who_may_only_view_get_no_actions(client, tenant, outsider):
    from billing.models import BillingAccount, UsageRecord

    _staff(client, "view_tenant", "view_billingaccount")
    account = BillingAccount.objects.create(tenant=outsider)

    page = client.get("/admin/accounts/tenant/").content.decode()
    client.post("/admin/accounts/tenant/", {"action": "suspend", "_selected_action": [tenant.pk]})
    client.post(
        "/admin/billing/billingaccount/",
        {"action": "credit", "_selected_action": [account.pk], "amount": "500", "reason": "x"},
    )

    assert page.count("Suspend selected organisations") == 0
    assert Tenant.objects.get(pk=tenant.pk).status == "active"
    assert not UsageRecord.objects.exists()


def test_staff_with_the_change_permission_may_act(client, tenant):
    _staff(client, "view_tenant", "change_tenant")

    client.post("/admin/accounts/tenant/", {"action": "suspend", "_selected_action": [tenant.pk]})

    assert Tenant.objects.get(pk=tenant.pk).status == "suspended"


def test_memberships_are_read_only_in_the_console_so_an_owner_is_never_lost(
    client, operator, tenant, alice
):
    from accounts.models import Membership

    owner = Membership.objects.get(tenant=tenant, user=alice)

    response = client.post(
        f"/admin/accounts/membership/{owner.pk}/change/",
        {"user": alice.pk, "tenant": tenant.pk, "role": "viewer"},
    )

    assert response.status_code == 403
    assert Membership.objects.get(pk=owner.pk).role == "owner"
    page = client.get(f"/admin/accounts/tenant/{tenant.pk}/change/").content.decode()
    assert 'name="memberships-0-role"' not in page  # the inline shows roles, edits none


def _user_form(user: User, **changes) -> dict:
    return {
        "email": user.email,
        "name": user.name,
        "is_active": "on",
        "date_joined_0": "2024-01-01",
        "date_joined_1": "00:00:00",
        **changes,
    }


def test_staff_who_may_change_users_cannot_make_themselves_superuser(client):
    from django.contrib.auth.models import Group

    staff = _staff(client, "view_user", "change_user")
    admins = Group.objects.create(name="admins")

    response = client.post(
        f"/admin/accounts/user/{staff.pk}/change/",
        _user_form(
            staff, name="Support", is_staff="on", is_superuser="on", groups=[str(admins.pk)]
        ),
    )

    assert response.status_code == 302, response.content[-1500:]
    staff.refresh_from_db()
    assert staff.name == "Support"  # they still edit names
    assert not staff.is_superuser and not staff.groups.exists()


def test_staff_who_may_change_users_cannot_grant_staff_to_another(client, alice):
    _staff(client, "view_user", "change_user")

    client.post(f"/admin/accounts/user/{alice.pk}/change/", _user_form(alice, is_staff="on"))

    alice.refresh_from_db()
    assert not alice.is_staff


def test_staff_who_may_change_users_cannot_reset_a_superusers_password(client):
    boss = User.objects.create_superuser(email="boss@modelmarket.example", password="x")
    _staff(client, "view_user", "change_user")

    response = client.post(
        f"/admin/accounts/user/{boss.pk}/password/",
        {"password1": "taken-over-9876", "password2": "taken-over-9876"},
    )

    assert response.status_code == 403
    boss.refresh_from_db()
    assert boss.check_password("x")


def test_a_superuser_still_grants_staff(client, operator, alice):
    response = client.post(
        f"/admin/accounts/user/{alice.pk}/change/", _user_form(alice, is_staff="on")
    )

    assert response.status_code == 302, response.content[-1500:]
    alice.refresh_from_db()
    assert alice.is_staff


def test_keys_and_invitations_cannot_be_deleted_in_the_console_only_revoked(
    client, operator, api, tenant
):
    from accounts import services
    from accounts.models import Invitation

    key = ApiKey.objects.get(prefix=api.secret.split("_")[2])
    invitation, _token = services.invitation_create(
        tenant=tenant, email="new@acme.example", role="viewer", actor=services.SYSTEM
    )

    key_page = client.post(f"/admin/accounts/apikey/{key.pk}/delete/", {"post": "yes"})
    invitation_page = client.post(
        f"/admin/accounts/invitation/{invitation.pk}/delete/", {"post": "yes"}
    )

    assert key_page.status_code == 403 and invitation_page.status_code == 403
    assert ApiKey.objects.filter(pk=key.pk).exists()
    assert Invitation.objects.filter(pk=invitation.pk).exists()
    assert "Delete selected" not in client.get("/admin/accounts/apikey/").content.decode()


def test_operator_revokes_a_key_in_the_console_and_it_stops_at_once(client, operator, api):
    assert api.get("/api/v1/organisation").status_code == 200  # cached now
    key = ApiKey.objects.get(prefix=api.secret.split("_")[2])

    response = client.post(
        "/admin/accounts/apikey/", {"action": "revoke", "_selected_action": [key.pk]}
    )

    assert response.status_code == 302
    assert api.get("/api/v1/organisation").status_code == 401
    assert AuditEvent.objects.get(action="api_key.revoke").actor_label == operator.email


def test_operator_revokes_an_invitation_in_the_console_and_it_is_audited(client, operator, tenant):
    from accounts import services
    from accounts.models import Invitation

    invitation, _token = services.invitation_create(
        tenant=tenant, email="new@acme.example", role="viewer", actor=services.SYSTEM
    )

    response = client.post(
        "/admin/accounts/invitation/", {"action": "revoke", "_selected_action": [invitation.pk]}
    )

    assert response.status_code == 302
    assert Invitation.objects.get(pk=invitation.pk).revoked_at is not None
    assert AuditEvent.objects.get(action="invitation.revoke").actor_label == operator.email


def _busy_tenants(n: int, start: int) -> None:
    """``n`` organisations, each with an owner, a key, an invitation and their audit rows."""
    from accounts import services
    from tests.conftest import make_user

    for i in range(start, start + n):
        tenant = services.tenant_create(
            slug=f"org-{i}", name=f"Org {i}", owner=make_user(f"owner{i}@org-{i}.example")
        )
        services.api_key_create(
            tenant=tenant, name="k", scopes=["models:read"], actor=services.SYSTEM
        )
        services.invitation_create(
            tenant=tenant, email=f"new{i}@org-{i}.example", role="viewer", actor=services.SYSTEM
        )


@pytest.mark.parametrize(
    "changelist", ["auditevent", "apikey", "invitation", "membership", "tenant", "user"]
)
def test_console_lists_cost_the_same_queries_for_ten_rows_as_for_two(client, operator, changelist):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    url = f"/admin/accounts/{changelist}/"
    _busy_tenants(2, start=0)
    client.get(url)  # content types and the session, once
    with CaptureQueriesContext(connection) as few:
        assert client.get(url).status_code == 200
    _busy_tenants(8, start=2)
    with CaptureQueriesContext(connection) as many:
        assert client.get(url).status_code == 200

    assert len(many) == len(few), [q["sql"][:120] for q in many.captured_queries]


def test_key_list_offers_no_filter_per_organisation_but_finds_keys_by_its_slug(client, operator):
    _busy_tenants(12, start=0)

    page = client.get("/admin/accounts/apikey/")
    found = client.get("/admin/accounts/apikey/", {"q": "org-7"})

    assert "?tenant__id__exact=" not in page.content.decode()
    assert [key.tenant.slug for key in found.context["cl"].result_list] == ["org-7"]


def test_deleting_a_user_in_the_console_revokes_their_keys_and_tells_the_organisation(
    client, operator, tenant, bob
):
    """Deleting the row alone left bob's admin key working, with nobody behind it to bound
    its scopes, and the organisation's log silent."""
    from rest_framework.test import APIClient

    from accounts import services

    services.membership_change_role(
        membership=bob.memberships.get(), role="admin", actor=services.SYSTEM
    )
    _key, secret = services.api_key_create(
        tenant=tenant, name="bobs", scopes=["admin"], actor=services.Actor(user=bob)
    )
    bobs_key = APIClient()
    bobs_key.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert bobs_key.get("/api/v1/members").status_code == 200

    response = client.post(f"/admin/accounts/user/{bob.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not User.objects.filter(pk=bob.pk).exists()
    denied = bobs_key.get("/api/v1/members")
    assert denied.status_code == 401 and "revoked" in denied.json()["detail"]
    removal = AuditEvent.objects.get(tenant=tenant, action="member.remove")
    assert removal.data["email"] == "bob@acme.example" and removal.actor_label == operator.email


def test_the_console_keeps_the_only_owner_of_an_organisation(client, operator, tenant, alice):
    page = client.get(f"/admin/accounts/user/{alice.pk}/delete/").content.decode()
    assert "alice@acme.example is the only owner of Acme (acme)" in page

    client.post(f"/admin/accounts/user/{alice.pk}/delete/", {"post": "yes"})
    client.post(
        "/admin/accounts/user/",
        {"action": "delete_selected", "_selected_action": [alice.pk], "post": "yes"},
    )

    assert User.objects.filter(pk=alice.pk).exists()
    assert tenant.memberships.filter(user=alice, role="owner").exists()


def test_a_deleted_organisation_whose_billing_rows_stay_cannot_be_reactivated(
    client, operator, tenant, outsider
):
    """Deleting an organisation that served another's predictions keeps its ledger rows under
    a suspended shell with its keys destroyed. The console's Reactivate used to make that shell
    active again: an organisation with no members whose versions could never be decrypted."""
    from io import StringIO

    from django.core.management import call_command

    from accounts.services import SYSTEM
    from inference.models import Prediction
    from marketplace import services as registry
    from marketplace.models import ModelVersion
    from marketplace.vault.store import artifact_create

    model = registry.model_create(tenant=tenant, name="m", actor=SYSTEM)
    version = ModelVersion.objects.create(
        model=model,
        number=1,
        format="torchscript",
        status="ready",
        artifact=artifact_create(tenant=tenant, chunks=[b"weights"]),
    )
    Prediction.objects.create(tenant=outsider, model=model, version=version, batch_size=1)
    call_command("delete_tenant", tenant.slug, "--yes", stdout=StringIO())
    deleted = Tenant.objects.get(pk=tenant.pk)
    assert deleted.deleted_at is not None and deleted.status == "suspended"

    for action in ("reactivate", "suspend"):
        response = client.post(
            "/admin/accounts/tenant/",
            {"action": action, "_selected_action": [tenant.pk]},
            follow=True,
        )
        assert "cannot be" in response.content.decode()
        assert "was deleted on" in response.content.decode()
    after = Tenant.objects.get(pk=tenant.pk)
    assert after.status == "suspended"
    assert after.suspended_reason == deleted.suspended_reason
    assert not AuditEvent.objects.filter(action="tenant.reactivate").exists()
