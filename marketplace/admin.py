from django.contrib import admin

from marketplace.models import Artifact, TenantKey


@admin.register(TenantKey)
class TenantKeyAdmin(admin.ModelAdmin):
    list_display = ["public_id", "tenant", "status", "kek_id", "created_at", "destroyed_at"]
    list_filter = ["status"]
    search_fields = ["public_id", "tenant__slug"]
    exclude = ["wrapped"]  # key material never reaches a page, not even wrapped
    readonly_fields = ["public_id", "tenant", "status", "kek_id", "created_at", "destroyed_at"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Artifact)
class ArtifactAdmin(admin.ModelAdmin):
    list_display = ["public_id", "tenant", "size", "sha256", "key", "created_at"]
    search_fields = ["public_id", "sha256", "tenant__slug"]
    readonly_fields = [
        "public_id",
        "tenant",
        "key",
        "storage_name",
        "size",
        "ciphertext_size",
        "sha256",
        "created_at",
    ]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
