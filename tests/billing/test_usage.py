"""The usage ledger prices each unit of work exactly once, in exact decimals."""

from __future__ import annotations

from decimal import Decimal

import pytest

from accounts import services as accounts
from billing.models import UsageRecord
from billing.services import usage_record_create
from marketplace import services as registry
from marketplace.models import Listing

pytestmark = pytest.mark.django_db


@pytest.fixture
def paid_model(tenant):
    model = registry.model_create(tenant=tenant, name="paid", actor=accounts.SYSTEM)
    Listing.objects.create(
        model=model,
        title="Paid",
        visibility="public",
        price_per_call=Decimal("0.002"),
        price_per_second=Decimal("0.05"),
        currency="eur",
        free_calls_per_month=2,
        platform_fee_percent=Decimal("20"),
    )
    return model


def record(source: str, consumer, model, seconds: str = "0.1") -> UsageRecord:
    return usage_record_create(
        kind="prediction",
        source_id=source,
        consumer=consumer,
        model=model,
        compute_seconds=Decimal(seconds),
    )


def test_calls_are_priced_per_call_and_per_second_after_the_free_calls(outsider, paid_model):
    first, second, third = (record(f"pred_{i}", outsider, paid_model) for i in range(3))

    assert (first.free, second.free, third.free) == (True, True, False)
    assert first.amount == second.amount == Decimal("0")
    # 0.002 + 0.05 * 0.1 = 0.007, split 20 % / 80 %.
    assert third.amount == Decimal("0.007000")
    assert third.platform_fee == Decimal("0.001400")
    assert third.publisher_share == Decimal("0.005600")
    assert third.currency == "eur" and third.publisher == paid_model.tenant


def test_amounts_are_exact_decimals(outsider, paid_model):
    for i in range(2):
        record(f"free_{i}", outsider, paid_model)
    records = [record(f"pred_{i}", outsider, paid_model, "0.333333") for i in range(3)]
    # 0.002 + 0.05 * 0.333333 = 0.01866665, rounded half-up to the micro-unit.
    assert [r.amount for r in records] == [Decimal("0.018667")] * 3
    assert records[0].platform_fee == Decimal("0.003733")
    assert records[0].publisher_share == Decimal("0.014934")
    assert sum(r.amount for r in records) == Decimal("0.056001")
    assert all(r.amount == r.platform_fee + r.publisher_share for r in records)


def test_the_same_work_is_billed_once(outsider, paid_model):
    first = record("pred_same", outsider, paid_model)
    again = record("pred_same", outsider, paid_model, "9.9")
    assert first.pk == again.pk
    assert UsageRecord.objects.filter(source_id="pred_same").count() == 1


def test_a_publisher_running_its_own_model_pays_nothing(tenant, paid_model):
    for i in range(3):
        assert record(f"own_{i}", tenant, paid_model).amount == 0


def test_compression_jobs_are_billed_to_the_owner_at_the_platform_price(
    tenant, paid_model, settings
):
    settings.COMPRESSION_PRICE_PER_SECOND = "0.004"

    usage = usage_record_create(
        kind="compression",
        source_id="job_1",
        consumer=tenant,
        model=paid_model,
        compute_seconds=Decimal("12.5"),
    )

    assert usage.amount == Decimal("0.050000")
    assert usage.platform_fee == usage.amount and usage.publisher_share == 0
    assert usage.consumer == tenant and usage.currency == "usd"


def test_the_operators_money_view_shows_whole_months_in_every_currency(tenant, outsider):
    from datetime import date

    from billing.selectors import period_of, platform_money
    from tests.billing.conftest import listed, spend

    euro = listed(tenant, "euro")
    Listing.objects.filter(model=euro).update(currency="eur")
    spend(outsider, listed(tenant, "clf"), 1)
    spend(outsider, euro, 1)
    UsageRecord.objects.update(period=date(2026, 10, 1))  # October: USD and EUR
    spend(outsider, listed(tenant, "clf2"), 1)  # this month: USD only

    rows = platform_money(periods=2)

    assert [(row["period"], row["currency"]) for row in rows] == [
        (period_of(), "usd"),
        (date(2026, 10, 1), "eur"),  # two months asked, two months shown, every currency
        (date(2026, 10, 1), "usd"),
    ]


def test_earnings_and_the_operators_money_are_exact_sums(tenant, outsider):
    """On SQLite the sums were floating point: the publisher's earnings read
    0.674624999999998 and the operators' page 3.36997500000049, printed as they were."""
    from billing.selectors import earnings, period_of, platform_money, top_consumers
    from tests.inference.conftest import listed_classifier

    model = listed_classifier(tenant, outsider, price_per_call="0.1").model
    for i in range(3):  # 0.1 + 0.1 + 0.1 in binary floating point is 0.30000000000000004
        record(f"pred_{i}", outsider, model, "0")

    (earned,) = earnings(publisher=tenant)
    (money,) = platform_money()
    (top,) = top_consumers(period=period_of())

    assert str(earned["amount"]) == str(money["revenue"]) == str(top["amount"]) == "0.300000"
    assert earned["platform_fee"] + earned["publisher_share"] == earned["amount"]
    assert money["platform_fees"] + money["publisher_shares"] == money["revenue"]
