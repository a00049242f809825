"""Usage and invoices from the command line (usage after predictions: test_publish_flow)."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_no_invoices_yet(mm, tenant):
    run = mm("invoices")

    assert run.code == 0, run.err
    assert "No invoices yet." in run.out


def test_a_bad_period_is_exit_5(mm, tenant):
    run = mm("usage", "--period", "last-month")

    assert run.code == 5 and "YYYY-MM" in run.err


def test_usage_says_when_the_spend_cap_stops_paid_calls(mm, tenant, outsider):
    """It printed "(ok)" (the payment state) beside a spend over the cap, while every paid
    call was refused."""
    from decimal import Decimal

    from accounts.services import SYSTEM
    from billing.services import spend_cap_set
    from tests.billing.conftest import spend
    from tests.inference.conftest import listed_classifier

    model = listed_classifier(outsider, tenant, price_per_call="0.0125").model
    spend_cap_set(tenant=tenant, cap=Decimal("0.05"), actor=SYSTEM)
    spend(tenant, model, 3)
    under = mm("usage")
    spend(tenant, model, 2)
    over = mm("usage")

    assert under.code == over.code == 0, (under.err, over.err)
    assert "(ok)" not in under.out and "spend cap" in under.out
    assert "at the spend cap" not in under.out
    assert "at the spend cap: paid calls are refused" in over.out
