"""Billing's Celery entry points: each loads its record by public id and calls one service.

Every one is safe to run twice: the services find work done and return. Stripe outages are
retried with backoff; anything else is left for ``billing.resume`` and ``reconcile``.
"""

from __future__ import annotations

from datetime import date

from celery import shared_task

from billing.stripe_gateway import GatewayUnavailable

RETRY = {
    "bind": True,
    "acks_late": True,
    "autoretry_for": (GatewayUnavailable,),
    "retry_backoff": 5,
    "retry_backoff_max": 600,
    "max_retries": 8,
    "soft_time_limit": 120,
    "time_limit": 150,
}


@shared_task(name="billing.close_period", queue="default", soft_time_limit=1800, time_limit=1900)
def close_period(period: str = "") -> list[str]:
    """Invoice a month (by default the one that just ended)."""
    from billing.selectors import last_period
    from billing.services import period_close

    month = date.fromisoformat(period).replace(day=1) if period else last_period()
    return [invoice.public_id for invoice in period_close(period=month)]


@shared_task(name="billing.collect_invoice", queue="default", **RETRY)
def collect_invoice(self, invoice_id: str) -> str:
    from billing.models import Invoice
    from billing.services import invoice_collect

    invoice = Invoice.objects.select_related("consumer").get(public_id=invoice_id)
    if invoice.status in (*Invoice.SETTLED, Invoice.Status.VOID):
        return invoice.status
    return invoice_collect(invoice).status


@shared_task(name="billing.invoice_paid", queue="default", **RETRY)
def invoice_paid(self, invoice_id: str) -> int:
    from billing.models import Invoice
    from billing.services import transfers_create

    invoice = Invoice.objects.get(public_id=invoice_id, status=Invoice.Status.PAID)
    return len(transfers_create(invoice))


@shared_task(name="billing.send_transfer", queue="default", **RETRY)
def send_transfer(self, transfer_id: str) -> str:
    from billing.models import Transfer
    from billing.services import transfer_send

    transfer = Transfer.objects.select_related("invoice", "publisher").get(public_id=transfer_id)
    return transfer_send(transfer).status


@shared_task(name="billing.process_stripe_event", queue="default", **RETRY)
def process_stripe_event(self, event_id: str) -> bool:
    from billing.models import StripeEvent
    from billing.services import stripe_event_process

    event = StripeEvent.objects.get(event_id=event_id)
    stripe_event_process(event)
    return True


@shared_task(name="billing.resume", queue="default", soft_time_limit=600, time_limit=660)
def resume() -> dict:
    """Pick up what a crash or an outage left half-way: invoices not yet paid or failed,
    paid invoices without their transfers, transfers not sent, events not processed."""
    from billing.services import billing_resume

    return billing_resume()
