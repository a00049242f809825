"""The predictions resource: ``/api/v1/predictions``."""

from __future__ import annotations

import re
from datetime import datetime

from django.conf import settings
from django.core.validators import URLValidator
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from accounts.api.serializers import StrictSerializer
from accounts.api.views import CreatedCursorPagination, status_parameter, status_wanted
from accounts.exceptions import PayloadTooLarge
from accounts.models import MODEL_REF, MODEL_REF_RE, Scope
from accounts.tenancy import TenantScopedMixin
from billing.models import UsageRecord
from billing.selectors import usage_records_of
from inference import services, tensors
from inference.api.oip import RATE_LIMIT_HEADERS, declared_length
from inference.models import Prediction
from inference.runtime.spec import InputError
from marketplace.api.registry import DEPRECATION_HEADERS, deprecation_headers

EVENTS = ["start", "completed"]


IDEMPOTENCY_KEY_MAX = 255  # what the column keeps

IDEMPOTENCY_KEY_PARAMETER = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    description=f"At most {IDEMPOTENCY_KEY_MAX} characters; a retry with the same key and body "
    "within 24 hours answers with the first result",
)


def idempotency_key_of(request) -> str:
    """The request's ``Idempotency-Key``; 400 when it is longer than the column keeps (cut,
    two keys that share their first 255 characters would be taken for one)."""
    key = request.headers.get("Idempotency-Key", "")
    if len(key) > IDEMPOTENCY_KEY_MAX:
        raise serializers.ValidationError(
            {
                "Idempotency-Key": [
                    f"At most {IDEMPOTENCY_KEY_MAX} characters; this one has {len(key)}."
                ]
            }
        )
    return key


class ParsedJSONField(serializers.JSONField):
    """DRF's JSONField, without its check that the value encodes back to JSON (a
    ``json.dumps`` of the whole input, as much CPU as parsing it): the body was parsed from
    JSON (the API's only parser), so whatever it holds encodes."""

    def to_internal_value(self, data):
        if getattr(data, "is_json_string", False):  # HTML form input: a string to parse
            return super().to_internal_value(data)
        return data


# A body of the usual shape, validated without the serializer (PredictionCreateSerializer.read).
_PLAIN_FIELDS = frozenset({"model", "version", "input"})
_PLAIN_VERSION = re.compile(r"[A-Za-z0-9._+-]{0,40}")


