"""manage.py reconcile [--period YYYY-MM]: the ledger, invoices, Stripe and transfers agree."""

from __future__ import annotations

from datetime import date

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from billing.reconcile import reconcile
from billing.selectors import last_period, period_of


def month(value: str) -> date:
    try:
        return date.fromisoformat(f"{value}-01" if len(value) == 7 else value).replace(day=1)
    except ValueError as e:
        raise CommandError(f"--period takes a month as YYYY-MM, not {value!r}.") from e


class Command(BaseCommand):
    help = (
        "Compare the ledger, our invoices, Stripe's invoices and the transfers; "
        "exit 1 on any difference."
    )

    def add_arguments(self, parser):
        parser.add_argument("--period", type=month, help="YYYY-MM (default: last month)")

    def handle(self, *args, period: date | None = None, **options):
        period = period or last_period()
        if period >= period_of(timezone.now()):
            # Its usage is not invoiced before it ends: every organisation with any would be
            # reported as a ledger without an invoice.
            raise CommandError(
                f"{period:%Y-%m} has not ended: months are invoiced once they end "
                "(close_period). Reconcile a closed month; the default is last month."
            )
        differences = reconcile(period=period)
        for difference in differences:
            self.stdout.write(str(difference))
        if differences:
            raise CommandError(f"{period:%Y-%m}: {len(differences)} difference(s).", returncode=1)
        self.stdout.write(
            self.style.SUCCESS(f"{period:%Y-%m}: the ledger, invoices, Stripe and transfers agree.")
        )
