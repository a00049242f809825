"""Writes and flows of the accounts app. Every change to members, keys and tenants writes an
audit row in the same transaction."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from accounts import keycache, secrets
from accounts.exceptions import Conflict, NotFound
from accounts.models import (
    ALL_SCOPES,
    MANAGER_ROLES,
    ROLE_SCOPES,
    TENANT_SLUG_RE,
    ApiKey,
    AuditEvent,
    Invitation,
    Membership,
    Role,
    Tenant,
    User,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Actor:
    """Who is acting: a person, an API key, or the system (both None, e.g. a command).
    ``operator`` marks a staff member acting from the admin console, whose rights the admin
    checked (the model's change permission): like the system, they need no tenant role."""

    user: User | None = None
    key: ApiKey | None = None
    ip: str | None = None
    operator: bool = False

    @property
    def label(self) -> str:
        if self.key is not None:
            return f"key {self.key.masked} ({self.key.name})"
        if self.user is not None:
            return self.user.email
        return "system"


SYSTEM = Actor()


def _member_behind(actor: Actor) -> User | None:
    """The person an action answers to: the signed-in user, or the member who made the key
    that acted (keys made by keys inherit it), so what they made goes when their rights do."""
    if actor.user is not None:
        return actor.user
    return actor.key.created_by if actor.key is not None else None


def audit_record(
    *,
    action: str,
    actor: Actor,
    tenant: Tenant | None,
    target: object | None = None,
    data: dict | None = None,
) -> AuditEvent:
    return AuditEvent.objects.create(
        tenant=tenant,
        actor_user=actor.user,
        actor_key=actor.key,
        actor_label=actor.label,
        action=action,
        target_type=type(target).__name__.lower() if target is not None else "",
        target_id=str(getattr(target, "public_id", None) or getattr(target, "pk", "") or ""),
        data=data or {},
        ip=actor.ip,
    )


def audit_name_targets(events) -> None:
    """Sets ``target_name`` on each of ``events`` (a page of them): what a person recognises
    its target by, or "" (the dashboard's audit log and ``GET /audit-events`` show it)."""
    names = _target_names(events)
    for event in events:
        event.target_name = names.get((event.target_type, event.target_id)) or _named_in_data(event)


def _target_names(events) -> dict[tuple[str, str], str]:
    """What a person recognises a page's targets by: a user's e-mail, an organisation's slug,
    a key's name and prefix, a member's e-mail. One query per kind of target on the page; the
    sequential ids users and organisations are recorded with mean nothing to a reader."""
    ids: dict[str, set[str]] = {}
    for event in events:
        ids.setdefault(event.target_type, set()).add(event.target_id)
    names = {}
    if "user" in ids:
        pks = [pk for pk in ids["user"] if pk.isdigit()]
        for pk, email in User.objects.filter(pk__in=pks).values_list("pk", "email"):
            names["user", str(pk)] = email
    if "tenant" in ids:
        pks = [pk for pk in ids["tenant"] if pk.isdigit()]
        for pk, slug in Tenant.objects.filter(pk__in=pks).values_list("pk", "slug"):
            names["tenant", str(pk)] = slug
    for key in ApiKey.objects.filter(public_id__in=ids.get("apikey", ())):
        names["apikey", key.public_id] = str(key)
    members = Membership.objects.filter(public_id__in=ids.get("membership", ()))
    for public_id, email in members.values_list("public_id", "user__email"):
        names["membership", public_id] = email
    return names


def _named_in_data(event: AuditEvent) -> str:
    """A target's name from what its row recorded, for targets another app owns (an alias) or
    that are gone (a key whose organisation deleted it)."""
    data = event.data
    if event.target_type == "alias" and data.get("alias") and data.get("model"):
        return f"{data['alias']} of {data['model']}"
    if event.target_type == "apikey" and data.get("prefix"):
        return f"{data.get('name', '')} (mm_live_{data['prefix']}_…)".strip()
    return ""


# --- users ----------------------------------------------------------------------------------


EMAIL_TAKEN = "An account with this email exists; sign in instead."


@transaction.atomic
def user_create(*, email: str, password: str, name: str = "") -> User:
    """A new account; a ValidationError on ``email`` when the address has one, also when a
    concurrent sign-up (a double-clicked button) made it after the form's check."""
    try:
        with transaction.atomic():
            user = User.objects.create_user(email=email, password=password, name=name)
    except IntegrityError:
        raise ValidationError({"email": EMAIL_TAKEN}) from None
    audit_record(action="user.signup", actor=Actor(user=user), tenant=None, target=user)
    return user


@transaction.atomic
def user_send_password_setup(user: User, *, tenant: Tenant) -> None:
    """E-mail a person an operator created (``create_tenant``) a link to choose a password:
    made with an unusable one, they could not sign in, and Django's password reset sends
    nothing to such an account. The link is the reset form's, valid for
    ``PASSWORD_RESET_TIMEOUT`` (three days)."""
    from django.contrib.auth.tokens import default_token_generator
    from django.utils.encoding import force_bytes
    from django.utils.http import urlsafe_base64_encode

    uid = urlsafe_base64_encode(force_bytes(user.pk))
    token = default_token_generator.make_token(user)
    link = f"{settings.SITE_URL.rstrip('/')}/password/reset/{uid}/{token}/"
    days = max(1, settings.PASSWORD_RESET_TIMEOUT // 86400)
    transaction.on_commit(
        lambda: send_mail(
            subject=f"Your Modelmarket account for {tenant.name}",
            message=(
                f"An account was made for you as owner of {tenant.name} on Modelmarket.\n\n"
                f"Choose your password: {link}\n\n"
                f"The link works once, for {days} days; after that, ask for a new one at "
                f"{settings.SITE_URL.rstrip('/')}/password/reset/ once you have a password, "
                "or ask the operator who made the account."
            ),
            from_email=None,
            recipient_list=[user.email],
        )
    )


def user_audit(*, user: User, action: str, ip: str | None) -> None:
    """Record what a person did to their account (``user.login``, ``user.password_change``,
    ``user.password_reset``) in the log of every organisation they belong to, so each
    organisation's admins see it."""
    actor = Actor(user=user, ip=ip)
    tenants = [m.tenant for m in user.memberships.select_related("tenant")] or [None]
    for tenant in tenants:
        audit_record(action=action, actor=actor, tenant=tenant, target=user)


# --- tenants --------------------------------------------------------------------------------


@transaction.atomic
def tenant_create(*, slug: str, name: str, owner: User, actor: Actor | None = None) -> Tenant:
    if not TENANT_SLUG_RE.fullmatch(slug):
        raise ValidationError(
            {
                "slug": f"'{slug}' is not a usable slug: lowercase letters, digits and hyphens, "
                "starting with a letter or digit, at most 50 (it is the owner in owner/model)."
            }
        )
    if Tenant.objects.filter(slug=slug).exists():
        raise ValidationError({"slug": f"The organisation slug '{slug}' is taken."})
    try:
        with transaction.atomic():  # a concurrent sign-up may take the slug (or its group)
            group = Group.objects.create(name=f"tenant:{slug}")
            tenant = Tenant.objects.create(slug=slug, name=name, group=group)
    except IntegrityError:
        raise ValidationError({"slug": f"The organisation slug '{slug}' is taken."}) from None
    membership = Membership.objects.create(tenant=tenant, user=owner, role=Role.OWNER)
    owner.groups.add(group)
    audit_record(
        action="tenant.create",
        actor=actor or Actor(user=owner),
        tenant=tenant,
        target=tenant,
        data={"owner": owner.email, "membership": membership.public_id},
    )
    return tenant


def tenant_locked(tenant: Tenant) -> None:
    """Lock ``tenant``'s row until the transaction ends, so that what counts against it is
    admitted one at a time (paid calls, compression jobs, invitations to one address). FOR NO
    KEY UPDATE on PostgreSQL: rows that merely reference the organisation (its predictions,
    usage records, audit rows) are inserted meanwhile; FOR UPDATE made each wait."""
    rows = Tenant.objects.select_for_update(no_key=True).filter(pk=tenant.pk)
    list(rows.values_list("pk", flat=True))


def _forget_tenant_keys(tenant_pk: int) -> None:
    """Drop the tenant's keys from this process's cache now and once the change commits (see
    ``_forget_key``)."""
    keycache.forget_tenant(tenant_pk)
    transaction.on_commit(lambda: keycache.forget_tenant(tenant_pk))


def _refuse_deleted(tenant: Tenant, doing: str) -> None:
    if tenant.deleted_at is not None:
        raise Conflict(
            f"The organisation {tenant.slug} was deleted on {tenant.deleted_at:%Y-%m-%d}: its "
            f"data keys are destroyed and only its billing records remain, so it cannot be "
            f"{doing}."
        )


@transaction.atomic
def tenant_suspend(*, tenant: Tenant, reason: str, actor: Actor) -> Tenant:
    _refuse_deleted(tenant, "suspended again")
    tenant.status = Tenant.Status.SUSPENDED
    tenant.suspended_reason = reason
    tenant.save(update_fields=["status", "suspended_reason"])
    _forget_tenant_keys(tenant.pk)
    audit_record(
        action="tenant.suspend", actor=actor, tenant=tenant, target=tenant, data={"reason": reason}
    )
    return tenant


@transaction.atomic
def tenant_reactivate(*, tenant: Tenant, actor: Actor) -> Tenant:
    _refuse_deleted(tenant, "reactivated")
    tenant.status = Tenant.Status.ACTIVE
    tenant.suspended_reason = ""
    tenant.save(update_fields=["status", "suspended_reason"])
    _forget_tenant_keys(tenant.pk)
    audit_record(action="tenant.reactivate", actor=actor, tenant=tenant, target=tenant)
    return tenant


# --- members and invitations ----------------------------------------------------------------


def _require_manager(
    tenant: Tenant, actor: Actor, *, touches_owner: bool, grants: str | None = None
) -> None:
    """Admins manage members; only owners grant, change or remove the owner role. A key that
    ``grants`` a role (invites, adds or changes a role) must also be able to act as it."""
    if actor.operator or (actor.user is None and actor.key is None):
        return  # operators and commands
    if actor.key is not None:
        if "admin" not in actor.key.scopes:
            raise PermissionDenied("This action needs the 'admin' scope.")
        if touches_owner:
            raise PermissionDenied("Only an owner, signed in, can grant or remove the owner role.")
        if grants is not None:
            _require_key_may_grant(actor.key, grants)
        return
    role = (
        Membership.objects.filter(tenant=tenant, user=actor.user)
        .values_list("role", flat=True)
        .first()
    )
    if role not in MANAGER_ROLES:
        raise PermissionDenied("Only owners and admins can manage members.")
    if touches_owner and role != Role.OWNER:
        raise PermissionDenied("Only an owner can grant or remove the owner role.")


def _require_key_may_grant(key: ApiKey, role: str) -> None:
    """A key grants no role wider than its own scopes, and a limited key none at all: the
    person it lets in would hold the role from any network, for every model, with no end."""
    limits = []
    if key.allowed_ips:
        limits.append(f"to networks {', '.join(key.allowed_ips)}")
    if key.allowed_models:
        limits.append(f"to models {', '.join(key.allowed_models)}")
    if key.expires_at is not None:
        limits.append(f"until {key.expires_at.isoformat()}")
    if limits:
        raise PermissionDenied(
            f"This key is limited ({'; '.join(limits)}) and a role it granted would not be, so "
            "it cannot invite or change roles: a signed-in owner or admin, or an unrestricted "
            "key, must do it."
        )
    missing = sorted(ROLE_SCOPES.get(role, ALL_SCOPES) - set(key.scopes))
    if missing:
        raise PermissionDenied(
            f"This key cannot grant the {role} role, which holds scope(s) the key lacks: "
            f"{', '.join(missing)}. A signed-in owner or admin, or a key holding them, must do it."
        )


@transaction.atomic
def invitation_create(
    *, tenant: Tenant, email: str, role: str, actor: Actor
) -> tuple[Invitation, str]:
    """Invite ``email`` with ``role``; returns the invitation and its one-time token."""
    email = email.strip().lower()
    _member_locked(tenant, actor)
    # Two managers inviting one address at once each found no open invitation to replace,
    # and both stayed open: invitations to the organisation are made one at a time.
    tenant_locked(tenant)
    _require_manager(tenant, actor, touches_owner=role == Role.OWNER, grants=role)
    if Membership.objects.filter(tenant=tenant, user__email__iexact=email).exists():
        raise ValidationError({"email": f"{email} is already a member of {tenant.name}."})
    # A new invitation replaces the open ones to the same address (a re-send, perhaps with
    # another role): one of them stayed usable after the other was accepted, and let a member
    # removed since rejoin. Replacing one takes the right to revoke it.
    for earlier in _invitations_to(tenant, email):
        _require_manager(tenant, actor, touches_owner=earlier.role == Role.OWNER)
    _close_invitations_to(tenant, email, actor, reason="replaced by a new invitation")
    token = secrets.new_token()
    invitation = Invitation.objects.create(
        tenant=tenant,
        email=email,
        role=role,
        token_digest=secrets.token_digest(token),
        invited_by=_member_behind(actor),
        expires_at=timezone.now() + settings.INVITATION_TTL,
    )
    audit_record(
        action="invitation.create",
        actor=actor,
        tenant=tenant,
        target=invitation,
        data={"email": email, "role": role},
    )
    link = f"{settings.SITE_URL}/invitations/{token}/"
    transaction.on_commit(
        lambda: send_mail(
            subject=f"You are invited to {tenant.name} on Modelmarket",
            message=(
                f"{actor.label} invited you to join {tenant.name} as {role}.\n\n"
                f"Accept the invitation: {link}\n\n"
                f"The link expires on {invitation.expires_at:%Y-%m-%d %H:%M} UTC."
            ),
            from_email=None,
            recipient_list=[email],
        )
    )
    return invitation, token


def invitation_by_token(token: str) -> Invitation | None:
    return (
        Invitation.objects.select_related("tenant")
        .filter(token_digest=secrets.token_digest(token))
        .first()
    )


@transaction.atomic
def invitation_accept(*, token: str, user: User, ip: str | None = None) -> Membership:
    invitation = invitation_by_token(token)
    if invitation is None or not invitation.is_pending:
        raise ValidationError("This invitation is invalid, expired or already used.")
    if invitation.email != user.email.lower():
        raise ValidationError(
            f"This invitation was sent to {invitation.email}; "
            "sign in with that address to accept it."
        )
    if not invitation.tenant.is_active:
        raise ValidationError(
            f"The organisation '{invitation.tenant.slug}' is suspended, so it takes no new "
            "members; the invitation stays open until it is reactivated."
        )
    member = Membership.objects.filter(tenant=invitation.tenant, user=user).first()
    if member is not None:
        raise ValidationError(
            f"You are already a member of {invitation.tenant.name} ({member.role}); an "
            "invitation does not change a role: ask an owner or admin to change it."
        )
    # Claimed only while still pending: a revocation or expiry that lands after the read above
    # must not admit anyone.
    claimed = Invitation.objects.filter(Invitation.pending_q(), pk=invitation.pk).update(
        accepted_at=timezone.now(), accepted_by=user
    )
    if claimed != 1:
        raise ValidationError(
            "This invitation is no longer open: it was revoked, expired or used while you "
            "accepted it. Ask an owner or admin for a new one."
        )
    try:
        with transaction.atomic():
            membership = Membership.objects.create(
                tenant=invitation.tenant, user=user, role=invitation.role
            )
    except IntegrityError:  # joined meanwhile, through another invitation
        raise ValidationError(f"You are already a member of {invitation.tenant.name}.") from None
    user.groups.add(invitation.tenant.group)
    _close_invitations_to(
        invitation.tenant, invitation.email, Actor(user=user, ip=ip), reason="joined"
    )
    audit_record(
        action="member.join",
        actor=Actor(user=user, ip=ip),
        tenant=invitation.tenant,
        target=membership,
        data={"role": membership.role, "invitation": invitation.public_id},
    )
    return membership


@transaction.atomic
def membership_add(*, tenant: Tenant, user: User, role: str, actor: Actor) -> Membership:
    """Add an existing user directly (operators, seeding); people join through invitations."""
    _require_manager(tenant, actor, touches_owner=role == Role.OWNER, grants=role)
    membership = Membership.objects.create(tenant=tenant, user=user, role=role)
    user.groups.add(tenant.group)
    _close_invitations_to(tenant, user.email, actor, reason="joined")
    audit_record(
        action="member.add",
        actor=actor,
        tenant=tenant,
        target=membership,
        data={"email": user.email, "role": role},
    )
    return membership


@transaction.atomic
def invitation_revoke(*, invitation: Invitation, actor: Actor) -> Invitation:
    _require_manager(invitation.tenant, actor, touches_owner=invitation.role == Role.OWNER)
    revoked = Invitation.objects.filter(
        pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True
    ).update(revoked_at=timezone.now())
    invitation.refresh_from_db(fields=["accepted_at", "revoked_at"])
    if revoked != 1:
        if invitation.accepted_at is not None:
            raise Conflict(
                f"The invitation to {invitation.email} was already accepted; "
                "remove the member instead."
            )
        raise Conflict(f"The invitation to {invitation.email} was already revoked.")
    audit_record(
        action="invitation.revoke",
        actor=actor,
        tenant=invitation.tenant,
        target=invitation,
        data={"email": invitation.email},
    )
    return invitation


def _invitations_to(tenant: Tenant, email: str):
    return Invitation.objects.filter(
        Invitation.pending_q(), tenant=tenant, email=email.strip().lower()
    ).order_by("pk")


def _close_invitations_to(tenant: Tenant, email: str, actor: Actor, *, reason: str) -> None:
    """Revoke the open invitations to ``email``, each audited with ``reason``: an address
    holds at most one, and none once it belongs to a member or to one just removed."""
    now = timezone.now()
    for invitation in _invitations_to(tenant, email):
        revoked = Invitation.objects.filter(Invitation.pending_q(), pk=invitation.pk).update(
            revoked_at=now
        )
        if revoked == 1:
            audit_record(
                action="invitation.revoke",
                actor=actor,
                tenant=tenant,
                target=invitation,
                data={"email": invitation.email, "role": invitation.role, "reason": reason},
            )


def _grantable_roles(role: str) -> frozenset[str]:
    """The roles a member with ``role`` may grant, as ``_require_manager`` allows a person."""
    if role == Role.OWNER:
        return frozenset(Role.values)
    if role in MANAGER_ROLES:
        return frozenset(Role.values) - {Role.OWNER}
    return frozenset()


def _revoke_invitations_beyond(
    membership: Membership, grantable: frozenset[str], actor: Actor, *, reason: str
) -> None:
    """An invitation stands on its inviter's right to grant its role: when the member loses
    it, their pending invitations for roles outside ``grantable`` are revoked."""
    invitations = (
        Invitation.objects.filter(
            Invitation.pending_q(), tenant=membership.tenant, invited_by=membership.user_id
        )
        .exclude(role__in=grantable)
        .order_by("pk")
    )
    now = timezone.now()
    for invitation in invitations:
        revoked = Invitation.objects.filter(Invitation.pending_q(), pk=invitation.pk).update(
            revoked_at=now
        )
        if revoked == 1:  # unless accepted in the meantime
            audit_record(
                action="invitation.revoke",
                actor=actor,
                tenant=membership.tenant,
                target=invitation,
                data={"email": invitation.email, "role": invitation.role, "reason": reason},
            )


def _owners_left(membership: Membership) -> int:
    """Lock ``membership`` and its tenant's owners, in the order of their ids, and return how
    many owners there are besides it; ``membership.role`` is read again under the lock.

    The lock makes a change of the member take turns with what the member does meanwhile
    (``_member_locked``), and two owners leaving at once with each other: the second counts
    after the first is gone. Locked in another order, they deadlocked, or both left."""
    rows = list(
        Membership.objects.select_for_update()
        .filter(Q(pk=membership.pk) | Q(role=Role.OWNER), tenant_id=membership.tenant_id)
        .order_by("pk")
    )
    current = next((row for row in rows if row.pk == membership.pk), None)
    if current is None:
        raise NotFound(f"{membership.user.email} is no longer a member.")
    membership.role = current.role
    return sum(1 for row in rows if row.role == Role.OWNER and row.pk != membership.pk)


def _member_locked(tenant: Tenant, actor: Actor) -> None:
    """Lock the membership of the person an act answers to (``_member_behind``) until the act
    commits. Their removal or a role change locks it too (``_owners_left``), so the two take
    turns: the change then finds the key or invitation made and cuts it, or the act reads the
    member gone or in their new role. Call it before reading the actor's role."""
    user = _member_behind(actor)
    if user is None:
        return
    held = list(
        Membership.objects.select_for_update()
        .filter(tenant=tenant, user=user)
        .values_list("pk", flat=True)
    )
    if not held and actor.key is not None:
        raise PermissionDenied("The member who made this key has left the organisation.")


@transaction.atomic
def membership_change_role(*, membership: Membership, role: str, actor: Actor) -> Membership:
    if role not in Role.values:
        raise ValidationError(
            {"role": f"Unknown role '{role}'. Valid roles: {', '.join(Role.values)}."}
        )
    owners_left = _owners_left(membership)
    old = membership.role
    if old == role:
        return membership
    _require_manager(membership.tenant, actor, touches_owner=Role.OWNER in (old, role), grants=role)
    if old == Role.OWNER and owners_left == 0:
        raise ValidationError(
            "An organisation needs at least one owner; make someone else owner first."
        )
    membership.role = role
    membership.save(update_fields=["role"])
    audit_record(
        action="member.role_change",
        actor=actor,
        tenant=membership.tenant,
        target=membership,
        data={"email": membership.user.email, "from": old, "to": role},
    )
    reason = f"{membership.user.email} is now {role}"
    _fit_member_keys(membership, ROLE_SCOPES[role], actor, reason=reason)
    _revoke_invitations_beyond(membership, _grantable_roles(role), actor, reason=reason)
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership, actor: Actor) -> None:
    """Remove a member; a member may also remove themself (leave)."""
    owners_left = _owners_left(membership)
    leaving = actor.key is None and actor.user is not None and actor.user.pk == membership.user_id
    if not leaving:
        _require_manager(membership.tenant, actor, touches_owner=membership.role == Role.OWNER)
    if membership.role == Role.OWNER and owners_left == 0:
        raise ValidationError("The last owner cannot leave; make someone else owner first.")
    membership.user.groups.remove(membership.tenant.group)
    gone = "left" if leaving else "was removed from"
    reason = f"{membership.user.email} {gone} the organisation"
    _fit_member_keys(membership, frozenset(), actor, reason=reason)
    _revoke_invitations_beyond(membership, frozenset(), actor, reason=reason)
    _close_invitations_to(membership.tenant, membership.user.email, actor, reason=reason)
    audit_record(
        action="member.leave" if leaving else "member.remove",
        actor=actor,
        tenant=membership.tenant,
        target=membership,
        data={"email": membership.user.email, "role": membership.role},
    )
    membership.delete()


def sole_owned_tenants(user: User) -> list[Tenant]:
    """The organisations ``user`` is the only owner of: they cannot go before another owns it."""
    owned = Membership.objects.filter(user=user, role=Role.OWNER).values_list("tenant", flat=True)
    others = (
        Membership.objects.filter(tenant__in=owned, role=Role.OWNER)
        .exclude(user=user)
        .values_list("tenant", flat=True)
    )
    return list(Tenant.objects.filter(pk__in=owned).exclude(pk__in=others).order_by("slug"))


@transaction.atomic
def user_delete(*, user: User, actor: Actor) -> None:
    """Delete an account (the operators' console): it leaves each organisation as a removal
    does first, so the keys it made are revoked, the invitations to it closed and each
    organisation's audit log told. Deleting the row alone left its keys working with no
    creator, and so with no member's role to bound them."""
    for membership in Membership.objects.filter(user=user).select_related("tenant", "user"):
        membership_remove(membership=membership, actor=actor)
    user.delete()


# --- API keys -------------------------------------------------------------------------------


def _forget_key(prefix: str) -> None:
    """Drop a changed key from this process's cache now, and again once the change commits: a
    request that verifies the key in between still reads, and would cache, the old row."""
    keycache.forget(prefix)
    transaction.on_commit(lambda: keycache.forget(prefix))


def _fit_member_keys(
    membership: Membership, scopes: frozenset[str], actor: Actor, *, reason: str
) -> None:
    """A key holds at most the scopes of the member who made it: when the member's role
    shrinks, their active keys are cut to ``scopes``, and revoked when nothing is left (all
    of them when the member leaves, with ``scopes`` empty)."""
    now = timezone.now()
    keys = (
        ApiKey.objects.select_for_update()
        .filter(tenant=membership.tenant, created_by=membership.user_id, revoked_at__isnull=True)
        .exclude(expires_at__lte=now)
        .order_by("pk")
    )
    for key in keys:
        kept = sorted(set(key.scopes) & scopes)
        if kept == sorted(key.scopes):
            continue
        data = {"name": key.name, "prefix": key.prefix, "reason": reason}
        if kept:
            data.update({"from": key.scopes, "scopes": kept})
            key.scopes = kept
            key.save(update_fields=["scopes"])
            audit_record(
                action="api_key.narrow", actor=actor, tenant=key.tenant, target=key, data=data
            )
        else:
            key.revoked_at = now
            key.save(update_fields=["revoked_at"])
            audit_record(
                action="api_key.revoke", actor=actor, tenant=key.tenant, target=key, data=data
            )
        _forget_key(key.prefix)


def _granted_scopes(tenant: Tenant, actor: Actor) -> frozenset[str]:
    if actor.key is not None:
        return frozenset(actor.key.scopes)
    if actor.user is None:
        return ROLE_SCOPES[Role.OWNER]
    role = (
        Membership.objects.filter(tenant=tenant, user=actor.user)
        .values_list("role", flat=True)
        .first()
    )
    return ROLE_SCOPES.get(role, frozenset())


def _within_key(
    key: ApiKey,
    expires_at: datetime | None,
    models: list[str] | None,
    ips: list[str] | None,
    *,
    inherit: bool,
) -> tuple[datetime | None, list[str] | None, list[str] | None]:
    """What a key made by ``key`` may be: no longer lived, and limited to no more models and
    networks than ``key``. A new key left unlimited gets ``key``'s limits (``inherit``); a
    replacement (rotation) must already be within them, as it keeps its own settings."""
    refused = []
    if key.expires_at is not None:
        if expires_at is None and inherit:
            expires_at = key.expires_at
        elif expires_at is None or expires_at > key.expires_at:
            refused.append(f"an expiry after this key's ({key.expires_at.isoformat()})")
    if key.allowed_models:
        if not models and inherit:
            models = list(key.allowed_models)
        elif not models or set(models) - set(key.allowed_models):
            refused.append(f"models beyond this key's ({', '.join(key.allowed_models)})")
    if key.allowed_ips:
        if not ips and inherit:
            ips = list(key.allowed_ips)
        elif not ips or not all(_network_within(ip, key.allowed_ips) for ip in ips):
            refused.append(f"networks beyond this key's ({', '.join(key.allowed_ips)})")
    if refused:
        raise PermissionDenied(
            "A key cannot make a key it could not act as itself: " + "; ".join(refused) + "."
        )
    return expires_at, models, ips


def _network_within(network: str, allowed: list[str]) -> bool:
    try:
        wanted = ipaddress.ip_network(network, strict=False)
        return any(
            wanted.version == outer.version and wanted.subnet_of(outer)
            for outer in (ipaddress.ip_network(a, strict=False) for a in allowed)
        )
    except ValueError:
        return True  # not a network: the key's validation refuses it, saying what is wrong


@transaction.atomic
def api_key_create(
    *,
    tenant: Tenant,
    name: str,
    scopes: list[str],
    actor: Actor,
    expires_at: datetime | None = None,
    allowed_models: list[str] | None = None,
    allowed_ips: list[str] | None = None,
    rotated_from: ApiKey | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret, which is shown once and never stored."""
    _member_locked(tenant, actor)
    _require_manager(tenant, actor, touches_owner=False)
    excess = sorted(set(scopes) - _granted_scopes(tenant, actor))
    if excess:
        raise PermissionDenied(f"You cannot grant scope(s) you do not hold: {', '.join(excess)}.")
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "The expiry must be in the future."})
    if actor.key is not None:
        expires_at, allowed_models, allowed_ips = _within_key(
            actor.key, expires_at, allowed_models, allowed_ips, inherit=rotated_from is None
        )
    secret, prefix = secrets.new_api_key()
    key = ApiKey(
        tenant=tenant,
        name=name,
        prefix=prefix,
        digest=secrets.digest(secret, settings.API_KEY_HMAC_KEY),
        scopes=sorted(set(scopes)),
        expires_at=expires_at,
        allowed_models=sorted(set(allowed_models or [])),
        allowed_ips=list(dict.fromkeys(allowed_ips or [])),
        created_by=_member_behind(actor),
        rotated_from=rotated_from,
    )
    key.full_clean()
    key.save()
    audit_record(
        action="api_key.create",
        actor=actor,
        tenant=tenant,
        target=key,
        data={
            "name": name,
            "scopes": key.scopes,
            "prefix": prefix,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    )
    return key, secret


@transaction.atomic
def api_key_revoke(*, key: ApiKey, actor: Actor) -> ApiKey:
    _require_manager(key.tenant, actor, touches_owner=False)
    revoked = ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    _forget_key(key.prefix)
    key.refresh_from_db(fields=["revoked_at"])
    if revoked != 1:  # each revocation was audited again, at the first one's time
        raise Conflict(f"The key {key.name} ({key.prefix}) was already revoked.")
    audit_record(
        action="api_key.revoke",
        actor=actor,
        tenant=key.tenant,
        target=key,
        data={"name": key.name, "prefix": key.prefix},
    )
    return key


@transaction.atomic
def api_key_rotate(*, key: ApiKey, actor: Actor) -> tuple[ApiKey, str]:
    """Issue a replacement with the same settings; the old key keeps working for the grace
    period (``MM_API_KEY_ROTATION_GRACE_HOURS``) so deployments can switch without downtime."""
    key = ApiKey.objects.select_for_update().get(pk=key.pk)
    if key.status != "active":
        raise ValidationError(f"Only an active key can be rotated; this one is {key.status}.")
    if hasattr(key, "rotated_to"):
        raise ValidationError("This key was already rotated; rotate its replacement instead.")
    new_key, secret = api_key_create(
        tenant=key.tenant,
        name=key.name,
        scopes=key.scopes,
        actor=actor,
        expires_at=key.expires_at,
        allowed_models=key.allowed_models,
        allowed_ips=key.allowed_ips,
        rotated_from=key,
    )
    grace_end = timezone.now() + settings.API_KEY_ROTATION_GRACE
    if key.expires_at is None or key.expires_at > grace_end:
        key.expires_at = grace_end
        key.save(update_fields=["expires_at"])
        _forget_key(key.prefix)
    audit_record(
        action="api_key.rotate",
        actor=actor,
        tenant=key.tenant,
        target=key,
        data={"replacement": new_key.public_id, "old_key_expires_at": key.expires_at.isoformat()},
    )
    return new_key, secret
