"""Spend caps, key budgets and the usage views: paid work a consumer cannot pay for is
refused with 402 before anything is recorded, and people are warned at 80 %."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone

from accounts import services as accounts
from accounts.exceptions import PaymentRequired
from accounts.models import Role
from billing.services import spend_authorize
from inference.models import Prediction
from marketplace.models import Listing
from tests.billing.conftest import spend
from tests.conftest import key_client, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_card_needed(settings):
    settings.PAYMENT_METHOD_REQUIRED = False


def finished() -> None:
    """Arrange: the queued predictions ran (what they cost is arranged with ``spend``)."""
    Prediction.objects.filter(status=Prediction.Status.QUEUED).update(
        status=Prediction.Status.SUCCEEDED
    )


def predict(client):
    return client.post(
        "/api/v1/predictions",
        {"model": "acme/clf", "input": {"x": [[0.5, -1.0, 2.0, 0.25]]}},
        format="json",
    )


def test_spend_cap_refuses_paid_calls_once_reached_and_records_nothing(outsider, paid_clf):
    globex = key_client(outsider)
    cap = globex.put("/api/v1/billing/settings", {"spend_cap": "1.00"}, format="json")
    spend(outsider, paid_clf, 4)  # 4 x 0.25

    refused = predict(globex)

    assert cap.json() == {"spend_cap": "1.00"}
    assert refused.status_code == 402
    assert "reached your spend cap (1.00)" in refused.json()["detail"]
    assert not Prediction.objects.exists()


def test_a_call_that_costs_more_than_the_cap_leaves_is_refused_before_it_runs(outsider, paid_clf):
    globex = key_client(outsider)
    globex.put("/api/v1/billing/settings", {"spend_cap": "1.10"}, format="json")
    spend(outsider, paid_clf, 3)  # 0.75: 0.35 left, room for one more call at 0.25
    allowed = predict(globex)
    finished()
    spend(outsider, paid_clf, 1)  # that call: 1.00 spent, 0.10 left

    refused = predict(globex)

    assert allowed.status_code == 201
    assert refused.status_code == 402
    assert refused.json()["detail"].startswith(
        "A call of acme/clf costs 0.25 USD, more than this month's spend leaves under your "
        "spend cap (0.10 of 1.10)"
    )
    assert Prediction.objects.count() == 1


def test_crossing_80_percent_of_the_cap_emails_the_billing_people_once(outsider, paid_clf, charlie):
    globex = key_client(outsider)
    globex.put("/api/v1/billing/settings", {"spend_cap": "1.25"}, format="json")
    spend(outsider, paid_clf, 3)  # 0.75: under 80 %
    below = predict(globex)
    finished()
    spend(outsider, paid_clf, 1)  # 1.00: at 80 %, with room for one more call

    first = predict(globex)
    finished()
    second = predict(globex)

    assert below.status_code == first.status_code == second.status_code == 201
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == [charlie.email]
    assert "80% of your monthly spend cap" in mail.outbox[0].subject


def test_calls_refused_after_the_cap_alert_send_it_once(outsider, paid_clf, charlie):
    """Past 80 % of the cap, with the key's budget used up: the alert was recorded in the
    transaction the refusal rolled back, and every refused call e-mailed the organisation."""
    from billing.models import BillingAccount, KeyBudget

    globex = key_client(outsider)
    key = outsider.api_keys.get(prefix=globex.secret.split("_")[2])
    globex.put("/api/v1/billing/settings", {"spend_cap": "1.25"}, format="json")
    KeyBudget.objects.create(api_key=key, monthly_limit=Decimal("0.50"))
    spend(outsider, paid_clf, 4, key=key)  # 1.00: 80 % of the cap, the key's 0.50 used up

    refused = [predict(globex) for _ in range(3)]

    assert [r.status_code for r in refused] == [402] * 3
    assert "monthly budget" in refused[0].json()["detail"]
    cap_mails = [m for m in mail.outbox if "spend cap" in m.subject]
    assert len(cap_mails) == 1 and cap_mails[0].to == [charlie.email]
    assert BillingAccount.objects.get(tenant=outsider).cap_alerted_period is not None


def test_calls_still_queued_count_against_the_cap(outsider, paid_clf):
    """No worker runs them here: queued calls are what a backlog looks like. Each is counted
    at its price before it is billed, so a backlog cannot run past the cap."""
    Listing.objects.filter(model=paid_clf).update(free_calls_per_month=2)
    globex = key_client(outsider)
    globex.put("/api/v1/billing/settings", {"spend_cap": "1.00"}, format="json")

    codes = [predict(globex).status_code for _ in range(8)]

    assert codes == [201] * 6 + [402] * 2  # 2 free calls, then 4 at 0.25 reach 1.00
    refused = predict(globex).json()["detail"]
    assert "(0.00, and 1.00 for work still running) has reached your spend cap" in refused
    Prediction.objects.update(status=Prediction.Status.CANCELED)  # cancelled: never billed
    assert predict(globex).status_code == 201


def test_a_cap_holds_for_each_currency_alone(tenant, outsider, paid_clf):
    from billing.services import spend_cap_set
    from tests.billing.conftest import listed

    euro = listed(tenant, "euro", "0.25")
    Listing.objects.filter(model=euro).update(currency="eur")
    euro.refresh_from_db()  # and its listing with it
    spend_cap_set(tenant=outsider, cap=Decimal("1.00"), actor=accounts.SYSTEM)
    spend(outsider, paid_clf, 3)  # 0.75 USD
    spend(outsider, euro, 4)  # 1.00 EUR: EUR calls are at the cap, USD ones are not
    globex = key_client(outsider)

    with pytest.raises(PaymentRequired, match=r"This month's EUR spend \(1.00\)"):
        spend_authorize(consumer=outsider, model=euro, api_key=None)
    assert predict(globex).status_code == 201  # 0.75 USD, not 1.75 of nothing


def test_a_key_over_its_budget_is_refused_while_other_keys_still_work(outsider, paid_clf):
    capped, other = key_client(outsider), key_client(outsider)
    capped_key = outsider.api_keys.get(prefix=capped.secret.split("_")[2])
    admin = key_client(outsider)
    budget = admin.put(
        f"/api/v1/keys/{capped_key.public_id}/budget", {"monthly_limit": "0.50"}, format="json"
    )
    spend(outsider, paid_clf, 2, key=capped_key)

    refused, allowed = predict(capped), predict(other)
    shown = admin.get(f"/api/v1/keys/{capped_key.public_id}/budget")
    unset = admin.get(
        f"/api/v1/keys/{outsider.api_keys.get(prefix=other.secret.split('_')[2]).public_id}/budget"
    )

    assert budget.status_code == 200
    # Read back (it could be set, and was enforced, but not read).
    assert shown.json() == {"monthly_limit": "0.50"} and unset.json() == {"monthly_limit": None}
    assert refused.status_code == 402
    assert f"API key {capped_key.prefix} has used its monthly budget" in refused.json()["detail"]
    assert allowed.status_code == 201


def test_a_key_whose_budget_cannot_cover_a_call_is_refused(outsider, paid_clf):
    capped = key_client(outsider)
    capped_key = outsider.api_keys.get(prefix=capped.secret.split("_")[2])
    key_client(outsider).put(
        f"/api/v1/keys/{capped_key.public_id}/budget", {"monthly_limit": "0.60"}, format="json"
    )
    spend(outsider, paid_clf, 2, key=capped_key)  # 0.50 of 0.60

    refused = predict(capped)

    assert refused.status_code == 402
    assert (
        f"more than API key {capped_key.prefix} has left of its monthly budget (0.10 of "
        in (refused.json()["detail"])
    )


def test_free_work_is_never_refused(tenant, outsider, paid_clf):
    acme = key_client(tenant)
    acme.put("/api/v1/billing/settings", {"spend_cap": "0"}, format="json")

    assert predict(acme).status_code == 201  # a publisher runs its own model for free


def test_the_months_free_calls_need_no_card_and_count_the_calls_still_queued(
    settings, outsider, paid_clf
):
    settings.PAYMENT_METHOD_REQUIRED = True  # and globex has no card
    Listing.objects.filter(model=paid_clf).update(free_calls_per_month=3)
    globex = key_client(outsider)

    codes = [predict(globex).status_code for _ in range(4)]

    assert codes == [201, 201, 201, 402]  # three free (queued, not billed yet), then paid
    assert "add a payment method" in predict(globex).json()["detail"]


def test_a_paid_listing_needs_a_payment_method_when_required(settings, outsider, paid_clf):
    settings.PAYMENT_METHOD_REQUIRED = True

    refused = predict(key_client(outsider))

    assert refused.status_code == 402
    assert "add a payment method" in refused.json()["detail"]


def test_billing_page_says_paid_listings_need_a_card_only_when_they_do(
    settings, outsider, paid_clf, charlie
):
    page = Client()
    page.force_login(charlie)
    settings.PAYMENT_METHOD_REQUIRED = True
    required = page.get("/dashboard/billing/").content.decode()
    settings.PAYMENT_METHOD_REQUIRED = False
    not_required = page.get("/dashboard/billing/").content.decode()

    assert "None yet. Paid listings need one." in required
    assert "None yet." in not_required and "Paid listings need one" not in not_required


def test_bad_limits_are_400s_and_limits_need_their_scopes(outsider):
    admin, reader = key_client(outsider), key_client(outsider, scopes=["billing:read"])
    treasurer = key_client(outsider, scopes=["billing:read", "billing:write"])

    bad = admin.put("/api/v1/billing/settings", {"spend_cap": "-1"}, format="json")
    forbidden = reader.put("/api/v1/billing/settings", {"spend_cap": "5"}, format="json")
    unknown = admin.put("/api/v1/keys/key_nope/budget", {"monthly_limit": "1"}, format="json")
    capped = treasurer.put("/api/v1/billing/settings", {"spend_cap": "5"}, format="json")
    key_id = outsider.api_keys.first().public_id
    budget = treasurer.put(f"/api/v1/keys/{key_id}/budget", {"monthly_limit": "1"}, format="json")

    assert bad.status_code == 400 and "spend_cap" in bad.json()["detail"]
    assert forbidden.status_code == 403 and "'billing:write'" in forbidden.json()["detail"]
    assert unknown.status_code == 404
    assert capped.status_code == 200
    assert reader.get("/api/v1/billing/settings").json() == {"spend_cap": "5.00"}
    assert budget.status_code == 403 and "'admin'" in budget.json()["detail"]


def test_an_admin_sets_and_clears_a_keys_budget_in_the_dashboard(
    charlie, outsider, tenant, paid_clf
):
    """A key's budget could be set and read only through the API: the billing page now lists
    each live key with this month's spend and, for owners and admins, its budget to edit."""
    capped = key_client(outsider)
    capped_key = outsider.api_keys.get(prefix=capped.secret.split("_")[2])
    page = Client()
    page.force_login(charlie)
    url = f"/dashboard/billing/keys/{capped_key.public_id}/budget/"

    saved = page.post(url, {"monthly_limit": "0.50"}, follow=True)
    spend(outsider, paid_clf, 2, key=capped_key)
    refused = predict(capped)
    shown = page.get("/dashboard/billing/").content.decode()
    negative = page.post(url, {"monthly_limit": "-1"}, follow=True).content.decode()
    still = key_client(outsider).get(f"/api/v1/keys/{capped_key.public_id}/budget").json()
    cleared = page.post(url, {"monthly_limit": ""}, follow=True).content.decode()

    assert f"{capped_key.name} may spend 0.50 a month." in saved.content.decode()
    assert refused.status_code == 402 and "used its monthly budget" in refused.json()["detail"]
    budgets = shown.split('id="key-budgets"', 1)[1]
    row = budgets.split(f"mm_live_{capped_key.prefix}_", 1)[1].split("</tr>", 1)[0]
    assert "0.50 USD" in row and 'value="0.50"' in row
    assert "was not changed" in negative and still == {"monthly_limit": "0.50"}
    assert f"{capped_key.name} has no budget now." in cleared
    assert predict(capped).status_code == 201


