"""Reconciliation: the ledger, our invoices, Stripe's invoices and the transfers must agree
to the cent (every amount here is in its currency's minor unit: cents, or whole yen). Every
disagreement is reported; none is fixed here."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date

from accounts.models import Tenant
from billing import selectors
from billing import stripe_gateway as gateway
from billing.models import BillingAccount, Invoice, Transfer, UsageRecord
from billing.money import minor_units


@dataclass(frozen=True)
class Difference:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def reconcile(*, period: date) -> list[Difference]:
    diffs: list[Difference] = []
    diffs += _ledger_against_invoices(period)
    invoices = list(
        Invoice.objects.filter(period=period).select_related("consumer").prefetch_related("lines")
    )
    for invoice in invoices:
        diffs += _invoice_against_stripe(invoice)
        diffs += _transfers(invoice)
    diffs += _stray_stripe_invoices(period, invoices)
    return diffs


def _ledger_against_invoices(period: date) -> list[Difference]:
    diffs = []
    groups = (
        UsageRecord.objects.filter(period=period)
        .values_list("consumer", "currency")
        .distinct()
        .order_by("consumer", "currency")
    )
    invoices = {
        (i.consumer_id, i.currency): i
        for i in Invoice.objects.filter(period=period).prefetch_related("lines")
    }
    for consumer_id, currency in groups:
        tenant = _tenant(consumer_id)
        invoice = invoices.get((consumer_id, currency))
        rows = selectors.rollup(consumer=tenant, period=period, currency=currency)
        expected = {row["model"]: row for row in rows if minor_units(row["amount"], currency) != 0}
        where = f"{tenant.slug} {period:%Y-%m} {currency}"
        if invoice is None:
            total = sum(minor_units(row["amount"], currency) for row in expected.values())
            if total > 0:
                diffs.append(Difference(where, f"ledger has {total} (minor units) but no invoice"))
            continue
        lines = {line.model_id: line for line in invoice.lines.all()}
        for model_id in sorted(set(expected) | set(lines), key=lambda m: m or 0):
            row, line = expected.get(model_id), lines.get(model_id)
            ledger_cents = minor_units(row["amount"], currency) if row else 0
            line_cents = line.amount_cents if line else 0
            ref = row["model_ref"] if row else line.description
            if ledger_cents != line_cents:
                diffs.append(
                    Difference(where, f"{ref}: ledger {ledger_cents}, invoice {line_cents}")
                )
            share = minor_units(row["publisher_share"], currency) if row else 0
            if row and line and share != line.publisher_cents:
                diffs.append(
                    Difference(
                        where,
                        f"{ref}: publisher share {share} in the "
                        f"ledger, {line.publisher_cents} on the invoice",
                    )
                )
        if sum(line.amount_cents for line in lines.values()) != invoice.amount_cents:
            diffs.append(Difference(where, "invoice total is not the sum of its lines"))
    return diffs


def _invoice_against_stripe(invoice: Invoice) -> list[Difference]:
    where = f"{invoice.public_id} ({invoice.consumer.slug} {invoice.period:%Y-%m})"
    unfinished = (
        [Difference(where, "a refund started and did not finish: refund it again")]
        if invoice.status == Invoice.Status.REFUNDING
        else []
    )
    return unfinished + _invoice_in_stripe(invoice, where)


def _invoice_in_stripe(invoice: Invoice, where: str) -> list[Difference]:
    if not invoice.stripe_invoice_id:
        return [Difference(where, f"not in Stripe (status {invoice.status})")]
    try:
        remote = gateway.invoice_retrieve(invoice.stripe_invoice_id)
        remote_lines = gateway.invoice_lines(invoice.stripe_invoice_id)
    except gateway.ObjectMissing:
        return [Difference(where, f"Stripe has no invoice {invoice.stripe_invoice_id}")]
    diffs = []
    if remote["total"] != invoice.amount_cents:
        diffs.append(
            Difference(where, f"Stripe total {remote['total']}, ours {invoice.amount_cents}")
        )
    ours = {line.public_id: line.amount_cents for line in invoice.lines.all()}
    theirs: dict[str, int] = defaultdict(int)
    for line in remote_lines:
        theirs[(line.get("metadata") or {}).get("mm_line", "?")] += line.get("amount", 0)
    if dict(theirs) != ours:
        diffs.append(Difference(where, f"Stripe lines {dict(theirs)}, ours {ours}"))
    expected = {
        Invoice.Status.PAID: "paid",
        Invoice.Status.REFUNDING: "paid",
        Invoice.Status.REFUNDED: "paid",
        Invoice.Status.VOID: "void",
        Invoice.Status.OPEN: "open",
        Invoice.Status.DRAFT: "draft",
        Invoice.Status.UNCOLLECTIBLE: "uncollectible",
    }.get(invoice.status)
    if remote["status"] != expected:
        diffs.append(Difference(where, f"Stripe says {remote['status']}, ours {invoice.status}"))
    return diffs


def _transfers(invoice: Invoice) -> list[Difference]:
    where = f"{invoice.public_id} transfers"
    shares: dict[int, int] = defaultdict(int)
    for line in invoice.lines.all():
        if line.publisher_id and line.publisher_cents:
            shares[line.publisher_id] += line.publisher_cents
    transfers = {t.publisher_id: t for t in Transfer.objects.filter(invoice=invoice)}
    if invoice.status not in Invoice.SETTLED:
        if transfers:
            return [Difference(where, f"transfers exist for an invoice that is {invoice.status}")]
        return []
    diffs = []
    for publisher_id in sorted(set(shares) | set(transfers)):
        transfer, share = transfers.get(publisher_id), shares.get(publisher_id, 0)
        if transfer is None:
            diffs.append(
                Difference(where, f"publisher {publisher_id} is owed {share}, no transfer")
            )
            continue
        if transfer.amount_cents != share:
            diffs.append(
                Difference(where, f"{transfer.public_id} is {transfer.amount_cents}, owed {share}")
            )
        refunded = invoice.status == Invoice.Status.REFUNDED
        if refunded and transfer.reversed_cents != transfer.amount_cents:
            diffs.append(Difference(where, f"{transfer.public_id} not reversed after a refund"))
        if not refunded and transfer.status == Transfer.Status.REVERSED:
            diffs.append(
                Difference(where, f"{transfer.public_id} reversed on an invoice not refunded")
            )
        if transfer.stripe_transfer_id:
            remote = gateway.transfer_retrieve(transfer.stripe_transfer_id)
            if remote["amount"] != transfer.amount_cents:
                diffs.append(
                    Difference(
                        where,
                        f"{transfer.public_id}: Stripe {remote['amount']}, "
                        f"ours {transfer.amount_cents}",
                    )
                )
            if remote["amount_reversed"] != transfer.reversed_cents:
                diffs.append(
                    Difference(
                        where,
                        f"{transfer.public_id}: Stripe reversed {remote['amount_reversed']}, "
                        f"ours {transfer.reversed_cents}",
                    )
                )
        elif transfer.status == Transfer.Status.PAID:
            diffs.append(Difference(where, f"{transfer.public_id} is paid with no Stripe id"))
    return diffs


def _stray_stripe_invoices(period: date, invoices: list[Invoice]) -> list[Difference]:
    """Stripe invoices carrying our metadata that we do not know: duplicates a retry made."""
    known = {i.public_id: i.stripe_invoice_id for i in invoices}
    diffs = []
    customers = BillingAccount.objects.filter(
        tenant__invoices__period=period, stripe_customer_id__gt=""
    ).distinct()
    for account in customers:
        for remote in gateway.invoices_of(account.stripe_customer_id):
            ours = remote["metadata"].get("mm_invoice")
            if ours in known and known[ours] != remote["id"]:
                diffs.append(
                    Difference(f"{ours}", f"a second Stripe invoice {remote['id']} (duplicate)")
                )
    return diffs


def _tenant(pk: int) -> Tenant:
    return Tenant.objects.get(pk=pk)
