"""Stripe at the wire, for the calls localstripe lacks (Connect accounts and links,
transfers and reversals, invoice payments, refunds): the real SDK's requests are recorded
by an ``stripe.HTTPClient`` and answered with bodies in the current API's shape."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import stripe


@dataclass
class Call:
    method: str
    path: str
    params: dict
    headers: dict


@dataclass
class StripeWire(stripe.HTTPClient):
    routes: dict[tuple[str, str], dict] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    name = "stripe-wire"

    def __post_init__(self):
        super().__init__()

    def request(self, method, url, headers, post_data=None):
        parts = urlsplit(url)
        body = post_data.decode() if isinstance(post_data, bytes) else (post_data or "")
        params = dict(parse_qsl(body or parts.query))
        self.calls.append(Call(method.upper(), parts.path, params, dict(headers or {})))
        for (route_method, pattern), response in self.routes.items():
            if route_method == method.upper() and re.fullmatch(pattern, parts.path):
                status, response = response if isinstance(response, tuple) else (200, response)
                return json.dumps(response), status, {"request-id": "req_wire"}
        error = {"error": {"type": "invalid_request_error", "message": f"No route {parts.path}"}}
        return json.dumps(error), 404, {"request-id": "req_wire"}

    def close(self):
        pass

    def posts(self, path_pattern: str) -> list[Call]:
        return [c for c in self.calls if c.method == "POST" and re.fullmatch(path_pattern, c.path)]


def account(account_id: str, *, payouts_enabled: bool) -> dict:
    return {
        "id": account_id,
        "object": "account",
        "type": "express",
        "charges_enabled": payouts_enabled,
        "payouts_enabled": payouts_enabled,
        "details_submitted": payouts_enabled,
        "capabilities": {"transfers": "active" if payouts_enabled else "inactive"},
        "metadata": {},
    }


def transfer(transfer_id: str, amount: int, *, reversed_amount: int = 0) -> dict:
    return {
        "id": transfer_id,
        "object": "transfer",
        "amount": amount,
        "amount_reversed": reversed_amount,
        "currency": "usd",
        "destination": "acct_publisher",
        "reversed": reversed_amount == amount,
        "reversals": {"object": "list", "data": [], "has_more": False, "url": ""},
        "source_transaction": "ch_paid",
        "metadata": {},
    }


def invoice(invoice_id: str, total: int, lines: dict[str, int], status: str = "paid") -> dict:
    return {
        "id": invoice_id,
        "object": "invoice",
        "status": status,
        "total": total,
        "amount_paid": total if status == "paid" else 0,
        "currency": "usd",
        "customer": "cus_consumer",
        "number": "MM-0001",
        "hosted_invoice_url": "https://invoice.stripe.com/i/test",
        "attempted": True,
        "metadata": {},
        "lines": {
            "object": "list",
            "data": [
                {
                    "id": f"il_{i}",
                    "object": "line_item",
                    "amount": amount,
                    "metadata": {"mm_line": line},
                }
                for i, (line, amount) in enumerate(lines.items())
            ],
            "has_more": False,
            "url": f"/v1/invoices/{invoice_id}/lines",
        },
    }


def paid_by_charge(invoice_id: str) -> dict:
    """The invoice's payments (current API) and the intent that names the charge."""
    return {
        ("GET", "/v1/invoice_payments"): {
            "object": "list",
            "data": [
                {
                    "id": "inpay_1",
                    "object": "invoice_payment",
                    "invoice": invoice_id,
                    "status": "paid",
                    "is_default": True,
                    "amount_paid": 0,
                    "payment": {"type": "payment_intent", "payment_intent": "pi_paid"},
                }
            ],
            "has_more": False,
            "url": "/v1/invoice_payments",
        },
        ("GET", "/v1/payment_intents/pi_paid"): {
            "id": "pi_paid",
            "object": "payment_intent",
            "status": "succeeded",
            "latest_charge": "ch_paid",
        },
    }


def refused(code: str, message: str, status: int = 400) -> tuple[int, dict]:
    """A route's answer: Stripe refusing the request with an error ``code``."""
    return status, {"error": {"type": "invalid_request_error", "code": code, "message": message}}


def invoice_reads(invoice_id: str, lines: dict[str, int]) -> dict:
    """The routes reconcile reads a paid invoice with: the invoice, its lines, the list."""
    total = sum(lines.values())
    return {
        ("GET", f"/v1/invoices/{invoice_id}"): invoice(invoice_id, total, lines),
        ("GET", f"/v1/invoices/{invoice_id}/lines"): invoice(invoice_id, total, lines)["lines"],
        ("GET", "/v1/invoices"): {
            "object": "list",
            "data": [invoice(invoice_id, total, lines)],
            "has_more": False,
            "url": "/v1/invoices",
        },
    }


def reversal(transfer_id: str, amount: int) -> dict:
    """Stripe's answer to reversing ``amount`` of a transfer."""
    return {"id": "trr_1", "object": "transfer_reversal", "amount": amount, "transfer": transfer_id}