def test_only_owners_and_admins_set_budgets_and_only_on_their_own_keys(
    alice, bob, tenant, outsider
):
    from billing.models import KeyBudget

    ours = key_client(tenant)
    ours_key = tenant.api_keys.get(prefix=ours.secret.split("_")[2])
    theirs = key_client(outsider)
    theirs_key = outsider.api_keys.get(prefix=theirs.secret.split("_")[2])
    owner, developer = Client(), Client()
    owner.force_login(alice)
    developer.force_login(bob)

    by_developer = developer.post(
        f"/dashboard/billing/keys/{ours_key.public_id}/budget/", {"monthly_limit": "1"}
    )
    other_org = owner.post(
        f"/dashboard/billing/keys/{theirs_key.public_id}/budget/", {"monthly_limit": "1"}
    )

    assert by_developer.status_code == 403 and other_org.status_code == 404
    assert not KeyBudget.objects.exists()


def test_the_billing_role_sets_the_cap_in_the_dashboard_and_a_developer_cannot(alice, bob, tenant):
    dana = make_user("dana@acme.example")
    accounts.membership_add(tenant=tenant, user=dana, role=Role.BILLING, actor=accounts.SYSTEM)
    billing, developer = Client(), Client()
    billing.force_login(dana)
    developer.force_login(bob)

    set_by_billing = billing.post("/dashboard/billing/", {"spend_cap": "12.50"})
    set_by_developer = developer.post("/dashboard/billing/", {"spend_cap": "99"})

    assert set_by_billing.status_code in (200, 302)
    assert set_by_developer.status_code == 403
    assert key_client(tenant).get("/api/v1/billing/settings").json() == {"spend_cap": "12.50"}


