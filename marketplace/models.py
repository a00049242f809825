from __future__ import annotations

from functools import partial

from django.db import models
from django.utils import timezone
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from accounts.models import Tenant
from accounts.secrets import public_id


class TenantKey(models.Model):
    """A tenant's data key, stored only wrapped by a key-encryption key (KEK).

    Artifacts are encrypted under keys derived from it. Deleting the row (or wiping
    ``wrapped``) destroys every artifact encrypted under it: crypto-shredding.
    """

    class Status(models.TextChoices):
        ACTIVE = "active", "Active: encrypts new artifacts"
        RETIRING = "retiring", "Retiring: artifacts are being re-encrypted"
        DESTROYED = "destroyed", "Destroyed"

    public_id = models.CharField(max_length=24, unique=True, default=partial(public_id, "tk"))
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="data_keys")
    kek_id = models.CharField(max_length=2048)
    wrapped = models.BinaryField(null=True, editable=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(default=timezone.now)
    destroyed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant"],
                condition=models.Q(status="active"),
                name="one_active_data_key_per_tenant",
            )
        ]

    def __str__(self) -> str:
        return f"{self.public_id} ({self.status})"

    @property
    def wrap_context(self) -> str:
        # Binds the wrapped key to its row: copied onto another tenant's row it won't unwrap.
        return f"tenant:{self.tenant_id}:key:{self.public_id}"


class SealedSecret(models.Model):
    """A secret we must read back to use (a webhook signing key), stored as the tenant data
    keys are: only wrapped by the key-encryption key, so a copy of the database alone reveals
    none of them. KEK rotation re-wraps these too (``vault.keys.kek_rotate``)."""

    public_id = models.CharField(max_length=24, unique=True, default=partial(public_id, "sec"))
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="sealed_secrets")
    purpose = models.CharField(max_length=64)
    kek_id = models.CharField(max_length=2048)
    wrapped = models.BinaryField(editable=False)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.public_id} ({self.purpose})"

    @property
    def wrap_context(self) -> str:
        return sealed_context(self.tenant_id, self.public_id, self.purpose)


def sealed_context(tenant_id: int, public_id: str, purpose: str) -> str:
    """Binds a sealed secret to its row and its use: copied onto another row, another tenant's
    or another purpose's, it does not unwrap. (A function for the migration that sealed the
    secrets stored before.)"""
    return f"tenant:{tenant_id}:secret:{public_id}:{purpose}"


