from __future__ import annotations

from decimal import Decimal
from functools import partial

from django.db import models
from django.utils import timezone

from accounts.models import ApiKey, Tenant
from accounts.secrets import public_id
from billing.money import from_minor_units
from marketplace.models import Listing, Model


class UsageRecord(models.Model):
    """One billable unit of work: a prediction or a compression job. Immutable, and unique
    per source, so a retried or redelivered task can never bill twice. Amounts are at the
    price in force when the work ran; corrections are new records, never edits."""

    class Kind(models.TextChoices):
        PREDICTION = "prediction", "Prediction"
        COMPRESSION = "compression", "Compression job"
        CREDIT = "credit", "Credit"

    public_id = models.CharField(max_length=24, unique=True, default=partial(public_id, "use"))
    kind = models.CharField(max_length=16, choices=Kind.choices)
    source_id = models.CharField(max_length=32, unique=True)  # the prediction's or job's id
    consumer = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="usage")
    # None for a credit: the platform pays for it, not a publisher.
    publisher = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.PROTECT, related_name="earnings"
    )
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
            # What every paid call's admission sums (the spend cap, a key's budget) and
            # counts (free calls), read from the index alone; and the billing page's chart
            # of the last days. Without them each read every record of the consumer's month:
            # 38 ms a check at 200,000 records on SQLite.
            models.Index(fields=["consumer", "period", "currency", "amount"]),
            models.Index(fields=["api_key", "period", "currency", "consumer", "amount"]),
            models.Index(
                fields=["consumer", "model", "period"],
                condition=models.Q(free=True),
                name="usage_free_calls",
            ),
            models.Index(fields=["consumer", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.source_id}: {self.amount} {self.currency}"


class BillingAccount(models.Model):
    """A tenant's side of the money: its Stripe customer and payment method as a consumer,
    its spend cap, its payment state, and its Connect account as a publisher."""

    class State(models.TextChoices):
        OK = "ok", "In good standing"
        PAST_DUE = "past_due", "Payment failed (grace period)"

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="billing")
    stripe_customer_id = models.CharField(max_length=64, blank=True, db_index=True)
    payment_method_id = models.CharField(max_length=64, blank=True)
    payment_method_label = models.CharField(max_length=64, blank=True)  # "visa •••• 4242"
    spend_cap = models.DecimalField(
        max_digits=12, decimal_places=2, null=True, blank=True, help_text="Per month; empty: none."
    )
    cap_alerted_period = models.DateField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.OK)
    grace_until = models.DateTimeField(null=True, blank=True)
    connect_account_id = models.CharField(max_length=64, blank=True)
    payouts_enabled = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"billing for {self.tenant}"

    @property
    def has_payment_method(self) -> bool:
        return bool(self.payment_method_id)


class KeyBudget(models.Model):
    """A monthly spend limit for one API key."""

    api_key = models.OneToOneField(ApiKey, on_delete=models.CASCADE, related_name="budget")
    monthly_limit = models.DecimalField(max_digits=12, decimal_places=2)
    alerted_period = models.DateField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.api_key}: {self.monthly_limit}/month"


class Invoice(models.Model):
    """One consumer's bill for one month and currency, frozen from the ledger at close and
    mirrored in Stripe. Each step to Stripe is saved as it happens, so a retry resumes."""

    class Status(models.TextChoices):
        PENDING = "pending", "Not yet in Stripe"
        DRAFT = "draft", "Draft"
        OPEN = "open", "Open"
        PAID = "paid", "Paid"
        VOID = "void", "Void"
        UNCOLLECTIBLE = "uncollectible", "Uncollectible"
        REFUNDING = "refunding", "Refund started"  # paid; the refund is not finished
        REFUNDED = "refunded", "Refunded"

    # Paid, and never moved back by what Stripe says of the invoice (a refund is ours).
    SETTLED = (Status.PAID, Status.REFUNDING, Status.REFUNDED)

    public_id = models.CharField(max_length=24, unique=True, default=partial(public_id, "bill"))
    consumer = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="invoices")
    period = models.DateField(help_text="First day of the billed month.")
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    # Every *_cents column counts in the currency's minor unit, as Stripe's amounts do: cents,
    # or whole yen for a zero-decimal currency (billing.money).
    amount_cents = models.BigIntegerField()
    stripe_invoice_id = models.CharField(max_length=64, blank=True, db_index=True)
    stripe_charge_id = models.CharField(max_length=64, blank=True)
    number = models.CharField(max_length=64, blank=True)
    hosted_url = models.URLField(max_length=500, blank=True)
    payment_error = models.CharField(max_length=500, blank=True)
    # Failed attempts to pay so far: the next attempt's idempotency key carries it, so a retry
    # after a decline is a new payment, not the decline replayed.
    payment_failures = models.PositiveIntegerField(default=0, db_default=0)
    created_at = models.DateTimeField(default=timezone.now)
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["consumer", "period", "currency"], name="one_invoice_per_period"
            )
        ]
        ordering = ["-period", "-created_at"]

    def __str__(self) -> str:
        return f"{self.public_id} {self.consumer} {self.period:%Y-%m}"

    @property
    def amount(self) -> Decimal:
        return from_minor_units(self.amount_cents, self.currency)


class InvoiceLine(models.Model):
    """One listing's usage (or the period's credits) on an invoice, in cents, with the
    publisher's share fixed when the invoice was made."""

    public_id = models.CharField(max_length=24, unique=True, default=partial(public_id, "line"))
    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    model = models.ForeignKey(Model, null=True, blank=True, on_delete=models.SET_NULL)
    description = models.CharField(max_length=200)
    publisher = models.ForeignKey(
        Tenant, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    calls = models.PositiveIntegerField(default=0)
    compute_seconds = models.DecimalField(max_digits=16, decimal_places=6, default=0)
    amount = models.DecimalField(max_digits=16, decimal_places=6)  # the ledger's exact sum
    amount_cents = models.BigIntegerField()
    publisher_cents = models.BigIntegerField()
    stripe_item_id = models.CharField(max_length=64, blank=True)

    def __str__(self) -> str:
        return f"{self.description}: {self.amount_cents}"

    @property
    def platform_cents(self) -> int:
        return self.amount_cents - self.publisher_cents


class Transfer(models.Model):
    """A publisher's share of one paid invoice, sent to its Connect account."""

    class Status(models.TextChoices):
        AWAITING_ACCOUNT = "awaiting_account", "Waiting for a connected account"
        PENDING = "pending", "Pending"
        PAID = "paid", "Sent"
        REVERSED = "reversed", "Reversed"

    public_id = models.CharField(max_length=24, unique=True, default=partial(public_id, "trf"))
    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="transfers")
    publisher = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="transfers")
    amount_cents = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    stripe_transfer_id = models.CharField(max_length=64, blank=True)
    reversed_cents = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["invoice", "publisher"], name="one_transfer_each")
        ]

    def __str__(self) -> str:
        return f"{self.public_id} {self.amount_cents} to {self.publisher}"

    @property
    def amount(self) -> Decimal:
        return from_minor_units(self.amount_cents, self.currency)


class StripeEvent(models.Model):
    """A webhook event, stored once by its Stripe id and processed in a task."""

    event_id = models.CharField(max_length=100, unique=True)
    type = models.CharField(max_length=100)
    object_id = models.CharField(max_length=100, blank=True)
    payload = models.JSONField()
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)
    # Why processing it failed, the last time, and how many times it did: past
    # ``EVENT_MAX_ATTEMPTS`` the resume sweep leaves it for an operator.
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0, db_default=0)

    def __str__(self) -> str:
        return f"{self.event_id} {self.type}"
