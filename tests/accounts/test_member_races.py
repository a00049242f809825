"""A member's rights changing while they act: on PostgreSQL the two transactions overlap, and
what the member made must still go when their rights do."""

from __future__ import annotations

import pytest

from accounts import services
from accounts.models import ApiKey, Invitation, Membership, Role
from tests.races import race

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _membership(tenant, user) -> Membership:
    return Membership.objects.select_related("user", "tenant").get(tenant=tenant, user=user)


@pytest.fixture
def bob_admin(tenant, bob):
    services.membership_change_role(
        membership=_membership(tenant, bob), role=Role.ADMIN, actor=services.SYSTEM
    )
    return bob


def _removed(tenant, bob, alice):
    return lambda: services.membership_remove(
        membership=_membership(tenant, bob), actor=services.Actor(user=alice)
    )


def _demoted(tenant, bob, alice):
    return lambda: services.membership_change_role(
        membership=_membership(tenant, bob), role=Role.DEVELOPER, actor=services.Actor(user=alice)
    )


@pytest.mark.parametrize("change", [_removed, _demoted], ids=["removed", "demoted"])
def test_a_key_made_while_its_member_is_removed_or_demoted_does_not_outlive_their_rights(
    monkeypatch, tenant, alice, bob_admin, change
):
    bob = bob_admin
    made, _ = race(
        monkeypatch,
        pause_before=(services.secrets, "new_api_key"),  # bob's rights checked, key not saved
        first=lambda: services.api_key_create(
            tenant=tenant, name="ci", scopes=["admin", "inference"], actor=services.Actor(user=bob)
        ),
        second=change(tenant, bob, alice),
    )

    # Either bob's key was refused, or it was made first and the change then reached it.
    key = ApiKey.objects.filter(tenant=tenant, created_by=bob).first()
    if key is None:
        assert isinstance(made, Exception)
    else:
        key.refresh_from_db()
        assert key.status == "revoked" or "admin" not in key.scopes


def test_a_key_made_by_a_key_while_its_member_is_removed_does_not_survive_them(
    monkeypatch, tenant, alice, bob_admin
):
    bob = bob_admin
    bobs_key, _ = services.api_key_create(
        tenant=tenant, name="bob", scopes=["admin", "inference"], actor=services.Actor(user=bob)
    )

    made, _ = race(
        monkeypatch,
        pause_before=(services.secrets, "new_api_key"),
        first=lambda: services.api_key_create(
            tenant=tenant, name="ci", scopes=["inference"], actor=services.Actor(key=bobs_key)
        ),
        second=_removed(tenant, bob, alice),
    )

    assert not ApiKey.objects.filter(
        tenant=tenant, created_by=bob, revoked_at__isnull=True
    ).exists()


def test_an_invitation_made_while_its_inviter_is_removed_does_not_outlive_them(
    monkeypatch, tenant, alice, bob_admin
):
    bob = bob_admin
    made, _ = race(
        monkeypatch,
        pause_before=(services.secrets, "new_token"),
        first=lambda: services.invitation_create(
            tenant=tenant,
            email="dana@acme.example",
            role=Role.ADMIN,
            actor=services.Actor(user=bob),
        ),
        second=_removed(tenant, bob, alice),
    )

    assert not Invitation.objects.filter(Invitation.pending_q(), tenant=tenant).exists()


def test_two_owners_leaving_at_once_leave_one_owner_and_a_clear_refusal(
    monkeypatch, tenant, alice, charlie
):
    services.membership_add(tenant=tenant, user=charlie, role=Role.OWNER, actor=services.SYSTEM)

    def leaves(user):
        return lambda: services.membership_remove(
            membership=_membership(tenant, user), actor=services.Actor(user=user)
        )

    first, second = race(
        monkeypatch,
        pause_before=(services, "_fit_member_keys"),  # the owners counted, not yet gone
        first=leaves(alice),
        second=leaves(charlie),
    )

    assert Membership.objects.filter(tenant=tenant, role=Role.OWNER).count() == 1
    refused = [o for o in (first, second) if isinstance(o, Exception)]
    assert len(refused) == 1
    assert "The last owner cannot leave" in str(refused[0])


def test_a_double_clicked_sign_up_makes_one_account_and_shows_the_other_a_form_error(
    monkeypatch,
):
    """Both posts passed the form's check before either made the account: the second was a
    500 page (IntegrityError), though the account existed."""
    from django.test import Client

    from accounts.models import User
    from tests.conftest import PASSWORD

    def sign_up():
        return Client().post("/signup/", {"email": "dana@initech.example", "password": PASSWORD})

    first, second = race(
        monkeypatch,
        pause_before=(User.objects, "create_user"),
        first=sign_up,
        second=sign_up,
    )

    codes = sorted([first.status_code, second.status_code])
    assert codes == [200, 302], (first, second)
    refused = first if first.status_code == 200 else second
    assert "An account with this email exists; sign in instead." in refused.content.decode()
    assert User.objects.filter(email="dana@initech.example").count() == 1


def test_two_managers_inviting_one_address_at_once_leave_one_open_invitation(
    monkeypatch, tenant, alice, bob_admin
):
    """Each found no open invitation to replace, and both stayed open (an owner revoking the
    admin one could miss the other)."""

    def invite(user, role):
        return lambda: services.invitation_create(
            tenant=tenant, email="x@new.example", role=role, actor=services.Actor(user=user)
        )

    first, second = race(
        monkeypatch,
        pause_before=(services.secrets, "new_token"),  # checked, not yet made
        first=invite(alice, Role.VIEWER),
        second=invite(bob_admin, Role.ADMIN),
    )

    assert not isinstance(first, Exception) and not isinstance(second, Exception)
    open_ones = Invitation.objects.filter(email="x@new.example", accepted_at=None, revoked_at=None)
    assert [i.role for i in open_ones] == [Role.ADMIN]  # the later one replaced the first