class PredictionCreateSerializer(StrictSerializer):
    model = serializers.RegexField(rf"^{MODEL_REF}$", help_text="owner/name")
    version = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=40,
        help_text="A version number or alias (default: production)",
    )
    input = ParsedJSONField(help_text='{"input_name": nested list} or a bare list')
    # http(s) only, as delivery sends them (a URLField also takes ftp and ftps, which were
    # accepted and then failed every delivery attempt for 40 minutes).
    webhook = serializers.URLField(
        required=False,
        max_length=2000,
        validators=[
            URLValidator(schemes=["http", "https"], message="Webhook URLs must be http(s) URLs.")
        ],
        help_text="An http(s) URL to send the prediction's events to",
    )
    webhook_events_filter = serializers.ListField(
        child=serializers.ChoiceField(choices=EVENTS), required=False, default=["completed"]
    )

    @classmethod
    def read(cls, data) -> dict:
        """The validated body. One of the usual shape (a model reference, perhaps a plain
        version or alias name, an input; no webhook) is taken as it is, as the fields would
        take it: building the serializer's five fields for each request (a deep copy) and
        running them cost about 100 µs of the web's CPU per prediction. Anything else, and so
        every error, goes through the serializer."""
        if (
            type(data) is dict
            and data.keys() <= _PLAIN_FIELDS
            and data.get("input") is not None
            and type(model := data.get("model")) is str
            and MODEL_REF_RE.fullmatch(model)
            and type(version := data.get("version", "")) is str
            and _PLAIN_VERSION.fullmatch(version)
        ):
            return {**data, "webhook_events_filter": ["completed"]}
        serializer = cls(data=data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data


class PredictionSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id")
    model = serializers.CharField(source="model.ref")
    version = serializers.IntegerField(source="version.number")
    output = serializers.SerializerMethodField()
    output_datatypes = serializers.SerializerMethodField()
    metrics = serializers.SerializerMethodField()
    cost = serializers.SerializerMethodField()
    urls = serializers.SerializerMethodField()

    class Meta:
        model = Prediction
        fields = [
            "id",
            "model",
            "version",
            "status",
            "source",
            "output",
            "output_datatypes",
            "error",
            "error_kind",
            "metrics",
            "cost",
            "urls",
            "created_at",
            "started_at",
            "completed_at",
            "data_purged_at",
        ]
        read_only_fields = fields

    def to_representation(self, obj: Prediction) -> dict:
        """The fields above, built directly: DRF's generic path (building and copying fifteen
        field objects per response) cost more than the rest of a prediction's response.
        ``test_representation_matches_the_declared_fields`` pins it to that path."""
        arrays = self._outputs(obj)
        return {
            "id": obj.public_id,
            "model": obj.model.ref,
            "version": obj.version.number,
            "status": obj.status,
            "source": obj.source,
            "output": None if arrays is None else tensors.to_json(arrays),
            "output_datatypes": None if arrays is None else tensors.datatypes(arrays),
            "error": obj.error,
            "error_kind": obj.error_kind,
            "metrics": self.get_metrics(obj),
            "cost": self.get_cost(obj),
            "urls": self.get_urls(obj),
            "created_at": _datetime(obj.created_at),
            "started_at": _datetime(obj.started_at),
            "completed_at": _datetime(obj.completed_at),
            "data_purged_at": _datetime(obj.data_purged_at),
        }

    @staticmethod
    def _outputs(obj: Prediction) -> dict | None:
        if obj.status != Prediction.Status.SUCCEEDED or obj.output_data is None:
            return None
        return tensors.decode(obj.output_data)

    @extend_schema_field(
        {
            "type": "object",
            "nullable": True,
            "additionalProperties": {},
            "description": "Each output by name, as nested lists (NaN and infinities as "
            "null); null until the prediction succeeded, and once its data was purged.",
        }
    )
    def get_output(self, obj: Prediction) -> dict | None:
        arrays = self._outputs(obj)
        return None if arrays is None else tensors.to_json(arrays)

    @extend_schema_field(
        {
            "type": "object",
            "nullable": True,
            "additionalProperties": {"type": "string", "enum": list(tensors.NUMPY)},
            "description": "Each output's datatype (FP32, INT64, ...): JSON numbers do not "
            "say whether 1.0 was a float32 or a float64.",
        }
    )
    def get_output_datatypes(self, obj: Prediction) -> dict | None:
        arrays = self._outputs(obj)
        return None if arrays is None else tensors.datatypes(arrays)

    def get_metrics(self, obj: Prediction) -> dict:
        return {
            "compute_ms": obj.compute_ms,
            "latency_ms": obj.latency_ms,
            "batch_size": obj.batch_size,
            "batched_with": obj.batched_with,
        }

    def get_cost(self, obj: Prediction) -> dict | None:
        if obj.status != Prediction.Status.SUCCEEDED:
            return None  # only a succeeded prediction is billed
        # Sent along with the result, or read for a whole page (costs_attached): None there
        # means there is no record.
        known = getattr(obj, "known_cost", _UNREAD)
        if known is not _UNREAD:
            return known
        return _cost(UsageRecord.objects.filter(source_id=obj.public_id).first())

    @staticmethod
    def costs_attached(predictions: list[Prediction]) -> list[Prediction]:
        """A page of predictions with each succeeded one's cost read in one query, where each
        would read its own usage record."""
        wanted = {
            p.public_id: p
            for p in predictions
            if p.status == Prediction.Status.SUCCEEDED and not hasattr(p, "known_cost")
        }
        if wanted:
            records = usage_records_of(wanted)
            for public_id, prediction in wanted.items():
                prediction.known_cost = _cost(records.get(public_id))
        return predictions

    def get_urls(self, obj: Prediction) -> dict:
        base = f"/api/v1/predictions/{obj.public_id}"
        return {"get": base, "cancel": f"{base}/cancel"}


_UNREAD = object()  # a prediction whose cost nobody has read yet


def _cost(record: UsageRecord | None) -> dict | None:
    if record is None:
        return None
    return {"amount": str(record.amount), "currency": record.currency, "free": record.free}


# What a prediction's representation reads: lists and reads of predictions load these only,
# not the input (up to MAX_INPUT_BYTES a row) nor the related rows' other columns.
PREDICTION_COLUMNS = (
    *("public_id", "status", "source", "output_data", "error", "error_kind", "compute_ms"),
    *("batch_size", "batched_with", "created_at", "started_at", "completed_at"),
    *("data_purged_at", "model__name", "model__tenant__slug", "version__number"),
)

_DATETIME = serializers.DateTimeField()


def _datetime(value: datetime | None) -> str | None:
    """As DRF's DateTimeField gives it (ISO 8601, UTC as ``Z``, DATETIME_FORMAT honoured)."""
    return None if value is None else _DATETIME.to_representation(value)


def wait_seconds(prefer: str) -> float:
    """``Prefer: wait`` holds the request up to 60 s; ``Prefer: wait=N`` up to N s. A value
    that is not a number of seconds (``wait=-5``, ``wait=abc``) is ignored, as RFC 7240 says
    of a malformed preference: the request does not wait (it waited 60 s). Names are
    case-insensitive, values may be quoted, and parameters after ``;`` are ignored."""
    for preference in (prefer or "").split(","):
        name, given, value = preference.split(";", 1)[0].partition("=")
        if name.strip().lower() != "wait":
            continue
        if not given:
            return settings.MAX_WAIT_SECONDS
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if not re.fullmatch(r"\d+(?:\.\d+)?", value):
            return 0
        return min(float(value), settings.MAX_WAIT_SECONDS)
    return 0


class StatusModelFilterMixin:
    """``?status=`` (one of ``statuses``) and ``?model=owner/name`` on a list of a tenant's
    predictions or jobs."""

    statuses: tuple[str, ...] = ()

    def get_base_queryset(self):
        queryset = super().get_base_queryset()
        params = self.request.query_params
        if wanted := status_wanted(self.request, self.statuses):
            queryset = queryset.filter(status=wanted)
        if params.get("model"):
            if not MODEL_REF_RE.fullmatch(params["model"]):
                # "nope" or "acme/clf:1" listed nothing, as if there were none.
                raise serializers.ValidationError(
                    {"model": [f"Filter by a model as owner/name, not '{params['model'][:100]}'."]}
                )
            owner, _, name = params["model"].partition("/")
            queryset = queryset.filter(model__tenant__slug=owner, model__name=name)
        return queryset


class PredictionsView(StatusModelFilterMixin, TenantScopedMixin, GenericAPIView):
    queryset = Prediction.objects.select_related("model__tenant", "version").only(
        *PREDICTION_COLUMNS
    )
    model_field = "model"
    serializer_class = PredictionSerializer
    pagination_class = CreatedCursorPagination
    required_scope = {"GET": Scope.INFERENCE, "POST": Scope.INFERENCE}
    statuses = tuple(Prediction.Status.values)

    @extend_schema(
        parameters=[
            status_parameter(Prediction.Status.values),
            OpenApiParameter("model", str, description="owner/name"),
        ],
        responses=PredictionSerializer(many=True),
    )
    def get(self, request):
        page = PredictionSerializer.costs_attached(self.paginate_queryset(self.get_queryset()))
        return self.get_paginated_response(PredictionSerializer(page, many=True).data)

    @extend_schema(
        request=PredictionCreateSerializer,
        parameters=[
            OpenApiParameter(
                "Prefer",
                str,
                OpenApiParameter.HEADER,
                description="`wait` or `wait=N` (seconds, at most 60)",
            ),
            IDEMPOTENCY_KEY_PARAMETER,
            *RATE_LIMIT_HEADERS,
            *DEPRECATION_HEADERS,
        ],
        responses={201: PredictionSerializer, 200: PredictionSerializer},
    )
    def post(self, request):
        """Run a model. Returns 201 at once with the queued prediction, or with
        ``Prefer: wait`` holds the request until it finishes (or the wait runs out). A retry
        with the same ``Idempotency-Key`` answers 200 with the first prediction, as it is now
        (and waits for it likewise), and runs nothing."""
        if declared_length(request) > settings.MAX_INPUT_BYTES:
            raise PayloadTooLarge(
                f"The request is larger than {settings.MAX_INPUT_BYTES} bytes; send smaller "
                "batches."
            )
        idempotency_key = idempotency_key_of(request)
        body = PredictionCreateSerializer.read(request.data)
        access = request.auth
        wait = wait_seconds(request.headers.get("Prefer", ""))
        # Only compared when a retry reuses the key: not worth hashing the input otherwise.
        body_hash = services.request_hash(request.data) if idempotency_key else ""
        if idempotency_key:
            first = services.prediction_replay(
                access, model_ref=body["model"], key=idempotency_key, body_hash=body_hash
            )
            if first is not None:
                if wait and not first.is_terminal:
                    first = services.prediction_wait(first, wait)
                # The version's deprecation still applies to what the caller runs (it ran
                # nothing now, so no rate limit was counted: no RateLimit headers).
                return deprecation_headers(
                    Response(PredictionSerializer(first).data, status=status.HTTP_200_OK),
                    first.version,
                )
        model, version = services.resolve_runnable(
            access, model_ref=body["model"], version_ref=body.get("version") or None
        )
        try:
            arrays = tensors.from_json(body["input"], services.signature(version))
        except InputError as exc:
            raise serializers.ValidationError({"input": [str(exc)]}) from None
        headers = services.admit(access, model, version)
        prediction, created = services.prediction_create(
            access=access,
            model=model,
            version=version,
            arrays=arrays,
            # A signed-in member without a key: the dashboard's playground.
            source=Prediction.Source.API if access.key else Prediction.Source.DASHBOARD,
            webhook_url=body.get("webhook", ""),
            webhook_events=body["webhook_events_filter"],
            idempotency_key=idempotency_key,
            body_hash=body_hash,
            wait=bool(wait),
        )
        if wait and not prediction.is_terminal:
            prediction = services.prediction_wait(prediction, wait)
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        response = Response(PredictionSerializer(prediction).data, status=code, headers=headers)
        return deprecation_headers(response, version)


class PredictionDetailView(TenantScopedMixin, GenericAPIView):
    queryset = Prediction.objects.select_related("model__tenant", "version").only(
        *PREDICTION_COLUMNS
    )
    model_field = "model"
    serializer_class = PredictionSerializer
    lookup_field = "public_id"
    lookup_url_kwarg = "id"
    required_scope = Scope.INFERENCE

    def get(self, request, id: str):
        return Response(PredictionSerializer(self.get_object()).data)


class PredictionCancelView(TenantScopedMixin, GenericAPIView):
    queryset = Prediction.objects.select_related("model__tenant", "version")
    model_field = "model"
    serializer_class = PredictionSerializer
    lookup_field = "public_id"
    lookup_url_kwarg = "id"
    required_scope = Scope.INFERENCE

    @extend_schema(request=None, responses=PredictionSerializer)
    def post(self, request, id: str):
        """Cancel a queued or running prediction; it is not billed."""
        prediction = services.prediction_cancel(self.get_object())
        return Response(PredictionSerializer(prediction).data)
