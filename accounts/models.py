from __future__ import annotations

import ipaddress
import operator
import re
from functools import partial, reduce

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, Group, PermissionsMixin
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from accounts.secrets import public_id


class Scope(models.TextChoices):
    MODELS_READ = "models:read", "Read models and listings"
    MODELS_WRITE = "models:write", "Upload, version and publish models"
    INFERENCE = "inference", "Run predictions"
    BILLING_READ = "billing:read", "Read usage and invoices"
    BILLING_WRITE = "billing:write", "Set spend caps and the payment method"
    ADMIN = "admin", "Manage members, keys and settings"


ALL_SCOPES = frozenset(Scope.values)


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    DEVELOPER = "developer", "Developer"
    BILLING = "billing", "Billing"
    VIEWER = "viewer", "Viewer"


# What each role may do, expressed as the API scopes it holds. A session acts with its role's
# scopes; a key holds at most the scopes of the member who created it.
ROLE_SCOPES: dict[str, frozenset[str]] = {
    Role.OWNER: ALL_SCOPES,
    Role.ADMIN: ALL_SCOPES,
    Role.DEVELOPER: frozenset({Scope.MODELS_READ, Scope.MODELS_WRITE, Scope.INFERENCE}),
    Role.BILLING: frozenset({Scope.MODELS_READ, Scope.BILLING_READ, Scope.BILLING_WRITE}),
    Role.VIEWER: frozenset({Scope.MODELS_READ}),
}
MANAGER_ROLES = frozenset({Role.OWNER, Role.ADMIN})


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **extra) -> User:
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra) -> User:
        extra.update(is_staff=True, is_superuser=True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    email = models.EmailField(unique=True)
    name = models.CharField(max_length=150, blank=True)
    is_staff = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        constraints = [models.UniqueConstraint(Lower("email"), name="user_email_ci_unique")]

    def __str__(self) -> str:
        return self.email

    def get_full_name(self) -> str:
        return self.name or self.email

    def get_short_name(self) -> str:
        return self.name or self.email


# An organisation's slug is the owner in every model address (owner/name).
TENANT_SLUG = r"[a-z0-9][a-z0-9-]{0,49}"
TENANT_SLUG_RE = re.compile(TENANT_SLUG)
MODEL_REF = rf"{TENANT_SLUG}/[a-z0-9][a-z0-9._-]{{0,99}}"  # owner/name
MODEL_REF_RE = re.compile(MODEL_REF)


class Tenant(models.Model):
    """An organisation: the unit of ownership, isolation and billing."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    suspended_reason = models.CharField(max_length=500, blank=True)
    # Set when the organisation is deleted but its billing rows must stay
    # (``marketplace.vault.store.tenant_destroy``): its keys are destroyed and it holds nothing
    # else, so it stays suspended for good.
    deleted_at = models.DateTimeField(null=True, blank=True)
    # django-guardian grants to a tenant go to this group; members are its users.
    group = models.OneToOneField(Group, on_delete=models.PROTECT, related_name="tenant")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = "organisation"

    def __str__(self) -> str:
        return self.slug

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE

    @property
    def suspended_because(self) -> str:
        """``": <reason>"`` for a sentence that ends with its own full stop ("...suspended:
        Suspended by an operator.." had two), or ``""``."""
        reason = self.suspended_reason.strip().rstrip(".")
        return f": {reason}" if reason else ""


class Membership(models.Model):
    public_id = models.CharField(max_length=24, unique=True, default=partial(public_id, "mem"))
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} in {self.tenant} ({self.role})"

    @property
    def scopes(self) -> frozenset[str]:
        return ROLE_SCOPES[self.role]

    @property
    def can_manage(self) -> bool:
        return self.role in MANAGER_ROLES


class Invitation(models.Model):
    public_id = models.CharField(max_length=24, unique=True, default=partial(public_id, "inv"))
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices)
    token_digest = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.email} to {self.tenant}"

    @property
    def is_pending(self) -> bool:
        return (
            self.accepted_at is None
            and self.revoked_at is None
            and self.expires_at > timezone.now()
        )

    @staticmethod
    def pending_q() -> models.Q:
        """The rows ``is_pending`` holds for, to filter or claim them in one query."""
        return models.Q(
            accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=timezone.now()
        )


def validate_scopes(value: list[str]) -> None:
    unknown = sorted(set(value) - ALL_SCOPES)
    if unknown:
        raise ValidationError(
            f"Unknown scope(s): {', '.join(unknown)}. "
            f"Valid scopes: {', '.join(sorted(ALL_SCOPES))}."
        )


def validate_ip_networks(value: list[str]) -> None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValidationError(
                f"'{item}' is not an IP address or CIDR network (e.g. 203.0.113.7 or 10.0.0.0/8)."
            ) from None


class ApiKey(models.Model):
    public_id = models.CharField(max_length=24, unique=True, default=partial(public_id, "key"))
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    digest = models.CharField(max_length=64)
    scopes = models.JSONField(default=list, validators=[validate_scopes])
    allowed_models = models.JSONField(default=list, blank=True)
    allowed_ips = models.JSONField(default=list, blank=True, validators=[validate_ip_networks])
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)
    rotated_from = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="rotated_to"
    )

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.masked})"

    @property
    def masked(self) -> str:
        return f"mm_live_{self.prefix}_…"

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= timezone.now():
            return "expired"
        return "active"

    @staticmethod
    def active_q() -> models.Q:
        """The rows ``status`` calls active, to filter or count them in one query."""
        return models.Q(revoked_at__isnull=True) & (
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=timezone.now())
        )

    def allows_ip(self, ip: str | None) -> bool:
        if not self.allowed_ips:
            return True
        if not ip:
            return False
        address = ipaddress.ip_address(ip)
        return any(address in ipaddress.ip_network(net, strict=False) for net in self.allowed_ips)

    def allows_model(self, model_ref: str) -> bool:
        return not self.allowed_models or model_ref in self.allowed_models

    def models_q(self, path: str = "model") -> models.Q:
        """Rows whose model (the ``Model`` at ``path``; ``""`` for models themselves) this key
        may use: all when its allowlist is empty."""
        if not self.allowed_models:
            return models.Q()
        prefix = f"{path}__" if path else ""
        return reduce(
            operator.or_,
            (
                models.Q(**{f"{prefix}tenant__slug": owner, f"{prefix}name": name})
                for owner, _, name in (ref.partition("/") for ref in self.allowed_models)
            ),
        )


class AuthAttempt(models.Model):
    """A failed sign-in or a password reset asked for, kept while the throttle counts it
    (``accounts.throttle``)."""

    class Kind(models.TextChoices):
        SIGN_IN_FAILED = "sign_in_failed", "Failed sign-in"
        PASSWORD_RESET = "password_reset", "Password reset asked for"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    email = models.CharField(max_length=254)
    ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        indexes = [
            models.Index(fields=["kind", "email", "created_at"], name="auth_attempt_email"),
            models.Index(fields=["kind", "ip", "created_at"], name="auth_attempt_ip"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.email} from {self.ip} at {self.created_at:%Y-%m-%d %H:%M:%S}"


class AuditEvent(models.Model):
    """An append-only record of a security-relevant change, written in the same transaction."""

    tenant = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="audit_events"
    )
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    actor_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # A snapshot of who acted, kept readable after the user or key is gone: Actor.label, an
    # email (up to 254 characters, as User.email) or a key's label (under 140).
    actor_label = models.CharField(max_length=254, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    data = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action} by {self.actor_label}"