def test_a_spend_cap_of_zero_is_shown_as_refusing_every_paid_call(alice, tenant):
    page = Client()
    page.force_login(alice)

    page.post("/dashboard/billing/", {"spend_cap": "0"})
    billing_page = page.get("/dashboard/billing/").content.decode()

    # Before, a zero cap showed no banner at all while every paid call answered 402.
    assert 'id="cap-alert"' in billing_page
    assert "Your spend cap is <strong>0</strong>: every paid call is refused" in billing_page


def test_usage_api_totals_this_period_per_model_and_key(outsider, paid_clf):
    globex = key_client(outsider, scopes=["billing:read"])
    spend(outsider, paid_clf, 3)

    usage = globex.get("/api/v1/usage").json()
    bad = globex.get("/api/v1/usage?period=2026-13")

    assert (usage["calls"], usage["amount"], usage["currency"]) == (3, "0.750000", "usd")
    assert usage["spend"] == [{"currency": "usd", "amount": "0.750000"}]
    assert usage["by_model"] == [
        {"model": "acme/clf", "calls": 3, "amount": "0.750000", "currency": "usd"}
    ]
    assert bad.status_code == 400 and "YYYY-MM" in bad.json()["detail"]


def test_spend_in_two_currencies_is_shown_per_currency_never_added_up(
    tenant, outsider, paid_clf, charlie
):
    from billing.services import spend_cap_set
    from tests.billing.conftest import listed

    euro = listed(tenant, "euro", "0.25")
    Listing.objects.filter(model=euro).update(currency="eur")
    spend_cap_set(tenant=outsider, cap=Decimal("1.20"), actor=accounts.SYSTEM)
    spend(outsider, paid_clf, 3)  # 0.75 USD: 62 % of the cap
    spend(outsider, euro, 4)  # 1.00 EUR: 83 %
    page = Client()
    page.force_login(charlie)

    usage = key_client(outsider, scopes=["billing:read"]).get("/api/v1/usage").json()
    billing_page = page.get("/dashboard/billing/").content.decode()

    assert usage["spend"] == [
        {"currency": "eur", "amount": "1.000000"},
        {"currency": "usd", "amount": "0.750000"},
    ]
    assert (usage["amount"], usage["currency"]) == (None, None)  # not 1.75 of nothing
    assert {(r["model"], r["amount"], r["currency"]) for r in usage["by_model"]} == {
        ("acme/euro", "1.000000", "eur"),
        ("acme/clf", "0.750000", "usd"),
    }
    assert '<span id="running-total">1.00 EUR + 0.75 USD</span>' in billing_page
    assert "<strong>83%</strong> of this month's spend cap" in billing_page  # not 145 %


