from __future__ import annotations

from functools import partial

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import ApiKey, Tenant
from accounts.secrets import public_id
from marketplace.models import Model, ModelVersion, SealedSecret


class Prediction(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELED = "canceled", "Canceled"

    class Source(models.TextChoices):
        API = "api", "Predictions API"
        OIP = "oip", "Open Inference Protocol"
        DASHBOARD = "dashboard", "Dashboard playground"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELED)
    UNFINISHED = (Status.QUEUED, Status.RUNNING)  # admitted, not billed yet

    public_id = models.CharField(max_length=24, unique=True, default=partial(public_id, "pred"))
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="predictions")
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    model = models.ForeignKey(Model, on_delete=models.RESTRICT, related_name="predictions")
    version = models.ForeignKey(ModelVersion, on_delete=models.RESTRICT, related_name="predictions")
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.API)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    # Tensors as safetensors bytes; purged after MM_PREDICTION_DATA_TTL_SECONDS.
    input_data = models.BinaryField(null=True, editable=False)
    output_data = models.BinaryField(null=True, editable=False)
    data_purged_at = models.DateTimeField(null=True, blank=True)
    batch_size = models.PositiveIntegerField(default=1)  # rows in this prediction's input
    batched_with = models.PositiveIntegerField(default=1, db_default=1)  # in its forward pass
    error = models.TextField(blank=True)
    error_kind = models.CharField(max_length=16, blank=True)
    compute_ms = models.FloatField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    idempotency_key = models.CharField(max_length=255, blank=True)
    request_hash = models.CharField(max_length=64, blank=True)
    webhook_url = models.URLField(max_length=2000, blank=True)
    webhook_events = models.JSONField(default=list, blank=True)
    # The id of the request that made it (X-Request-ID), for the worker's log lines: the fast
    # path carries the prediction's id alone, and sweeps send it again long after.
    # As config.logs takes it.
    request_id = models.CharField(max_length=128, blank=True, default="", db_default="")
    # The listing's terms it was admitted under (null: free, or the consumer's own model): it
    # is billed at no more than these, whatever the publisher changes while it waits.
    admitted_price_per_call = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True
    )
    admitted_price_per_second = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True
    )
    admitted_currency = models.CharField(max_length=3, blank=True, default="", db_default="")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="prediction_idempotency_key_unique",
            )
        ]
        indexes = [
            models.Index(fields=["tenant", "-created_at"]),
            # The consumer's work not yet billed (it counts against its spend cap): small.
            models.Index(
                fields=["tenant"],
                condition=models.Q(status__in=["queued", "running"]),
                name="prediction_in_flight",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.public_id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    @property
    def latency_ms(self) -> float | None:
        if self.completed_at is None:
            return None
        return (self.completed_at - self.created_at).total_seconds() * 1000


class WebhookDelivery(models.Model):
    """One attempt to deliver a prediction event to the caller's webhook."""

    prediction = models.ForeignKey(Prediction, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=32)
    webhook_id = models.CharField(max_length=40)
    attempt = models.PositiveIntegerField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    delivered = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "pk"]

    def __str__(self) -> str:
        return f"{self.webhook_id}#{self.attempt}"


class WebhookSigningKey(models.Model):
    """The secret a tenant's webhooks are signed with (Standard Webhooks, ``whsec_…``). We sign
    with it, so it must be read back: it is sealed in the vault (``SealedSecret``, wrapped by
    the key-encryption key), and the database alone does not reveal it."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="webhook_key")
    sealed = models.OneToOneField(SealedSecret, on_delete=models.RESTRICT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    # After a rotation the old secret signs too (a second signature) until then, so receivers
    # can switch over without dropping events.
    previous_sealed = models.OneToOneField(
        SealedSecret, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    previous_valid_until = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"webhook key of {self.tenant_id}"


class CompressionJob(models.Model):
    """Quantization, pruning or distillation of one version into a new one, run in a model
    host. Only the model's owner tenant creates jobs, and it pays for their compute time."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Method(models.TextChoices):
        QUANTIZE = "quantize", "Quantization"
        PRUNE = "prune", "Pruning"
        DISTILL = "distill", "Distillation"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    public_id = models.CharField(max_length=24, unique=True, default=partial(public_id, "job"))
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="compression_jobs")
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="compression_jobs")
    version = models.ForeignKey(
        ModelVersion, on_delete=models.CASCADE, related_name="compression_jobs"
    )
    method = models.CharField(max_length=16, choices=Method.choices)
    params = models.JSONField(default=dict, blank=True)  # as checked and normalised
    # The publisher's own inputs (and labels), as safetensors: distillation trains on them and
    # fidelity is measured on a held-out part. Without them, inputs come from the signature.
    data = models.BinaryField(null=True, editable=False)
    queue = models.CharField(max_length=16, default="cpu")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    phase = models.CharField(max_length=32, blank=True)
    percent = models.FloatField(default=0)
    eta_seconds = models.FloatField(null=True, blank=True)
    loss = models.FloatField(null=True, blank=True)
    result_version = models.OneToOneField(
        ModelVersion,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="compression_job",
    )
    report = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    compute_seconds = models.FloatField(null=True, blank=True)
    # The key that started it, if one did: its usage is the key's (budgets, usage by key).
    api_key = models.ForeignKey(
        ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # The running worker touches this as the job progresses; a running job whose heartbeat
    # has stopped was lost with its worker and may be claimed again.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0, db_default=0)
    # A retried POST with the same Idempotency-Key returns this job instead of a second one.
    idempotency_key = models.CharField(max_length=255, blank=True, default="", db_default="")
    request_hash = models.CharField(max_length=64, blank=True, default="", db_default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="compression_idempotency_key_unique",
            )
        ]
        indexes = [models.Index(fields=["tenant", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.public_id} ({self.method}, {self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL


class AbuseFlag(models.Model):
    """One API key of another organisation that looked like it was copying a model (a flood
    of distinct inputs that ran into the rate limit), once per key, model and window. Kept
    for the publisher (``tenant``) to see; it blocks nothing by itself."""

    class Reason(models.TextChoices):
        EXTRACTION = "extraction", "Possible model extraction"

    public_id = models.CharField(max_length=24, unique=True, default=partial(public_id, "flag"))
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="abuse_flags")
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="abuse_flags")
    consumer = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL)
    key_prefix = models.CharField(max_length=16)  # kept after the key is deleted
    reason = models.CharField(max_length=16, choices=Reason.choices, default=Reason.EXTRACTION)
    window_start = models.DateTimeField()
    rejected = models.PositiveIntegerField(default=0)  # rate-limit rejections in the window
    predictions = models.PositiveIntegerField(default=0)  # accepted calls to this model
    distinct_inputs = models.PositiveIntegerField(default=0)
    first_seen = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["key_prefix", "model", "window_start"], name="abuse_flag_once_per_window"
            )
        ]
        indexes = [models.Index(fields=["tenant", "-first_seen"])]

    def __str__(self) -> str:
        return f"{self.public_id} ({self.key_prefix} on {self.model_id})"
