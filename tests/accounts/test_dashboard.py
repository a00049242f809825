"""The dashboard as its users see it: sign-up, organisations, members, invitations, API keys,
the audit log and the tenant switcher, driven through Django's test client."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from django.db import connection
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts import services
from accounts.models import (
    ALL_SCOPES,
    ApiKey,
    AuditEvent,
    AuthAttempt,
    Invitation,
    Membership,
    Role,
    Tenant,
    User,
)
from accounts.tenancy import Access
from marketplace import services as registry
from tests.conftest import PASSWORD, make_user
from tests.marketplace.test_listings import ready_version

pytestmark = pytest.mark.django_db

SECRET_RE = re.compile(r'id="new-key-value">(mm_live_\w+)<')
INVITE_LINK_RE = re.compile(r"https?://\S+?(/invitations/[\w-]+/)")


@pytest.fixture
def alice_client(client, alice, tenant) -> Client:
    client.force_login(alice)
    return client


@pytest.fixture
def bob_client(bob, tenant) -> Client:
    client = Client()
    client.force_login(bob)
    return client


@pytest.fixture
def charlie_client(charlie, outsider) -> Client:
    client = Client()
    client.force_login(charlie)
    return client


def api_status(secret: str) -> int:
    """What a program holding ``secret`` gets from the API."""
    return Client().get("/api/v1/organisation", HTTP_AUTHORIZATION=f"Bearer {secret}").status_code


def shown_secret(response) -> str:
    match = SECRET_RE.search(response.content.decode())
    assert match, "the page shows no new key"
    return match[1]


def create_key(client: Client, name: str = "ci") -> tuple[str, ApiKey]:
    response = client.post("/dashboard/keys/", {"name": name, "scopes": ["inference"]})
    secret = shown_secret(response)
    return secret, ApiKey.objects.get(prefix=secret.split("_")[2])


def page(client: Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200
    return response.content.decode()


def invite(client: Client, email: str, role: str, capture, outbox) -> str:
    """Invite through the members page; returns the path of the link in the email sent.
    The email goes out on commit, which the test transaction never reaches, hence ``capture``."""
    with capture(execute=True):
        response = client.post("/dashboard/members/", {"email": email, "role": role})
    assert response.status_code == 302
    return INVITE_LINK_RE.search(outbox[-1].body)[1]


# --- sign-up and organisations ----------------------------------------------------------------


def test_new_user_signs_up_creates_an_organisation_and_lands_on_its_dashboard(client):
    signed_up = client.post(
        "/signup/", {"name": "Dana", "email": "Dana@Initech.example", "password": PASSWORD}
    )
    assert signed_up.status_code == 302 and signed_up["Location"] == "/dashboard/orgs/new/"

    created = client.post("/dashboard/orgs/new/", {"name": "Initech"}, follow=True)

    body = created.content.decode()
    assert created.redirect_chain[-1][0] == "/dashboard/"
    assert "Organisation Initech created." in body
    assert "<h1>Initech" in body and "You are owner here." in body
    dana = User.objects.get(email="dana@initech.example")
    assert Membership.objects.get(user=dana, tenant__slug="initech").role == Role.OWNER


@pytest.mark.postgres
def test_a_user_with_an_email_of_the_longest_kind_signs_up_and_is_named_in_the_log(client):
    """An email may be 254 characters; the audit log's actor column held 200, so on
    PostgreSQL signing up (the first audited act) failed with a 500 for longer ones."""
    email = "d" * 64 + "@" + "i" * 63 + "." + "n" * 63 + "." + "t" * 49 + ".example"
    assert len(email) == 250

    signed_up = client.post("/signup/", {"email": email, "password": PASSWORD})
    created = client.post("/dashboard/orgs/new/", {"name": "Initech"})

    assert signed_up.status_code == 302 and created.status_code == 302
    assert AuditEvent.objects.filter(action="user.signup", actor_label=email).exists()
    assert AuditEvent.objects.filter(action="tenant.create", actor_label=email).exists()


def test_signed_in_user_without_an_organisation_is_sent_to_create_one(client, charlie):
    client.force_login(charlie)
    response = client.get("/dashboard/")
    assert response.status_code == 302 and response["Location"] == "/dashboard/orgs/new/"


@pytest.mark.parametrize(
    "email, password, error",
    [
        ("ALICE@acme.example", PASSWORD, "An account with this email exists; sign in instead."),
        ("dana@initech.example", "password", "This password is too common."),
        ("dana@initech.example", "1234", "This password is too short."),
    ],
)
def test_sign_up_with_a_taken_email_or_weak_password_shows_why_and_creates_nothing(
    client, alice, email, password, error
):
    users_before = User.objects.count()

    response = client.post("/signup/", {"email": email, "password": password})

    assert response.status_code == 200
    assert error in response.content.decode()
    assert User.objects.count() == users_before
    assert "_auth_user_id" not in client.session
    # Beside its field (a weak password's reasons were at the top of the form).
    assert error in str(
        response.context["form"].errors["email" if "email" in error else "password"]
    )


def test_an_allowlist_the_key_cannot_take_is_said_beside_it(alice_client):
    response = alice_client.post(
        "/dashboard/keys/", {"name": "ci", "scopes": ["inference"], "allowed_ips": "10.0.0.0/33"}
    )

    assert response.status_code == 200 and not ApiKey.objects.exists()
    assert response.context["form"].errors.get("allowed_ips"), response.context["form"].errors


def test_taken_organisation_slug_is_an_error_on_the_form(charlie_client):
    response = charlie_client.post("/dashboard/orgs/new/", {"name": "Globex"})
    assert response.status_code == 200
    assert "The organisation slug &#x27;globex&#x27; is taken." in response.content.decode()
    assert Tenant.objects.filter(slug="globex").count() == 1


def test_a_slug_whose_group_a_concurrent_sign_up_made_is_taken_not_a_500(charlie_client):
    """The race the savepoint covers: another request made the slug's group between our
    check and our insert (here, arranged as a group left in place)."""
    from django.contrib.auth.models import Group

    Group.objects.create(name="tenant:initech")

    response = charlie_client.post("/dashboard/orgs/new/", {"name": "Initech"})

    assert response.status_code == 200
    assert "The organisation slug &#x27;initech&#x27; is taken." in response.content.decode()
    assert not Tenant.objects.filter(slug="initech").exists()


# --- sign-in and the audit log ----------------------------------------------------------------


def test_sign_in_is_recorded_in_the_organisation_audit_log(client, alice, tenant):
    signed_in = client.post("/login/", {"username": "alice@acme.example", "password": PASSWORD})
    assert signed_in.status_code == 302

    event = AuditEvent.objects.get(tenant=tenant, action="user.login")
    assert event.actor_user == alice and event.ip == "127.0.0.1"
    log = page(client, "/dashboard/audit/?action=user.login")
    assert "<code>user.login</code>" in log and "alice@acme.example" in log


def test_audit_log_shows_a_keys_scopes_as_words_not_a_python_list(alice_client):
    alice_client.post("/dashboard/keys/", {"name": "ci", "scopes": ["inference", "models:read"]})

    log = page(alice_client, "/dashboard/audit/?action=api_key.create")

    assert "scopes=inference, models:read " in log
    assert "[&#x27;" not in log and "expires_at=None" not in log


def test_audit_log_names_its_targets_as_people_know_them(client, alice, tenant):
    # The target column read "user 1", "alias 2": sequential ids that mean nothing to a reader.
    model = registry.model_create(tenant=tenant, name="clf", actor=services.SYSTEM)

    def act() -> None:
        """A sign-in, a new key and an alias moved: targets a user, a key and an alias."""
        client.post("/login/", {"username": "alice@acme.example", "password": PASSWORD})
        client.post("/dashboard/keys/", {"name": "ci", "scopes": ["inference"]})
        registry.alias_set(
            model=model,
            name="staging",
            version=ready_version(model, number=model.versions.count() + 1),
            access=Access(tenant=tenant, scopes=ALL_SCOPES),
            actor=services.SYSTEM,
        )

    act()
    with CaptureQueriesContext(connection) as once:
        log = page(client, "/dashboard/audit/")
    act()
    with CaptureQueriesContext(connection) as twice:
        page(client, "/dashboard/audit/")

    key = ApiKey.objects.filter(name="ci").first()
    assert '<td class="audit-target">user alice@acme.example</td>' in log
    assert f'<td class="audit-target">apikey ci (mm_live_{key.prefix}_…)</td>' in log
    assert '<td class="audit-target">alias staging of acme/clf</td>' in log
    assert f"<code>{alice.pk}</code>" not in log
    assert len(twice.captured_queries) == len(once.captured_queries)  # none per row


def test_wrong_password_does_not_sign_in_or_record_a_login(client, alice, tenant):
    response = client.post("/login/", {"username": "alice@acme.example", "password": "nope"})
    assert response.status_code == 200
    assert "enter a correct email and password" in response.content.decode()
    assert not AuditEvent.objects.filter(action="user.login").exists()


def test_repeated_failed_sign_ins_lock_the_address_for_a_while(client, alice, tenant, settings):
    """Thirty wrong passwords in a row were each answered at once, and the thirty-first, right,
    signed in: nothing slowed a guesser, and the organisation's log saw none of it."""
    settings.SIGNIN_FAILURES_PER_ACCOUNT = 5
    User.objects.filter(pk=alice.pk).update(is_staff=True)  # the console asks the same way
    wrong = {"username": "alice@acme.example", "password": "nope"}
    for _ in range(5):
        client.post("/login/", wrong)

    right = client.post("/login/", {"username": "Alice@acme.example", "password": PASSWORD})
    admin = Client().post("/admin/login/", {"username": alice.email, "password": PASSWORD})

    assert right.status_code == 200
    assert "Too many failed sign-ins for this address" in right.content.decode()
    assert "_auth_user_id" not in client.session
    assert admin.status_code == 200 and "_auth_user_id" not in admin.wsgi_request.session
    failed = AuditEvent.objects.filter(tenant=tenant, action="user.login_failed")
    assert failed.count() == 5  # the refused tries add nothing

    AuthAttempt.objects.update(created_at=timezone.now() - settings.SIGNIN_THROTTLE_WINDOW)
    after = client.post("/login/", {"username": alice.email, "password": PASSWORD})
    console = Client().post("/admin/login/", {"username": alice.email, "password": PASSWORD})
    assert after.status_code == 302 and console.status_code == 302
    assert not AuthAttempt.objects.filter(email=alice.email).exists()  # cleared by it


