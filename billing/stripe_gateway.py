"""Stripe, behind plain functions: the only module that imports ``stripe``.

Everything returns plain dicts and strings, and every failure comes out as one of the
exceptions below, so the rest of the code never handles a Stripe object or error class.
Writes take an idempotency key derived from our ledger ids: Stripe answers a repeated key
with the first result, so a retry after a crash or a lost response never creates a second
object.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import stripe
from django.conf import settings

from config.metrics import BILLING_FAILURES


class GatewayError(Exception):
    """Stripe refused the request; retrying the same request will not help."""


class GatewayUnavailable(GatewayError):
    """Stripe could not be reached or is overloaded; retry later with the same key."""


class PaymentDeclined(GatewayError):
    """The card or bank declined the payment."""


class AlreadyRefunded(GatewayError):
    """The charge has been refunded already."""


class ObjectMissing(GatewayError):
    """Stripe has no such object (or this endpoint does not exist there)."""


class InvalidSignature(GatewayError):
    """A webhook whose signature does not verify."""


_lock = threading.Lock()
_client: stripe.StripeClient | None = None
_http_client: stripe.HTTPClient | None = None


def configure(*, http_client: stripe.HTTPClient | None = None) -> None:
    """Use another HTTP client (tests record or disturb requests at the wire)."""
    global _client, _http_client
    with _lock:
        _http_client = http_client
        _client = None


def client() -> stripe.StripeClient:
    global _client
    with _lock:
        if _client is None:
            base = settings.STRIPE_API_BASE
            _client = stripe.StripeClient(
                settings.STRIPE_SECRET_KEY,
                stripe_version=settings.STRIPE_API_VERSION,
                base_addresses={"api": base, "connect": base} if base else None,
                max_network_retries=settings.STRIPE_MAX_NETWORK_RETRIES,
                http_client=_http_client,
            )
        return _client


@contextmanager
def _call() -> Iterator[None]:
    try:
        yield
    except stripe.StripeError as e:
        error = _translated(e)
        BILLING_FAILURES.labels(type(error).__name__).inc()
        raise error from e


def _translated(e: stripe.StripeError) -> GatewayError:
    if isinstance(e, stripe.CardError):
        return PaymentDeclined(e.user_message or str(e))
    if isinstance(e, (stripe.APIConnectionError, stripe.RateLimitError)):
        return GatewayUnavailable(str(e))
    if e.http_status == 404:
        return ObjectMissing(str(e))
    if getattr(e, "code", None) == "charge_already_refunded":
        return AlreadyRefunded(str(e))
    if e.http_status is None or e.http_status >= 500:
        return GatewayUnavailable(str(e))
    return GatewayError(str(e))


def _opts(idempotency_key: str | None) -> dict[str, Any]:
    return {"idempotency_key": idempotency_key} if idempotency_key else {}


def _plain(obj: Any) -> dict[str, Any]:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


# --- customers and payment methods ------------------------------------------------------


def customer_create(*, name: str, email: str, metadata: dict, idempotency_key: str) -> str:
    with _call():
        customer = client().v1.customers.create(
            params={"name": name, "email": email, "metadata": metadata},
            options=_opts(idempotency_key),
        )
    return customer.id


def setup_intent_create(*, customer: str, idempotency_key: str | None = None) -> dict:
    with _call():
        intent = client().v1.setup_intents.create(
            params={"customer": customer, "payment_method_types": ["card"], "usage": "off_session"},
            options=_opts(idempotency_key),
        )
    return {"id": intent.id, "client_secret": intent.client_secret}


def setup_intent_retrieve(setup_intent: str) -> dict:
    with _call():
        intent = client().v1.setup_intents.retrieve(setup_intent)
    return {
        "id": intent.id,
        "status": intent.status,
        "customer": intent.customer,
        "payment_method": intent.payment_method,
    }


def payment_method_label(payment_method: str) -> str:
    with _call():
        method = _plain(client().v1.payment_methods.retrieve(payment_method))
    card = method.get("card") or {}
    if card:
        return f"{card.get('brand', 'card')} •••• {card.get('last4', '????')}"
    return method.get("type", "payment method")


def customer_default_payment_method_set(*, customer: str, payment_method: str) -> None:
    with _call():
        client().v1.customers.update(
            customer, params={"invoice_settings": {"default_payment_method": payment_method}}
        )


# --- invoices ----------------------------------------------------------------------------


def invoice_item_create(
    *,
    customer: str,
    invoice: str,
    amount_cents: int,
    currency: str,
    description: str,
    metadata: dict,
    idempotency_key: str,
) -> str:
    with _call():
        item = client().v1.invoice_items.create(
            params={
                "customer": customer,
                "invoice": invoice,
                "amount": amount_cents,
                "currency": currency,
                "description": description,
                "metadata": metadata,
            },
            options=_opts(idempotency_key),
        )
    return item.id


def invoices_of(customer: str) -> list[dict]:
    with _call():
        page = client().v1.invoices.list(params={"customer": customer, "limit": 100})
    return [_invoice(invoice) for invoice in page.auto_paging_iter()]


def invoice_create(
    *, customer: str, currency: str, description: str, metadata: dict, idempotency_key: str
) -> dict:
    """An empty draft invoice; items are added to it by id (never swept in from pending)."""
    with _call():
        invoice = client().v1.invoices.create(
            params={
                "customer": customer,
                "currency": currency,
                "description": description,
                "metadata": metadata,
                "pending_invoice_items_behavior": "exclude",
            },
            options=_opts(idempotency_key),
        )
    return _invoice(invoice)


def invoice_retrieve(invoice: str) -> dict:
    with _call():
        found = client().v1.invoices.retrieve(invoice)
    return _invoice(found)


def invoice_lines(invoice: str) -> list[dict]:
    """The invoice's lines as ``{"id", "amount", "metadata", "invoice_item"}``."""
    with _call():
        page = client().v1.invoices.line_items.list(invoice, params={"limit": 100})
        lines = [_plain(line) for line in page.auto_paging_iter()]
    return [
        {
            "id": line.get("id"),
            "amount": line.get("amount", 0),
            "metadata": line.get("metadata") or {},
            # Where the line's invoice item is named: current API versions, then older ones.
            "invoice_item": (
                ((line.get("parent") or {}).get("invoice_item_details") or {}).get("invoice_item")
                or line.get("invoice_item")
                or ""
            ),
        }
        for line in lines
    ]


