"""A simulated month: thousands of billed calls across several consumers, publishers,
listings and currencies; Stripe that drops connections, loses responses and rate-limits;
a close killed half-way; webhooks delivered twice. At the end ``reconcile`` finds no
difference, to the cent, and nothing was invoiced twice."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from decimal import Decimal

import pytest
import stripe
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.models import F, Sum
from django.test import Client
from django.utils import timezone

from accounts import services as accounts
from accounts.models import User
from billing import stripe_gateway
from billing.models import Invoice, StripeEvent, Transfer, UsageRecord
from billing.money import minor_units
from billing.reconcile import reconcile
from billing.services import usage_record_create
from marketplace.listings import listing_publish, listing_subscribe
from tests.billing.conftest import CARD_DECLINED, CARD_OK, ROOT, save_card
from tests.conftest import database_url, key_client
from tests.inference.conftest import Classifier, export, ready_version, signature

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
CALLS = 2400


class Chaos(stripe.HTTPClient):
    """Stripe over a bad network, reproducibly: some requests never leave, some answers are
    lost after Stripe acted on them, some are rate-limited."""

    name = "chaos"

    def __init__(self, seed: int, rate: float = 0.25):
        super().__init__()
        self.inner = stripe.RequestsClient()
        self.rng = random.Random(seed)
        self.rate = rate
        self.injected: Counter = Counter()

    def request(self, method, url, headers, post_data=None):
        roll = self.rng.random()
        if roll < self.rate / 3:
            self.injected["dropped"] += 1
            raise stripe.APIConnectionError("connection refused (injected)")
        if roll < self.rate * 2 / 3:
            self.injected["rate_limited"] += 1
            body = {"error": {"type": "rate_limit_error", "message": "Too many requests"}}
            return json.dumps(body), 429, {}
        response = self.inner.request(method, url, headers, post_data)
        if roll < self.rate:
            self.injected["lost"] += 1
            raise stripe.APIConnectionError("response lost (injected)")
        return response

    def close(self):
        self.inner.close()


KILL_AFTER = """
import os, django
django.setup()
import stripe
from billing import stripe_gateway

class DieAfter(stripe.RequestsClient):
    sent = 0
    def request(self, *args, **kwargs):
        response = super().request(*args, **kwargs)
        DieAfter.sent += 1
        if DieAfter.sent >= {limit}:
            os._exit(137)  # killed, mid-close, right after Stripe acted
        return response

