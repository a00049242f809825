"""The operators' console for accounts. Staff only; secrets are never shown."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from accounts import services
from accounts.models import ApiKey, AuditEvent, Invitation, Membership, Tenant, User
from accounts.tenancy import client_ip


def _operator(request) -> services.Actor:
    return services.Actor(user=request.user, ip=client_ip(request))


@admin.register(User)
class UserAdmin(BaseUserAdmin):
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


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    fields = ["user", "role", "created_at"]
    readonly_fields = ["created_at"]
    raw_id_fields = ["user"]


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
class TenantAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "status", "created_at"]
    list_filter = ["status"]
    search_fields = ["slug", "name"]
    readonly_fields = ["group", "created_at", "status", "suspended_reason"]
    inlines = [MembershipInline, ApiKeyInline]
    actions = ["suspend", "reactivate"]

    def has_delete_permission(self, request, obj=None) -> bool:
        # Deleting an organisation must crypto-shred its artifacts: `manage.py delete_tenant`.
        return False

    @admin.action(description="Suspend selected organisations")
    def suspend(self, request, queryset):
        for tenant in queryset:
            services.tenant_suspend(
                tenant=tenant, reason="Suspended by an operator.", actor=_operator(request)
            )
        messages.success(request, f"Suspended {queryset.count()} organisation(s).")

    @admin.action(description="Reactivate selected organisations")
    def reactivate(self, request, queryset):
        for tenant in queryset:
            services.tenant_reactivate(tenant=tenant, actor=_operator(request))
        messages.success(request, f"Reactivated {queryset.count()} organisation(s).")


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__email", "tenant__slug"]
    raw_id_fields = ["user", "tenant"]
    readonly_fields = ["public_id", "created_at"]


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
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


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "tenant",
        "prefix",
        "status",
        "last_used_at",
        "expires_at",
        "revoked_at",
    ]
    search_fields = ["name", "prefix", "tenant__slug"]
    list_filter = ["tenant"]
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

    @admin.display()
    def status(self, obj: ApiKey) -> str:
        return obj.status

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset):
        for key in queryset.select_related("tenant"):
            services.api_key_revoke(key=key, actor=_operator(request))
        messages.success(request, f"Revoked {queryset.count()} key(s).")


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
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

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
