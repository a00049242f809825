"""Stripe for the billing tests: localstripe (a fake but stateful Stripe server) in its own
virtual environment, bound to 127.0.0.1 on the port tests/plugin.py chose, wiped before each
test, plus what Stripe.js would do in a browser to save a card."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import pytest
import requests
import stripe

from accounts import services as accounts
from billing import stripe_gateway
from billing.models import UsageRecord
from billing.services import payment_method_confirm, payment_setup_start, usage_record_create
from marketplace import services as registry
from marketplace.models import Listing
from tests.billing import stripe_wire as wire
from tests.inference.conftest import listed_classifier

ROOT = Path(__file__).resolve().parents[2]
PYTHON = Path(os.environ.get("MM_LOCALSTRIPE_PYTHON", ROOT / ".venv-localstripe/bin/python"))
CARD_OK = "4242424242424242"
CARD_DECLINED = "4000000000000341"  # attaches, then every charge is declined


@pytest.fixture(scope="session")
def stripe_server() -> str:
    if not PYTHON.exists():
        pytest.fail(f"localstripe is not installed at {PYTHON}: run `make install`.")
    port = int(os.environ["MM_LOCALSTRIPE_PORT"])
    proc = subprocess.Popen(
        [str(PYTHON), str(ROOT / "tests/fakes/localstripe_server.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"localstripe did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
    yield os.environ["STRIPE_API_BASE"]
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def stripe_api(stripe_server):
    """A clean Stripe, reached through the gateway's real client."""
    requests.delete(f"{stripe_server}/_config/data", timeout=10).raise_for_status()
    stripe_gateway.configure()
    yield stripe.StripeClient(
        os.environ["STRIPE_SECRET_KEY"], base_addresses={"api": stripe_server}
    )
    stripe_gateway.configure()


@pytest.fixture
def stripe_webhooks(stripe_server, live_server):
    """localstripe signs and posts its events to our webhook endpoint on the live server."""
    response = requests.post(
        f"{stripe_server}/_config/webhooks/modelmarket",
        data={
            "url": f"{live_server.url}/billing/stripe/webhook",
            "secret": os.environ["STRIPE_WEBHOOK_SECRET"],
        },
        timeout=10,
    )
    response.raise_for_status()
    return live_server


def save_card(stripe_api: stripe.StripeClient, tenant, number: str = CARD_OK):
    """What the dashboard's card form does: Stripe.js makes a card and confirms the
    SetupIntent in the browser, then our server checks it and saves the card."""
    intent = payment_setup_start(tenant=tenant)
    card = stripe_api.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": number, "exp_month": 12, "exp_year": 2031, "cvc": "123"},
        }
    )
    stripe_api.v1.setup_intents.confirm(intent["id"], params={"payment_method": card.id})
    return payment_method_confirm(tenant=tenant, setup_intent=intent["id"], actor=accounts.SYSTEM)


def listed(tenant, name: str = "clf", price_per_call: str = "0.25"):
    """A model of ``tenant`` listed at ``price_per_call`` with a 20 % platform fee (no
    version: for tests of the ledger and invoices alone)."""
    model = registry.model_create(tenant=tenant, name=name, actor=accounts.SYSTEM)
    Listing.objects.create(
        model=model,
        title=name,
        visibility="public",
        price_per_call=Decimal(price_per_call),
        platform_fee_percent=Decimal("20"),
    )
    return model


def spend(consumer, model, calls: int, key=None) -> None:
    """Arrange: calls already made (and billed) this month."""
    for _ in range(calls):
        usage_record_create(
            kind="prediction",
            source_id=f"pred_{UsageRecord.objects.count()}",
            consumer=consumer,
            model=model,
            compute_seconds=Decimal("0.01"),
            api_key_id=key.pk if key else None,
        )


@pytest.fixture
def paid_clf(tenant, outsider):
    """acme's classifier, ready to run, listed at 0.25 per call (20 % platform fee); globex
    subscribed."""
    return listed_classifier(tenant, outsider, price_per_call="0.25").model


@pytest.fixture
def stripe_wire():
    """Our Stripe calls answered by canned routes and recorded (``stripe_wire.StripeWire``),
    for what localstripe does not do."""
    recorder = wire.StripeWire()
    stripe_gateway.configure(http_client=recorder)
    yield recorder
    stripe_gateway.configure()