def test_a_password_reset_ends_the_lockout_its_message_sends_people_to(
    client, alice, tenant, settings, mailoutbox
):
    """ "Try again in 15 minutes, or reset your password": the reset succeeded and the new
    password was refused with the same message."""
    settings.SIGNIN_FAILURES_PER_ACCOUNT = 5
    for _ in range(5):
        client.post("/login/", {"username": alice.email, "password": "nope"})
    locked = client.post("/login/", {"username": alice.email, "password": PASSWORD})
    assert "reset your password" in locked.content.decode()

    client.post("/password/reset/", {"email": alice.email})
    link = re.search(r"https?://\S+", mailoutbox[0].body).group(0)
    form = client.get(urlsplit(link).path, follow=True)
    new = "a fresh and long passphrase 7"
    client.post(form.redirect_chain[-1][0], {"new_password1": new, "new_password2": new})
    signed_in = client.post("/login/", {"username": alice.email, "password": new})

    assert signed_in.status_code == 302 and "_auth_user_id" in client.session


def test_failed_sign_ins_from_one_address_lock_that_client_out(client, alice, tenant, settings):
    settings.SIGNIN_FAILURES_PER_IP = 3
    for n in range(3):
        client.post("/login/", {"username": f"guess{n}@acme.example", "password": "x"})

    refused = client.post("/login/", {"username": alice.email, "password": PASSWORD})
    elsewhere = Client(REMOTE_ADDR="192.0.2.7").post(
        "/login/", {"username": alice.email, "password": PASSWORD}
    )

    assert "Too many failed sign-ins" in refused.content.decode()
    assert elsewhere.status_code == 302


