"""The operators' console for accounts. Staff only; secrets are never shown."""

from __future__ import annotations

from contextlib import nullcontext

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.auth import get_permission_codename
from django.contrib.auth.admin import GroupAdmin as BaseGroupAdmin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import Group
from django.db import DataError, OperationalError, connections, models, router, transaction
from django_otp.plugins.otp_totp.admin import TOTPDeviceAdmin as BaseTOTPDeviceAdmin
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import services
from accounts.exceptions import Conflict, ServiceError
from accounts.models import ApiKey, AuditEvent, Invitation, Membership, Tenant, User
from accounts.tenancy import client_ip


def operator_actor(request) -> services.Actor:
    """The staff member acting from the console, with their address, for the audit rows."""
    return services.Actor(user=request.user, ip=client_ip(request), operator=True)


def act_on_each(request, queryset, act, done: str) -> int:
    """Run an admin action's ``act(obj)`` on each selected object: one the service refuses
    (a ``ServiceError``) is said in an error message and the others go on; ``done`` says how
    many were changed (``{n}``). How many were."""
    changed = 0
    for obj in queryset:
        try:
            act(obj)
        except ServiceError as refusal:
            messages.error(request, refusal.message)
            continue
        changed += 1
    if changed:
        messages.success(request, done.format(n=changed))
    return changed


class OperatorActions:
    """For a ModelAdmin whose actions change state (suspend, credit, refund, take down, yank,
    retry, cancel): each is declared ``@admin.action(..., permissions=["operate"])`` and
    needs the model's change permission, also where the rows themselves are read-only here.
    A staff member who may only view them does not get the actions."""

    def has_operate_permission(self, request) -> bool:
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.{get_permission_codename('change', opts)}")


class SafeChangelist:
    """For every ModelAdmin (a test holds each registered one to it): a changelist lookup the
    database cannot hold is the admin's "bad lookup" answer, a redirect to ``?e=1``, not a
    500. Django turns only the errors of building the query into that; these come when it
    runs: a number PostgreSQL's numeric cannot hold (``?amount__gte=1e999999``, DataError), an
    invalid regular expression (``__regex``: DataError, on SQLite an OperationalError), a year
    Python's dates cannot hold (``__year=99999``, ValueError), an integer too large for SQLite
    (``__in``, OverflowError)."""

    def get_changelist_instance(self, request):
        using = router.db_for_read(self.model)
        # Inside a transaction (a test's, or ATOMIC_REQUESTS) the failed statement gets a
        # savepoint, so the rest of the request can still query. Outside one, none: on SQLite
        # a transaction begins IMMEDIATE, taking the write lock for a page that only reads.
        in_transaction = connections[using].in_atomic_block
        try:
            with transaction.atomic(using=using) if in_transaction else nullcontext():
                return super().get_changelist_instance(request)
        except (DataError, ValueError, OverflowError) as error:
            raise IncorrectLookupParameters(error) from error
        except OperationalError as error:
            # SQLite's answer to a Python function's error in a query (Django's regexp(), on
            # an invalid expression); any other OperationalError (a locked database) stays one.
            if "user-defined function raised exception" not in str(error):
                raise
            raise IncorrectLookupParameters(error) from error


class ConsoleAdmin(SafeChangelist, admin.ModelAdmin):
    """The base of this project's ModelAdmins (or ``SafeChangelist`` beside Django's own)."""

    # A URL typed without a scheme is https (Django 6's default; 5.x warns until it is said).
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}


