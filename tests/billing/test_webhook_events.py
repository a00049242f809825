"""Stripe events that cannot be processed: why is recorded on the event, the resume sweep
sends each again a few times only, and an operator can send it again from the console."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from django.test import Client
from django.utils import timezone

from billing.models import Invoice, StripeEvent
from billing.services import EVENT_MAX_ATTEMPTS, billing_resume
from billing.stripe_gateway import GatewayError
from billing.tasks import process_stripe_event

pytestmark = pytest.mark.django_db


def open_invoice(consumer, stripe_id: str) -> Invoice:
    """October's invoice of 75 cents, open in Stripe as ``stripe_id``."""
    return Invoice.objects.create(
        consumer=consumer,
        period=date(2026, 10, 1),
        currency="usd",
        amount_cents=75,
        status=Invoice.Status.OPEN,
        stripe_invoice_id=stripe_id,
    )


@pytest.fixture
def broken_event(outsider, stripe_wire):
    """An invoice.updated event for an invoice Stripe no longer has (404), an hour old."""
    open_invoice(outsider, "in_deleted")
    return StripeEvent.objects.create(
        event_id="evt_1",
        type="invoice.updated",
        object_id="in_deleted",
        payload={"id": "evt_1", "data": {"object": {"id": "in_deleted"}}},
        received_at=timezone.now() - timedelta(hours=1),
    )


def test_an_event_that_fails_records_why_and_is_sent_again_a_few_times_only(broken_event):
    for _ in range(EVENT_MAX_ATTEMPTS - 1):
        with pytest.raises(GatewayError):
            process_stripe_event.apply(args=["evt_1"], throw=True)
    requeued_before_the_last = billing_resume()["events"]
    with pytest.raises(GatewayError):
        process_stripe_event.apply(args=["evt_1"], throw=True)

    event = StripeEvent.objects.get()
    assert event.processed_at is None
    assert event.attempts == EVENT_MAX_ATTEMPTS
    assert event.error.startswith("ObjectMissing: ") and "in_deleted" in event.error
    assert requeued_before_the_last == 1
    assert billing_resume()["events"] == 0  # left for an operator


def test_an_operator_sends_a_failing_event_again_from_the_console(broken_event, admin_user):
    StripeEvent.objects.update(attempts=EVENT_MAX_ATTEMPTS, error="ObjectMissing: gone")
    console = Client()
    console.force_login(admin_user)

    listed = console.get("/admin/billing/stripeevent/?state=failing").content.decode()
    response = console.post(
        "/admin/billing/stripeevent/",
        {"action": "process_again", "_selected_action": [broken_event.pk]},
        follow=True,
    )

    assert "evt_1" in listed and "ObjectMissing: gone" in listed
    assert "Queued 1 events to be processed again." in response.content.decode()
    assert StripeEvent.objects.get().attempts == 0
    assert billing_resume()["events"] == 1  # and the sweep takes it again


@pytest.mark.parametrize("webhook_first", [False, True])
def test_one_declined_payment_is_one_failure_with_the_cards_reason(
    outsider, stripe_wire, webhook_first
):
    """The collector sees the decline and Stripe's invoice.payment_failed event reports the
    same attempt, in either order."""
    from billing.models import BillingAccount
    from billing.services import payment_failed, stripe_event_process
    from tests.billing import stripe_wire as wire

    BillingAccount.objects.create(tenant=outsider, stripe_customer_id="cus_consumer")
    invoice = open_invoice(outsider, "in_open")
    stripe_wire.routes[("GET", "/v1/invoices/in_open")] = {
        **wire.invoice("in_open", 75, {}, "open"),
        "attempt_count": 1,
    }
    event = StripeEvent.objects.create(
        event_id="evt_failed", type="invoice.payment_failed", object_id="in_open", payload={}
    )

    def collector():  # what the collector does with the card's error on its first attempt
        payment_failed(invoice, reason="Your card has insufficient funds.", attempt=1)

    for step in [lambda: stripe_event_process(event), collector][:: 1 if webhook_first else -1]:
        step()

    invoice.refresh_from_db()
    assert (invoice.payment_failures, invoice.payment_error) == (
        1,
        "Your card has insufficient funds.",
    )
    assert BillingAccount.objects.get(tenant=outsider).state == "past_due"


def test_sending_an_event_again_is_audited_with_who_and_why_and_queued_once_committed(
    broken_event, admin_user, monkeypatch, django_capture_on_commit_callbacks
):
    from accounts.models import AuditEvent
    from billing import services

    queued = []
    monkeypatch.setattr(services, "_enqueue", lambda task, *args: queued.append((task, *args)))
    StripeEvent.objects.update(attempts=EVENT_MAX_ATTEMPTS, error="ObjectMissing: gone")
    console = Client()
    console.force_login(admin_user)

    with django_capture_on_commit_callbacks(execute=False) as on_commit:
        console.post(
            "/admin/billing/stripeevent/",
            {"action": "process_again", "_selected_action": [broken_event.pk]},
            REMOTE_ADDR="203.0.113.9",
        )
        assert queued == []  # not before the reset and its audit row commit

    (event,) = AuditEvent.objects.filter(action="stripe_event.retry")
    assert event.actor_label == admin_user.email and event.ip == "203.0.113.9"
    assert event.data["event_id"] == "evt_1" and event.data["error"] == "ObjectMissing: gone"
    assert event.data["attempts"] == EVENT_MAX_ATTEMPTS
    for callback in on_commit:
        callback()
    assert queued == [("billing.process_stripe_event", "evt_1")]
