"""Stripe unreachable, then answering errors, for an hour of simulated time around a month's
close: usage keeps being recorded, the close and its collection fail cleanly and are
retried by ``billing.resume``, and once Stripe answers every invoice is made there once."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from django.db.models import F
from django.utils import timezone

from accounts import services as accounts
from accounts.models import User
from billing import stripe_gateway
from billing.models import Invoice, Transfer, UsageRecord
from billing.reconcile import reconcile
from billing.services import usage_record_create
from tests.billing.conftest import save_card
from tests.conftest import key_client
from tests.inference.conftest import listed_classifier
from tests.reliability.conftest import Worker, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

TICK = timedelta(minutes=5)
OUTAGE_TICKS = 12  # an hour
RESUME_EVERY = 6  # beat runs billing.resume every 30 min
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # the dropped connections are the point


class StripeLink:
    """The network between us and Stripe (localstripe): a proxy on loopback that both this
    process and the worker use as ``STRIPE_API_BASE``. ``up`` forwards; ``down`` fails every
    request in turn by dropping the connection, by a 503 that never reached Stripe, and by a
    500 after Stripe acted on it (the answer lost)."""

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.up = True
        self.counts: Counter = Counter()
        self.failures = itertools.cycle(["dropped", "503 before Stripe", "500 after Stripe"])
        self.lock = threading.Lock()
        link = self

        class Handler(BaseHTTPRequestHandler):
            def do(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with link.lock:
                    fate = "forwarded" if link.up else next(link.failures)
                    link.counts[fate] += 1
                if fate == "dropped":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fate == "503 before Stripe":
                    return self.answer(503, b'{"error": {"type": "api_error"}}', {})
                upstream = requests.request(
                    self.command,
                    link.upstream + self.path,
                    data=body,
                    headers={k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS},
                    timeout=30,
                )
                if fate == "500 after Stripe":
                    return self.answer(500, b'{"error": {"type": "api_error"}}', {})
                headers = {
                    k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS
                }
                headers.pop("Content-Encoding", None)
                self.answer(upstream.status_code, upstream.content, headers)

            do_GET = do_POST = do_DELETE = do

            def answer(self, status: int, body: bytes, headers: dict):
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def new_tenant(slug: str):
    owner = User.objects.create_user(email=f"owner@{slug}.example", password="x" * 12)
    return accounts.tenant_create(slug=slug, name=slug.title(), owner=owner)


def advance(delta: timedelta) -> None:
    """Simulated time: what billing.resume judges by ("untouched for 2 min") grows older."""
    Invoice.objects.update(created_at=F("created_at") - delta)
    Transfer.objects.update(created_at=F("created_at") - delta)


def test_stripe_down_for_an_hour_loses_nothing_and_bills_nothing_twice(
    scenario, stripe_api, stripe_server, settings, tenant, outsider
):
    record = scenario(
        "Stripe unreachable or answering errors for an hour",
        injected=f"month-end close with Stripe behind a proxy that, for {OUTAGE_TICKS} ticks "
        "of 5 simulated minutes, fails every request in turn: connection dropped, 503 before "
        "Stripe, 500 after Stripe acted (answer lost); meanwhile consumers keep calling paid "
        "models; billing.resume runs every 30 simulated minutes, as beat runs it; then Stripe "
        "answers again",
        expected="usage recorded throughout, each call once; the close freezes the month into "
        "our invoices and their collection fails cleanly (retried, no 5xx, no half-made "
        "invoice adopted twice); once Stripe answers, billing.resume collects every invoice: "
        "one Stripe invoice per ours, reconcile finds 0 differences",
    )
    link = StripeLink(stripe_server)
    settings.STRIPE_API_BASE = link.url
    stripe_gateway.configure()
    worker = Worker(env={"STRIPE_API_BASE": link.url})
    try:
        _scenario(record, link, worker, tenant, outsider, stripe_api)
    finally:
        worker.stop()
        link.close()
        stripe_gateway.configure()


def _scenario(record, link, worker, acme, globex, stripe_api):
    from config.celery import app

    consumers = [globex, new_tenant("hooli"), new_tenant("umbrella")]
    version = listed_classifier(acme, *consumers, price_per_call="0.25")
    for consumer in consumers:
        save_card(stripe_api, consumer)
    # Last month's usage, as the ledger holds it at the close.
    for i in range(60):
        usage_record_create(
            kind="prediction",
            source_id=f"last_{i}",
            consumer=consumers[i % 3],
            model=version.model,
            compute_seconds=Decimal("0.01"),
        )
    this_month = timezone.now().date().replace(day=1)
    period = (this_month - timedelta(days=1)).replace(day=1)
    UsageRecord.objects.update(period=period, created_at=F("created_at") - timedelta(days=32))
    api = key_client(globex)
    worker.start()
    warm = api.post(
        "/api/v1/predictions",
        {"model": "acme/clf", "input": {"x": [[1, 2, 3, 4]]}},
        format="json",
        HTTP_PREFER="wait=60",
    )
    assert warm.json()["status"] == "succeeded", warm.json()

    # The hour without Stripe.
    link.up = False
    closed = app.send_task("billing.close_period", args=[period.isoformat()]).get(timeout=120)
    answers: Counter = Counter()
    calls, resumed = [warm.json()["id"]], []
    ledger_calls = 0
    for tick in range(1, OUTAGE_TICKS + 1):
        advance(TICK)
        response = api.post(
            "/api/v1/predictions",
            {"model": "acme/clf", "input": {"x": [[tick, 1, 2, 3]]}},
            format="json",
            HTTP_PREFER="wait=30",
        )
        answers[response.status_code] += 1
        if response.status_code == 201:
            calls.append(response.json()["id"])
        for n in range(10):  # and the rest of the traffic, straight into the ledger
            usage_record_create(
                kind="prediction",
                source_id=f"outage_{tick}_{n}",
                consumer=consumers[n % 3],
                model=version.model,
                compute_seconds=Decimal("0.02"),
            )
            ledger_calls += 1
        if tick % RESUME_EVERY == 0:
            resumed.append(app.send_task("billing.resume").get(timeout=60))
    during = Counter(Invoice.objects.filter(period=period).values_list("status", flat=True))
    in_stripe_during = Invoice.objects.filter(period=period).exclude(stripe_invoice_id="").count()
    failed_requests = sum(n for fate, n in link.counts.items() if fate != "forwarded")

    # Stripe answers again; beat's next resume, half an hour later.
    link.up = True
    advance(TICK * RESUME_EVERY)
    resumed.append(app.send_task("billing.resume").get(timeout=60))
    invoices = Invoice.objects.filter(period=period)
    wait_for(
        lambda: not invoices.exclude(status=Invoice.Status.PAID).exists(),
        180,
        "every invoice to be paid after Stripe came back",
    )
    paid = invoices.count()
    wait_for(
        lambda: (
            Transfer.objects.filter(invoice__in=invoices).values("invoice").distinct().count()
            == paid
        ),
        120,
        "the publisher's transfers",
    )
    diffs = reconcile(period=period)
    in_stripe = {}
    for invoice in invoices.select_related("consumer__billing"):
        remote = stripe_api.v1.invoices.list(
            params={"customer": invoice.consumer.billing.stripe_customer_id}
        ).data
        in_stripe[invoice.public_id] = sum(
            1 for r in remote if r.metadata.to_dict().get("mm_invoice") == invoice.public_id
        )
    succeeded = UsageRecord.objects.filter(source_id__in=calls)
    billed = Counter(succeeded.values_list("source_id", flat=True))
    this_months = UsageRecord.objects.filter(period=this_month).count()

    record.figures = {
        "simulated outage": f"{OUTAGE_TICKS * TICK.total_seconds() / 60:.0f} min",
        "Stripe requests failed during it": f"{failed_requests} ("
        + ", ".join(f"{k}: {v}" for k, v in sorted(link.counts.items()) if k != "forwarded")
        + ")",
        "invoices made by the close": len(closed),
        "their statuses during the outage": dict(during),
        "in Stripe during the outage": in_stripe_during,
        "billing.resume runs (queued)": "; ".join(f"{r['invoices']} invoice(s)" for r in resumed),
        "predictions during the outage": ", ".join(f"{k}: {v}" for k, v in answers.items()),
        "usage recorded this month": f"{this_months} ({len(calls)} API calls, "
        f"{ledger_calls} straight into the ledger)",
        "calls billed twice": sum(1 for n in billed.values() if n > 1),
        "invoices paid after": paid,
        "Stripe invoices per invoice": ", ".join(str(n) for n in in_stripe.values()),
        "reconcile differences": len(diffs),
    }
    record.observed = (
        f"{failed_requests} Stripe requests failed over the simulated hour; the close made "
        f"{len(closed)} invoices and left them {dict(during)}; {this_months} usage records "
        f"this month, none twice; after Stripe came back all {paid} invoices paid, each once "
        f"in Stripe; reconcile: {len(diffs)} differences"
    )
    assert len(closed) == len(consumers) and in_stripe_during == 0
    assert set(during) <= {Invoice.Status.PENDING, Invoice.Status.DRAFT}
    assert failed_requests >= 3 and answers == {201: OUTAGE_TICKS}
    assert set(billed) == set(calls) and set(billed.values()) == {1}
    assert this_months == len(calls) + ledger_calls
    assert set(in_stripe.values()) == {1}
    assert diffs == [], diffs