def invoice_finalize(invoice: str, *, idempotency_key: str) -> dict:
    with _call():
        found = client().v1.invoices.finalize_invoice(
            invoice, params={"auto_advance": False}, options=_opts(idempotency_key)
        )
    return _invoice(found)


def invoice_pay(invoice: str, *, idempotency_key: str) -> dict:
    with _call():
        found = client().v1.invoices.pay(invoice, options=_opts(idempotency_key))
    return _invoice(found)


def invoice_void(invoice: str, *, idempotency_key: str) -> dict:
    with _call():
        found = client().v1.invoices.void_invoice(invoice, options=_opts(idempotency_key))
    return _invoice(found)


def invoice_charge(invoice: str) -> str:
    """The charge that paid an invoice, for transfers' ``source_transaction``.

    Current API versions name it through the invoice's payments; older ones (and
    localstripe) through the invoice's ``payment_intent``.
    """
    with _call():
        try:
            page = client().v1.invoice_payments.list(params={"invoice": invoice})
            intents = [
                p["payment"].get("payment_intent")
                for p in (_plain(p) for p in page.auto_paging_iter())
                if p.get("status") == "paid"
            ]
        except stripe.StripeError as e:
            if e.http_status != 404:
                raise
            intents = [_plain(client().v1.invoices.retrieve(invoice)).get("payment_intent")]
        intents = [i for i in intents if i]
        if not intents:
            return ""
        intent = client().v1.payment_intents.retrieve(intents[0])
    charge = intent.latest_charge
    if charge is not None and not isinstance(charge, str):
        # Expanded into the Charge itself (localstripe always does): its id, not its text,
        # which PostgreSQL refuses for a 64-character column (SQLite stored it silently).
        charge = charge.id
    return charge or ""


