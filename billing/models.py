from __future__ import annotations

from functools import partial

from django.db import models
from django.utils import timezone

from accounts.models import ApiKey, Tenant
from accounts.secrets import public_id
from marketplace.models import Listing, Model


class UsageRecord(models.Model):
    """One billable unit of work: a prediction or a compression job. Immutable, and unique
    per source, so a retried or redelivered task can never bill twice. Amounts are at the
    price in force when the work ran; corrections are new records, never edits."""

    class Kind(models.TextChoices):
        PREDICTION = "prediction", "Prediction"
        COMPRESSION = "compression", "Compression job"

    public_id = models.CharField(max_length=24, unique=True, default=partial(public_id, "use"))
    kind = models.CharField(max_length=16, choices=Kind.choices)
    source_id = models.CharField(max_length=32, unique=True)  # the prediction's or job's id
    consumer = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="usage")
    publisher = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="earnings")
    model = models.ForeignKey(Model, null=True, on_delete=models.SET_NULL, related_name="usage")
    model_ref = models.CharField(max_length=160)
    listing = models.ForeignKey(Listing, null=True, blank=True, on_delete=models.SET_NULL)
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL)
    calls = models.PositiveIntegerField(default=1)
    compute_seconds = models.DecimalField(max_digits=14, decimal_places=6)
    price_per_call = models.DecimalField(max_digits=12, decimal_places=6)
    price_per_second = models.DecimalField(max_digits=12, decimal_places=6)
    currency = models.CharField(max_length=3)
    free = models.BooleanField(default=False, help_text="Within the monthly free calls.")
    amount = models.DecimalField(max_digits=14, decimal_places=6)
    platform_fee = models.DecimalField(max_digits=14, decimal_places=6)
    publisher_share = models.DecimalField(max_digits=14, decimal_places=6)
    period = models.DateField(help_text="First day of the billing month.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["consumer", "period"]),
            models.Index(fields=["publisher", "period"]),
        ]

    def __str__(self) -> str:
        return f"{self.source_id}: {self.amount} {self.currency}"