def test_another_tenants_invoices_are_404(tenant, outsider, paid_clf):
    from billing.models import Invoice

    theirs = Invoice.objects.create(
        consumer=outsider, period="2026-01-01", currency="usd", amount_cents=5
    )

    assert key_client(outsider).get(f"/api/v1/invoices/{theirs.public_id}").status_code == 200
    assert key_client(tenant).get(f"/api/v1/invoices/{theirs.public_id}").status_code == 404
    assert key_client(tenant).get("/api/v1/invoices").json()["results"] == []


def test_billing_page_shows_the_running_total_charts_and_earnings(
    alice, charlie, outsider, paid_clf
):
    spend(outsider, paid_clf, 4)
    consumer, publisher = Client(), Client()
    consumer.force_login(charlie)
    publisher.force_login(alice)

    consumer_page = consumer.get("/dashboard/billing/").content.decode()
    publisher_page = publisher.get("/dashboard/billing/").content.decode()

    assert '<span id="running-total">1.00 USD</span>' in consumer_page
    assert 'id="usage-chart"' in consumer_page and "acme/clf" in consumer_page
    assert 'id="earnings"' in publisher_page
    assert "0.80 USD" in publisher_page  # 80 % of 1.00


def test_spend_chart_puts_one_days_usage_among_the_quiet_days(charlie, outsider, paid_clf):
    # With one day of usage the chart was that day's bar alone, stretched across the card as
    # a solid block; it now has a slot for every day of the window.
    spend(outsider, paid_clf, 4)
    consumer = Client()
    consumer.force_login(charlie)

    chart = consumer.get("/dashboard/billing/").content.decode().split('id="usage-chart"')[1]
    chart = chart.split("</div>\n")[0]

    assert chart.count('class="bar"') == 1 and chart.count('class="bar none"') == 30
    assert f'title="{timezone.localdate():%Y-%m-%d}: 1.00 USD, 4 calls' in chart