def _invoice(invoice: Any) -> dict:
    data = _plain(invoice)
    return {
        "id": data.get("id"),
        "status": data.get("status"),
        "total": data.get("total", 0),
        "amount_paid": data.get("amount_paid", 0),
        "currency": data.get("currency"),
        "customer": data.get("customer"),
        "number": data.get("number") or "",
        "hosted_invoice_url": data.get("hosted_invoice_url") or "",
        "metadata": data.get("metadata") or {},
        "attempted": bool(data.get("attempted")),
        "attempt_count": data.get("attempt_count") or 0,
    }


# --- refunds, Connect and transfers --------------------------------------------------------


def refund_create(*, charge: str, amount_cents: int, metadata: dict, idempotency_key: str) -> str:
    with _call():
        refund = client().v1.refunds.create(
            params={"charge": charge, "amount": amount_cents, "metadata": metadata},
            options=_opts(idempotency_key),
        )
    return refund.id


def connect_account_create(*, email: str, metadata: dict, idempotency_key: str) -> str:
    with _call():
        account = client().v1.accounts.create(
            params={
                "type": "express",
                "email": email,
                "capabilities": {"transfers": {"requested": True}},
                "metadata": metadata,
            },
            options=_opts(idempotency_key),
        )
    return account.id


def connect_onboarding_link(*, account: str, refresh_url: str, return_url: str) -> str:
    with _call():
        link = client().v1.account_links.create(
            params={
                "account": account,
                "refresh_url": refresh_url,
                "return_url": return_url,
                "type": "account_onboarding",
            }
        )
    return link.url


def connect_account_payouts_enabled(account: str) -> bool:
    with _call():
        found = client().v1.accounts.retrieve(account)
    return bool(found.payouts_enabled)


def transfer_create(
    *,
    amount_cents: int,
    currency: str,
    destination: str,
    source_transaction: str,
    transfer_group: str,
    metadata: dict,
    idempotency_key: str,
) -> str:
    params: dict[str, Any] = {
        "amount": amount_cents,
        "currency": currency,
        "destination": destination,
        "transfer_group": transfer_group,
        "metadata": metadata,
    }
    if source_transaction:
        params["source_transaction"] = source_transaction
    with _call():
        transfer = client().v1.transfers.create(params=params, options=_opts(idempotency_key))
    return transfer.id


def transfer_reverse(*, transfer: str, amount_cents: int, idempotency_key: str) -> str:
    with _call():
        reversal = client().v1.transfers.reversals.create(
            transfer, params={"amount": amount_cents}, options=_opts(idempotency_key)
        )
    return reversal.id


def transfer_retrieve(transfer: str) -> dict:
    with _call():
        found = _plain(client().v1.transfers.retrieve(transfer))
    return {
        "id": found.get("id"),
        "amount": found.get("amount", 0),
        "amount_reversed": found.get("amount_reversed", 0),
        "destination": found.get("destination"),
    }


# --- webhooks ------------------------------------------------------------------------------


def event_from_webhook(payload: bytes, signature: str | None) -> dict:
    """Verify a webhook on its raw body and return the event as a dict. Without a signing
    secret nothing is verifiable (anyone can sign with an empty key): every event is refused."""
    if not settings.STRIPE_WEBHOOK_SECRET:
        raise InvalidSignature("STRIPE_WEBHOOK_SECRET is not set: webhooks are refused")
    try:
        event = stripe.Webhook.construct_event(payload, signature, settings.STRIPE_WEBHOOK_SECRET)
    except (stripe.SignatureVerificationError, ValueError) as e:
        raise InvalidSignature(str(e)) from e
    return _plain(event)