class Artifact(models.Model):
    """An encrypted blob in the artifact store (a model file). Its ``public_id`` is bound
    into the ciphertext, so a blob moved to another artifact fails to decrypt."""

    public_id = models.CharField(max_length=24, unique=True, default=partial(public_id, "art"))
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="artifacts")
    key = models.ForeignKey(TenantKey, on_delete=models.RESTRICT, related_name="artifacts")
    storage_name = models.CharField(max_length=512)
    size = models.BigIntegerField(help_text="Plaintext bytes.")
    ciphertext_size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64, help_text="SHA-256 of the plaintext.")
    chunk_blobs = models.JSONField(
        default=list,
        blank=True,
        help_text="Blobs read after storage_name, as [name, offset, length]: an upload's "
        "parts, taken over as they are. Empty when storage_name holds the whole file.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.public_id

    def blob_names(self) -> list[str]:
        return [self.storage_name, *(name for name, _offset, _length in self.chunk_blobs)]


# --- the registry ---------------------------------------------------------------------------

MODEL_NAME_RE = r"^[a-z0-9][a-z0-9._-]{0,99}$"


class Task(models.TextChoices):
    IMAGE_CLASSIFICATION = "image-classification", "Image classification"
    TEXT_CLASSIFICATION = "text-classification", "Text classification"
    TABULAR_CLASSIFICATION = "tabular-classification", "Tabular classification"
    REGRESSION = "regression", "Regression"
    EMBEDDING = "embedding", "Embedding"
    OTHER = "other", "Other"


class Format(models.TextChoices):
    EXPORT = "pt2", "torch.export archive (.pt2)"
    TORCHSCRIPT = "torchscript", "TorchScript archive (.pt)"
    SAFETENSORS = "safetensors", "safetensors state dict + built-in architecture"


class Model(models.Model):
    """A model repository, addressed as ``owner/name`` (tenant slug / model name)."""

    public_id = models.CharField(max_length=24, unique=True, default=partial(public_id, "mdl"))
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="models")
    name = models.CharField(max_length=100)
    description = models.TextField(max_length=5000, blank=True)
    task = models.CharField(max_length=32, choices=Task.choices, default=Task.OTHER)
    next_version = models.PositiveIntegerField(default=1, editable=False)
    created_by = models.ForeignKey(
        "accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="model_name_unique")]
        permissions = [
            ("run_model", "Run predictions with the model"),
            ("publish_model", "Publish, price and share the model"),
            ("download_model", "Download the model's weights"),
        ]

    def __str__(self) -> str:
        return self.ref

    @property
    def ref(self) -> str:
        return f"{self.tenant.slug}/{self.name}"


class ModelVersion(models.Model):
    """An immutable version: its artifact, number and lineage never change after creation;
    only its lifecycle (validation result, deprecation, yanking) moves forward."""

    class Status(models.TextChoices):
        VALIDATING = "validating", "Validating"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"
        DEPRECATED = "deprecated", "Deprecated"
        YANKED = "yanked", "Yanked"

    class Operation(models.TextChoices):
        UPLOAD = "upload", "Upload"
        QUANTIZE = "quantize", "Quantization"
        PRUNE = "prune", "Pruning"
        DISTILL = "distill", "Distillation"

    public_id = models.CharField(max_length=24, unique=True, default=partial(public_id, "ver"))
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    label = models.CharField(max_length=64, blank=True)
    # RESTRICT, not PROTECT: an artifact cannot be deleted from under its version, but deleting
    # the organisation (crypto-shredding) deletes both. PROTECT refused that for any tenant
    # that had a version, and the keys survived.
    artifact = models.OneToOneField(Artifact, on_delete=models.RESTRICT, related_name="version")
    format = models.CharField(max_length=16, choices=Format.choices)
    architecture = models.CharField(max_length=32, blank=True)
    architecture_config = models.JSONField(default=dict, blank=True)
    example_input = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.VALIDATING)
    failure_reason = models.TextField(blank=True)
    signature = models.JSONField(null=True, blank=True)
    parameter_count = models.BigIntegerField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    # Validation found the model keeps nothing from call to call (a torch.export graph that
    # writes no state, a built-in architecture): one loaded host may serve every organisation.
    # Otherwise each has its own, so no state carries one's input to another.
    stateless = models.BooleanField(default=False, db_default=False)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    operation = models.CharField(max_length=16, choices=Operation.choices, default=Operation.UPLOAD)
    operation_params = models.JSONField(default=dict, blank=True)
    sunset_at = models.DateTimeField(null=True, blank=True)
    deprecated_at = models.DateTimeField(null=True, blank=True)  # the Deprecation header's
    status_reason = models.CharField(max_length=500, blank=True)
    created_by = models.ForeignKey(
        "accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    validated_at = models.DateTimeField(null=True, blank=True)
    # While a worker validates the version it holds it until then (a conditional update): a
    # second delivery of the task finds it taken. Expired, it is free again (a dead worker).
    validation_claimed_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["model", "number"], name="version_number_unique")
        ]
        ordering = ["-number"]

    def __str__(self) -> str:
        return f"{self.model_id}:{self.number}"

    @property
    def past_sunset(self) -> bool:
        """Deprecated, and its sunset date has come: still shown, no longer run."""
        return (
            self.status == self.Status.DEPRECATED
            and self.sunset_at is not None
            and self.sunset_at <= timezone.now()
        )

    @classmethod
    def runnable(cls) -> models.Q:
        """The versions that run: ready ones, and deprecated ones until their sunset."""
        return models.Q(status=cls.Status.READY) | models.Q(
            models.Q(sunset_at__isnull=True) | models.Q(sunset_at__gt=timezone.now()),
            status=cls.Status.DEPRECATED,
        )


class Alias(models.Model):
    """A movable name (``production``, ``staging``, …) for a version; moves are recorded."""

    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="aliases")
    name = models.SlugField(max_length=40)
    version = models.ForeignKey(ModelVersion, on_delete=models.RESTRICT, related_name="aliases")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model", "name"], name="alias_unique")]
        verbose_name_plural = "aliases"

    def __str__(self) -> str:
        return f"{self.name} -> {self.version.number}"


class AliasMove(models.Model):
    alias = models.ForeignKey(Alias, on_delete=models.CASCADE, related_name="history")
    from_version = models.ForeignKey(
        ModelVersion, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    to_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="+")
    actor_label = models.CharField(max_length=254)  # Actor.label: as AuditEvent.actor_label
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.alias} moved to {self.to_version_id}"