def test_sign_in_works_whatever_the_capitalisation_of_the_email(client, alice, tenant):
    signed_in = client.post("/login/", {"username": "Alice@ACME.example", "password": PASSWORD})

    assert signed_in.status_code == 302
    assert AuditEvent.objects.filter(tenant=tenant, action="user.login", actor_user=alice).exists()


@pytest.mark.parametrize("url", ["/dashboard/audit/", "/dashboard/keys/"])
def test_developer_cannot_open_manager_pages(bob_client, url):
    assert bob_client.get(url).status_code == 403


def test_developer_navigation_hides_manager_pages(bob_client):
    home = page(bob_client, "/dashboard/")
    assert "You are developer here." in home
    assert "/dashboard/keys/" not in home and "/dashboard/audit/" not in home


def test_signed_out_visitor_is_sent_to_sign_in(client):
    response = client.get("/dashboard/keys/")
    assert response.status_code == 302 and response["Location"].startswith("/login/?next=")


# --- API keys ---------------------------------------------------------------------------------


def test_new_key_secret_is_shown_once_and_authenticates(alice_client, tenant):
    response = alice_client.post("/dashboard/keys/", {"name": "ci", "scopes": ["inference"]})

    secret = shown_secret(response)
    assert "It is shown <strong>only once</strong>" in response.content.decode()
    later = page(alice_client, "/dashboard/keys/")
    assert secret not in later and secret.split("_")[-1] not in later
    assert "ci" in later and "mm_live_" + secret.split("_")[2] in later  # the masked form
    assert api_status(secret) == 200
    assert AuditEvent.objects.filter(tenant=tenant, action="api_key.create").exists()


def test_key_form_errors_are_shown_and_create_nothing(alice_client):
    response = alice_client.post(
        "/dashboard/keys/", {"name": "", "scopes": ["inference"], "allowed_ips": "not-an-ip"}
    )
    body = response.content.decode()
    assert response.status_code == 200 and 'id="new-key-value"' not in body
    assert "This field is required." in body
    assert not ApiKey.objects.exists()


def test_a_key_limited_to_models_reaches_only_them(alice_client):
    response = alice_client.post(
        "/dashboard/keys/",
        {"name": "ci", "scopes": ["models:read"], "allowed_models": "acme/clf, acme/other"},
    )
    secret = shown_secret(response)
    refused = alice_client.post(
        "/dashboard/keys/",
        {"name": "bad", "scopes": ["models:read"], "allowed_models": "clf, acme/ok"},
    )

    assert ApiKey.objects.get(name="ci").allowed_models == ["acme/clf", "acme/other"]
    assert "models: acme/clf, acme/other" in page(alice_client, "/dashboard/keys/")
    elsewhere = Client().get(
        "/api/v1/models/acme/third/versions", HTTP_AUTHORIZATION=f"Bearer {secret}"
    )
    assert elsewhere.status_code == 403 and "may not use acme/third" in elsewhere.json()["detail"]
    assert "clf: give each model as owner/name" in refused.content.decode()
    assert not ApiKey.objects.filter(name="bad").exists()


def test_revoking_through_htmx_returns_the_revoked_row_and_the_key_stops_working(alice_client):
    secret, key = create_key(alice_client)
    assert api_status(secret) == 200

    response = alice_client.post(
        f"/dashboard/keys/{key.public_id}/revoke/", headers={"HX-Request": "true"}
    )

    row = response.content.decode()
    assert response.status_code == 200
    assert row.lstrip().startswith(f'<tr id="key-{key.public_id}" class="key-revoked">')
    assert '<span class="status revoked">revoked</span>' in row and "<html" not in row
    assert "Revoke</button>" not in row
    assert api_status(secret) == 401


def test_revoking_without_javascript_redirects_with_a_message(alice_client):
    _secret, key = create_key(alice_client)
    response = alice_client.post(f"/dashboard/keys/{key.public_id}/revoke/", follow=True)
    assert f"Key {key.name} revoked." in response.content.decode()


