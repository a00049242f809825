from __future__ import annotations

from rest_framework import serializers

from billing.models import Invoice, InvoiceLine, Transfer


class InvoiceLineSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model.ref", default=None)

    class Meta:
        model = InvoiceLine
        fields = ["description", "model", "calls", "compute_seconds", "amount", "amount_cents"]


class InvoiceSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="public_id")
    period = serializers.DateField(format="%Y-%m")
    lines = InvoiceLineSerializer(many=True)

    class Meta:
        model = Invoice
        fields = [
            "id",
            "period",
            "currency",
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
    invoice_period = serializers.DateField(source="invoice.period", format="%Y-%m")

    class Meta:
        model = Transfer
        fields = ["id", "invoice_period", "amount_cents", "currency", "status", "created_at"]


class BillingSettingsSerializer(serializers.Serializer):
    spend_cap = serializers.DecimalField(
        max_digits=12, decimal_places=2, min_value=0, allow_null=True
    )


class KeyBudgetSerializer(serializers.Serializer):
    monthly_limit = serializers.DecimalField(
        max_digits=12, decimal_places=2, min_value=0, allow_null=True
    )


class UsageRowSerializer(serializers.Serializer):
    model = serializers.CharField(required=False)
    key = serializers.CharField(required=False, allow_null=True)
    calls = serializers.IntegerField()
    amount = serializers.CharField()


class UsageSerializer(serializers.Serializer):
    period = serializers.CharField(help_text="YYYY-MM")
    calls = serializers.IntegerField()
    free_calls = serializers.IntegerField()
    compute_seconds = serializers.CharField()
    amount = serializers.CharField(help_text="Exact decimal, in the listing's currency.")
    spend_cap = serializers.CharField(allow_null=True)
    state = serializers.CharField()
    by_model = UsageRowSerializer(many=True)
    by_key = UsageRowSerializer(many=True)
