"""The listings and catalogue API: publishing, the public catalogue, subscriptions, shares,
access requests and download grants.

Scopes: publishing and every publisher-side decision need ``admin`` (the publisher's admin
role); subscribing, requesting access and cancelling need ``inference`` (what a consumer
subscribes for, and a read-only key or viewer should not commit its organisation); reading
needs ``models:read``. The catalogue itself is public: signed-out callers see public listings.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView, ListAPIView
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.serializers import StrictSerializer
from accounts.api.views import CreatedCursorPagination, status_parameter, status_wanted
from accounts.exceptions import NotFound
from accounts.models import Scope
from accounts.permissions import PublicOrTenantMember
from accounts.tenancy import Access, TenantScopedMixin, request_actor
from marketplace import listings, selectors
from marketplace.models import AccessRequest, Entitlement, Listing, Model, ModelVersion, Task

# --- serializers ------------------------------------------------------------------------------


def _price_field() -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=12, decimal_places=6, read_only=True)


class CatalogueItemSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    ref = serializers.CharField(source="model.ref", read_only=True)
    owner = serializers.CharField(source="model.tenant.slug", read_only=True)
    publisher = serializers.CharField(source="model.tenant.name", read_only=True)
    name = serializers.CharField(source="model.name", read_only=True)
    task = serializers.CharField(source="model.task", read_only=True)
    price_per_call = _price_field()
    price_per_second = _price_field()
    is_free = serializers.BooleanField(read_only=True)
    url = serializers.SerializerMethodField()
    subscribe_url = serializers.SerializerMethodField()

    class Meta:
        model = Listing
        fields = [
            "id",
            "ref",
            "owner",
            "publisher",
            "name",
            "title",
            "summary",
            "task",
            "license",
            "tags",
            "price_per_call",
            "price_per_second",
            "currency",
            "free_calls_per_month",
            "is_free",
            "gated",
            "visibility",
            "published_at",
            "url",
            "subscribe_url",
        ]
        read_only_fields = fields

    def get_url(self, obj: Listing) -> str:
        return f"/catalogue/{obj.model.ref}/"

    def get_subscribe_url(self, obj: Listing) -> str:
        return f"/api/v1/catalogue/{obj.model.ref}/subscribe"


class CatalogueVersionSerializer(serializers.ModelSerializer):
    # The catalogue shows only runnable versions.
    status = serializers.ChoiceField(
        choices=[ModelVersion.Status.READY, ModelVersion.Status.DEPRECATED], read_only=True
    )
    aliases = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = ["number", "label", "format", "status", "sunset_at", "aliases"]
        read_only_fields = fields

    def get_aliases(self, obj: ModelVersion) -> list[str]:
        return sorted(a.name for a in obj.aliases.all())


class ViewerAccessSerializer(serializers.Serializer):
    publisher = serializers.BooleanField(help_text="The caller's organisation publishes it.")
    subscribed = serializers.BooleanField()
    entitlement = serializers.CharField(allow_null=True, help_text="The live entitlement's id.")
    can_download = serializers.BooleanField()
    access_request = serializers.CharField(
        allow_null=True, help_text="Status of the latest access request (gated listings)."
    )


class CatalogueDetailSerializer(CatalogueItemSerializer):
    card_html = serializers.CharField(read_only=True, help_text="The card, rendered and sanitised.")
    versions = serializers.SerializerMethodField()
    access = serializers.SerializerMethodField()

    class Meta(CatalogueItemSerializer.Meta):
        fields = [
            *CatalogueItemSerializer.Meta.fields,
            "card_html",
            "example_input",
            "platform_fee_percent",
            "versions",
            "access",
        ]
        read_only_fields = fields

    @extend_schema_field(CatalogueVersionSerializer(many=True))
    def get_versions(self, obj: Listing) -> list[dict]:
        return CatalogueVersionSerializer(listings.catalogue_versions(obj.model), many=True).data

    @extend_schema_field(ViewerAccessSerializer)
    def get_access(self, obj: Listing) -> dict:
        state = listings.viewer_state(self.context.get("access"), obj)
        entitlement = state["entitlement"]
        request = state["access_request"]
        return {
            "publisher": state["publisher"],
            "subscribed": entitlement is not None,
            "entitlement": entitlement.public_id if entitlement else None,
            "can_download": bool(entitlement and entitlement.can_download),
            "access_request": request.status if request else None,
        }


class ListingSerializer(CatalogueItemSerializer):
    """The publisher's view of its listing."""

    publisher_share_percent = serializers.DecimalField(
        max_digits=5, decimal_places=2, read_only=True
    )

    class Meta(CatalogueItemSerializer.Meta):
        fields = [
            *CatalogueItemSerializer.Meta.fields,
            "card_markdown",
            "card_html",
            "example_input",
            "platform_fee_percent",
            "publisher_share_percent",
            "updated_at",
            "taken_down_at",
            "takedown_reason",
        ]
        read_only_fields = fields