def test_rotating_shows_the_replacement_once_and_both_keys_work(alice_client):
    old_secret, key = create_key(alice_client, name="deploy")

    response = alice_client.post(f"/dashboard/keys/{key.public_id}/rotate/")

    body = response.content.decode()
    new_secret = shown_secret(response)
    assert new_secret != old_secret and "Replacement for deploy" in body
    assert "The old key keeps working until" in body
    assert new_secret not in page(alice_client, "/dashboard/keys/")
    assert api_status(new_secret) == 200 and api_status(old_secret) == 200
    key.refresh_from_db()
    assert key.rotated_to.prefix == new_secret.split("_")[2]


def test_rotating_a_revoked_key_says_why(alice_client):
    _secret, key = create_key(alice_client)
    alice_client.post(f"/dashboard/keys/{key.public_id}/revoke/")

    response = alice_client.post(f"/dashboard/keys/{key.public_id}/rotate/", follow=True)

    assert "Only an active key can be rotated; this one is revoked." in response.content.decode()
    assert ApiKey.objects.count() == 1


# --- members and invitations ------------------------------------------------------------------


def test_invited_person_signs_up_accepts_and_joins_with_the_role(
    alice_client, tenant, mailoutbox, django_capture_on_commit_callbacks
):
    link = invite(
        alice_client,
        "dana@initech.example",
        Role.VIEWER,
        django_capture_on_commit_callbacks,
        mailoutbox,
    )
    assert mailoutbox[0].to == ["dana@initech.example"]
    assert mailoutbox[0].subject == "You are invited to Acme on Modelmarket"
    assert "dana@initech.example" in page(alice_client, "/dashboard/members/")  # pending

    dana = Client()
    landing = page(dana, link)
    assert "Join Acme" in landing and "as <strong>viewer</strong>" in landing
    signed_up = dana.post(
        "/signup/", {"email": "dana@initech.example", "password": PASSWORD, "next": link}
    )
    assert signed_up["Location"] == link
    accepted = dana.post(link, follow=True)

    body = accepted.content.decode()
    assert "Welcome to Acme." in body and "You are viewer here." in body
    joined = Membership.objects.get(tenant=tenant, user__email="dana@initech.example")
    assert joined.role == Role.VIEWER
    assert "dana@initech.example" in page(alice_client, "/dashboard/members/")
    spent = dana.get(link)
    assert spent.status_code == 404 and "Invitation not found" in spent.content.decode()


def test_sign_up_from_an_invitation_has_the_invited_email_filled_in(
    alice_client, tenant, mailoutbox, django_capture_on_commit_callbacks
):
    link = invite(
        alice_client,
        "dana@initech.example",
        Role.VIEWER,
        django_capture_on_commit_callbacks,
        mailoutbox,
    )
    dana = Client()
    create_account = re.search(r'href="(/signup/[^"]*)"[^>]*>Create an account', page(dana, link))

    form = page(dana, create_account[1].replace("&amp;", "&"))

    assert re.search(r'<input type="email" name="email" value="dana@initech.example"', form)
    assert f'name="next" value="{link}"' in form


def test_invitation_cannot_be_accepted_by_another_email(
    alice_client, charlie_client, tenant, mailoutbox, django_capture_on_commit_callbacks
):
    link = invite(
        alice_client,
        "dana@initech.example",
        Role.DEVELOPER,
        django_capture_on_commit_callbacks,
        mailoutbox,
    )

    response = charlie_client.post(link)

    assert response.status_code == 200
    assert (
        "This invitation was sent to dana@initech.example; sign in with that address"
        in response.content.decode()
    )
    assert not Membership.objects.filter(tenant=tenant, user__email="charlie@globex.example")
    assert Invitation.objects.get().accepted_at is None


def test_inviting_an_existing_member_is_an_error(alice_client, mailoutbox):
    response = alice_client.post(
        "/dashboard/members/", {"email": "bob@acme.example", "role": "viewer"}
    )
    assert "bob@acme.example is already a member of Acme." in response.content.decode()
    assert not Invitation.objects.exists() and mailoutbox == []


def test_developer_cannot_invite(bob_client):
    response = bob_client.post(
        "/dashboard/members/", {"email": "eve@evil.example", "role": "owner"}
    )
    assert response.status_code == 403
    assert not Invitation.objects.exists()


@pytest.mark.parametrize("role", [Role.DEVELOPER, Role.VIEWER, Role.BILLING])
def test_only_admins_see_pending_invitations_as_in_the_api(bob_client, bob, tenant, role):
    # The API lists invitations to the admin scope only; the members page loaded them, with
    # the invitees' addresses, for every role (only the template held them back).
    services.invitation_create(
        tenant=tenant, email="dana@else.example", role=Role.VIEWER, actor=services.SYSTEM
    )
    Membership.objects.filter(user=bob).update(role=role)

    response = bob_client.get("/dashboard/members/")
    Membership.objects.filter(user=bob).update(role=Role.ADMIN)
    as_admin = bob_client.get("/dashboard/members/")

    body = response.content.decode()
    assert "bob@acme.example" in body and "alice@acme.example" in body  # the members list
    assert "dana@else.example" not in body and "Pending invitations" not in body
    assert response.context["invitations"] == []
    assert "dana@else.example" in as_admin.content.decode()
    assert [i.email for i in as_admin.context["invitations"]] == ["dana@else.example"]


def _expire(invitation: Invitation, _client: Client) -> None:
    Invitation.objects.filter(pk=invitation.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )


def _revoke_from_dashboard(invitation: Invitation, client: Client) -> None:
    response = client.post(f"/dashboard/invitations/{invitation.public_id}/revoke/", follow=True)
    assert f"Invitation to {invitation.email} revoked." in response.content.decode()


