"""Compression jobs: ``/api/v1/compression-jobs``."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from accounts.api.serializers import StrictSerializer
from accounts.api.views import CreatedCursorPagination, status_parameter
from accounts.models import MODEL_REF, Scope
from accounts.tenancy import TenantScopedMixin, request_actor
from billing.models import UsageRecord
from billing.selectors import usage_records_of
from inference import compression_services as jobs
from inference.api.predictions import (
    IDEMPOTENCY_KEY_PARAMETER,
    StatusModelFilterMixin,
    idempotency_key_of,
)
from inference.compression.params import METHODS
from inference.models import CompressionJob
from inference.services import request_hash
from marketplace import selectors


class JobCreateSerializer(StrictSerializer):
    model = serializers.RegexField(rf"^{MODEL_REF}$", help_text="owner/name")
    version = serializers.CharField(max_length=40, help_text="A version number or alias")
    method = serializers.CharField(max_length=32, help_text=", ".join(METHODS))
    params = serializers.JSONField(
        required=False,
        default=dict,
        help_text='quantize: {"scheme": "dynamic_int8"|"weight_only_int8"|"fp16"|"bf16"}; '
        'prune: {"kind": "structured"|"unstructured", "amount": 0.5, "norm": 1}; distill: '
        '{"student": {"architecture": "mlp", "config": {"hidden": [64]}}, "temperature": 4, '
        '"epochs": 20, "lr": 0.001, "batch_size": 64, "patience": 3, "samples": 4096, ...}',
    )

    data = serializers.JSONField(
        required=False,
        help_text='Your own examples: {"inputs": nested list, "labels": [class indices]}. '
        "Distillation trains on them; fidelity is measured on a held-out fifth. Without them, "
        "inputs are generated from the signature.",
    )

    def validate_method(self, value):
        # Was said under "params" by the parameters' check, which a client reads as its
        # params being wrong.
        if value not in METHODS:
            raise serializers.ValidationError(
                f"Unknown method '{value}'; choose one of {', '.join(METHODS)}."
            )
        return value

    def validate_params(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("params is a JSON object.")
        return value


class PromoteSerializer(StrictSerializer):
    alias = serializers.CharField(max_length=40)
    min_agreement = serializers.FloatField(required=False, min_value=0, max_value=1)
    min_cosine = serializers.FloatField(required=False, min_value=-1, max_value=1)
    max_mean_abs_error = serializers.FloatField(required=False, min_value=0)


class JobSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id")
    model = serializers.CharField(source="model.ref")
    version = serializers.IntegerField(source="version.number")
    progress = serializers.SerializerMethodField()
    result = serializers.SerializerMethodField()
    cost = serializers.SerializerMethodField()
    urls = serializers.SerializerMethodField()

    class Meta:
        model = CompressionJob
        fields = [
            "id",
            "model",
            "version",
            "method",
            "params",
            "status",
            "progress",
            "result",
            "report",
            "error",
            "compute_seconds",
            "cost",
            "urls",
            "created_at",
            "started_at",
            "completed_at",
        ]
        read_only_fields = fields

    def get_progress(self, obj: CompressionJob) -> dict:
        return {
            "phase": obj.phase,
            "percent": obj.percent,
            "eta_seconds": obj.eta_seconds,
            "loss": obj.loss,
        }

    def get_result(self, obj: CompressionJob) -> dict | None:
        version = obj.result_version
        if version is None:
            return None
        return {
            "version": version.number,
            "status": version.status,
            "operation": version.operation,
            "parent": obj.version.number,
            "url": f"/api/v1/models/{obj.model.ref}/versions/{version.number}",
        }

    def get_cost(self, obj: CompressionJob) -> dict | None:
        if obj.status != CompressionJob.Status.SUCCEEDED:
            return None  # failed and cancelled jobs are not billed
        if hasattr(obj, "usage_record"):  # read for a whole page (costs_attached)
            record = obj.usage_record
        else:
            record = UsageRecord.objects.filter(source_id=obj.public_id).first()
        if record is None:
            return None
        return {"amount": str(record.amount), "currency": record.currency}

    @staticmethod
    def costs_attached(jobs: list[CompressionJob]) -> list[CompressionJob]:
        """A page of jobs with their usage records read in one query (one a job, before)."""
        records = usage_records_of(job.public_id for job in jobs)
        for job in jobs:
            job.usage_record = records.get(job.public_id)
        return jobs

    def get_urls(self, obj: CompressionJob) -> dict:
        base = f"/api/v1/compression-jobs/{obj.public_id}"
        return {"get": base, "cancel": f"{base}/cancel", "promote": f"{base}/promote"}


class JobScopedMixin(TenantScopedMixin):
    queryset = CompressionJob.objects.select_related("model__tenant", "version", "result_version")
    model_field = "model"
    serializer_class = JobSerializer
    lookup_field = "public_id"
    lookup_url_kwarg = "id"


class JobsView(StatusModelFilterMixin, JobScopedMixin, GenericAPIView):
    pagination_class = CreatedCursorPagination
    required_scope = {"GET": Scope.MODELS_READ, "POST": Scope.MODELS_WRITE}
    statuses = tuple(CompressionJob.Status.values)

    def get_base_queryset(self):
        queryset = super().get_base_queryset()
        method = self.request.query_params.get("method")
        if method and self.request.method == "GET":
            methods = CompressionJob.Method.values
            if method not in methods:  # it was ignored: every job was listed
                raise serializers.ValidationError(
                    {"method": [f"Filter by one of {', '.join(methods)}, or leave it out."]}
                )
            queryset = queryset.filter(method=method)
        return queryset

    @extend_schema(
        parameters=[
            status_parameter(CompressionJob.Status.values),
            OpenApiParameter("model", str, description="owner/name"),
            OpenApiParameter("method", str, enum=CompressionJob.Method.values),
        ],
        responses=JobSerializer(many=True),
    )
    def get(self, request):
        page = JobSerializer.costs_attached(self.paginate_queryset(self.get_queryset()))
        return self.get_paginated_response(JobSerializer(page, many=True).data)

    @extend_schema(
        request=JobCreateSerializer,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        responses={201: JobSerializer, 200: JobSerializer},
    )
    def post(self, request):
        """Compress a version of a model your organisation owns. A method that cannot apply
        to the version is refused with 422 and the reason; bad parameters are 400. A retry
        with the same ``Idempotency-Key`` answers 200 with the first job."""
        idempotency_key = idempotency_key_of(request)
        data = JobCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        body = data.validated_data
        owner, _, name = body["model"].partition("/")
        model = selectors.model_for_access(request.auth, owner=owner, name=name, perm="change")
        body_hash = request_hash(request.data)
        if idempotency_key:  # before the version is resolved: yanked since, it was a 410
            first = jobs.job_replay(request.auth, idempotency_key, body_hash)
            if first is not None:
                return Response(JobSerializer(first).data, status=status.HTTP_200_OK)
        version = selectors.version_resolve(model, body["version"], access=request.auth)
        job, created = jobs.job_create(
            access=request.auth,
            model=model,
            version=version,
            method=body["method"],
            params=body["params"],
            data=body.get("data"),
            actor=request_actor(request),
            idempotency_key=idempotency_key,
            body_hash=body_hash,
        )
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(JobSerializer(job).data, status=code)


class JobDetailView(JobScopedMixin, GenericAPIView):
    required_scope = Scope.MODELS_READ

    def get(self, request, id: str):
        """The job with its progress (phase, percent, ETA, loss) and, once done, its report
        and the new version."""
        return Response(JobSerializer(self.get_object()).data)


class JobCancelView(JobScopedMixin, GenericAPIView):
    required_scope = Scope.MODELS_WRITE

    @extend_schema(request=None, responses=JobSerializer)
    def post(self, request, id: str):
        """Cancel a queued or running job; it leaves no version and is not billed."""
        job = jobs.job_cancel(self.get_object(), actor=request_actor(request))
        return Response(JobSerializer(job).data)


class JobPromoteView(JobScopedMixin, GenericAPIView):
    required_scope = Scope.MODELS_WRITE

    @extend_schema(request=PromoteSerializer, responses=JobSerializer)
    def post(self, request, id: str):
        """Point an alias at the job's version, only if its fidelity meets your thresholds
        (409 with the measured figures otherwise)."""
        job = self.get_object()
        data = PromoteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        jobs.job_promote(
            job=job, access=request.auth, actor=request_actor(request), **data.validated_data
        )
        job.result_version.refresh_from_db()
        return Response(JobSerializer(job).data)
