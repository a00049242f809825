"""``/api/v1/webhooks/secret``: the secret an organisation's webhooks are signed with, for its
receivers to verify them (Standard Webhooks), and its rotation."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Scope
from accounts.tenancy import request_actor
from inference import webhooks


class WebhookSecretSerializer(serializers.Serializer):
    secret = serializers.CharField(
        help_text="`whsec_` and the base64 key: verify each delivery's `webhook-signature` "
        "with it (Standard Webhooks)."
    )
    created_at = serializers.DateTimeField()
    previous_valid_until = serializers.DateTimeField(
        allow_null=True,
        help_text="After a rotation, deliveries also carry a signature by the previous "
        "secret until then.",
    )


def _answer(key, secret: str) -> Response:
    data = {
        "secret": secret,
        "created_at": key.created_at,
        "previous_valid_until": key.previous_valid_until,
    }
    return Response(WebhookSecretSerializer(data).data)


class WebhookSecretView(APIView):
    required_scope = Scope.ADMIN

    @extend_schema(operation_id="webhook_secret_retrieve", responses=WebhookSecretSerializer)
    def get(self, request):
        """The secret your prediction webhooks are signed with (each read is audited)."""
        return _answer(*webhooks.signing_key_reveal(request.auth.tenant, request_actor(request)))


class WebhookSecretRotateView(APIView):
    required_scope = Scope.ADMIN

    @extend_schema(
        operation_id="webhook_secret_rotate", request=None, responses=WebhookSecretSerializer
    )
    def post(self, request):
        """A new secret. For 24 hours deliveries carry a second signature by the old one, so
        receivers can move to the new one without dropping events."""
        key = webhooks.signing_key_rotate(request.auth.tenant, request_actor(request))
        return _answer(key, webhooks.signing_secret(key))