class ReadOnlyAdmin(ConsoleAdmin):
    """Rows shown, never added, edited or deleted in the console: they change through the
    services (and the admin's actions, where it has any), which check and audit."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(User)
class UserAdmin(SafeChangelist, BaseUserAdmin):
    ordering = ["email"]
    list_display = ["email", "name", "is_staff", "is_active", "date_joined"]
    search_fields = ["email", "name"]
    fieldsets = [
        (None, {"fields": ["email", "password", "name"]}),
        ("Permissions", {"fields": ["is_active", "is_staff", "is_superuser", "groups"]}),
        ("Dates", {"fields": ["last_login", "date_joined"]}),
    ]
    add_fieldsets = [(None, {"classes": ["wide"], "fields": ["email", "password1", "password2"]})]
    filter_horizontal = ["groups"]
    # Who may grant rights: only a superuser. A staff member who may change users edits their
    # names and e-mails, but could otherwise make anyone, themselves included, a superuser.
    privilege_fields = ["is_staff", "is_superuser", "groups", "user_permissions"]

    def get_readonly_fields(self, request, obj=None):
        readonly = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            readonly += self.privilege_fields
        return readonly

    def has_change_permission(self, request, obj=None) -> bool:
        # Nor may they edit a superuser (reset the password and sign in as them).
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_change_permission(request, obj)

    # Deleting an account removes it from each organisation first (services.user_delete):
    # its keys are revoked and each organisation's audit log says so. The sole owner of an
    # organisation is shown as protected and kept until someone else owns it.
    def get_deleted_objects(self, objs, request):
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # Memberships are read-only in the console (MembershipAdmin); these go through
        # membership_remove with the rules of a removal.
        perms_needed.discard(Membership._meta.verbose_name)
        for user in objs:
            protected += [
                f"{user.email} is the only owner of {tenant.name} ({tenant.slug}): make "
                "someone else owner first"
                for tenant in services.sole_owned_tenants(user)
            ]
        return deleted, counts, perms_needed, protected

    def delete_model(self, request, obj):
        services.user_delete(user=obj, actor=operator_actor(request))

    def delete_queryset(self, request, queryset):
        for user in queryset:
            services.user_delete(user=user, actor=operator_actor(request))


# Registered by their apps (django.contrib.auth's and django-otp's admin modules, imported
# above) without SafeChangelist: the same pages, registered again with it.
admin.site.unregister(Group)
admin.site.unregister(TOTPDevice)


@admin.register(Group)
class GroupAdmin(SafeChangelist, BaseGroupAdmin):
    pass


@admin.register(TOTPDevice)
class TOTPDeviceAdmin(SafeChangelist, BaseTOTPDeviceAdmin):
    pass


class MembershipInline(admin.TabularInline):
    """Read-only: members and roles change through the organisation's own dashboard or API,
    which keep an owner and write the audit log."""

    model = Membership
    extra = 0
    can_delete = False
    fields = ["user", "role", "created_at"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    can_delete = False
    fields = ["name", "prefix", "scopes", "status", "expires_at", "last_used_at", "revoked_at"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def status(self, obj: ApiKey) -> str:
        return obj.status


@admin.register(Tenant)
class TenantAdmin(OperatorActions, ConsoleAdmin):
    list_display = ["slug", "name", "status", "created_at"]
    list_filter = ["status"]
    search_fields = ["slug", "name"]
    # The slug is the owner in every model address, allowlist and group name: fixed here.
    readonly_fields = ["slug", "group", "created_at", "status", "suspended_reason", "deleted_at"]
    inlines = [MembershipInline, ApiKeyInline]
    actions = ["suspend", "reactivate"]

    def has_delete_permission(self, request, obj=None) -> bool:
        # Deleting an organisation must crypto-shred its artifacts: `manage.py delete_tenant`.
        return False

    @admin.action(description="Suspend selected organisations", permissions=["operate"])
    def suspend(self, request, queryset):
        actor = operator_actor(request)
        act_on_each(
            request,
            queryset,
            lambda tenant: services.tenant_suspend(
                tenant=tenant, reason="Suspended by an operator.", actor=actor
            ),
            "Suspended {n} organisation(s).",
        )

    @admin.action(description="Reactivate selected organisations", permissions=["operate"])
    def reactivate(self, request, queryset):
        actor = operator_actor(request)
        act_on_each(
            request,
            queryset,
            lambda tenant: services.tenant_reactivate(tenant=tenant, actor=actor),
            "Reactivated {n} organisation(s).",
        )


@admin.register(Membership)
class MembershipAdmin(ReadOnlyAdmin):
    """Read-only, as on the organisation's page (``MembershipInline``)."""

    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__email", "tenant__slug"]


@admin.register(Invitation)
class InvitationAdmin(OperatorActions, ConsoleAdmin):
    list_display = [
        "email",
        "tenant",
        "role",
        "created_at",
        "expires_at",
        "accepted_at",
        "revoked_at",
    ]
    search_fields = ["email", "tenant__slug"]
    exclude = ["token_digest"]
    actions = ["revoke"]
    readonly_fields = [
        "public_id",
        "tenant",
        "email",
        "role",
        "invited_by",
        "created_at",
        "expires_at",
        "accepted_at",
        "accepted_by",
        "revoked_at",
    ]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # As for keys: deleting skips the service and its audit row; revoke instead.
        return False

    @admin.action(description="Revoke selected invitations", permissions=["operate"])
    def revoke(self, request, queryset):
        revoked = 0
        for invitation in queryset.select_related("tenant"):
            try:
                services.invitation_revoke(invitation=invitation, actor=operator_actor(request))
            except Conflict:
                continue  # accepted or revoked already: nothing to do
            revoked += 1
        messages.success(
            request, f"Revoked {revoked} invitation(s); accepted or revoked ones were left."
        )


@admin.register(ApiKey)
class ApiKeyAdmin(OperatorActions, ConsoleAdmin):
    list_display = [
        "name",
        "tenant",
        "prefix",
        "status",
        "last_used_at",
        "expires_at",
        "revoked_at",
    ]
    # No filter by tenant: it would list every organisation on each page. Search its slug.
    search_fields = ["name", "prefix", "tenant__slug"]
    exclude = ["digest"]  # never shown, not even hashed
    readonly_fields = [
        "public_id",
        "tenant",
        "name",
        "prefix",
        "scopes",
        "allowed_models",
        "allowed_ips",
        "expires_at",
        "last_used_at",
        "revoked_at",
        "created_by",
        "created_at",
        "rotated_from",
    ]
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # Deleting skips the service: no audit row, and the key cache keeps the deleted key
        # working for a while. "Revoke selected keys" stops it at once and is audited.
        return False

    @admin.display()
    def status(self, obj: ApiKey) -> str:
        return obj.status

    @admin.action(description="Revoke selected keys", permissions=["operate"])
    def revoke(self, request, queryset):
        for key in queryset.select_related("tenant"):
            services.api_key_revoke(key=key, actor=operator_actor(request))
        messages.success(request, f"Revoked {queryset.count()} key(s).")


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "tenant",
        "action",
        "actor_label",
        "target_type",
        "target_id",
        "ip",
    ]
    list_filter = ["action"]
    search_fields = ["actor_label", "target_id", "tenant__slug"]
    date_hierarchy = "created_at"
    # The tenant may be null, so the changelist would not join it itself: a query per row.
    list_select_related = ["tenant"]
    # The log only grows; counting all of it on every page is a full scan.
    show_full_result_count = False