class ListingPublishSerializer(StrictSerializer):
    """Every field is optional: an omitted field keeps its current value (its default when
    the listing is first published)."""

    visibility = serializers.ChoiceField(choices=Listing.Visibility.choices, required=False)
    gated = serializers.BooleanField(required=False)
    title = serializers.CharField(max_length=120, required=False)
    summary = serializers.CharField(max_length=300, required=False, allow_blank=True)
    card_markdown = serializers.CharField(
        max_length=100_000, required=False, allow_blank=True, trim_whitespace=False
    )
    license = serializers.CharField(
        max_length=64,
        required=False,
        help_text="An SPDX identifier (MIT, Apache-2.0, CC-BY-4.0, …), 'proprietary' or "
        "'LicenseRef-<name>'.",
    )
    tags = serializers.ListField(
        child=serializers.CharField(max_length=64),
        required=False,
        help_text="Up to 20 lowercase slugs.",
    )
    # Parsed here, checked by the service (sign, places, range) so every caller gets one rule.
    price_per_call = serializers.DecimalField(
        max_digits=None, decimal_places=None, required=False, help_text="Decimal string."
    )
    price_per_second = serializers.DecimalField(
        max_digits=None,
        decimal_places=None,
        required=False,
        help_text="Per second of compute; decimal string.",
    )
    currency = serializers.CharField(max_length=8, required=False, help_text="e.g. 'usd'")
    free_calls_per_month = serializers.IntegerField(min_value=0, max_value=10**9, required=False)
    example_input = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text="Shown on the listing and filled into the playground; null removes it.",
    )


class SubscriptionSerializer(serializers.ModelSerializer):
    """An entitlement as the consumer sees it."""

    id = serializers.CharField(source="public_id", read_only=True)
    model = serializers.CharField(source="model.ref", read_only=True)
    title = serializers.SerializerMethodField()

    class Meta:
        model = Entitlement
        fields = ["id", "model", "title", "kind", "can_download", "created_at"]
        read_only_fields = fields

    def get_title(self, obj: Entitlement) -> str | None:
        listing = getattr(obj.model, "listing", None)
        return listing.title if listing else None


class EntitlementSerializer(serializers.ModelSerializer):
    """An entitlement as the publisher sees it."""

    id = serializers.CharField(source="public_id", read_only=True)
    tenant = serializers.CharField(source="tenant.slug", read_only=True)
    tenant_name = serializers.CharField(source="tenant.name", read_only=True)

    class Meta:
        model = Entitlement
        fields = ["id", "tenant", "tenant_name", "kind", "can_download", "created_at"]
        read_only_fields = fields


class AccessRequestSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    model = serializers.CharField(source="listing.model.ref", read_only=True)
    tenant = serializers.CharField(source="tenant.slug", read_only=True)
    tenant_name = serializers.CharField(source="tenant.name", read_only=True)

    class Meta:
        model = AccessRequest
        fields = [
            "id",
            "model",
            "tenant",
            "tenant_name",
            "message",
            "status",
            "created_at",
            "decided_at",
        ]
        read_only_fields = fields