@pytest.mark.parametrize("spoil", [_expire, _revoke_from_dashboard], ids=["expired", "revoked"])
def test_expired_or_revoked_invitation_is_not_found(alice_client, tenant, alice, spoil):
    invitation, token = services.invitation_create(
        tenant=tenant,
        email="dana@initech.example",
        role=Role.VIEWER,
        actor=services.Actor(user=alice),
    )
    spoil(invitation, alice_client)
    dana = make_user("dana@initech.example")
    client = Client()
    client.force_login(dana)

    shown = client.get(f"/invitations/{token}/")
    accepted = client.post(f"/invitations/{token}/")

    assert shown.status_code == 404 and "Invitation not found" in shown.content.decode()
    assert accepted.status_code == 404
    assert not Membership.objects.filter(user=dana).exists()
    assert "dana@initech.example" not in page(alice_client, "/dashboard/members/")


def test_revoking_an_accepted_invitation_from_the_dashboard_says_why(alice_client, tenant, alice):
    dana = make_user("dana@initech.example")
    invitation, token = services.invitation_create(
        tenant=tenant, email=dana.email, role=Role.VIEWER, actor=services.Actor(user=alice)
    )
    services.invitation_accept(token=token, user=dana)

    response = alice_client.post(
        f"/dashboard/invitations/{invitation.public_id}/revoke/", follow=True
    )

    assert response.status_code == 200
    assert "already accepted; remove the member instead" in response.content.decode()
    assert Membership.objects.filter(tenant=tenant, user=dana).exists()


def test_admin_revoking_an_owner_invitation_from_the_dashboard_is_told_why(
    bob_client, alice, bob, tenant
):
    services.membership_change_role(
        membership=Membership.objects.get(tenant=tenant, user=bob),
        role=Role.ADMIN,
        actor=services.SYSTEM,
    )
    invitation, _ = services.invitation_create(
        tenant=tenant, email="dana@initech.example", role=Role.OWNER, actor=services.SYSTEM
    )

    response = bob_client.post(
        f"/dashboard/invitations/{invitation.public_id}/revoke/", follow=True
    )

    assert response.status_code == 200
    assert "Only an owner can grant or remove the owner role." in response.content.decode()
    assert Invitation.objects.get(pk=invitation.pk).is_pending


def test_owner_changes_a_role_and_removes_a_member(alice_client, bob, tenant):
    bob_membership = Membership.objects.get(tenant=tenant, user=bob)

    promoted = alice_client.post(
        f"/dashboard/members/{bob_membership.public_id}/role/", {"role": "admin"}, follow=True
    )
    assert "bob@acme.example is now Admin." in promoted.content.decode()
    bob_membership.refresh_from_db()
    assert bob_membership.role == Role.ADMIN

    removed = alice_client.post(
        f"/dashboard/members/{bob_membership.public_id}/remove/", follow=True
    )

    assert "bob@acme.example was removed." in removed.content.decode()
    assert not Membership.objects.filter(tenant=tenant, user=bob).exists()
    assert not bob.groups.filter(pk=tenant.group_id).exists()
    assert list(
        AuditEvent.objects.filter(tenant=tenant, action__startswith="member.")
        .values_list("action", flat=True)
        .order_by("created_at")
    ) == ["member.add", "member.role_change", "member.remove"]


def test_last_owner_cannot_leave(alice_client, alice, tenant):
    own = Membership.objects.get(tenant=tenant, user=alice)

    response = alice_client.post(f"/dashboard/members/{own.public_id}/remove/", follow=True)

    body = response.content.decode()
    assert "The last owner cannot leave; make someone else owner first." in body
    assert Membership.objects.filter(pk=own.pk, role=Role.OWNER).exists()


def test_member_can_leave_and_loses_the_organisation(bob_client, bob, tenant):
    own = Membership.objects.get(tenant=tenant, user=bob)

    response = bob_client.post(f"/dashboard/members/{own.public_id}/remove/", follow=True)

    assert response.redirect_chain[-1][0] == "/dashboard/orgs/new/"
    assert "You left Acme." in response.content.decode()
    assert not Membership.objects.filter(pk=own.pk).exists()


def test_developer_cannot_change_roles(bob_client, bob, tenant):
    own = Membership.objects.get(tenant=tenant, user=bob)
    response = bob_client.post(
        f"/dashboard/members/{own.public_id}/role/", {"role": "admin"}, follow=True
    )
    assert "Only owners and admins can manage members." in response.content.decode()
    own.refresh_from_db()
    assert own.role == Role.DEVELOPER


@pytest.mark.parametrize(
    "whom", ["dana@initech.example", "bob@acme.example"], ids=["another member", "themself"]
)
def test_admin_cannot_make_anyone_owner(bob_client, bob, tenant, whom):
    services.membership_change_role(
        membership=Membership.objects.get(tenant=tenant, user=bob),
        role=Role.ADMIN,
        actor=services.SYSTEM,
    )
    services.membership_add(
        tenant=tenant,
        user=make_user("dana@initech.example"),
        role=Role.VIEWER,
        actor=services.SYSTEM,
    )
    target = Membership.objects.get(tenant=tenant, user__email=whom)

    response = bob_client.post(
        f"/dashboard/members/{target.public_id}/role/", {"role": "owner"}, follow=True
    )

    assert "Only an owner can grant or remove the owner role." in response.content.decode()
    assert set(
        Membership.objects.filter(tenant=tenant, role=Role.OWNER).values_list(
            "user__email", flat=True
        )
    ) == {"alice@acme.example"}


