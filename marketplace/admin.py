from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm

from accounts.admin import OperatorActions, ReadOnlyAdmin, operator_actor
from accounts.exceptions import ServiceError
from marketplace import listings, services
from marketplace.models import Artifact, Listing, ModelVersion, TenantKey


@admin.register(TenantKey)
class TenantKeyAdmin(ReadOnlyAdmin):
    list_display = ["public_id", "tenant", "status", "kek_id", "created_at", "destroyed_at"]
    list_filter = ["status"]
    search_fields = ["public_id", "tenant__slug"]
    exclude = ["wrapped"]  # key material never reaches a page, not even wrapped


@admin.register(Artifact)
class ArtifactAdmin(ReadOnlyAdmin):
    """Shown only: which sealed blobs make a version's file is the vault's, and a version is
    immutable (an edit of ``chunk_blobs`` here broke a version, with no audit row)."""

    list_display = ["public_id", "tenant", "size", "sha256", "key", "created_at"]
    search_fields = ["public_id", "sha256", "tenant__slug"]


class ReasonForm(ActionForm):
    reason = forms.CharField(required=False, max_length=500)


@admin.register(Listing)
class ListingAdmin(OperatorActions, ReadOnlyAdmin):
    """Listings are the publishers' to edit; operators take them down (consumers get 451 with
    the reason) and restore them."""

    list_display = ["title", "model", "visibility", "price_per_call", "taken_down_at"]
    list_filter = ["visibility", ("taken_down_at", admin.EmptyFieldListFilter)]
    search_fields = ["title", "model__name", "model__tenant__slug"]
    list_select_related = ["model__tenant"]
    actions = ["take_down", "restore"]
    action_form = ReasonForm

    @admin.action(
        description="Take down the selected listings (give the reason below)",
        permissions=["operate"],
    )
    def take_down(self, request, queryset):
        reason = request.POST.get("reason", "").strip()
        if not reason:
            messages.error(request, "A take-down needs a reason; consumers are shown it.")
            return
        for listing in queryset.select_related("model__tenant"):
            listings.listing_take_down(
                listing=listing, reason=reason, actor=operator_actor(request)
            )
        messages.success(request, f"Took down {queryset.count()} listing(s).")

    @admin.action(description="Restore the selected listings", permissions=["operate"])
    def restore(self, request, queryset):
        for listing in queryset.select_related("model__tenant"):
            listings.listing_restore(listing=listing, actor=operator_actor(request))
        messages.success(request, f"Restored {queryset.count()} listing(s).")


@admin.register(ModelVersion)
class ModelVersionAdmin(OperatorActions, ReadOnlyAdmin):
    list_display = ["public_id", "model", "number", "format", "status", "created_at"]
    list_filter = ["status", "format"]
    search_fields = ["public_id", "model__name", "model__tenant__slug"]
    list_select_related = ["model__tenant"]
    exclude = ["example_input"]
    actions = ["yank"]
    action_form = ReasonForm

    @admin.action(
        description="Yank the selected versions (give the reason below)", permissions=["operate"]
    )
    def yank(self, request, queryset):
        reason = request.POST.get("reason", "").strip()
        if not reason:
            messages.error(request, "Yanking needs a reason; callers of the version are shown it.")
            return
        for version in queryset.select_related("model__tenant"):
            try:
                services.version_yank(version=version, reason=reason, actor=operator_actor(request))
            except ServiceError as exc:
                messages.error(request, exc.message)
            else:
                messages.success(request, f"Yanked {version.model.ref} v{version.number}.")
