"""Operators credit a tenant from the admin console: a new, audited, negative ledger entry
that lowers the next invoice; the ledger itself is never edited there."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.db.models import Sum
from django.utils import timezone

from accounts import services as accounts
from accounts.models import AuditEvent, User
from billing.models import BillingAccount, UsageRecord
from billing.selectors import month_spend
from billing.services import credit_create, invoice_build, usage_record_create
from tests.billing.conftest import listed, spend

pytestmark = pytest.mark.django_db
NOVEMBER = date(2026, 11, 1)


@pytest.fixture
def operator(client) -> User:
    staff = User.objects.create_superuser(email="ops@modelmarket.example", password="x")
    client.force_login(staff)
    return staff


def test_operator_credits_a_tenant_and_the_next_invoice_is_lower(client, operator, outsider):
    account = BillingAccount.objects.create(tenant=outsider)

    response = client.post(
        "/admin/billing/billingaccount/",
        {
            "action": "credit",
            "_selected_action": [account.pk],
            "amount": "0.40",
            "reason": "outage on 3 Nov",
        },
    )

    assert response.status_code == 302
    credit = UsageRecord.objects.get(kind="credit")
    assert (credit.amount, credit.consumer, credit.publisher) == (Decimal("-0.40"), outsider, None)
    audit = AuditEvent.objects.get(action="billing.credit")
    assert (audit.actor_label, audit.ip) == (operator.email, "127.0.0.1")  # who, and from where


def test_the_credit_form_sent_twice_credits_once(client, operator, outsider):
    import re

    account = BillingAccount.objects.create(tenant=outsider)
    page = client.get("/admin/billing/billingaccount/").content.decode()
    [submission] = re.findall(r'name="submission" value="([0-9a-f]+)"', page)
    form = {
        "action": "credit",
        "_selected_action": [account.pk],
        "amount": "0.40",
        "reason": "outage on 3 Nov",
        "submission": submission,
    }

    client.post("/admin/billing/billingaccount/", form)
    again = client.post("/admin/billing/billingaccount/", form, follow=True)
    fresh = re.findall(r'name="submission" value="([0-9a-f]+)"', again.content.decode())

    assert UsageRecord.objects.filter(kind="credit").count() == 1
    assert AuditEvent.objects.filter(action="billing.credit").count() == 1
    assert "This form was sent before: nothing was credited again." in again.content.decode()
    assert fresh and fresh != [submission]  # the next credit is a new one


def test_a_credit_is_in_the_currency_the_tenant_is_billed_in_unless_chosen(
    client, operator, tenant, outsider
):
    from marketplace.models import Listing

    euro = listed(tenant, "euro")
    Listing.objects.filter(model=euro).update(currency="eur")
    euro.refresh_from_db()
    usage_record_create(
        kind="prediction",
        source_id="pred_eur",
        consumer=outsider,
        model=euro,
        compute_seconds=Decimal("0.01"),
    )
    account = BillingAccount.objects.create(tenant=outsider)

    def credit(**fields):
        body = {"action": "credit", "_selected_action": [account.pk], "reason": "outage"}
        return client.post("/admin/billing/billingaccount/", {**body, **fields}, follow=True)

    credit(amount="0.10")
    credit(amount="0.20", currency="USD")
    refused = credit(amount="0.30", currency="e1r")

    credits = UsageRecord.objects.filter(kind="credit").order_by("created_at")
    assert [(c.amount, c.currency) for c in credits] == [
        (Decimal("-0.10"), "eur"),  # a tenant billed only in EUR: its invoices are in EUR
        (Decimal("-0.20"), "usd"),
    ]
    assert "&#x27;e1r&#x27; is not a currency we bill in" in refused.content.decode()


def test_a_credit_is_its_own_negative_line_and_leaves_the_publishers_share(tenant, outsider):
    model = listed(tenant)
    spend(outsider, model, 3)
    credit_create(
        consumer=outsider, amount=Decimal("0.30"), reason="goodwill", actor=accounts.SYSTEM
    )
    outsider.usage.update(period=NOVEMBER)

    invoice = invoice_build(consumer=outsider, period=NOVEMBER, currency="usd")

    lines = sorted(
        (line.amount_cents, line.publisher_cents, line.description) for line in invoice.lines.all()
    )
    assert lines[0] == (-30, 0, "Credits, November 2026")
    assert lines[1][:2] == (75, 60)
    assert invoice.amount_cents == 45


def test_a_credit_needs_an_amount_and_a_reason(client, operator, outsider):
    account = BillingAccount.objects.create(tenant=outsider)

    client.post(
        "/admin/billing/billingaccount/",
        {"action": "credit", "_selected_action": [account.pk], "amount": "", "reason": ""},
    )

    assert not UsageRecord.objects.exists()


@pytest.fixture
def months() -> tuple[date, date]:
    """Last month and this one, read when the test runs (not at import: a run may cross
    midnight at a month's end)."""
    this_month = timezone.now().date().replace(day=1)
    return (this_month - timedelta(days=1)).replace(day=1), this_month


def test_a_credit_larger_than_the_month_zeroes_its_invoice_and_carries_the_rest(
    tenant, outsider, months
):
    last_month, this_month = months
    model = listed(tenant)
    spend(outsider, model, 3)  # 0.75, of which 0.60 is acme's
    credit_create(consumer=outsider, amount=Decimal("2"), reason="outage", actor=accounts.SYSTEM)
    outsider.usage.update(period=last_month)

    invoice = invoice_build(consumer=outsider, period=last_month, currency="usd")
    again = invoice_build(consumer=outsider, period=last_month, currency="usd")

    assert again == invoice and invoice.amount_cents == 0
    lines = sorted((line.amount_cents, line.publisher_cents) for line in invoice.lines.all())
    assert lines == [(-75, 0), (75, 60)]  # the publisher's share is still owed
    assert month_spend(consumer=outsider, period=last_month) == 0
    [carried] = UsageRecord.objects.filter(period=this_month)
    assert carried.amount == Decimal("-1.25") and carried.currency == "usd"
    assert carried.model_ref == f"credit: carried from {last_month:%B %Y}"
    total = UsageRecord.objects.aggregate(total=Sum("amount"))["total"]
    assert total == Decimal("0.75") - Decimal("2")  # moved, never made or lost

    # This month, the rest pays for 2 calls (0.50) and carries on again.
    spend(outsider, model, 2)
    this = invoice_build(consumer=outsider, period=this_month, currency="usd")
    assert this.amount_cents == 0
    next_month = (this_month + timedelta(days=32)).replace(day=1)
    assert month_spend(consumer=outsider, period=next_month) == Decimal("-0.75")


def test_a_month_of_credits_alone_has_no_invoice_and_keeps_the_credit(outsider, months):
    last_month, this_month = months
    credit_create(consumer=outsider, amount=Decimal("1.5"), reason="trial", actor=accounts.SYSTEM)
    outsider.usage.update(period=last_month)

    assert invoice_build(consumer=outsider, period=last_month, currency="usd") is None
    assert month_spend(consumer=outsider, period=last_month) == 0
    assert month_spend(consumer=outsider, period=this_month) == Decimal("-1.5")


@pytest.mark.parametrize("amount", ["1e30", "NaN", "Infinity", "0.001", "-5"])
def test_an_amount_out_of_range_is_refused_with_a_message(client, operator, outsider, amount):
    account = BillingAccount.objects.create(tenant=outsider)

    response = client.post(
        "/admin/billing/billingaccount/",
        {"action": "credit", "_selected_action": [account.pk], "amount": amount, "reason": "x"},
        follow=True,
    )

    assert response.status_code == 200
    assert "A credit needs an amount from 0.01" in response.content.decode()
    assert not UsageRecord.objects.exists()


def test_a_refund_stripe_refuses_is_a_message_not_a_500(
    request, client, operator, outsider, settings
):
    from billing import stripe_gateway
    from billing.models import Invoice

    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # nothing listens: Stripe unreachable
    settings.STRIPE_SECRET_KEY = "sk_test_unreachable"
    settings.STRIPE_MAX_NETWORK_RETRIES = 0
    stripe_gateway.configure()
    request.addfinalizer(stripe_gateway.configure)
    invoice = Invoice.objects.create(
        consumer=outsider,
        period=date(2026, 10, 1),
        currency="usd",
        status=Invoice.Status.PAID,
        amount_cents=100,
        stripe_invoice_id="in_1",
        stripe_charge_id="ch_1",
    )

    response = client.post(
        "/admin/billing/invoice/",
        {"action": "refund", "_selected_action": [invoice.pk]},
        follow=True,
    )

    assert response.status_code == 200
    assert (
        f"The refund of {invoice.public_id} is started but not finished"
        in response.content.decode()
    )
    # Marked so (and audited) before Stripe was asked: refunding it again finishes it.
    assert Invoice.objects.get(pk=invoice.pk).status == Invoice.Status.REFUNDING


def test_an_invoices_console_page_costs_the_same_queries_for_many_lines(client, outsider):
    """Each line's publisher was read alone: 31 queries for an invoice of 25 lines."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from billing.models import Invoice, InvoiceLine
    from tests.conftest import make_user

    client.force_login(User.objects.create_superuser(email="ops@modelmarket.example", password="x"))
    invoice = Invoice.objects.create(
        consumer=outsider, period=date(2026, 10, 1), currency="usd", amount_cents=0
    )

    def lines(count: int, start: int) -> None:
        for n in range(start, start + count):
            publisher = accounts.tenant_create(
                slug=f"pub{n}", name=f"Pub {n}", owner=make_user(f"o{n}@pub.example")
            )
            InvoiceLine.objects.create(
                invoice=invoice,
                description=f"line {n}",
                publisher=publisher,
                amount="1",
                amount_cents=100,
                publisher_cents=80,
            )

    url = f"/admin/billing/invoice/{invoice.pk}/change/"
    lines(2, 0)
    client.get(url)
    with CaptureQueriesContext(connection) as few:
        assert client.get(url).status_code == 200
    lines(6, 2)
    with CaptureQueriesContext(connection) as many:
        assert client.get(url).status_code == 200

    assert len(many) == len(few)
