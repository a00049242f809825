"""Runs localstripe (a fake but stateful Stripe server) for the tests, in its own venv.

    .venv-localstripe/bin/python tests/fakes/localstripe_server.py --port 8420

Differences from ``localstripe --port``: it listens on 127.0.0.1 only, keeps its state in
memory (localstripe otherwise writes one fixed pickle in /tmp, shared by every run), and
fills gaps with Stripe's semantics: one-off invoices (``POST /v1/invoices`` without a
subscription, in a given currency, taking in pending invoice items only when asked to;
localstripe only invoices subscriptions), invoice items added to a draft invoice with
``invoice=``, and ``POST /v1/invoices/{id}/finalize`` (a draft becomes open and an
``invoice.finalized`` event is sent).
"""

import argparse

from aiohttp import web
from localstripe import server
from localstripe.errors import UserError
from localstripe.resources import Event, Invoice, InvoiceItem, InvoiceLineItem, store
from localstripe.webhooks import schedule_webhook

store.dump_to_disk = lambda: None


_subscription_create = Invoice._api_create.__func__


def _invoice_create(
    cls,
    customer=None,
    subscription=None,
    description=None,
    metadata=None,
    pending_invoice_items_behavior=None,
    currency=None,
    **kwargs,
):
    if subscription is not None or kwargs:
        return _subscription_create(
            cls,
            customer=customer,
            subscription=subscription,
            description=description,
            metadata=metadata,
            **kwargs,
        )
    invoice = cls(customer=customer, description=description, metadata=metadata)
    if pending_invoice_items_behavior != "include":  # Stripe's default: exclude
        for line in invoice.lines._list:
            InvoiceItem._api_retrieve(line.invoice_item).invoice = None
        invoice.lines._list = []
    if currency:
        invoice.currency = currency
    return invoice


Invoice._api_create = classmethod(_invoice_create)
_item_create = InvoiceItem._api_create.__func__


def _item_create_on_invoice(cls, **data):
    if data.get("invoice"):
        invoice = Invoice._api_retrieve(data["invoice"])
        if invoice.status != "draft":
            raise UserError(400, f"Invoice {invoice.id} is {invoice.status}, not a draft.")
    item = _item_create(cls, **data)
    if item.invoice:
        invoice.lines._list.append(InvoiceLineItem(item))
    return item


InvoiceItem._api_create = classmethod(_item_create_on_invoice)


def finalize(id, auto_advance=None, **kwargs):
    invoice = Invoice._api_retrieve(id)
    if invoice.status != "draft":
        raise UserError(400, f"Invoice {id} is already finalized ({invoice.status}).")
    invoice._finalize()
    schedule_webhook(Event("invoice.finalized", invoice))
    return invoice


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server.app.router.add_route(
        "POST", "/v1/invoices/{id}/finalize", server.api_extra(finalize, None)
    )
    web.run_app(server.app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