stripe_gateway.configure(http_client=DieAfter())
from django.core.management import call_command
call_command("close_period", "--period", "{period}")
"""


def new_tenant(slug: str):
    owner = User.objects.create_user(email=f"owner@{slug}.example", password="x" * 12)
    return accounts.tenant_create(slug=slug, name=slug.title(), owner=owner)


def publish(publisher, name: str, **prices):
    version = ready_version(publisher, name, export(Classifier()), "pt2", signature(4, 3))
    return listing_publish(
        model=version.model, actor=accounts.SYSTEM, visibility="public", title=name, **prices
    )


def sign(body: str) -> str:
    stamp = int(time.time())
    mac = hmac.new(
        os.environ["STRIPE_WEBHOOK_SECRET"].encode(), f"{stamp}.{body}".encode(), hashlib.sha256
    )
    return f"t={stamp},v1={mac.hexdigest()}"


def test_a_month_of_usage_with_a_bad_network_and_a_crash_reconciles_to_the_cent(
    celery_worker_process, stripe_api, stripe_webhooks, tenant, outsider
):
    # Arrange: two publishers, three listings (one in euros, one with free calls and a
    # per-second price), four consumers, one of whose cards is declined.
    acme, initech = tenant, new_tenant("initech")
    listings = [
        publish(acme, "clf", price_per_call="0.25", price_per_second="0"),
        publish(
            acme, "seg", price_per_call="0.0013", price_per_second="0.0571", free_calls_per_month=25
        ),
        publish(initech, "ocr", price_per_call="0.0077", price_per_second="0", currency="eur"),
    ]
    consumers = [outsider, new_tenant("hooli"), new_tenant("umbrella"), new_tenant("soylent")]
    for consumer in consumers:
        for listing in listings:
            listing_subscribe(listing=listing, tenant=consumer, actor=accounts.SYSTEM)
        save_card(stripe_api, consumer, CARD_DECLINED if consumer.slug == "soylent" else CARD_OK)
    # Some of the calls go through the real API and worker ...
    globex = key_client(outsider)
    for _ in range(12):
        response = globex.post(
            "/api/v1/predictions",
            {"model": "acme/clf", "input": {"x": [[0.1, 0.2, 0.3, 0.4]]}},
            format="json",
            HTTP_PREFER="wait",
        )
        assert response.json()["status"] == "succeeded", response.json()
    # ... and the rest straight into the ledger, through the same service the worker calls.
    rng = random.Random(7)
    for i in range(CALLS):
        usage_record_create(
            kind="prediction",
            source_id=f"sim_{i}",
            consumer=rng.choice(consumers),
            model=rng.choice(listings).model,
            compute_seconds=Decimal(rng.randint(1, 90_000)) / 1_000_000,
        )
    UsageRecord.objects.update(
        period=(timezone.now().date().replace(day=1) - timedelta(days=1)).replace(day=1),
        created_at=F("created_at") - timedelta(days=32),
    )
    period = UsageRecord.objects.values_list("period", flat=True).first()

    # Act 1: the close dies after Stripe acted on its 9th request.
    env = {
        **os.environ,
        "DATABASE_URL": database_url(connection.settings_dict),
        "MM_BILLING_COLLECT_LEASE_SECONDS": "2",  # the dead process's hold lapses quickly
    }
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER.format(limit=9, period=f"{period:%Y-%m}")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert killed.returncode == 137, killed.stderr.decode()[-3000:]
    # Act 2: closes over a bad network until one gets through.
    chaos = Chaos(seed=11)
    stripe_gateway.configure(http_client=chaos)
    for _attempt in range(40):
        try:
            call_command("close_period", "--period", f"{period:%Y-%m}")
            break
        except CommandError:
            continue
    stripe_gateway.configure()

    # Act 3: every webhook Stripe sent, delivered a second time.
    def settled():
        return (
            StripeEvent.objects.exists()
            and not StripeEvent.objects.filter(processed_at__isnull=True).exists()
        )

    deadline = time.monotonic() + 60
    while not settled():
        assert time.monotonic() < deadline, "webhooks not processed"
        time.sleep(0.3)
    web = Client()
    duplicates = [
        web.post(
            "/billing/stripe/webhook",
            body := json.dumps(e.payload),
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=sign(body),
        ).content
        for e in StripeEvent.objects.all()
    ]
    paid = Invoice.objects.filter(status=Invoice.Status.PAID)
    deadline = time.monotonic() + 60
    with_transfers = Transfer.objects.filter(invoice__in=paid).values("invoice").distinct()
    while with_transfers.count() < paid.count():
        assert time.monotonic() < deadline, "transfers not made"
        time.sleep(0.3)

    # Assert: no difference anywhere, each consumer billed once per currency, every cent
    # of the ledger on an invoice and every publisher cent in a transfer.
    assert sum(chaos.injected.values()) >= 5, chaos.injected
    assert set(duplicates) == {b"duplicate"}
    assert reconcile(period=period) == []
    invoices = Invoice.objects.filter(period=period)
    assert invoices.count() == 8  # 4 consumers x (usd, eur)
    for invoice in invoices:
        remote = stripe_api.v1.invoices.list(
            params={"customer": invoice.consumer.billing.stripe_customer_id}
        ).data
        mine = [r for r in remote if r.metadata.to_dict().get("mm_invoice") == invoice.public_id]
        assert len(mine) == 1
    for currency in ("usd", "eur"):
        per_line = (
            UsageRecord.objects.filter(period=period, currency=currency)
            .values("consumer", "model")
            .annotate(total=Sum("amount"))
        )
        assert sum(minor_units(row["total"], currency) for row in per_line) == sum(
            invoices.filter(currency=currency).values_list("amount_cents", flat=True)
        )
    soylent = invoices.filter(consumer__slug="soylent")
    assert set(soylent.values_list("status", flat=True)) == {Invoice.Status.OPEN}
    assert paid.count() == 6
    assert Transfer.objects.aggregate(total=Sum("amount_cents"))["total"] == sum(
        line.publisher_cents for invoice in paid for line in invoice.lines.all()
    )
