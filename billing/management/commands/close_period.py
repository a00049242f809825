"""manage.py close_period [--period YYYY-MM]: invoice a month and collect it through Stripe."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from accounts.exceptions import ServiceError
from billing.management.commands.reconcile import last_month, month
from billing.services import billing_resume, invoice_collect, period_close
from billing.stripe_gateway import GatewayUnavailable


class Command(BaseCommand):
    help = (
        "Freeze a month's usage into invoices (once) and take them through Stripe here, "
        "without a worker. Safe to run again: it resumes where a crash left off."
    )

    def add_arguments(self, parser):
        parser.add_argument("--period", type=month, help="YYYY-MM (default: last month)")

    def handle(self, *args, period=None, **options):
        period = period or last_month()
        try:
            invoices = period_close(period=period, collect=False)
        except ServiceError as e:
            raise CommandError(e.message) from e
        failed = 0
        for invoice in invoices:
            try:
                invoice_collect(invoice)
            except GatewayUnavailable as e:
                failed += 1
                self.stderr.write(f"{invoice.public_id}: Stripe unavailable ({e}); run again.")
            invoice.refresh_from_db()
            self.stdout.write(
                f"{invoice.public_id} {invoice.consumer.slug} {invoice.amount} "
                f"{invoice.currency} {invoice.status}"
            )
        resumed = billing_resume(inline=True)
        self.stdout.write(f"{len(invoices)} invoice(s) for {period:%Y-%m}; resumed {resumed}.")
        if failed:
            raise CommandError(f"{failed} invoice(s) could not reach Stripe.", returncode=2)
