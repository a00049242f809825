"""Paid calls admitted at once: each must count the one before it. The checks (free calls
left, spend cap, key budget) count the work already recorded, and two requests that both
checked before either was recorded could each take the last free call or the last room. A
review helper's 8 parallel calls were all admitted with room under the cap for one, and a
burst from an organisation with no payment method got 5 of 10 calls through (billed) on a
listing with 2 free calls."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billing.models import BillingAccount, KeyBudget
from inference import services as inference
from inference.models import Prediction
from tests.conftest import key_client
from tests.inference.conftest import listed_classifier
from tests.races import race

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _call(client):
    return lambda: client.post(
        "/api/v1/predictions",
        {"model": "acme/clf", "input": {"x": [[0.5, -1.0, 2.0, 0.25]]}},
        format="json",
    )


def _two_at_once(monkeypatch, first, second):
    """``second`` runs while ``first`` has passed its checks and not yet recorded its
    prediction."""
    return race(
        monkeypatch,
        pause_before=(inference.sql, "insert"),
        first=_call(first),
        second=_call(second),
    )


def test_two_calls_with_room_under_the_cap_for_one_admit_one(
    monkeypatch, settings, tenant, outsider
):
    settings.PAYMENT_METHOD_REQUIRED = False
    listed_classifier(tenant, outsider, price_per_call="0.25")
    BillingAccount.objects.update_or_create(
        tenant=outsider, defaults={"spend_cap": Decimal("0.25")}
    )
    client = key_client(outsider)

    first, second = _two_at_once(monkeypatch, client, client)

    assert first.status_code == 201
    assert second.status_code == 402 and "spend cap" in second.json()["detail"]
    assert Prediction.objects.count() == 1


def test_two_calls_on_a_key_with_budget_for_one_admit_one(monkeypatch, settings, tenant, outsider):
    settings.PAYMENT_METHOD_REQUIRED = False
    listed_classifier(tenant, outsider, price_per_call="0.25")
    client = key_client(outsider)
    key = outsider.api_keys.get(prefix=client.secret.split("_")[2])
    KeyBudget.objects.create(api_key=key, monthly_limit=Decimal("0.25"))

    first, second = _two_at_once(monkeypatch, client, client)

    assert first.status_code == 201
    assert second.status_code == 402 and "monthly budget" in second.json()["detail"]


def test_the_last_free_call_goes_to_one_call_and_the_other_needs_a_card(
    monkeypatch, settings, tenant, outsider
):
    from marketplace.models import Listing

    settings.PAYMENT_METHOD_REQUIRED = True
    listed_classifier(tenant, outsider, price_per_call="0.25")
    Listing.objects.filter(model__name="clf").update(free_calls_per_month=1)
    client = key_client(outsider)

    first, second = _two_at_once(monkeypatch, client, client)

    assert first.status_code == 201
    assert second.status_code == 402 and "add a payment method" in second.json()["detail"]
    assert Prediction.objects.count() == 1
