"""manage.py close_period [--period YYYY-MM]: invoice a month and collect it through Stripe."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from accounts.exceptions import ServiceError
from billing.management.commands.reconcile import month
from billing.models import Invoice
from billing.selectors import last_period
from billing.services import invoice_collect, period_close, stripe_configured
from billing.stripe_gateway import GatewayError, GatewayUnavailable

UNFINISHED = (Invoice.Status.PENDING, Invoice.Status.DRAFT, Invoice.Status.OPEN)


class Command(BaseCommand):
    help = (
        "Freeze a month's usage into invoices (once) and take them through Stripe here, "
        "without a worker. Safe to run again: it resumes where a crash left off."
    )

    def add_arguments(self, parser):
        parser.add_argument("--period", type=month, help="YYYY-MM (default: last month)")

    def handle(self, *args, period=None, **options):
        period = period or last_period()
        try:
            period_close(period=period, collect=False)
        except ServiceError as e:
            raise CommandError(e.message) from e
        invoices = Invoice.objects.filter(period=period).select_related("consumer")
        if not stripe_configured():
            for invoice in invoices.order_by("pk"):
                self.stdout.write(
                    f"{invoice.public_id} {invoice.consumer.slug} {invoice.amount} "
                    f"{invoice.currency} {invoice.status}"
                )
            self.stdout.write(
                f"{invoices.count()} invoice(s) for {period:%Y-%m}. Stripe is not configured "
                "(STRIPE_SECRET_KEY): they wait in pending; run this again once it is."
            )
            return
        failed = 0
        for invoice in invoices.order_by("pk"):
            # An open invoice whose payment failed waits for a new card and Stripe's retry.
            if invoice.status in UNFINISHED and not invoice.payment_error:
                try:
                    invoice_collect(invoice)
                except GatewayUnavailable as e:
                    failed += 1
                    self.stderr.write(f"{invoice.public_id}: Stripe unavailable ({e}).")
                except (GatewayError, ServiceError) as e:  # this one alone: go on with the rest
                    failed += 1
                    self.stderr.write(f"{invoice.public_id}: not collected: {e}")
                invoice.refresh_from_db()
            self.stdout.write(
                f"{invoice.public_id} {invoice.consumer.slug} {invoice.amount} "
                f"{invoice.currency} {invoice.status}"
            )
        if failed:
            raise CommandError(
                f"{failed} invoice(s) could not be collected (see above); run again once fixed.",
                returncode=2,
            )
        self.stdout.write(f"{invoices.count()} invoice(s) for {period:%Y-%m}.")