def test_admin_cannot_remove_an_owner(bob_client, alice, bob, tenant):
    services.membership_change_role(
        membership=Membership.objects.get(tenant=tenant, user=bob),
        role=Role.ADMIN,
        actor=services.SYSTEM,
    )
    alice_membership = Membership.objects.get(tenant=tenant, user=alice)

    response = bob_client.post(
        f"/dashboard/members/{alice_membership.public_id}/remove/", follow=True
    )

    assert "Only an owner can grant or remove the owner role." in response.content.decode()
    assert Membership.objects.filter(pk=alice_membership.pk).exists()


# --- tenant switcher --------------------------------------------------------------------------


def test_member_of_two_organisations_switches_between_them(alice_client, alice, outsider):
    services.membership_add(tenant=outsider, user=alice, role=Role.VIEWER, actor=services.SYSTEM)
    home = page(alice_client, "/dashboard/")
    assert "<h1>Acme" in home and '<option value="globex"' in home

    switched = alice_client.post("/dashboard/switch/", {"tenant": "globex"}, follow=True)

    body = switched.content.decode()
    assert "<h1>Globex" in body and "You are viewer here." in body
    assert '<option value="globex" selected>' in body
    members = page(alice_client, "/dashboard/members/")
    assert "charlie@globex.example" in members and "bob@acme.example" not in members
    assert alice_client.get("/dashboard/keys/").status_code == 403  # a viewer in Globex


def test_switching_to_an_organisation_you_do_not_belong_to_is_404(bob_client, outsider):
    response = bob_client.post("/dashboard/switch/", {"tenant": "globex"})
    assert response.status_code == 404
    assert "<h1>Acme" in page(bob_client, "/dashboard/")


# --- outsiders --------------------------------------------------------------------------------


@pytest.fixture
def acme_objects(tenant, alice, bob):
    """One of each thing in Acme that the dashboard acts on by public id."""
    invitation, _token = services.invitation_create(
        tenant=tenant,
        email="dana@initech.example",
        role=Role.VIEWER,
        actor=services.Actor(user=alice),
    )
    key, _secret = services.api_key_create(
        tenant=tenant, name="prod", scopes=["inference"], actor=services.Actor(user=alice)
    )
    return {
        "owner": Membership.objects.get(tenant=tenant, user=alice).public_id,
        "member": Membership.objects.get(tenant=tenant, user=bob).public_id,
        "invitation": invitation.public_id,
        "key": key.public_id,
    }


@pytest.mark.parametrize(
    "url, data",
    [
        ("/dashboard/members/{member}/role/", {"role": "owner"}),
        ("/dashboard/members/{owner}/role/", {"role": "viewer"}),
        ("/dashboard/members/{member}/remove/", {}),
        ("/dashboard/members/{owner}/remove/", {}),
        ("/dashboard/invitations/{invitation}/revoke/", {}),
        ("/dashboard/keys/{key}/revoke/", {}),
        ("/dashboard/keys/{key}/rotate/", {}),
    ],
)
def test_outsider_acting_on_another_organisations_ids_gets_404(
    charlie_client, tenant, acme_objects, url, data
):
    acme_log = AuditEvent.objects.filter(tenant=tenant).count()

    response = charlie_client.post(url.format(**acme_objects), data)

    assert response.status_code == 404
    assert AuditEvent.objects.filter(tenant=tenant).count() == acme_log
    assert sorted(Membership.objects.filter(tenant=tenant).values_list("user__email", "role")) == [
        ("alice@acme.example", "owner"),
        ("bob@acme.example", "developer"),
    ]
    assert Invitation.objects.get(public_id=acme_objects["invitation"]).revoked_at is None
    assert [k.status for k in ApiKey.objects.filter(tenant=tenant)] == ["active"]


def test_outsider_revoking_through_htmx_gets_404(charlie_client, acme_objects):
    response = charlie_client.post(
        f"/dashboard/keys/{acme_objects['key']}/revoke/", headers={"HX-Request": "true"}
    )
    assert response.status_code == 404
    assert ApiKey.objects.get(public_id=acme_objects["key"]).status == "active"


# --- suspension -------------------------------------------------------------------------------


def test_suspended_organisation_shows_the_banner(alice_client, tenant):
    services.tenant_suspend(tenant=tenant, reason="Unpaid invoices", actor=services.SYSTEM)

    home = page(alice_client, "/dashboard/")

    assert (
        'class="banner danger" role="alert">This organisation is suspended: Unpaid invoices.'
        in home
    )


def test_a_reason_that_ends_its_sentence_gets_one_full_stop(alice_client, tenant, api):
    services.tenant_suspend(
        tenant=tenant, reason="Suspended by an operator.", actor=services.SYSTEM
    )

    home = page(alice_client, "/dashboard/")
    refused = alice_client.post("/dashboard/keys/", {"name": "x"}).content.decode()
    answer = api.get("/api/v1/organisation").json()["detail"]

    assert "is suspended: Suspended by an operator. API calls" in home
    assert "is suspended: Suspended by an operator. Nothing can be changed" in refused
    assert "is suspended: Suspended by an operator. Contact support" in answer
    assert ".." not in home + refused + answer


def test_active_organisation_shows_no_banner(alice_client):
    assert "This organisation is suspended" not in page(alice_client, "/dashboard/")