class AccessRequestCreateSerializer(StrictSerializer):
    message = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class ShareSerializer(StrictSerializer):
    tenant = serializers.SlugField(max_length=50, help_text="The organisation's slug.")


class CatalogueQuerySerializer(serializers.Serializer):
    q = serializers.CharField(required=False, allow_blank=True, max_length=200, default="")
    task = serializers.ChoiceField(
        choices=Task.choices, required=False, allow_blank=True, default=""
    )
    license = serializers.CharField(required=False, allow_blank=True, max_length=64, default="")
    publisher = serializers.CharField(required=False, allow_blank=True, max_length=50, default="")
    tag = serializers.CharField(required=False, allow_blank=True, max_length=64, default="")
    currency = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=3,
        default="",
        help_text="Only listings priced in this currency (ISO 4217, e.g. usd). Prices compare "
        "only within a currency: use it with max_price_per_call.",
    )
    # As the column and the catalogue page's form: PostgreSQL cannot compare a numeric of a
    # million digits (1e999999), a 500 there.
    max_price_per_call = serializers.DecimalField(
        max_digits=12,
        decimal_places=6,
        min_value=0,
        required=False,
        allow_null=True,
        default=None,
    )
    free = serializers.BooleanField(required=False, default=False)
    sort = serializers.ChoiceField(
        choices=listings.CATALOGUE_SORTS,
        required=False,
        default="newest",
        help_text="price: grouped by currency, cheapest first in each.",
    )

    def validate_currency(self, value: str) -> str:
        if not value:
            return value
        problem = listings.currency_problem(value.strip().lower())
        if problem:
            raise serializers.ValidationError(problem)
        return value.strip().lower()

    def validate_tag(self, value: str) -> str:
        value = value.strip().lower()
        if value and not listings.TAG_RE.fullmatch(value):
            raise serializers.ValidationError(
                f"'{value}' is not a tag: tags are lowercase letters, digits and single hyphens."
            )
        return value


# --- helpers ----------------------------------------------------------------------------------


def _access(request: Request) -> Access | None:
    return request.auth if isinstance(request.auth, Access) else None


def _listing_of(model: Model) -> Listing:
    listing = getattr(model, "listing", None)
    if listing is None:
        raise NotFound(f"{model.ref} is not listed. PUT its listing to publish it.")
    return listing


def _publisher_entitlement(model: Model, entitlement_id: str) -> Entitlement:
    entitlement = (
        Entitlement.objects.select_related("tenant__group", "model__tenant")
        .filter(model=model, public_id=entitlement_id, revoked_at__isnull=True)
        .first()
    )
    if entitlement is None:
        raise NotFound(f"{model.ref} has no live entitlement {entitlement_id}.")
    return entitlement


def _created_or_ok(created: bool) -> int:
    return status.HTTP_201_CREATED if created else status.HTTP_200_OK


# --- publishing -------------------------------------------------------------------------------