def test_billing_page_shows_a_call_cheaper_than_a_cent_at_its_exact_cost(
    alice, charlie, tenant, outsider
):
    from tests.billing.conftest import listed

    spend(outsider, listed(tenant, "tiny", "0.00005"), 1)
    consumer, publisher = Client(), Client()
    consumer.force_login(charlie)
    publisher.force_login(alice)

    consumer_page = consumer.get("/dashboard/billing/").content.decode()
    publisher_page = publisher.get("/dashboard/billing/").content.decode()

    assert '<span id="running-total">0.00005 USD</span>' in consumer_page  # not 0.00
    assert "<td>acme/tiny</td><td>1</td><td>0.00005 USD</td>" in consumer_page  # not 0.0001
    assert ": 0.00005 USD, 1 calls" in consumer_page  # the chart's bar for the day
    assert "<td>0.00005</td><td>0.00001</td><td>0.00004 USD</td>" in publisher_page


def test_members_without_billing_in_their_role_cannot_open_the_billing_page(bob, tenant):
    developer = Client()
    developer.force_login(bob)  # a developer of acme

    assert developer.get("/dashboard/billing/").status_code == 403
    assert "/dashboard/billing/" not in developer.get("/dashboard/").content.decode()


def test_a_field_the_billing_settings_do_not_take_is_a_400_and_changes_nothing(outsider):
    # A cap "in eur" was taken as a cap with the currency silently dropped.
    globex = key_client(outsider)

    response = globex.put(
        "/api/v1/billing/settings", {"spend_cap": "5.00", "currency": "eur"}, format="json"
    )

    assert response.status_code == 400
    assert response.json()["errors"] == {"currency": ["Unknown field."]}
    assert globex.get("/api/v1/billing/settings").json() == {"spend_cap": None}


@pytest.mark.django_db(transaction=True)  # the worker's batcher runs in its own thread
def test_a_price_changed_while_calls_wait_bills_them_at_no_more_than_they_were_admitted_at(
    outsider, paid_clf, monkeypatch
):
    """A publisher's raise was billed on the consumer's whole admitted backlog: a review
    helper saw nine calls admitted under a 0.44 cap billed 5.00 each (45.34 spent). Admitted
    work is billed at no more than its admission price; a lowered price applies at once."""
    from billing.models import UsageRecord
    from inference import services
    from marketplace.listings import listing_publish
    from workers.pool import HOSTS
    from workers.services import prediction_run

    globex = key_client(outsider)
    globex.put("/api/v1/billing/settings", {"spend_cap": "1.00"}, format="json")
    monkeypatch.setattr(services, "enqueue", lambda prediction: None)  # a backlog: run below
    try:
        waiting = [predict(globex).json()["id"] for _ in range(4)]  # 4 x 0.25: the cap
        listing_publish(model=paid_clf, actor=accounts.SYSTEM, price_per_call="5")
        for prediction_id in waiting[:2]:
            assert prediction_run(prediction_id=prediction_id) == "succeeded"
        listing_publish(model=paid_clf, actor=accounts.SYSTEM, price_per_call="0.1")
        for prediction_id in waiting[2:]:
            assert prediction_run(prediction_id=prediction_id) == "succeeded"
    finally:
        HOSTS.close()

    amounts = {r.source_id: r.amount for r in UsageRecord.objects.filter(consumer=outsider)}
    assert [amounts[i] for i in waiting] == [Decimal("0.25")] * 2 + [Decimal("0.1")] * 2