class UploadSession(models.Model):
    """A resumable upload: chunks arrive in any order, each encrypted into its own part, and
    completion assembles them into the version's artifact.

    ``artifact_id``, ``key`` and ``header`` fix the finished artifact's encryption when the
    session starts, so each chunk is sealed where it will sit (``marketplace.vault.uploads``).
    Sessions from before that have an empty header and parts that are vault files of their
    own."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        EXPIRED = "expired", "Expired"

    public_id = models.CharField(max_length=24, unique=True, default=partial(public_id, "upl"))
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="upload_sessions")
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="upload_sessions")
    filename = models.CharField(max_length=255)
    format = models.CharField(max_length=16, choices=Format.choices)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    chunk_size = models.PositiveIntegerField()
    label = models.CharField(max_length=64, blank=True)
    architecture = models.CharField(max_length=32, blank=True)
    architecture_config = models.JSONField(default=dict, blank=True)
    example_input = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    failure_reason = models.TextField(blank=True)
    version = models.OneToOneField(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="upload"
    )
    created_by = models.ForeignKey(
        "accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    # Set while a request completes the upload (a lease, in case that process dies): a second
    # completion meanwhile is refused at once instead of racing the first for the same parts.
    completing_until = models.DateTimeField(null=True, blank=True)
    artifact_id = models.CharField(max_length=24, blank=True)
    key = models.ForeignKey(
        TenantKey, null=True, blank=True, on_delete=models.RESTRICT, related_name="+"
    )
    header = models.BinaryField(default=b"", blank=True)

    def __str__(self) -> str:
        return self.public_id

    @property
    def chunk_count(self) -> int:
        return max(1, -(-self.size // self.chunk_size))

    def chunk_range(self, index: int) -> tuple[int, int]:
        """Inclusive byte range of chunk ``index``."""
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.size) - 1


class UploadPart(models.Model):
    """One chunk of an upload. The row is written before the chunk is sealed, claiming its
    position under the session's header; ``artifact`` is set once the chunk is stored."""

    class Layout(models.TextChoices):
        SEALED_IN_PLACE = "sealed", "Sealed as the session artifact's chunks"
        FILE = "file", "A vault file of its own"

    session = models.ForeignKey(UploadSession, on_delete=models.CASCADE, related_name="parts")
    index = models.PositiveIntegerField()
    artifact = models.OneToOneField(
        Artifact, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    layout = models.CharField(max_length=8, choices=Layout.choices, default=Layout.FILE)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["session", "index"], name="upload_part_unique")
        ]

    def __str__(self) -> str:
        return f"{self.session_id}#{self.index}"


# --- listings, access and entitlements ------------------------------------------------------


class Listing(models.Model):
    """A model published in the catalogue with its card and price."""

    class Visibility(models.TextChoices):
        PRIVATE = "private", "Private: only the publisher and tenants it shares with"
        UNLISTED = "unlisted", "Unlisted: anyone with the link"
        PUBLIC = "public", "Public: in the catalogue"

    public_id = models.CharField(max_length=24, unique=True, default=partial(public_id, "lst"))
    model = models.OneToOneField(Model, on_delete=models.CASCADE, related_name="listing")
    visibility = models.CharField(
        max_length=16, choices=Visibility.choices, default=Visibility.PRIVATE
    )
    gated = models.BooleanField(
        default=False, help_text="Consumers request access; the publisher approves."
    )
    title = models.CharField(max_length=120)
    summary = models.CharField(max_length=300, blank=True)
    card_markdown = models.TextField(max_length=100_000, blank=True)
    card_html = models.TextField(blank=True, editable=False)  # sanitised render of the card
    license = models.CharField(max_length=64, default="proprietary")
    tags = models.JSONField(default=list, blank=True)
    price_per_call = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    price_per_second = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    currency = models.CharField(max_length=3, default="usd")
    free_calls_per_month = models.PositiveIntegerField(default=0)
    # Shown on the listing so consumers can try the model; any JSON the model's signature takes.
    example_input = models.JSONField(null=True, blank=True)
    platform_fee_percent = models.DecimalField(max_digits=5, decimal_places=2)
    published_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    taken_down_at = models.DateTimeField(null=True, blank=True)
    takedown_reason = models.CharField(max_length=500, blank=True)

    def __str__(self) -> str:
        return self.title

    @property
    def is_free(self) -> bool:
        return self.price_per_call == 0 and self.price_per_second == 0

    @property
    def publisher_share_percent(self):
        return 100 - self.platform_fee_percent


class AccessRequest(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        DECLINED = "declined", "Declined"

    public_id = models.CharField(max_length=24, unique=True, default=partial(public_id, "req"))
    listing = models.ForeignKey(Listing, on_delete=models.CASCADE, related_name="access_requests")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="access_requests")
    message = models.TextField(max_length=2000, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["listing", "tenant"],
                condition=models.Q(status="pending"),
                name="one_pending_request_per_tenant",
            )
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} -> {self.listing_id} ({self.status})"


class Entitlement(models.Model):
    """A consumer tenant's right to a model: a subscription to its listing, or a direct share
    from the publisher. The rights themselves are django-guardian grants to the tenant's
    group, kept in step by ``marketplace.services``."""

    class Kind(models.TextChoices):
        SUBSCRIPTION = "subscription", "Subscription"
        SHARE = "share", "Shared by the publisher"

    public_id = models.CharField(max_length=24, unique=True, default=partial(public_id, "ent"))
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="entitlements")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="entitlements")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    can_download = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["model", "tenant"],
                condition=models.Q(revoked_at__isnull=True),
                name="one_live_entitlement_per_tenant",
            )
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} -> {self.model_id} ({self.kind})"


class ModelUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(Model, on_delete=models.CASCADE)


class ModelGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Model, on_delete=models.CASCADE)