def test_a_suspended_organisation_can_read_and_take_access_away_but_change_nothing_else(
    alice_client, tenant, acme_objects
):
    from marketplace.models import Model

    services.tenant_suspend(tenant=tenant, reason="Unpaid invoices", actor=services.SYSTEM)
    keys = ApiKey.objects.count()

    new_model = alice_client.post("/dashboard/models/", {"name": "fresh", "task": "other"})
    new_key = alice_client.post("/dashboard/keys/", {"name": "ci", "scopes": ["inference"]})
    revoked = alice_client.post(f"/dashboard/keys/{acme_objects['key']}/revoke/")

    assert new_model.status_code == 403 and not Model.objects.filter(name="fresh").exists()
    assert "suspended: Unpaid invoices" in new_model.content.decode()
    assert new_key.status_code == 403 and ApiKey.objects.count() == keys
    assert revoked.status_code in (200, 302)  # a leaked key can still be revoked
    assert ApiKey.objects.get(public_id=acme_objects["key"]).status == "revoked"
    assert alice_client.get("/dashboard/keys/").status_code == 200  # and pages still read


def test_a_suspended_organisation_takes_no_new_members_until_reactivated(
    alice_client, tenant, mailoutbox, django_capture_on_commit_callbacks
):
    link = invite(
        alice_client,
        "dana@initech.example",
        Role.ADMIN,
        django_capture_on_commit_callbacks,
        mailoutbox,
    )
    services.tenant_suspend(tenant=tenant, reason="unpaid", actor=services.SYSTEM)
    dana = Client()
    dana.force_login(make_user("dana@initech.example"))

    refused = dana.post(link)
    services.tenant_reactivate(tenant=tenant, actor=services.SYSTEM)
    accepted = dana.post(link)

    assert "is suspended, so it takes no new members" in refused.content.decode()
    assert accepted.status_code == 302
    assert Membership.objects.get(tenant=tenant, user__email="dana@initech.example").role == "admin"


@pytest.mark.parametrize(
    "name, slug, made",
    [
        ("Initech", "Initech", "initech"),
        ("Init_Tech Ltd", "", "init-tech-ltd"),
        ("Initech", "-initech", None),
        ("Initech", "init_tech", None),
    ],
)
def test_an_organisation_slug_is_usable_as_the_owner_in_model_addresses(
    alice_client, name, slug, made
):
    response = alice_client.post("/dashboard/orgs/new/", {"name": name, "slug": slug})

    if made:
        assert Tenant.objects.filter(slug=made).exists()
    else:
        assert not Tenant.objects.filter(name=name).exists()
        assert "is not a usable slug" in response.content.decode()


def test_forms_sent_after_switching_organisation_in_another_tab_change_nothing(
    alice, tenant, charlie, outsider
):
    """Alice manages Acme and Globex. Pages opened for Acme, sent after she switched to Globex
    in another tab, must not invite into, set the spend cap of, or create a model in Globex:
    each form says whose it is (``org``), and the session's organisation decides the rest."""
    from billing.models import BillingAccount
    from marketplace.models import Model

    services.membership_add(tenant=outsider, user=alice, role=Role.ADMIN, actor=services.SYSTEM)
    client = Client()
    client.force_login(alice)
    pages = [page(client, path) for path in ("/dashboard/members/", "/dashboard/billing/")]
    client.post("/dashboard/switch/", {"tenant": "globex"})
    events = AuditEvent.objects.count()
    sent = {
        "/dashboard/members/": {"email": "eve@example.com", "role": "admin"},
        "/dashboard/billing/": {"spend_cap": "1.00"},
        "/dashboard/models/": {"name": "sneaky", "task": "other"},
    }

    answers = [
        client.post(path, {**form, "org": "acme"}, follow=True).content.decode()
        for path, form in sent.items()
    ]

    assert all('<input type="hidden" name="org" value="acme">' in p for p in pages)
    assert all("you have switched to globex" in answer for answer in answers)
    assert AuditEvent.objects.count() == events
    assert not Invitation.objects.filter(email="eve@example.com").exists()
    assert not BillingAccount.objects.filter(spend_cap__isnull=False).exists()
    assert not Model.objects.filter(name="sneaky").exists()
    # The same forms sent for Globex, from Globex's pages, are taken.
    client.post("/dashboard/models/", {"name": "theirs", "task": "other", "org": "globex"})
    assert Model.objects.get(name="theirs").tenant == outsider


def test_subscribing_from_a_catalogue_page_after_switching_organisation_changes_nothing(
    alice, tenant, charlie, outsider
):
    """The catalogue's subscribe form says which organisation subscribes: sent after a switch
    in another tab, it neither subscribes the organisation switched to nor the one it named."""
    from marketplace import listings
    from marketplace.models import Entitlement

    initech = services.tenant_create(slug="initech", name="Initech", owner=make_user("d@i.e"))
    model = registry.model_create(tenant=initech, name="clf", actor=services.SYSTEM)
    listings.listing_publish(model=model, actor=services.SYSTEM, visibility="public", title="C")
    services.membership_add(tenant=outsider, user=alice, role=Role.ADMIN, actor=services.SYSTEM)
    client = Client()
    client.force_login(alice)
    listing_page = page(client, "/catalogue/initech/clf/")
    client.post("/dashboard/switch/", {"tenant": "globex"})

    sent = client.post("/catalogue/initech/clf/subscribe/", {"org": "acme"}, follow=True)

    assert '<input type="hidden" name="org" value="acme">' in listing_page
    assert "you have switched to globex" in sent.content.decode()
    assert not Entitlement.objects.exists()
    client.post("/catalogue/initech/clf/subscribe/", {"org": "globex"})
    assert Entitlement.objects.get().tenant == outsider


