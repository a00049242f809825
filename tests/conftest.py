"""Shared fixtures. The cast, as in healthchecks' tests: ``alice`` owns the ``acme`` tenant,
``bob`` is a developer there, and ``charlie`` owns ``globex``, the outsider."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import pytest
from rest_framework.test import APIClient

from accounts import services
from accounts.models import ALL_SCOPES, Role, Tenant, User

PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_key_cache():
    """Each test starts as a freshly started process would: nothing cached."""
    from accounts import keycache

    keycache.clear()
    yield
    keycache.clear()


@pytest.fixture(autouse=True, scope="session")
def _flush_retried_past_the_workers_writes():
    """A test with the live worker can end while the worker still writes what that test sent
    it (a prediction failed by a stubbed wait, a result being recorded). On PostgreSQL the
    flush after the test (TRUNCATE of every table) then deadlocks with that write, PostgreSQL
    aborts the flush, and every later test meets the rows left behind. The flush is retried
    once the worker's write has finished; it runs in one transaction, so a retry is clean."""
    import time

    from django.core.management.base import CommandError
    from django.test import TransactionTestCase

    flush = TransactionTestCase._fixture_teardown

    def retried(self):
        for attempt in range(5):
            try:
                return flush(self)
            except CommandError as exc:
                cause = str(exc.__cause__ or exc)
                if attempt == 4 or ("deadlock detected" not in cause and "locked" not in cause):
                    raise
                time.sleep(0.5 * (attempt + 1))

    TransactionTestCase._fixture_teardown = retried
    yield
    TransactionTestCase._fixture_teardown = flush


def race_idempotency_key(monkeypatch, module, send) -> tuple[list, list]:
    """Two requests with one Idempotency-Key at once, each looking the key up before the other
    wrote: ``module``'s first lookup (``_by_idempotency_key``) finds nothing, after ``send()``
    (the concurrent retry) has run and written. Returns the list that will hold the retry's
    response and the list of ids ``module.enqueue`` was given."""
    real_lookup = module._by_idempotency_key
    lookups, raced, queued = [], [], []

    def lookup(access, key, body_hash):
        lookups.append(key)
        if len(lookups) == 1:  # this request has looked: the concurrent retry writes now
            raced.append(send())
            return None
        return real_lookup(access, key, body_hash)

    monkeypatch.setattr(module, "_by_idempotency_key", lookup)
    monkeypatch.setattr(module, "enqueue", lambda work: queued.append(work.public_id))
    return raced, queued


def make_user(email: str) -> User:
    return services.user_create(email=email, password=PASSWORD, name=email.split("@")[0].title())


@pytest.fixture
def alice(db) -> User:
    return make_user("alice@acme.example")


@pytest.fixture
def bob(db) -> User:
    return make_user("bob@acme.example")


@pytest.fixture
def charlie(db) -> User:
    return make_user("charlie@globex.example")


@pytest.fixture
def tenant(alice, bob) -> Tenant:
    acme = services.tenant_create(slug="acme", name="Acme", owner=alice)
    services.membership_add(tenant=acme, user=bob, role=Role.DEVELOPER, actor=services.SYSTEM)
    return acme


@pytest.fixture
def outsider(charlie) -> Tenant:
    return services.tenant_create(slug="globex", name="Globex", owner=charlie)


