from __future__ import annotations

from django.db.models import Max, Prefetch, Q, QuerySet
from rest_framework import serializers

from accounts.api.serializers import StrictSerializer
from marketplace import selectors
from marketplace.models import Alias, AliasMove, Model, ModelVersion, Task, UploadSession

FINITE = "Numbers must fit a float (up to about 1.8e308): JSON has no infinity."

# The versions another organisation can open.
OPEN = (ModelVersion.Status.READY, ModelVersion.Status.DEPRECATED)


class ModelSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    owner = serializers.CharField(source="tenant.slug", read_only=True)
    ref = serializers.CharField(read_only=True)
    aliases = serializers.SerializerMethodField()
    latest_version = serializers.SerializerMethodField()

    class Meta:
        model = Model
        fields = [
            "id",
            "owner",
            "name",
            "ref",
            "description",
            "task",
            "aliases",
            "latest_version",
            "created_at",
        ]
        read_only_fields = fields

    @staticmethod
    def listing(models: QuerySet[Model]) -> QuerySet[Model]:
        """``models`` with what a page of them shows, fetched in a fixed number of queries
        however long the page is (not two more per model)."""
        return (
            models.select_related("tenant")
            .prefetch_related(Prefetch("aliases", queryset=Alias.objects.select_related("version")))
            .annotate(latest_open=Max("versions__number", filter=Q(versions__status__in=OPEN)))
        )

    def get_aliases(self, obj: Model) -> dict[str, int]:
        if "aliases" in getattr(obj, "_prefetched_objects_cache", {}):
            aliases = obj.aliases.all()
        else:
            aliases = obj.aliases.select_related("version")
        viewer = self.context.get("tenant")
        if viewer is not None and viewer.pk != obj.tenant_id:
            # Another organisation sees no alias on a version it cannot see.
            aliases = [a for a in aliases if a.version.status in selectors.PUBLISHED]
        return {a.name: a.version.number for a in aliases}

    def get_latest_version(self, obj: Model) -> int | None:
        """The publisher's newest version; for another organisation, the newest one it can
        open (ready or deprecated)."""
        viewer = self.context.get("tenant")
        if viewer is None or viewer.pk == obj.tenant_id:
            return obj.next_version - 1 or None
        if hasattr(obj, "latest_open"):
            return obj.latest_open
        return obj.versions.filter(status__in=OPEN).aggregate(latest=Max("number"))["latest"]


class ModelCreateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=100)
    description = serializers.CharField(max_length=5000, required=False, allow_blank=True)
    task = serializers.ChoiceField(choices=Task.choices, required=False)


class ModelUpdateSerializer(StrictSerializer):
    description = serializers.CharField(max_length=5000, required=False, allow_blank=True)
    task = serializers.ChoiceField(choices=Task.choices, required=False)


class VersionSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    sha256 = serializers.CharField(source="artifact.sha256", read_only=True)
    size = serializers.IntegerField(source="artifact.size", read_only=True)
    parent = serializers.IntegerField(
        source="parent.number", read_only=True, default=None, allow_null=True
    )
    created_by = serializers.EmailField(
        source="created_by.email", read_only=True, default=None, allow_null=True
    )
    aliases = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "number",
            "label",
            "status",
            "failure_reason",
            "status_reason",
            "format",
            "architecture",
            "architecture_config",
            "sha256",
            "size",
            "signature",
            "parameter_count",
            "latency_ms",
            "parent",
            "operation",
            "operation_params",
            "sunset_at",
            "aliases",
            "created_by",
            "created_at",
            "validated_at",
        ]
        read_only_fields = fields

    def get_aliases(self, obj: ModelVersion) -> list[str]:
        return [a.name for a in obj.aliases.all()]

    def to_representation(self, instance):
        data = super().to_representation(instance)
        if not self.context.get("publisher", True):
            data["created_by"] = None  # a member of the publisher: theirs to know
        return data


class DeprecateSerializer(StrictSerializer):
    sunset_at = serializers.DateTimeField()
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class YankSerializer(StrictSerializer):
    reason = serializers.CharField(max_length=500)


class AliasSerializer(serializers.ModelSerializer):
    version = serializers.IntegerField(source="version.number")

    class Meta:
        model = Alias
        fields = ["name", "version", "updated_at"]
        read_only_fields = fields


class AliasSetSerializer(StrictSerializer):
    version = serializers.IntegerField(min_value=1)


