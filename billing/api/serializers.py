from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.api.serializers import StrictSerializer
from billing.models import Invoice, InvoiceLine, Transfer


@extend_schema_field({"type": "string", "pattern": r"^\d{4}-\d{2}$", "example": "2026-11"})
class MonthField(serializers.DateField):
    """A billing period as its month, ``YYYY-MM`` (not the full date the schema would say)."""

    def __init__(self, **kwargs):
        super().__init__(format="%Y-%m", **kwargs)


class InvoiceLineSerializer(serializers.ModelSerializer):
    model = serializers.CharField(
        source="model.ref", default=None, allow_null=True, help_text="null on a credits line"
    )

    class Meta:
        model = InvoiceLine
        fields = ["description", "model", "calls", "compute_seconds", "amount", "amount_cents"]


AMOUNT_HELP = "Exact decimal, in `currency` (e.g. 0.75 usd, 450 jpy)."
MINOR_HELP = "The amount in the currency's minor unit, as Stripe counts it: cents, or yen."


class InvoiceSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id")
    period = MonthField()
    amount = serializers.CharField(read_only=True, help_text=AMOUNT_HELP)
    amount_cents = serializers.IntegerField(read_only=True, help_text=MINOR_HELP)
    lines = InvoiceLineSerializer(many=True)

    class Meta:
        model = Invoice
        fields = [
            "id",
            "period",
            "currency",
            "amount",
            "amount_cents",
            "status",
            "number",
            "hosted_url",
            "payment_error",
            "created_at",
            "paid_at",
            "lines",
        ]


class TransferSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id")
    invoice_period = MonthField(source="invoice.period")
    amount = serializers.CharField(read_only=True, help_text=AMOUNT_HELP)
    amount_cents = serializers.IntegerField(read_only=True, help_text=MINOR_HELP)

    class Meta:
        model = Transfer
        fields = [
            "id",
            "invoice_period",
            "amount",
            "amount_cents",
            "currency",
            "status",
            "created_at",
        ]


class BillingSettingsSerializer(StrictSerializer):
    spend_cap = serializers.DecimalField(
        max_digits=12, decimal_places=2, min_value=0, allow_null=True
    )


class KeyBudgetSerializer(StrictSerializer):
    monthly_limit = serializers.DecimalField(
        max_digits=12, decimal_places=2, min_value=0, allow_null=True
    )


class UsageRowSerializer(serializers.Serializer):
    model = serializers.CharField(required=False)
    key = serializers.CharField(required=False, allow_null=True)
    calls = serializers.IntegerField()
    amount = serializers.CharField()
    currency = serializers.CharField()


class KeyUsageRowSerializer(UsageRowSerializer):
    key_id = serializers.CharField(allow_null=True, help_text="null: from the dashboard")
    prefix = serializers.CharField(allow_null=True)


class SpendSerializer(serializers.Serializer):
    currency = serializers.CharField()
    amount = serializers.CharField(help_text="Exact decimal.")


class UsageSerializer(serializers.Serializer):
    period = serializers.CharField(help_text="YYYY-MM")
    calls = serializers.IntegerField()
    free_calls = serializers.IntegerField()
    compute_seconds = serializers.CharField()
    spend = SpendSerializer(many=True, help_text="The period's spend in each currency.")
    amount = serializers.CharField(
        allow_null=True,
        help_text="Exact decimal, in `currency`: the spend when it is all in one currency "
        "(0 when nothing was spent); null when it is in several (see `spend`).",
    )
    currency = serializers.CharField(allow_null=True)
    spend_cap = serializers.CharField(allow_null=True)
    state = serializers.CharField()
    by_model = UsageRowSerializer(many=True)
    by_key = KeyUsageRowSerializer(many=True)
