"""The operators' console for money: tenants' billing state, the ledger, invoices, credits
and refunds. Ledger rows and invoices are read-only here; changes go through services."""

from __future__ import annotations

import re
import secrets
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.admin import OperatorActions, ReadOnlyAdmin, operator_actor
from accounts.exceptions import ServiceError
from billing.models import BillingAccount, Invoice, InvoiceLine, StripeEvent, Transfer, UsageRecord
from billing.services import credit_create, invoice_refund, stripe_events_retry
from billing.stripe_gateway import GatewayError
from marketplace.listings import currency_problem


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ["public_id", "kind", "consumer", "model_ref", "amount", "currency", "period"]
    list_filter = ["kind", "period", "currency", "free"]
    search_fields = ["public_id", "source_id", "consumer__slug", "model_ref"]


# Checked by the action, which says what is wrong: an ActionForm that does not validate
# only makes the admin answer "No action selected."
SUBMISSION_RE = re.compile(r"[0-9a-f]{16}")
CREDIT_AMOUNT = forms.DecimalField(min_value=Decimal("0.01"), max_digits=10, decimal_places=2)


class CreditForm(ActionForm):
    # A new one each time the page is shown: the same form sent twice credits once.
    submission = forms.CharField(
        required=False, widget=forms.HiddenInput, initial=lambda: secrets.token_hex(8)
    )
    amount = forms.CharField(required=False, max_length=32)
    reason = forms.CharField(required=False, max_length=120)
    currency = forms.CharField(
        required=False,
        max_length=3,
        help_text="e.g. usd; empty: the currency each tenant was last billed in",
    )


@admin.register(BillingAccount)
class BillingAccountAdmin(OperatorActions, ReadOnlyAdmin):
    """Read-only but for its actions: the state follows the invoices (void one in Stripe to
    forgive it), the spend cap is the organisation's own, and a credit goes through
    ``credit_create``, audited."""

    list_display = ["tenant", "state", "grace_until", "payment_method_label", "spend_cap"]
    list_filter = ["state"]
    search_fields = ["tenant__slug", "stripe_customer_id", "connect_account_id"]
    fields = [
        "tenant",
        "state",
        "grace_until",
        "spend_cap",
        "stripe_customer_id",
        "payment_method_label",
        "connect_account_id",
        "payouts_enabled",
    ]
    actions = ["credit"]
    action_form = CreditForm

    @admin.action(
        description="Credit the amount below to the selected tenants", permissions=["operate"]
    )
    def credit(self, request, queryset):
        try:
            amount = CREDIT_AMOUNT.clean(request.POST.get("amount", ""))
        except ValidationError:
            amount = None
        reason = request.POST.get("reason", "").strip()
        if not amount or not reason:
            messages.error(
                request, "A credit needs an amount from 0.01 to 99,999,999.99 and a reason."
            )
            return
        currency = request.POST.get("currency", "").strip().lower()
        if currency and currency_problem(currency):
            messages.error(request, currency_problem(currency))
            return
        submission = request.POST.get("submission", "")
        if not SUBMISSION_RE.fullmatch(submission):
            submission = ""  # a form from before: no protection against a second send
        credited = 0
        try:
            with transaction.atomic():  # all the selected tenants, or none
                for account in queryset.select_related("tenant"):
                    _credit, new = credit_create(
                        consumer=account.tenant,
                        amount=amount,
                        reason=reason,
                        actor=operator_actor(request),
                        currency=currency or _last_billed(account.tenant),
                        key=f"{submission}-{account.pk}" if submission else "",
                    )
                    credited += new
        except ServiceError as e:
            messages.error(request, e.message)
            return
        if not credited:
            messages.warning(request, "This form was sent before: nothing was credited again.")
            return
        messages.success(request, f"Credited {amount} to {credited} tenant(s).")


def _last_billed(tenant) -> str:
    """The currency of the tenant's latest usage ("" for none: the platform's). A credit
    applies only to invoices in its currency, so a tenant billed only in EUR gets EUR."""
    return (
        UsageRecord.objects.filter(consumer=tenant)
        .exclude(kind=UsageRecord.Kind.CREDIT)
        .order_by("-created_at")
        .values_list("currency", flat=True)
        .first()
    ) or ""


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    fields = [
        "description",
        "calls",
        "amount",
        "amount_cents",
        "publisher",
        "publisher_cents",
        "stripe_item_id",
    ]
    readonly_fields = fields

    def get_queryset(self, request):
        # Each line's publisher was read alone: a query per line of the invoice.
        return super().get_queryset(request).select_related("publisher")

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Invoice)
class InvoiceAdmin(OperatorActions, ReadOnlyAdmin):
    list_display = [
        "public_id",
        "consumer",
        "period",
        "amount",
        "currency",
        "status",
        "stripe_invoice_id",
    ]
    list_filter = ["status", "period"]
    search_fields = ["public_id", "consumer__slug", "stripe_invoice_id", "number"]
    inlines = [InvoiceLineInline]
    actions = ["refund"]

    @admin.action(
        description="Refund the selected paid invoices and reverse their transfers (or finish "
        "a refund that stopped half-way)",
        permissions=["operate"],
    )
    def refund(self, request, queryset):
        for invoice in queryset:
            try:
                invoice_refund(invoice=invoice, actor=operator_actor(request))
            except ServiceError as e:
                messages.error(request, e.message)
            except GatewayError as e:  # Stripe refused or could not be reached: try again
                messages.error(
                    request,
                    f"The refund of {invoice.public_id} is started but not finished ({e}); "
                    "refund it again to finish it.",
                )
            else:
                messages.success(request, f"Refunded {invoice.public_id}.")


@admin.register(Transfer)
class TransferAdmin(ReadOnlyAdmin):
    list_display = ["public_id", "publisher", "invoice", "amount_cents", "currency", "status"]
    list_filter = ["status"]
    search_fields = ["public_id", "publisher__slug", "stripe_transfer_id"]


class EventState(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("processed", "Processed"), ("failing", "Failing"), ("waiting", "Waiting")]

    def queryset(self, request, queryset):
        if self.value() == "processed":
            return queryset.filter(processed_at__isnull=False)
        if self.value() == "failing":
            return queryset.filter(processed_at__isnull=True).exclude(error="")
        if self.value() == "waiting":
            return queryset.filter(processed_at__isnull=True, error="")
        return queryset


@admin.register(StripeEvent)
class StripeEventAdmin(OperatorActions, ReadOnlyAdmin):
    list_display = [
        "event_id",
        "type",
        "object_id",
        "received_at",
        "processed_at",
        "attempts",
        "error",
    ]
    list_filter = [EventState, "type"]
    search_fields = ["event_id", "object_id"]
    actions = ["process_again"]

    @admin.action(
        description="Process the selected unprocessed events again", permissions=["operate"]
    )
    def process_again(self, request, queryset):
        actor = operator_actor(request)
        queued = stripe_events_retry(events=queryset, actor=actor)
        messages.success(request, f"Queued {queued} events to be processed again.")