class ListingView(APIView):
    required_scope = {"GET": Scope.MODELS_READ, "PUT": Scope.ADMIN, "DELETE": Scope.ADMIN}

    @extend_schema(responses=ListingSerializer)
    def get(self, request, owner: str, name: str):
        """The model's listing, for anyone who may view the model."""
        model = selectors.model_for_access(request.auth, owner=owner, name=name)
        return Response(ListingSerializer(_listing_of(model)).data)

    @extend_schema(
        request=ListingPublishSerializer, responses={200: ListingSerializer, 201: ListingSerializer}
    )
    def put(self, request, owner: str, name: str):
        """Publish the model (201) or update its listing (200). Omitted fields keep their
        current values. Needs the publisher's ``admin`` scope. The card is Markdown,
        rendered and sanitised into ``card_html``; the platform fee in force at first
        publication is recorded on the listing."""
        model = selectors.model_for_access(request.auth, owner=owner, name=name, perm="publish")
        data = ListingPublishSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        created = not Listing.objects.filter(model=model).exists()
        listing = listings.listing_publish(
            model=model, actor=request_actor(request), **data.validated_data
        )
        return Response(ListingSerializer(listing).data, status=_created_or_ok(created))

    @extend_schema(responses={204: None})
    def delete(self, request, owner: str, name: str):
        """Unpublish: the listing becomes private and leaves the catalogue. It is kept (card,
        prices, requests), so a PUT with ``visibility`` republishes it; consumers already
        entitled keep their access until it is revoked."""
        model = selectors.model_for_access(request.auth, owner=owner, name=name, perm="publish")
        listings.listing_unpublish(listing=_listing_of(model), actor=request_actor(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- the catalogue ----------------------------------------------------------------------------


class CataloguePagination(PageNumberPagination):
    """Pages of the catalogue. A ``page`` or ``page_size`` that is no whole number from 1, or a
    page past the last, is a 400 naming the parameter: DRF answered the first and the last as
    a 404 "not_found" (read as a missing endpoint) and ignored a bad ``page_size``."""

    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100

    def get_page_size(self, request):
        wanted = request.query_params.get(self.page_size_query_param)
        if wanted is None:
            return self.page_size
        return min(_whole(self.page_size_query_param, wanted), self.max_page_size)

    def get_page_number(self, request, paginator):
        wanted = request.query_params.get(self.page_query_param)
        if wanted is None:
            return 1
        if wanted in self.last_page_strings:  # ?page=last, as DRF takes it
            return max(paginator.num_pages, 1)
        number = _whole(self.page_query_param, wanted)
        last = max(paginator.num_pages, 1)
        if number > last:
            raise serializers.ValidationError(
                {self.page_query_param: f"Page {number} is past the last page ({last})."}
            )
        return number

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"]["minimum"] = 1
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"]["maximum"] = self.max_page_size
                parameter["description"] = (
                    f"Results per page, {self.page_size} unless given; at most "
                    f"{self.max_page_size} (a larger number gives {self.max_page_size})."
                )
        return parameters


def _whole(name: str, value: str) -> int:
    # ``is_number``: ASCII digits that fit an integer column (int() refused a string of over
    # 4,300 digits with a ValueError, a 500).
    if not selectors.is_number(value) or int(value) < 1:
        raise serializers.ValidationError({name: f"A whole number from 1, not '{value[:40]}'."})
    return int(value)


class CatalogueView(ListAPIView):
    """Public listings: search, filter, sort. No authentication needed (a key that comes
    along must be good, and its organisation active)."""

    permission_classes = [PublicOrTenantMember]
    serializer_class = CatalogueItemSerializer
    pagination_class = CataloguePagination

    def get_queryset(self):
        query = CatalogueQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        return listings.catalogue_search(**query.validated_data)

    @extend_schema(parameters=[CatalogueQuerySerializer])
    def get(self, request, *args, **kwargs):
        """``q`` matches every word against the model's name and description and the
        listing's title, summary and tags. ``sort`` is ``newest`` (default), ``most_used``
        (live subscriptions) or ``price`` (per call, then per second, ascending)."""
        return super().get(request, *args, **kwargs)


class CatalogueDetailView(APIView):
    permission_classes = [PublicOrTenantMember]

    @extend_schema(responses=CatalogueDetailSerializer)
    def get(self, request, owner: str, name: str):
        """A public or unlisted listing, with its card, prices and runnable versions. A
        private one answers 404 unless the caller's organisation publishes it or was given
        access."""
        access = _access(request)
        listing = listings.listing_for_viewer(access, owner=owner, name=name)
        return Response(CatalogueDetailSerializer(listing, context={"access": access}).data)


class SubscribeView(APIView):
    required_scope = Scope.INFERENCE

    @extend_schema(
        request=None, responses={200: SubscriptionSerializer, 201: SubscriptionSerializer}
    )
    def post(self, request, owner: str, name: str):
        """Subscribe your organisation (201; 200 if it already has access). Free listings
        only for now: a paid one answers 402. A gated one needs an approved access request
        (403 until then)."""
        listing = listings.listing_for_viewer(request.auth, owner=owner, name=name)
        tenant = request.auth.tenant
        existed = listings.entitlement_live(model=listing.model, tenant=tenant) is not None
        entitlement = listings.listing_subscribe(
            listing=listing, tenant=tenant, actor=request_actor(request)
        )
        return Response(
            SubscriptionSerializer(entitlement).data, status=_created_or_ok(not existed)
        )


class RequestAccessView(APIView):
    required_scope = Scope.INFERENCE

    @extend_schema(
        request=AccessRequestCreateSerializer,
        responses={200: AccessRequestSerializer, 201: AccessRequestSerializer},
    )
    def post(self, request, owner: str, name: str):
        """Ask the publisher of a gated listing for access (201). A pending or approved
        request is returned as it is (200)."""
        listing = listings.listing_for_viewer(request.auth, owner=owner, name=name)
        data = AccessRequestCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        before = set(listing.access_requests.values_list("pk", flat=True))
        access_request = listings.access_request_create(
            listing=listing,
            tenant=request.auth.tenant,
            actor=request_actor(request),
            message=data.validated_data["message"],
        )
        return Response(
            AccessRequestSerializer(access_request).data,
            status=_created_or_ok(access_request.pk not in before),
        )


# --- the consumer's subscriptions -------------------------------------------------------------


class SubscriptionsView(TenantScopedMixin, ListAPIView):
    """Your organisation's live entitlements: subscriptions and models shared with it."""

    queryset = Entitlement.objects.filter(revoked_at__isnull=True).select_related(
        "model__tenant", "model__listing"
    )
    model_field = "model"
    serializer_class = SubscriptionSerializer
    pagination_class = CreatedCursorPagination
    required_scope = Scope.MODELS_READ


class SubscriptionDetailView(TenantScopedMixin, GenericAPIView):
    queryset = Entitlement.objects.filter(revoked_at__isnull=True).select_related(
        "model__tenant", "model__listing", "tenant__group"
    )
    model_field = "model"
    serializer_class = SubscriptionSerializer
    lookup_field = "public_id"
    lookup_url_kwarg = "id"
    required_scope = {"GET": Scope.MODELS_READ, "DELETE": Scope.INFERENCE}

    def get(self, request, id: str):
        return Response(SubscriptionSerializer(self.get_object()).data)

    @extend_schema(responses={204: None})
    def delete(self, request, id: str):
        """Unsubscribe (or give up a share). Takes effect on the next request."""
        listings.subscription_cancel(entitlement=self.get_object(), actor=request_actor(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- the publisher's side ---------------------------------------------------------------------


class AccessRequestsView(ListAPIView):
    """Access requests to the model's gated listing, newest first."""

    serializer_class = AccessRequestSerializer
    pagination_class = CreatedCursorPagination
    required_scope = Scope.ADMIN

    def get_queryset(self):
        model = selectors.model_for_access(self.request.auth, perm="publish", **self.kwargs)
        requests = AccessRequest.objects.filter(listing__model=model).select_related(
            "listing__model__tenant", "tenant"
        )
        if wanted := status_wanted(self.request, AccessRequest.Status.values):
            requests = requests.filter(status=wanted)
        return requests

    @extend_schema(parameters=[status_parameter(AccessRequest.Status.values)])
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class AccessRequestDecisionView(TenantScopedMixin, GenericAPIView):
    queryset = AccessRequest.objects.select_related("listing__model__tenant", "tenant__group")
    tenant_field = "listing__model__tenant"
    model_field = "listing__model"
    lookup_field = "public_id"
    lookup_url_kwarg = "id"
    required_scope = Scope.ADMIN
    decision = "approve"

    @extend_schema(request=None, responses=AccessRequestSerializer)
    def post(self, request, id: str):
        """Approve (on a free listing this subscribes the requester at once) or decline a
        pending request (a decided one answers 409); or withdraw an approval, which ends the
        subscription it allowed (anything but an approval answers 409)."""
        service = {
            "approve": listings.access_request_approve,
            "decline": listings.access_request_decline,
            "withdraw": listings.access_request_withdraw,
        }[self.decision]
        decided = service(request=self.get_object(), actor=request_actor(request))
        return Response(AccessRequestSerializer(decided).data)


class SharesView(APIView):
    required_scope = Scope.ADMIN

    @extend_schema(
        request=ShareSerializer, responses={200: EntitlementSerializer, 201: EntitlementSerializer}
    )
    def post(self, request, owner: str, name: str):
        """Share the model with an organisation: it may view and run it (201; 200 if it
        already has access)."""
        model = selectors.model_for_access(request.auth, owner=owner, name=name, perm="publish")
        data = ShareSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        slug = data.validated_data["tenant"]
        existed = Entitlement.objects.filter(
            model=model, tenant__slug=slug, revoked_at__isnull=True
        ).exists()
        entitlement = listings.model_share(
            model=model, tenant_slug=slug, actor=request_actor(request)
        )
        return Response(EntitlementSerializer(entitlement).data, status=_created_or_ok(not existed))

    @extend_schema(
        parameters=[
            OpenApiParameter("tenant", str, required=True, description="The organisation's slug.")
        ],
        responses={204: None},
    )
    def delete(self, request, owner: str, name: str):
        """Stop sharing the model with an organisation (``?tenant=<slug>``); it loses access
        on its next request."""
        model = selectors.model_for_access(request.auth, owner=owner, name=name, perm="publish")
        # OpenAPI gives a DELETE no body, so the schema names the tenant in the query; a JSON
        # body {"tenant": ...}, as first documented, is still read.
        data = ShareSerializer(data=request.data or {"tenant": request.query_params.get("tenant")})
        data.is_valid(raise_exception=True)
        listings.model_share_revoke(
            model=model, tenant_slug=data.validated_data["tenant"], actor=request_actor(request)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class EntitlementsView(ListAPIView):
    """Who holds live access to the model: subscribers and organisations it is shared with."""

    serializer_class = EntitlementSerializer
    pagination_class = CreatedCursorPagination
    required_scope = Scope.ADMIN

    def get_queryset(self):
        model = selectors.model_for_access(self.request.auth, perm="publish", **self.kwargs)
        return Entitlement.objects.filter(model=model, revoked_at__isnull=True).select_related(
            "tenant"
        )


class EntitlementDetailView(APIView):
    required_scope = Scope.ADMIN

    @extend_schema(responses={204: None})
    def delete(self, request, owner: str, name: str, id: str):
        """Revoke a consumer's access (on a gated listing its approval is withdrawn too)."""
        model = selectors.model_for_access(request.auth, owner=owner, name=name, perm="publish")
        listings.entitlement_revoke(
            entitlement=_publisher_entitlement(model, id), actor=request_actor(request)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class DownloadGrantView(APIView):
    required_scope = Scope.ADMIN

    @extend_schema(request=None, responses=EntitlementSerializer)
    def post(self, request, owner: str, name: str, id: str):
        """Let the entitled organisation download the model's weights (off by default)."""
        model = selectors.model_for_access(request.auth, owner=owner, name=name, perm="publish")
        entitlement = listings.download_grant(
            entitlement=_publisher_entitlement(model, id), actor=request_actor(request)
        )
        return Response(EntitlementSerializer(entitlement).data)

    @extend_schema(request=None, responses={200: EntitlementSerializer})
    def delete(self, request, owner: str, name: str, id: str):
        model = selectors.model_for_access(request.auth, owner=owner, name=name, perm="publish")
        entitlement = listings.download_revoke(
            entitlement=_publisher_entitlement(model, id), actor=request_actor(request)
        )
        return Response(EntitlementSerializer(entitlement).data)
