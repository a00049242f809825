from __future__ import annotations

from functools import partial

from django.db import models
from django.utils import timezone

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
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.public_id