class AliasMoveSerializer(serializers.ModelSerializer):
    from_version = serializers.IntegerField(
        source="from_version.number", default=None, allow_null=True
    )
    to_version = serializers.IntegerField(source="to_version.number")
    actor = serializers.CharField(
        source="actor_label",
        help_text="Who moved it; to another organisation, the publisher's slug.",
    )

    class Meta:
        model = AliasMove
        fields = ["from_version", "to_version", "actor", "created_at"]
        read_only_fields = fields

    def to_representation(self, instance):
        data = super().to_representation(instance)
        if not self.context.get("publisher", True):
            data["actor"] = self.context["owner"].slug  # not the member's email or key
        return data


class UploadCreateSerializer(StrictSerializer):
    filename = serializers.CharField(max_length=255)
    format = serializers.CharField(max_length=32, help_text="pt2, torchscript or safetensors")
    size = serializers.IntegerField(
        min_value=1,
        error_messages={"min_value": "The file is empty (0 bytes): choose the model's file."},
    )
    sha256 = serializers.CharField(max_length=64)
    label = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    architecture = serializers.CharField(
        max_length=32, required=False, allow_blank=True, default=""
    )
    # Each value checked as JSON: 1e400 parses as infinity, which neither jsonb nor SQLite's
    # JSON check stores (a 500 on both).
    architecture_config = serializers.DictField(
        child=serializers.JSONField(error_messages={"invalid": FINITE}),
        required=False,
        default=dict,
    )
    example_input = serializers.JSONField(required=False, allow_null=True, default=None)


_DATETIME = serializers.DateTimeField()  # as ModelSerializer renders a DateTimeField


class UploadSessionSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id", read_only=True)
    model = serializers.CharField(source="model.ref", read_only=True)
    received_ranges = serializers.SerializerMethodField()
    missing_ranges = serializers.SerializerMethodField()
    received_bytes = serializers.SerializerMethodField()
    version = serializers.IntegerField(
        source="version.number", default=None, allow_null=True, read_only=True
    )
    upload_url = serializers.SerializerMethodField()

    class Meta:
        model = UploadSession
        fields = [
            "id",
            "model",
            "filename",
            "format",
            "size",
            "sha256",
            "chunk_size",
            "status",
            "failure_reason",
            "received_ranges",
            "missing_ranges",
            "received_bytes",
            "version",
            "upload_url",
            "created_at",
            "expires_at",
        ]
        read_only_fields = fields

    def to_representation(self, obj) -> dict:
        """The fields above, built directly: a PUT answers with this for every chunk, and
        DRF's field objects cost more than the rest of the answer (the fields' own methods,
        which this uses, stay for the schema; a test holds the two to the same output)."""
        return {
            "id": obj.public_id,
            "model": obj.model.ref,
            "filename": obj.filename,
            "format": str(obj.format),
            "size": obj.size,
            "sha256": obj.sha256,
            "chunk_size": obj.chunk_size,
            "status": str(obj.status),
            "failure_reason": obj.failure_reason,
            "received_ranges": self.get_received_ranges(obj),
            "missing_ranges": self.get_missing_ranges(obj),
            "received_bytes": self.get_received_bytes(obj),
            "version": obj.version.number if obj.version_id is not None else None,
            "upload_url": self.get_upload_url(obj),
            "created_at": _DATETIME.to_representation(obj.created_at),
            "expires_at": _DATETIME.to_representation(obj.expires_at),
        }

    def _stored(self, obj) -> set[int]:
        # One query for the three fields below (a PUT answers with this for every chunk).
        cache = self.__dict__.setdefault("_stored_indexes", {})
        if obj.pk not in cache:
            from marketplace.services import upload_stored_indexes

            cache[obj.pk] = upload_stored_indexes(obj)
        return cache[obj.pk]

    def _received(self, obj):
        from marketplace.services import upload_received_ranges

        return upload_received_ranges(obj, stored=self._stored(obj))

    def get_received_ranges(self, obj) -> list[str]:
        return [f"bytes {s}-{e}" for s, e in self._received(obj)]

    def get_missing_ranges(self, obj) -> list[str]:
        from marketplace.services import upload_missing_ranges

        return [f"bytes {s}-{e}" for s, e in upload_missing_ranges(obj, stored=self._stored(obj))]

    def get_received_bytes(self, obj) -> int:
        return sum(e - s + 1 for s, e in self._received(obj))

    def get_upload_url(self, obj) -> str:
        return f"/api/v1/uploads/{obj.public_id}"
