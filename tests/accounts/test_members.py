from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import services
from accounts.models import AuditEvent, Invitation, Membership, Role, Scope
from tests.conftest import key_client, make_user

pytestmark = pytest.mark.django_db


def _member_id(tenant, user) -> str:
    return Membership.objects.get(tenant=tenant, user=user).public_id


def _make_role(tenant, user, role: str) -> None:
    services.membership_change_role(
        membership=Membership.objects.get(tenant=tenant, user=user),
        role=role,
        actor=services.SYSTEM,
    )


def _bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def _invitation_statuses(api) -> dict[str, str]:
    return {i["email"]: i["status"] for i in api.get("/api/v1/invitations").json()["results"]}


def test_invited_person_joins_with_the_invited_role(
    api, tenant, client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(
            "/api/v1/invitations", {"email": "Dana@Acme.example", "role": "billing"}, format="json"
        )
    assert response.status_code == 201
    assert response.json()["status"] == "pending"
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["dana@acme.example"]
    link = re.search(r"/invitations/[\w-]+/", mail.outbox[0].body).group(0)

    dana = make_user("dana@acme.example")
    client.force_login(dana)
    accepted = client.post(link)

    assert accepted.status_code == 302
    membership = Membership.objects.get(tenant=tenant, user=dana)
    assert membership.role == Role.BILLING
    assert dana.groups.filter(pk=tenant.group_id).exists()
    assert client.post(link).status_code == 404  # single use
    assert AuditEvent.objects.filter(tenant=tenant, action="member.join").exists()


def test_inviting_an_existing_member_is_400(api, bob):
    response = api.post("/api/v1/invitations", {"email": bob.email}, format="json")
    assert response.status_code == 400
    assert "already a member" in response.json()["detail"]


def test_members_are_listed_with_roles(api, alice, bob):
    members = api.get("/api/v1/members").json()["results"]
    assert {(m["email"], m["role"]) for m in members} == {
        (alice.email, "owner"),
        (bob.email, "developer"),
    }


def test_role_change_is_audited(api, tenant, bob):
    member_id = _member_id(tenant, bob)
    response = api.patch(f"/api/v1/members/{member_id}", {"role": "admin"}, format="json")
    assert response.status_code == 200 and response.json()["role"] == "admin"
    event = AuditEvent.objects.get(tenant=tenant, action="member.role_change")
    assert event.data == {"email": bob.email, "from": "developer", "to": "admin"}


def test_unknown_role_is_400_listing_valid_roles(api, tenant, bob):
    response = api.patch(
        f"/api/v1/members/{_member_id(tenant, bob)}", {"role": "god"}, format="json"
    )
    assert response.status_code == 400
    assert "role" in response.json()["errors"]


def test_a_key_cannot_touch_the_owner_role(api, tenant, alice, bob):
    promote = api.patch(
        f"/api/v1/members/{_member_id(tenant, bob)}", {"role": "owner"}, format="json"
    )
    demote = api.patch(
        f"/api/v1/members/{_member_id(tenant, alice)}", {"role": "viewer"}, format="json"
    )
    assert promote.status_code == 403 and demote.status_code == 403
    assert Membership.objects.get(tenant=tenant, user=alice).role == Role.OWNER


def test_admin_cannot_grant_owner_but_owner_can(tenant, alice, bob):
    services.membership_change_role(
        membership=Membership.objects.get(tenant=tenant, user=bob),
        role=Role.ADMIN,
        actor=services.Actor(user=alice),
    )
    carol = make_user("carol@acme.example")
    services.membership_add(tenant=tenant, user=carol, role=Role.VIEWER, actor=services.SYSTEM)
    carol_membership = Membership.objects.get(tenant=tenant, user=carol)

    with pytest.raises(services.PermissionDenied):
        services.membership_change_role(
            membership=carol_membership, role=Role.OWNER, actor=services.Actor(user=bob)
        )
    services.membership_change_role(
        membership=carol_membership, role=Role.OWNER, actor=services.Actor(user=alice)
    )
    assert Membership.objects.get(tenant=tenant, user=carol).role == Role.OWNER


def test_developer_cannot_manage_members(tenant, bob, alice):
    with pytest.raises(services.PermissionDenied):
        services.membership_remove(
            membership=Membership.objects.get(tenant=tenant, user=alice),
            actor=services.Actor(user=bob),
        )


def test_last_owner_cannot_leave_or_be_demoted(tenant, alice):
    owner = Membership.objects.get(tenant=tenant, user=alice)
    with pytest.raises(services.ValidationError, match="last owner"):
        services.membership_remove(membership=owner, actor=services.Actor(user=alice))
    with pytest.raises(services.ValidationError, match="at least one owner"):
        services.membership_change_role(
            membership=owner, role=Role.ADMIN, actor=services.Actor(user=alice)
        )
    assert Membership.objects.filter(tenant=tenant, user=alice, role=Role.OWNER).exists()


def test_owner_can_leave_once_another_owner_exists(tenant, alice, bob):
    services.membership_change_role(
        membership=Membership.objects.get(tenant=tenant, user=bob),
        role=Role.OWNER,
        actor=services.Actor(user=alice),
    )
    services.membership_remove(
        membership=Membership.objects.get(tenant=tenant, user=alice),
        actor=services.Actor(user=alice),
    )
    assert not Membership.objects.filter(tenant=tenant, user=alice).exists()
    assert not alice.groups.filter(pk=tenant.group_id).exists()
    assert AuditEvent.objects.filter(tenant=tenant, action="member.leave").exists()


def test_removed_member_is_gone_from_the_list(api, tenant, bob):
    response = api.delete(f"/api/v1/members/{_member_id(tenant, bob)}")
    assert response.status_code == 204
    emails = [m["email"] for m in api.get("/api/v1/members").json()["results"]]
    assert bob.email not in emails


def test_revoked_invitation_cannot_be_accepted(
    api, tenant, client, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        created = api.post(
            "/api/v1/invitations", {"email": "eve@acme.example"}, format="json"
        ).json()
    link = re.search(r"/invitations/[\w-]+/", mail.outbox[0].body).group(0)
    assert api.post(f"/api/v1/invitations/{created['id']}/revoke").json()["status"] == "revoked"

    client.force_login(make_user("eve@acme.example"))
    assert client.post(link).status_code == 404
    assert not Membership.objects.filter(tenant=tenant, user__email="eve@acme.example").exists()


def test_member_management_needs_admin_scope(tenant):
    reader = key_client(tenant, scopes=[Scope.MODELS_READ])
    assert reader.get("/api/v1/members").status_code == 403
    assert (
        reader.post("/api/v1/invitations", {"email": "x@y.example"}, format="json").status_code
        == 403
    )


def _revoke(invitation: Invitation) -> None:
    services.invitation_revoke(invitation=invitation, actor=services.SYSTEM)


def _expire(invitation: Invitation) -> None:
    Invitation.objects.filter(pk=invitation.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )


@pytest.mark.parametrize("spoil", [_revoke, _expire], ids=["revoked", "expired"])
def test_invitation_spoiled_while_being_accepted_does_not_admit(tenant, monkeypatch, spoil):
    dave = make_user("dave@acme.example")
    invitation, token = services.invitation_create(
        tenant=tenant, email=dave.email, role=Role.ADMIN, actor=services.SYSTEM
    )
    # The acceptance reads the invitation while it is still open; the revocation or expiry
    # lands before it claims it.
    read_while_open = Invitation.objects.select_related("tenant").get(pk=invitation.pk)
    spoil(invitation)
    monkeypatch.setattr(services, "invitation_by_token", lambda _token: read_while_open)

    with pytest.raises(services.ValidationError, match="no longer open"):
        services.invitation_accept(token=token, user=dave)

    assert not Membership.objects.filter(tenant=tenant, user=dave).exists()
    assert Invitation.objects.get(pk=invitation.pk).accepted_at is None


def test_revoking_an_accepted_invitation_is_409_and_changes_nothing(api, tenant):
    dana = make_user("dana@acme.example")
    invitation, token = services.invitation_create(
        tenant=tenant, email=dana.email, role=Role.VIEWER, actor=services.SYSTEM
    )
    services.invitation_accept(token=token, user=dana)

    response = api.post(f"/api/v1/invitations/{invitation.public_id}/revoke")

    assert response.status_code == 409
    assert "already accepted; remove the member instead" in response.json()["detail"]
    assert Membership.objects.filter(tenant=tenant, user=dana).exists()
    assert not AuditEvent.objects.filter(action="invitation.revoke").exists()


def test_revoking_an_invitation_twice_is_409_the_second_time(api, tenant):
    invitation, _ = services.invitation_create(
        tenant=tenant, email="dana@acme.example", role=Role.VIEWER, actor=services.SYSTEM
    )
    first = api.post(f"/api/v1/invitations/{invitation.public_id}/revoke")

    second = api.post(f"/api/v1/invitations/{invitation.public_id}/revoke")

    assert first.status_code == 200 and first.json()["status"] == "revoked"
    assert second.status_code == 409 and "already revoked" in second.json()["detail"]
    assert AuditEvent.objects.filter(action="invitation.revoke").count() == 1


@pytest.mark.parametrize("limit", ["ips", "models", "expiry"])
def test_a_limited_admin_key_cannot_invite_or_promote(tenant, bob, limit):
    limits = {
        "ips": {"allowed_ips": ["127.0.0.1/32"]},
        "models": {"allowed_models": ["acme/only"]},
        "expiry": {"expires_at": timezone.now() + timedelta(hours=1)},
    }[limit]
    limited = key_client(tenant, scopes=sorted(Scope.values), **limits)

    invited = limited.post(
        "/api/v1/invitations", {"email": "mallory@evil.example", "role": "viewer"}, format="json"
    )
    promoted = limited.patch(
        f"/api/v1/members/{_member_id(tenant, bob)}", {"role": "admin"}, format="json"
    )

    assert invited.status_code == 403 and promoted.status_code == 403
    assert "a signed-in owner or admin" in invited.json()["detail"]
    assert not Invitation.objects.exists()
    assert Membership.objects.get(tenant=tenant, user=bob).role == Role.DEVELOPER


def test_a_key_grants_only_roles_within_its_own_scopes(tenant, bob):
    narrow = key_client(tenant, scopes=[Scope.ADMIN, Scope.MODELS_READ])
    admin_only = key_client(tenant, scopes=[Scope.ADMIN])

    too_wide = narrow.post(
        "/api/v1/invitations", {"email": "dana@acme.example", "role": "developer"}, format="json"
    )
    to_admin = admin_only.post(
        "/api/v1/invitations", {"email": "mallory@evil.example", "role": "admin"}, format="json"
    )
    promoted = narrow.patch(
        f"/api/v1/members/{_member_id(tenant, bob)}", {"role": "admin"}, format="json"
    )
    within = narrow.post(
        "/api/v1/invitations", {"email": "dana@acme.example", "role": "viewer"}, format="json"
    )

    assert too_wide.status_code == 403
    assert "inference, models:write" in too_wide.json()["detail"]
    assert to_admin.status_code == 403 and promoted.status_code == 403
    assert within.status_code == 201
    assert Membership.objects.get(tenant=tenant, user=bob).role == Role.DEVELOPER


def test_removed_members_keys_stop_working(api, tenant, bob):
    _make_role(tenant, bob, Role.ADMIN)
    _key, secret = services.api_key_create(
        tenant=tenant, name="bobs", scopes=["admin", "inference"], actor=services.Actor(user=bob)
    )
    bobs_key = _bearer(secret)
    made_by_bobs_key = bobs_key.post(
        "/api/v1/keys", {"name": "minted", "scopes": ["inference"]}, format="json"
    ).json()
    minted = _bearer(made_by_bobs_key["key"])
    assert bobs_key.get("/api/v1/organisation").status_code == 200  # both cached now
    assert minted.get("/api/v1/organisation").status_code == 200

    removed = api.delete(f"/api/v1/members/{_member_id(tenant, bob)}")

    assert removed.status_code == 204
    for client in (bobs_key, minted):
        response = client.get("/api/v1/organisation")
        assert response.status_code == 401 and "revoked" in response.json()["detail"]
    revoked = AuditEvent.objects.filter(action="api_key.revoke").values_list("target_id", flat=True)
    assert set(revoked) == {_key.public_id, made_by_bobs_key["id"]}
    assert api.get("/api/v1/organisation").status_code == 200  # the remover's key is untouched


def test_demoted_members_keys_lose_the_scopes_of_their_old_role(api, tenant, bob):
    _make_role(tenant, bob, Role.ADMIN)
    wide, wide_secret = services.api_key_create(
        tenant=tenant,
        name="wide",
        scopes=["admin", "inference", "models:read"],
        actor=services.Actor(user=bob),
    )
    admin_only, admin_secret = services.api_key_create(
        tenant=tenant, name="admin only", scopes=["admin"], actor=services.Actor(user=bob)
    )
    wide_client, admin_client = _bearer(wide_secret), _bearer(admin_secret)
    assert wide_client.get("/api/v1/members").status_code == 200  # cached with admin

    demoted = api.patch(
        f"/api/v1/members/{_member_id(tenant, bob)}", {"role": "developer"}, format="json"
    )

    assert demoted.status_code == 200
    assert wide_client.get("/api/v1/members").status_code == 403
    assert wide_client.get("/api/v1/organisation").json()["scopes"] == ["inference", "models:read"]
    assert admin_client.get("/api/v1/organisation").status_code == 401  # nothing left: revoked
    narrowed = AuditEvent.objects.get(action="api_key.narrow", target_id=wide.public_id)
    assert narrowed.data["scopes"] == ["inference", "models:read"]
    assert AuditEvent.objects.filter(
        action="api_key.revoke", target_id=admin_only.public_id
    ).exists()


def test_invitations_die_when_their_inviter_can_no_longer_grant_the_role(api, tenant, alice, bob):
    _make_role(tenant, bob, Role.OWNER)
    as_bob = services.Actor(user=bob)
    _, owner_token = services.invitation_create(
        tenant=tenant, email="eve@acme.example", role=Role.OWNER, actor=as_bob
    )
    services.invitation_create(
        tenant=tenant, email="dana@acme.example", role=Role.ADMIN, actor=as_bob
    )
    services.invitation_create(
        tenant=tenant,
        email="carol@acme.example",
        role=Role.VIEWER,
        actor=services.Actor(user=alice),
    )

    services.membership_change_role(
        membership=Membership.objects.get(tenant=tenant, user=bob),
        role=Role.ADMIN,
        actor=services.Actor(user=alice),
    )
    after_demotion = _invitation_statuses(api)
    services.membership_remove(
        membership=Membership.objects.get(tenant=tenant, user=bob),
        actor=services.Actor(user=alice),
    )
    after_removal = _invitation_statuses(api)

    assert after_demotion == {
        "eve@acme.example": "revoked",
        "dana@acme.example": "pending",
        "carol@acme.example": "pending",
    }
    assert after_removal == {**after_demotion, "dana@acme.example": "revoked"}
    with pytest.raises(services.ValidationError):
        services.invitation_accept(token=owner_token, user=make_user("eve@acme.example"))
    assert AuditEvent.objects.filter(action="invitation.revoke").count() == 2


def _invite(api, email: str, role: str, capture) -> tuple[dict, str]:
    """The invitation's API body and the link its e-mail carries."""
    with capture(execute=True):
        response = api.post("/api/v1/invitations", {"email": email, "role": role}, format="json")
    assert response.status_code == 201, response.json()
    return response.json(), re.search(r"/invitations/[\w-]+/", mail.outbox[-1].body).group(0)


def test_a_removed_member_cannot_rejoin_through_an_older_invitation(
    api, tenant, client, django_capture_on_commit_callbacks
):
    """Invited twice (a re-send with another role), frank joined with one invitation; the
    other stayed open, and after his removal let him back in, as admin."""
    first, viewer_link = _invite(
        api, "frank@ex.example", "viewer", django_capture_on_commit_callbacks
    )
    second, admin_link = _invite(
        api, "frank@ex.example", "admin", django_capture_on_commit_callbacks
    )
    frank = make_user("frank@ex.example")
    client.force_login(frank)

    # The re-send replaced the first invitation.
    statuses = {i["id"]: i["status"] for i in api.get("/api/v1/invitations").json()["results"]}
    assert statuses == {first["id"]: "revoked", second["id"]: "pending"}
    assert client.post(viewer_link).status_code == 404
    assert client.post(admin_link).status_code == 302
    assert Membership.objects.get(tenant=tenant, user=frank).role == Role.ADMIN

    removed = api.delete(f"/api/v1/members/{_member_id(tenant, frank)}")
    assert removed.status_code == 204
    for link in (viewer_link, admin_link):
        assert client.post(link).status_code == 404
    assert not Membership.objects.filter(tenant=tenant, user=frank).exists()
    replaced = AuditEvent.objects.get(action="invitation.revoke", target_id=first["id"])
    assert replaced.data["reason"] == "replaced by a new invitation"
    assert Invitation.objects.get(public_id=second["id"]).accepted_at is not None


def test_removing_a_member_closes_the_invitations_addressed_to_them(
    api, tenant, client, bob, django_capture_on_commit_callbacks
):
    """An invitation to bob made before he joined otherwise (an operator added him) let him
    back in after his removal."""
    _invitation, link = _invite(
        api, "carol@acme.example", "viewer", django_capture_on_commit_callbacks
    )
    carol = make_user("carol@acme.example")
    services.membership_add(tenant=tenant, user=carol, role=Role.VIEWER, actor=services.SYSTEM)
    client.force_login(carol)
    assert client.post(link).status_code == 404  # closed when she joined

    Invitation.objects.filter(email="carol@acme.example").update(revoked_at=None)  # say it was not
    response = client.post(link, follow=True)
    assert "already a member of Acme" in response.content.decode()
    services.membership_remove(
        membership=Membership.objects.get(tenant=tenant, user=carol), actor=services.SYSTEM
    )
    assert client.post(link).status_code == 404
    assert not Membership.objects.filter(tenant=tenant, user=carol).exists()


def test_an_admin_cannot_replace_an_owners_invitation(tenant, alice, bob):
    services.invitation_create(
        tenant=tenant, email="gail@ex.example", role="owner", actor=services.Actor(user=alice)
    )
    _make_role(tenant, bob, Role.ADMIN)

    with pytest.raises(services.PermissionDenied):
        services.invitation_create(
            tenant=tenant, email="gail@ex.example", role="viewer", actor=services.Actor(user=bob)
        )
    assert list(
        Invitation.objects.filter(email="gail@ex.example").values_list("role", "revoked_at")
    ) == [("owner", None)]