def key_client(tenant: Tenant, scopes=ALL_SCOPES, **kwargs) -> APIClient:
    _key, secret = services.api_key_create(
        tenant=tenant, name="test", scopes=sorted(scopes), actor=services.SYSTEM, **kwargs
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    client.secret = secret
    return client


@contextlib.contextmanager
def statements() -> Iterator[list[str]]:
    """The SQL this thread's default connection runs inside the block, requests included
    (``CaptureQueriesContext`` loses what ran before each request's ``reset_queries``)."""
    from django.db import connection

    ran: list[str] = []

    def record(execute, sql, params, many, context):
        ran.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        yield ran


@pytest.fixture
def api(tenant) -> APIClient:
    """An API client holding an all-scopes key of ``acme``."""
    return key_client(tenant)


@pytest.fixture
def outsider_api(outsider) -> APIClient:
    return key_client(outsider)


def database_url(settings_dict: dict) -> str:
    """The URL of the test database (pytest-django's ``test_…`` one on PostgreSQL)."""
    from urllib.parse import quote

    if settings_dict["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{settings_dict['NAME']}"
    user = quote(settings_dict.get("USER") or "", safe="")
    password = quote(settings_dict.get("PASSWORD") or "", safe="")
    host = quote(settings_dict.get("HOST") or "", safe="")
    port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    return f"postgres://{auth}{host}{port}/{quote(settings_dict['NAME'], safe='')}"


def worker_env(django_db_blocker) -> dict[str, str]:
    """The environment of a test worker process: the test Redis and the test database."""
    import os

    from django.db import connection

    with django_db_blocker.unblock():
        url = database_url(connection.settings_dict)
    return {
        **os.environ,
        "DATABASE_URL": url,
        "PYTHONUNBUFFERED": "1",
        "MM_WEBHOOK_RETRY_DELAYS": "0.2,0.4,0.8",
        "MM_HOST_PRESTART": "0",
    }


def start_worker(queues: str, name: str, env: dict):
    import subprocess
    import sys

    return subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
        [
            *(sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues),
            *("--pool", "threads", "--concurrency", "16", "--loglevel", "WARNING", "-n", name),
            *("--without-heartbeat", "--without-mingle", "--without-gossip"),
        ],
        env=env,
    )


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, django_db_blocker):
    """A real Celery worker in its own process, on the test Redis and the test database
    (SQLite or PostgreSQL), serving ``default`` and ``cpu``. With
    ``MM_TEST_SECOND_WORKER_QUEUES`` set (CI's PostgreSQL run: ``gpu``), a second worker
    serves those queues, so work crosses processes as it does in production."""
    import os
    import subprocess

    from config.celery import app
    from tests.plugin import _free_port

    env = worker_env(django_db_blocker)
    metrics_port = _free_port()
    procs = [
        start_worker(
            "default,cpu",
            f"test-{os.getpid()}@%h",
            {**env, "MM_WORKER_METRICS_PORT": str(metrics_port)},
        )
    ]
    second = os.environ.get("MM_TEST_SECOND_WORKER_QUEUES", "")
    if second:
        # MM_TEST_SECOND_WORKER_DEVICE=cuda on a GPU machine (bench/device_check.sh).
        device = os.environ.get("MM_TEST_SECOND_WORKER_DEVICE", "cpu")
        procs.append(
            start_worker(second, f"test2-{os.getpid()}@%h", {**env, "MM_WORKER_DEVICE": device})
        )
    try:
        # The first task doubles as the readiness probe.
        app.send_task("workers.ping", args=["ready"]).get(timeout=60)
        for queue in filter(None, second.split(",")):
            app.send_task("workers.ping", args=["ready"], queue=queue).get(timeout=60)
        proc = procs[0]
        proc.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        yield proc
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="session")
def model_files() -> dict[str, bytes]:
    """Real model files in every format we meet: a torch.export archive, TorchScript, a
    safetensors state dict, and the pickles we refuse."""
    import torch
    from safetensors.torch import save as save_safetensors

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    model.eval()
    example = torch.randn(1, 4)

    def saved(write) -> bytes:
        buffer = io.BytesIO()
        write(buffer)
        return buffer.getvalue()

    return {
        "pt2": saved(lambda b: torch.export.save(torch.export.export(model, (example,)), b)),
        "torchscript": saved(lambda b: torch.jit.save(torch.jit.trace(model, example), b)),
        "safetensors": save_safetensors(model.state_dict()),
        "pickle": saved(lambda b: torch.save(model, b)),
        "legacy_pickle": saved(
            lambda b: torch.save(model, b, _use_new_zipfile_serialization=False)
        ),
    }


@pytest.fixture
def isolated_store(settings, tmp_path):
    """A fresh artifact store and development key file for one test (not the shared ones a
    live worker reads)."""
    from marketplace.vault.keys import kek_backend_forget

    settings.KEK_FILE = tmp_path / "keyring.json"
    settings.KEK_FILE_CREATE = True
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "store")},
        },
    }
    kek_backend_forget()
    yield tmp_path / "store"
    kek_backend_forget()


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def signed_in_page(browser, live_server, email: str, password: str = PASSWORD, **options):
    """A new browser context's page, signed in through the login page as ``email``; close it
    with ``page.context.close()``. ``options``: ``viewport`` (1280x900 unless given) and
    ``timeout`` (ms, 15 s unless given)."""
    width, height = options.get("viewport", (1280, 900))
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(options.get("timeout", 15_000))
    page = context.new_page()
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    return page


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium driven by Playwright (whose own browser download does not
    work here). No skip on failure: a browser test that cannot start a browser has not passed."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()
