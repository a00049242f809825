from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import services
from accounts.api import serializers as s
from accounts.models import ApiKey, AuditEvent, Invitation, Membership, Scope
from accounts.tenancy import TenantScopedMixin, request_actor


class CreatedCursorPagination(CursorPagination):
    """Newest first, by a cursor. A cursor the list did not give (undecodable, or a position
    that is no date this list could hold) is a 400 naming ``cursor``: DRF answered a 404 "not
    found" for some, which reads as a missing endpoint, a 400 without the parameter for others,
    and a 500 for a date at the edge of the calendar (9999-12-31 at -14:00 overflows UTC)."""

    ordering = "-created_at"
    invalid_cursor_message = (
        "This cursor was not given by this list: follow the 'next' or 'previous' link as it "
        "came, or leave 'cursor' out for the first page."
    )

    def decode_cursor(self, request):
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            cursor = None
            valid = False
        else:
            valid = (
                cursor is None or cursor.position is None or self.position_valid(cursor.position)
            )
        if not valid:
            raise ValidationError({"cursor": [self.invalid_cursor_message]})
        return cursor

    def position_valid(self, position: str) -> bool:
        """Whether ``position`` can be a value of the ordering field: a date and time."""
        try:
            when = parse_datetime(position)
            if when is None:
                return False
            if timezone.is_naive(when):
                when = timezone.make_aware(when)
            when.astimezone(UTC)
        except (ValueError, OverflowError):
            return False
        return True


def status_parameter(states: Sequence[str]) -> OpenApiParameter:
    """A list's ``?status=`` in the schema: one of ``states``, so a generated client offers
    them (``status_wanted`` refuses any other)."""
    return OpenApiParameter(
        "status", str, enum=list(states), description="Only those in this state."
    )


# Predictions are "canceled", compression jobs "cancelled" (each stored so): a filter takes
# either spelling for both.
SPELLINGS = {"cancelled": "canceled", "canceled": "cancelled"}


def status_wanted(request, states: Sequence[str]) -> str | None:
    """The ``?status=`` a list is filtered by, or ``None`` for all. A state not in ``states``
    is a 400 naming them: a misspelt one would list nothing (or everything) without a word."""
    wanted = request.query_params.get("status")
    if not wanted:
        return None
    if wanted not in states and SPELLINGS.get(wanted) in states:
        wanted = SPELLINGS[wanted]
    if wanted not in states:
        raise ValidationError(
            {"status": [f"Filter by one of {', '.join(states)}, or leave status out for all."]}
        )
    return wanted


class OrganisationView(APIView):
    """The organisation the caller acts for, and the scopes it holds there."""

    @extend_schema(responses=s.OrganisationSerializer)
    def get(self, request):
        access = request.auth
        data = {
            "tenant": access.tenant,
            "scopes": sorted(access.scopes),
            "via": "api_key" if access.key is not None else "session",
        }
        return Response(s.OrganisationSerializer(data).data)


class MembershipViewSet(
    TenantScopedMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    queryset = Membership.objects.select_related("user", "tenant")
    serializer_class = s.MembershipSerializer
    lookup_field = "public_id"
    lookup_url_kwarg = "id"
    pagination_class = CreatedCursorPagination
    required_scope = Scope.ADMIN

    @extend_schema(request=s.MembershipUpdateSerializer, responses=s.MembershipSerializer)
    def partial_update(self, request, *args, **kwargs):
        """Change a member's role."""
        membership = self.get_object()
        data = s.MembershipUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.membership_change_role(
            membership=membership, role=data.validated_data["role"], actor=request_actor(request)
        )
        return Response(s.MembershipSerializer(membership).data)

    def perform_destroy(self, instance):
        services.membership_remove(membership=instance, actor=request_actor(self.request))


class InvitationViewSet(
    TenantScopedMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    queryset = Invitation.objects.select_related("tenant")
    serializer_class = s.InvitationSerializer
    lookup_field = "public_id"
    lookup_url_kwarg = "id"
    pagination_class = CreatedCursorPagination
    required_scope = Scope.ADMIN

    @extend_schema(request=s.InvitationCreateSerializer, responses={201: s.InvitationSerializer})
    def create(self, request):
        """Invite someone by email; they get a link to accept."""
        data = s.InvitationCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        invitation, _token = services.invitation_create(
            tenant=request.auth.tenant, actor=request_actor(request), **data.validated_data
        )
        return Response(s.InvitationSerializer(invitation).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=s.InvitationSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request, id=None):
        invitation = services.invitation_revoke(
            invitation=self.get_object(), actor=request_actor(request)
        )
        return Response(s.InvitationSerializer(invitation).data)


KEY_STATES = ("active", "expired", "revoked")


@extend_schema_view(list=extend_schema(parameters=[status_parameter(KEY_STATES)]))
class ApiKeyViewSet(
    TenantScopedMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    queryset = ApiKey.objects.select_related("tenant", "created_by", "rotated_from")
    serializer_class = s.ApiKeySerializer
    lookup_field = "public_id"
    lookup_url_kwarg = "id"
    pagination_class = CreatedCursorPagination
    required_scope = Scope.ADMIN

    def get_base_queryset(self):
        queryset = super().get_base_queryset()
        state = status_wanted(self.request, KEY_STATES) if self.action == "list" else None
        if state == "active":
            queryset = queryset.filter(ApiKey.active_q())
        elif state == "expired":
            queryset = queryset.filter(revoked_at=None, expires_at__lte=timezone.now())
        elif state == "revoked":
            queryset = queryset.filter(~Q(revoked_at=None))
        return queryset

    @extend_schema(request=s.ApiKeyCreateSerializer, responses={201: s.ApiKeyCreatedSerializer})
    def create(self, request):
        """Create a key. The response holds the secret `key`, shown this once only."""
        data = s.ApiKeyCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key, secret = services.api_key_create(
            tenant=request.auth.tenant, actor=request_actor(request), **data.validated_data
        )
        body = s.ApiKeyCreatedSerializer(key, context={"secret": secret}).data
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=s.ApiKeySerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request, id=None):
        key = services.api_key_revoke(key=self.get_object(), actor=request_actor(request))
        return Response(s.ApiKeySerializer(key).data)

    @extend_schema(request=None, responses={201: s.ApiKeyCreatedSerializer})
    @action(detail=True, methods=["post"])
    def rotate(self, request, id=None):
        """Issue a replacement key; the old one keeps working for the grace period."""
        new_key, secret = services.api_key_rotate(
            key=self.get_object(), actor=request_actor(request)
        )
        body = s.ApiKeyCreatedSerializer(new_key, context={"secret": secret}).data
        return Response(body, status=status.HTTP_201_CREATED)


@extend_schema_view(
    list=extend_schema(
        parameters=[OpenApiParameter("action", str, description="e.g. api_key.create")]
    )
)
class AuditEventViewSet(TenantScopedMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    queryset = AuditEvent.objects.all()
    serializer_class = s.AuditEventSerializer
    pagination_class = CreatedCursorPagination
    required_scope = Scope.ADMIN

    def get_base_queryset(self):
        queryset = super().get_base_queryset()
        if action_name := self.request.query_params.get("action"):
            queryset = queryset.filter(action=action_name)
        return queryset

    def paginate_queryset(self, queryset):
        page = super().paginate_queryset(queryset)
        services.audit_name_targets(page)  # one query per kind of target on the page
        return page
