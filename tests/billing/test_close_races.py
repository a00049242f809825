"""Closing a month twice at once (the beat task and an operator's ``manage.py close_period``):
on PostgreSQL the two overlap, and the second must find the first's invoice as a later close
does."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts import services as accounts
from billing import selectors
from billing.models import Invoice, UsageRecord
from billing.services import credit_create, period_close
from tests.billing.conftest import listed, spend
from tests.races import race

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("credit", ["0", "2"], ids=["usage", "credit carried"])
def test_two_closes_of_a_month_at_once_make_one_invoice_and_both_return_it(
    monkeypatch, tenant, outsider, credit
):
    last_month = (timezone.now().date().replace(day=1) - timedelta(days=1)).replace(day=1)
    spend(outsider, listed(tenant), 3)  # 0.75
    if credit != "0":
        credit_create(
            consumer=outsider, amount=Decimal(credit), reason="outage", actor=accounts.SYSTEM
        )
    outsider.usage.update(period=last_month)

    first, second = race(
        monkeypatch,
        pause_before=(selectors, "rollup"),  # found no invoice yet, about to make one
        first=lambda: period_close(period=last_month, collect=False),
        second=lambda: period_close(period=last_month, collect=False),
    )

    [invoice] = Invoice.objects.all()
    assert first == [invoice] and second == [invoice]
    carried = UsageRecord.objects.filter(model_ref__startswith="credit: carried")
    assert carried.count() == (2 if credit != "0" else 0)


@pytest.mark.django_db(transaction=False)
def test_closing_a_month_without_stripe_configured_keeps_invoices_pending_and_calls_nobody(
    monkeypatch, settings, tenant, outsider
):
    """Without STRIPE_SECRET_KEY the close sent each customer's name and e-mail to
    api.stripe.com with no key, failed, and exited 2; the settings say invoices wait."""
    from io import StringIO

    from django.core.management import call_command

    from billing import stripe_gateway

    settings.STRIPE_SECRET_KEY = ""
    monkeypatch.setattr(
        stripe_gateway, "client", lambda: pytest.fail("talked to Stripe without a key")
    )
    last_month = (timezone.now().date().replace(day=1) - timedelta(days=1)).replace(day=1)
    spend(outsider, listed(tenant), 2)
    outsider.usage.update(period=last_month)
    out = StringIO()

    call_command("close_period", "--period", f"{last_month:%Y-%m}", stdout=out)
    period_close(period=last_month)  # the beat's close queues no collection either

    [invoice] = Invoice.objects.all()
    assert invoice.status == Invoice.Status.PENDING and invoice.amount == Decimal("0.50")
    assert "Stripe is not configured (STRIPE_SECRET_KEY): they wait in pending" in out.getvalue()
