"""Model-extraction flags for the publisher: ``/api/v1/abuse-flags`` (with an API
key or the dashboard's session). Only the publisher's own flags are listed; another
organisation's flag is a 404."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from accounts.api.views import CreatedCursorPagination
from accounts.models import Scope
from accounts.tenancy import TenantScopedMixin
from inference.models import AbuseFlag


class AbuseFlagSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id")
    model = serializers.CharField(source="model.ref")
    consumer = serializers.CharField(source="consumer.slug")
    key = serializers.CharField(source="key_prefix", help_text="The API key's public prefix")

    class Meta:
        model = AbuseFlag
        fields = [
            "id",
            "model",
            "consumer",
            "key",
            "reason",
            "window_start",
            "rejected",
            "predictions",
            "distinct_inputs",
            "first_seen",
            "last_seen",
        ]


class FirstSeenCursorPagination(CreatedCursorPagination):
    ordering = "-first_seen"


class AbuseFlagScopedMixin(TenantScopedMixin):
    queryset = AbuseFlag.objects.select_related("model__tenant", "consumer")
    model_field = "model"
    serializer_class = AbuseFlagSerializer
    lookup_field = "public_id"
    lookup_url_kwarg = "id"
    required_scope = Scope.MODELS_READ


class AbuseFlagsView(AbuseFlagScopedMixin, GenericAPIView):
    pagination_class = FirstSeenCursorPagination

    @extend_schema(operation_id="abuse_flags_list", responses=AbuseFlagSerializer(many=True))
    def get(self, request):
        """Keys of other organisations flagged for possible extraction of your models,
        newest first: rate-limit rejections, calls and distinct inputs in the window."""
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(AbuseFlagSerializer(page, many=True).data)


class AbuseFlagDetailView(AbuseFlagScopedMixin, GenericAPIView):
    @extend_schema(operation_id="abuse_flag_retrieve", responses=AbuseFlagSerializer)
    def get(self, request, id: str):
        """One flag on one of your models."""
        return Response(AbuseFlagSerializer(self.get_object()).data)
