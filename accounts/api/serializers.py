from __future__ import annotations

from rest_framework import serializers

from accounts.models import (
    ALL_SCOPES,
    MODEL_REF,
    ApiKey,
    AuditEvent,
    Invitation,
    Membership,
    Role,
    Tenant,
)


class StrictSerializer(serializers.Serializer):
    """Rejects fields it does not know, so a typo is an error rather than silently ignored."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class TenantSerializer(serializers.ModelSerializer):
    class Meta:
        model = Tenant
        fields = ["slug", "name", "status", "created_at"]
        read_only_fields = fields


class OrganisationSerializer(serializers.Serializer):
    organisation = TenantSerializer(source="tenant")
    scopes = serializers.ListField(child=serializers.CharField())
    via = serializers.CharField()


class MembershipSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    email = serializers.EmailField(source="user.email", read_only=True)
    name = serializers.CharField(source="user.name", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "email", "name", "role", "created_at"]
        read_only_fields = fields


class MembershipUpdateSerializer(StrictSerializer):
    role = serializers.ChoiceField(choices=Role.choices)


class InvitationSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    status = serializers.SerializerMethodField()

    class Meta:
        model = Invitation
        fields = ["id", "email", "role", "status", "created_at", "expires_at", "accepted_at"]
        read_only_fields = fields

    def get_status(self, obj: Invitation) -> str:
        if obj.accepted_at:
            return "accepted"
        if obj.revoked_at:
            return "revoked"
        return "pending" if obj.is_pending else "expired"


class InvitationCreateSerializer(StrictSerializer):
    email = serializers.EmailField(max_length=254)
    role = serializers.ChoiceField(choices=Role.choices, default=Role.DEVELOPER)


class ApiKeySerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    status = serializers.CharField(read_only=True)
    created_by = serializers.EmailField(
        source="created_by.email", read_only=True, default=None, allow_null=True
    )
    rotated_from = serializers.CharField(
        source="rotated_from.public_id", read_only=True, default=None, allow_null=True
    )

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "scopes",
            "allowed_models",
            "allowed_ips",
            "status",
            "expires_at",
            "last_used_at",
            "revoked_at",
            "created_by",
            "created_at",
            "rotated_from",
        ]
        read_only_fields = fields


class ApiKeyCreatedSerializer(ApiKeySerializer):
    key = serializers.SerializerMethodField(help_text="The secret. Shown once; store it now.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]
        read_only_fields = fields

    def get_key(self, obj) -> str:
        return self.context["secret"]


MODEL_REF_RE = rf"^{MODEL_REF}$"


class ApiKeyCreateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=100)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=sorted(ALL_SCOPES)), allow_empty=False
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    allowed_models = serializers.ListField(
        child=serializers.RegexField(
            MODEL_REF_RE, error_messages={"invalid": "Use owner/name, e.g. acme/resnet."}
        ),
        required=False,
        max_length=100,
    )
    allowed_ips = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, max_length=100
    )


class AuditEventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_label")
    target_name = serializers.SerializerMethodField(
        help_text="What a person knows the target by (a member's e-mail, an organisation's "
        "slug, a key's name and prefix, an alias and its model), or empty."
    )

    class Meta:
        model = AuditEvent
        fields = [
            "action",
            "actor",
            "target_type",
            "target_id",
            "target_name",
            "data",
            "ip",
            "created_at",
        ]
        read_only_fields = fields

    def get_target_name(self, obj: AuditEvent) -> str:
        return getattr(obj, "target_name", "")