def test_work_admitted_in_one_currency_is_billed_in_it_after_the_listing_changes_currency(
    outsider, paid_clf
):
    """Its spend cap was checked in the currency it was admitted in: it is billed there, at
    the admitted price, not at the new currency's price."""
    from billing.models import UsageRecord
    from billing.services import usage_record_create

    Listing.objects.filter(model=paid_clf).update(price_per_call=Decimal("9"), currency="eur")

    record = usage_record_create(
        kind="prediction",
        source_id="pred_admitted_in_usd",
        consumer=outsider,
        model=paid_clf,
        compute_seconds=Decimal("0.01"),
        admitted=(Decimal("0.25"), Decimal("0"), "usd"),
    )

    assert (record.currency, record.amount) == ("usd", Decimal("0.25"))
    assert UsageRecord.objects.get(source_id="pred_admitted_in_usd").price_per_call == Decimal(
        "0.25"
    )


def test_spend_is_exact_where_the_database_adds_floats(outsider, paid_clf):
    """SQLite adds decimals as floating point: 4,678 calls at 0.01 came to 46.7799999999997,
    and a budget check compared that (a 402 said 0.00 of 46.80 was left, not that it was
    used)."""
    from billing.models import UsageRecord
    from billing.selectors import month_spend, period_of

    Listing.objects.filter(model=paid_clf).update(price_per_call=Decimal("0.01"))
    spend(outsider, paid_clf, 1)
    first = UsageRecord.objects.get()
    skip = ("id", "public_id", "source_id")
    fields = [f.attname for f in first._meta.concrete_fields if f.attname not in skip]
    copies = [
        UsageRecord(**{f: getattr(first, f) for f in fields}, source_id=f"pred_copy_{n}")
        for n in range(4677)
    ]
    UsageRecord.objects.bulk_create(copies)

    total = month_spend(consumer=outsider, period=period_of())

    assert total == Decimal("46.78") and total.as_tuple().exponent == -6
    assert UsageRecord.objects.filter(consumer=outsider).count() == 4678


def test_the_402_states_amounts_in_full_and_how_to_raise_the_cap(tenant, outsider):
    """Spend of 0.0625 read "0.06", and a call of 0.0005 would have cost "0.00"; the way out
    named only the dashboard, which an API-only caller does not use."""
    from tests.inference.conftest import listed_classifier

    model = listed_classifier(tenant, outsider, price_per_call="0.0125").model
    globex = key_client(outsider)
    globex.put("/api/v1/billing/settings", {"spend_cap": "0.05"}, format="json")
    spend(outsider, model, 5)

    refused = predict(globex)

    assert refused.status_code == 402
    assert refused.json()["detail"] == (
        "This month's USD spend (0.0625) has reached your spend cap (0.05); raise the cap on "
        "the dashboard's billing page or with PUT /api/v1/billing/settings."
    )


def test_usage_by_key_keeps_keys_that_share_a_name_apart(outsider, paid_clf):
    """Grouped by name, two keys called alike were one row: neither's spend could be read,
    nor checked against its own budget."""
    first, second = key_client(outsider), key_client(outsider)  # both named "test"
    keys = [outsider.api_keys.get(prefix=c.secret.split("_")[2]) for c in (first, second)]
    spend(outsider, paid_clf, 1, key=keys[0])
    spend(outsider, paid_clf, 3, key=keys[1])

    rows = first.get("/api/v1/usage").json()["by_key"]

    assert [(r["key"], r["key_id"], r["prefix"], r["calls"], r["amount"]) for r in rows] == [
        ("test", keys[1].public_id, keys[1].prefix, 3, "0.750000"),  # most spent first
        ("test", keys[0].public_id, keys[0].prefix, 1, "0.250000"),
    ]


def test_in_flight_work_is_read_from_its_partial_index(outsider):
    """Each paid call's admission sums the consumer's queued and running predictions. A bound
    "status IN (?, ?)" is not the partial index's own condition, so SQLite read every
    prediction the consumer ever made instead (34-52 ms at 10,000)."""
    from django.db import connection

    from inference.services import _unfinished

    if connection.vendor != "sqlite":
        pytest.skip("SQLite's rule; PostgreSQL plans with the values bound")
    sql, params = _unfinished(outsider).values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        plan = " ".join(str(row) for row in cursor.fetchall())

    assert "USING INDEX prediction_in_flight" in plan