def test_a_password_reset_links_to_the_site_whatever_host_the_request_named(
    client, alice, settings, mailoutbox
):
    settings.SITE_URL = "https://models.example"
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, ".internal.example"]

    response = client.post(
        "/password/reset/", {"email": alice.email}, HTTP_HOST="attacker.internal.example"
    )

    assert response.status_code == 302
    (sent,) = mailoutbox
    link = re.search(r"https?://\S+", sent.body).group(0)
    assert link.startswith("https://models.example/password/reset/"), link
    assert "internal.example" not in sent.body
    # The link works: it opens the form to choose a new password.
    assert client.get(link.removeprefix("https://models.example"), follow=True).status_code == 200


def test_password_changes_and_resets_are_in_the_organisations_log(
    client, alice, tenant, mailoutbox
):
    """Signing in was audited; changing the password, or resetting it from an e-mail, was not."""
    new, newer = "a new horse battery staple", "a newer horse battery staple"
    client.force_login(alice)
    changed = client.post(
        "/password/change/",
        {"old_password": PASSWORD, "new_password1": new, "new_password2": new},
    )
    assert changed.status_code == 302
    client.logout()

    client.post("/password/reset/", {"email": alice.email})
    link = re.search(r"https?://\S+", mailoutbox[0].body).group(0)
    form = client.get(urlsplit(link).path, follow=True)
    reset = client.post(
        form.redirect_chain[-1][0], {"new_password1": newer, "new_password2": newer}
    )
    assert reset.status_code == 302

    actions = list(
        AuditEvent.objects.filter(tenant=tenant, action__startswith="user.password")
        .order_by("pk")
        .values_list("action", "actor_label")
    )
    assert actions == [
        ("user.password_change", alice.email),
        ("user.password_reset", alice.email),
    ]


def test_password_reset_emails_to_one_address_are_limited_and_the_page_says_the_same(
    client, alice, settings, mailoutbox
):
    """Anyone could mail any address a reset link every second. Past the limit the form
    answers as always (it must not tell which addresses have accounts) and sends nothing."""
    settings.PASSWORD_RESETS_PER_ACCOUNT = 2
    answers = [client.post("/password/reset/", {"email": alice.email}) for _ in range(4)]
    other = Client(REMOTE_ADDR="192.0.2.9").post("/password/reset/", {"email": "bob@acme.example"})

    assert [a.status_code for a in answers] == [302] * 4
    assert len({a["Location"] for a in answers}) == 1
    assert [m.to for m in mailoutbox] == [[alice.email], [alice.email]]
    assert other.status_code == 302  # no account there: the same answer, no e-mail


def test_behind_a_trusted_proxy_each_client_is_throttled_by_its_own_address(
    alice, tenant, settings
):
    """Behind the documented proxy every request came from its address: fifty failed sign-ins
    by anyone locked every person out, the right password too. A caller not behind a trusted
    proxy cannot pick its address with X-Forwarded-For."""
    from accounts.tenancy import client_ip

    settings.SIGNIN_FAILURES_PER_IP = 3
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    proxy = {"REMOTE_ADDR": "10.0.0.5"}
    for n in range(3):
        Client(**proxy, HTTP_X_FORWARDED_FOR=f"198.51.100.{n}, 203.0.113.66").post(
            "/login/", {"username": f"nobody{n}@evil.example", "password": "nope"}
        )
    alice_browser = Client(**proxy, HTTP_X_FORWARDED_FOR="192.0.2.44")
    signed_in = alice_browser.post("/login/", {"username": alice.email, "password": PASSWORD})
    attacker = Client(**proxy, HTTP_X_FORWARDED_FOR="203.0.113.66")
    refused = attacker.post("/login/", {"username": alice.email, "password": PASSWORD})

    assert signed_in.status_code == 302  # another client, another address
    assert refused.status_code == 200 and "Too many failed sign-ins" in refused.content.decode()

    def ip(remote: str, forwarded: str = "") -> str | None:
        request = RequestFactory().get("/", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded)
        return client_ip(request)

    assert ip("192.0.2.9", "203.0.113.1") == "192.0.2.9"  # not a trusted proxy: its own
    assert ip("10.0.0.5", "spoofed, 203.0.113.1, 10.1.2.3") == "203.0.113.1"  # past two hops
    assert ip("10.0.0.5", "not-an-ip") == "10.0.0.5"
    assert ip("10.0.0.5") == "10.0.0.5"
    # Ports and brackets as load balancers write them, and a mapped IPv4 peer (bound on [::]):
    # each fell back to the proxy's address, one for every client again.
    assert ip("10.0.0.5", "203.0.113.5:4711") == "203.0.113.5"
    assert ip("10.0.0.5", "[2001:db8::7]:443") == "2001:db8::7"
    assert ip("::ffff:10.0.0.2", "203.0.113.8") == "203.0.113.8"
    settings.TRUSTED_PROXIES = []
    assert ip("10.0.0.5", "203.0.113.1") == "10.0.0.5"  # the header is never read by default


def test_a_trusted_proxy_setting_that_is_no_address_stops_the_server_at_start():
    import subprocess
    import sys

    result = subprocess.run(  # noqa: S603 - our own interpreter
        [sys.executable, "-c", "import django; django.setup()"],
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "MM_TRUSTED_PROXIES": "10.0.0.0/8,proxy",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode != 0
    assert "MM_TRUSTED_PROXIES: 'proxy' is no address or network" in result.stderr
