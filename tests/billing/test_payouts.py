"""Publishers' payouts through Stripe Connect, tested at the wire (localstripe has no
Connect): onboarding an Express account, transfers of each publisher's share tied to the
invoice's charge, refunds that reverse them, and reconcile after all of it."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
import stripe

from accounts import services as accounts
from billing import stripe_gateway
from billing.models import BillingAccount, Invoice, Transfer
from billing.reconcile import reconcile
from billing.services import (
    connect_account_sync,
    connect_onboarding_start,
    invoice_apply,
    invoice_build,
    invoice_refund,
    transfer_send,
    transfers_create,
)
from tests.billing import stripe_wire as wire
from tests.billing.conftest import listed, spend

pytestmark = pytest.mark.django_db
PERIOD = date(2026, 10, 1)


def october_invoice(tenant, outsider, *, credit: Decimal | None = None) -> Invoice:
    """globex's October invoice for 3 calls of acme's model at 0.25: 75 cents (less a
    platform-paid ``credit``), of which 60 are acme's (20 % platform fee), paid in Stripe as
    in_paid."""
    from billing.services import credit_create

    spend(outsider, listed(tenant), 3)
    if credit:
        credit_create(consumer=outsider, amount=credit, reason="outage", actor=accounts.SYSTEM)
    outsider.usage.update(period=PERIOD)
    invoice = invoice_build(consumer=outsider, period=PERIOD, currency="usd")
    Invoice.objects.filter(pk=invoice.pk).update(stripe_invoice_id="in_paid")
    BillingAccount.objects.create(tenant=outsider, stripe_customer_id="cus_consumer")
    invoice.refresh_from_db()
    return invoice_apply(invoice, wire.invoice("in_paid", invoice.amount_cents, {}, "paid"))


@pytest.fixture
def paid_invoice(tenant, outsider):
    return october_invoice(tenant, outsider)


def test_publisher_onboards_an_express_account_and_gets_its_share_of_the_charge(
    tenant, paid_invoice, stripe_wire
):
    stripe_wire.routes.update(
        {
            ("POST", "/v1/accounts"): wire.account("acct_publisher", payouts_enabled=False),
            ("POST", "/v1/account_links"): {
                "object": "account_link",
                "url": "https://connect.stripe.com/setup/e/acct_publisher/xyz",
                "expires_at": 1_900_000_000,
            },
            ("GET", "/v1/accounts/acct_publisher"): wire.account(
                "acct_publisher", payouts_enabled=True
            ),
            ("POST", "/v1/transfers"): wire.transfer("tr_share", 60),
            **wire.paid_by_charge("in_paid"),
        }
    )

    link = connect_onboarding_start(tenant=tenant, actor=accounts.SYSTEM)
    connect_account_sync("acct_publisher")  # what account.updated does once onboarding ends
    [transfer] = transfers_create(paid_invoice)
    transfer = transfer_send(transfer)

    assert link == "https://connect.stripe.com/setup/e/acct_publisher/xyz"
    [created] = stripe_wire.posts("/v1/accounts")
    assert created.params["type"] == "express"
    assert created.params["capabilities[transfers][requested]"] == "true"
    assert created.headers["Idempotency-Key"].startswith("connect-")
    assert created.headers["Stripe-Version"] == stripe.api_version
    [linked] = stripe_wire.posts("/v1/account_links")
    assert linked.params["account"] == "acct_publisher"
    assert linked.params["type"] == "account_onboarding"
    [sent] = stripe_wire.posts("/v1/transfers")
    assert sent.params == {
        "amount": "60",
        "currency": "usd",
        "destination": "acct_publisher",
        "source_transaction": "ch_paid",
        "transfer_group": paid_invoice.public_id,
        "metadata[mm_transfer]": transfer.public_id,
        "metadata[mm_invoice]": paid_invoice.public_id,
    }
    assert sent.headers["Idempotency-Key"] == f"transfer-{transfer.public_id}"
    assert (transfer.status, transfer.stripe_transfer_id) == (Transfer.Status.PAID, "tr_share")
    transfer_send(transfer)  # a redelivered task
    assert len(stripe_wire.posts("/v1/transfers")) == 1


def test_a_share_larger_than_a_credited_charge_is_paid_from_the_platforms_balance(
    tenant, outsider, stripe_wire
):
    """A credit the platform pays for made the charge (25 cents) smaller than the publisher's
    share (60): the share is still paid in full, from the balance, not from the charge."""
    invoice = october_invoice(tenant, outsider, credit=Decimal("0.50"))
    BillingAccount.objects.create(
        tenant=tenant, connect_account_id="acct_publisher", payouts_enabled=True
    )
    stripe_wire.routes.update(
        {("POST", "/v1/transfers"): wire.transfer("tr_share", 60), **wire.paid_by_charge("in_paid")}
    )

    [transfer] = transfers_create(invoice)
    transfer = transfer_send(transfer)

    assert invoice.amount_cents == 25 and transfer.amount_cents == 60
    [sent] = stripe_wire.posts("/v1/transfers")
    assert sent.params["amount"] == "60" and "source_transaction" not in sent.params
    assert transfer.status == Transfer.Status.PAID


def test_a_share_waits_for_the_publishers_account_then_is_sent(tenant, paid_invoice, stripe_wire):
    stripe_wire.routes.update(
        {
            ("GET", "/v1/accounts/acct_late"): wire.account("acct_late", payouts_enabled=True),
            ("POST", "/v1/transfers"): wire.transfer("tr_late", 60),
            **wire.paid_by_charge("in_paid"),
        }
    )
    [transfer] = transfers_create(paid_invoice)

    waiting = transfer_send(transfer)
    posted_while_waiting = len(stripe_wire.posts("/v1/transfers"))
    BillingAccount.objects.filter(tenant=tenant).update(connect_account_id="acct_late")
    connect_account_sync("acct_late")
    sent = transfer_send(Transfer.objects.get(pk=transfer.pk))

    assert waiting.status == Transfer.Status.AWAITING_ACCOUNT and posted_while_waiting == 0
    assert (sent.status, sent.stripe_transfer_id) == (Transfer.Status.PAID, "tr_late")
    assert len(stripe_wire.posts("/v1/transfers")) == 1


def test_a_refund_reverses_the_transfers_and_reconciles(tenant, paid_invoice, stripe_wire):
    line = paid_invoice.lines.get()
    stripe_wire.routes.update(
        {
            ("GET", "/v1/accounts/acct_publisher"): wire.account(
                "acct_publisher", payouts_enabled=True
            ),
            ("POST", "/v1/transfers"): wire.transfer("tr_share", 60),
            ("POST", "/v1/refunds"): {
                "id": "re_1",
                "object": "refund",
                "amount": 75,
                "charge": "ch_paid",
                "status": "succeeded",
            },
            ("POST", "/v1/transfers/tr_share/reversals"): wire.reversal("tr_share", 60),
            ("GET", "/v1/transfers/tr_share"): wire.transfer("tr_share", 60, reversed_amount=60),
            **wire.invoice_reads("in_paid", {line.public_id: 75}),
            **wire.paid_by_charge("in_paid"),
        }
    )
    BillingAccount.objects.create(
        tenant=tenant, connect_account_id="acct_publisher", payouts_enabled=True
    )
    [transfer] = transfers_create(paid_invoice)
    transfer_send(transfer)

    refunded = invoice_refund(invoice=paid_invoice, actor=accounts.SYSTEM)

    [refund] = stripe_wire.posts("/v1/refunds")
    assert refund.params["charge"] == "ch_paid" and refund.params["amount"] == "75"
    assert refund.headers["Idempotency-Key"] == f"refund-{paid_invoice.public_id}"
    [reversal] = stripe_wire.posts("/v1/transfers/tr_share/reversals")
    assert reversal.params["amount"] == "60"
    assert refunded.status == Invoice.Status.REFUNDED
    assert Transfer.objects.get().reversed_cents == 60
    stripe_wire.routes[("GET", "/v1/invoices/in_paid")]["status"] = "paid"
    assert reconcile(period=paid_invoice.period) == []


def test_only_a_paid_invoice_can_be_refunded(outsider, stripe_wire):
    open_invoice = Invoice.objects.create(
        consumer=outsider, period=PERIOD, currency="usd", amount_cents=10, status="open"
    )

    with pytest.raises(Exception, match="Only a paid invoice can be refunded"):
        invoice_refund(invoice=open_invoice, actor=accounts.SYSTEM)
    assert stripe_wire.calls == []


def test_a_declined_invoice_voided_in_stripe_ends_the_grace_period(outsider, paid_invoice):
    """An operator forgives a declined invoice by voiding it in Stripe: the organisation is
    in good standing again (paid calls resume) once the void reaches us."""
    from billing.services import payment_failed

    Invoice.objects.filter(pk=paid_invoice.pk).update(status=Invoice.Status.OPEN)
    payment_failed(paid_invoice, reason="The payment was declined.")
    assert BillingAccount.objects.get(tenant=outsider).state == BillingAccount.State.PAST_DUE

    voided = invoice_apply(paid_invoice, wire.invoice("in_paid", 75, {}, "void"))

    assert voided.status == Invoice.Status.VOID
    account = BillingAccount.objects.get(tenant=outsider)
    assert (account.state, account.grace_until) == (BillingAccount.State.OK, None)


def test_a_share_sent_while_its_invoice_is_refunded_comes_back(
    tenant, paid_invoice, stripe_wire, monkeypatch
):
    """The refund runs while the share is on its way to Stripe: it finds no transfer to
    reverse and marks the share reversed; the sender, seeing that, reverses what it sent."""
    stripe_wire.routes.update(
        {
            ("POST", "/v1/transfers"): wire.transfer("tr_race", 60),
            ("POST", "/v1/transfers/tr_race/reversals"): {
                "id": "trr_race",
                "object": "transfer_reversal",
                "amount": 60,
                "transfer": "tr_race",
            },
            **wire.paid_by_charge("in_paid"),
        }
    )
    BillingAccount.objects.create(
        tenant=tenant, connect_account_id="acct_publisher", payouts_enabled=True
    )
    [transfer] = transfers_create(paid_invoice)
    create = stripe_gateway.transfer_create

    def refunded_meanwhile(**kwargs):
        sent = create(**kwargs)
        Transfer.objects.filter(pk=transfer.pk).update(  # what invoice_refund does
            status=Transfer.Status.REVERSED, reversed_cents=60
        )
        return sent

    monkeypatch.setattr(stripe_gateway, "transfer_create", refunded_meanwhile)

    transfer = transfer_send(transfer)

    [reversal] = stripe_wire.posts("/v1/transfers/tr_race/reversals")
    assert reversal.params["amount"] == "60"
    assert reversal.headers["Idempotency-Key"] == f"reverse-{transfer.public_id}"
    assert (transfer.status, transfer.stripe_transfer_id) == (Transfer.Status.REVERSED, "tr_race")


def test_a_share_parked_while_its_account_was_being_enabled_is_sent_by_the_resume_sweep(
    tenant, paid_invoice, stripe_wire, monkeypatch
):
    from datetime import timedelta

    from django.utils import timezone

    from billing import services
    from billing.services import billing_resume

    BillingAccount.objects.create(tenant=tenant, connect_account_id="acct_publisher")
    stripe_wire.routes.update(
        {
            ("GET", "/v1/accounts/acct_publisher"): wire.account(
                "acct_publisher", payouts_enabled=True
            ),
            ("POST", "/v1/transfers"): wire.transfer("tr_share", 60),
            **wire.paid_by_charge("in_paid"),
        }
    )
    [transfer] = transfers_create(paid_invoice)
    read_account = services.account_for

    def enabled_meanwhile(tenant):
        account = read_account(tenant)  # read while onboarding is still unfinished
        connect_account_sync("acct_publisher")  # its account.updated webhook, concurrently
        return account

    monkeypatch.setattr(services, "account_for", enabled_meanwhile)
    transfer_send(transfer)
    monkeypatch.setattr(services, "account_for", read_account)
    assert Transfer.objects.get().status == Transfer.Status.AWAITING_ACCOUNT  # parked
    Transfer.objects.update(created_at=timezone.now() - timedelta(hours=1))

    resumed = billing_resume()
    transfer_send(Transfer.objects.get())  # what the queued billing.send_transfer does

    assert resumed["transfers"] == 1
    sent = Transfer.objects.get()
    assert (sent.status, sent.stripe_transfer_id) == (Transfer.Status.PAID, "tr_share")
    assert billing_resume()["transfers"] == 0  # queued once


def test_a_refund_that_stops_half_way_shows_and_refunding_again_finishes_it(
    tenant, paid_invoice, stripe_wire
):
    line = paid_invoice.lines.get()
    stripe_wire.routes.update(
        {
            ("POST", "/v1/transfers"): wire.transfer("tr_share", 60),
            ("POST", "/v1/refunds"): {"id": "re_1", "object": "refund", "amount": 75},
            ("POST", "/v1/transfers/tr_share/reversals"): wire.refused(
                "insufficient_funds", "The connected account has insufficient funds."
            ),
            ("GET", "/v1/transfers/tr_share"): wire.transfer("tr_share", 60),
            **wire.invoice_reads("in_paid", {line.public_id: 75}),
            **wire.paid_by_charge("in_paid"),
        }
    )
    BillingAccount.objects.create(
        tenant=tenant, connect_account_id="acct_publisher", payouts_enabled=True
    )
    [transfer] = transfers_create(paid_invoice)
    transfer_send(transfer)

    with pytest.raises(stripe_gateway.GatewayError, match="insufficient funds"):
        invoice_refund(invoice=paid_invoice, actor=accounts.SYSTEM)
    half_way = reconcile(period=paid_invoice.period)
    # A day later Stripe's idempotency key has expired: the refund is refused as done.
    stripe_wire.routes.update(
        {
            ("POST", "/v1/refunds"): wire.refused(
                "charge_already_refunded", "Charge ch_paid has already been refunded."
            ),
            ("POST", "/v1/transfers/tr_share/reversals"): wire.reversal("tr_share", 60),
            ("GET", "/v1/transfers/tr_share"): wire.transfer("tr_share", 60, reversed_amount=60),
        }
    )
    paid_invoice.refresh_from_db()
    finished = invoice_refund(invoice=paid_invoice, actor=accounts.SYSTEM)

    assert [d.what for d in half_way] == ["a refund started and did not finish: refund it again"]
    assert finished.status == Invoice.Status.REFUNDED
    assert Transfer.objects.get().reversed_cents == 60
    assert len(stripe_wire.posts("/v1/refunds")) == 2  # the charge was refunded once
    assert reconcile(period=paid_invoice.period) == []


def test_no_share_is_owed_on_an_invoice_whose_refund_has_started(tenant, paid_invoice, stripe_wire):
    Invoice.objects.filter(pk=paid_invoice.pk).update(status=Invoice.Status.REFUNDING)
    stripe_wire.routes.update(wire.paid_by_charge("in_paid"))

    assert transfers_create(paid_invoice) == []
    assert not Transfer.objects.exists()
