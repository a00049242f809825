from __future__ import annotations

import json
import threading

import pytest
from django.test import RequestFactory

from workers import health

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_answer():
    health._last = None  # each test's first call checks, whatever ran before
    yield
    health._last = None


def test_healthz_answers_while_the_process_runs(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_is_503_naming_the_missing_worker(client, settings):
    settings.READYZ_WORKER_TIMEOUT = 0.3
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 503 and body["ready"] is False
    assert body["checks"]["database"]["ok"] and body["checks"]["redis"]["ok"]
    assert body["checks"]["storage"]["ok"]
    # Tests run with DEBUG off, as production does: the error names its kind only.
    assert body["checks"]["worker"] == {"ok": False, "error": "RuntimeError"}


def test_readyz_is_503_when_redis_is_down(client, settings, tmp_path):
    settings.REDIS_URL = f"unix://{tmp_path}/nothing.sock"
    settings.READYZ_WORKER_TIMEOUT = 0.3
    body = client.get("/readyz").json()
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["redis"]["error"].endswith("Error")
    assert "nothing.sock" not in str(body)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_readyz_is_200_with_a_worker(celery_worker_process, client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    assert all(check["ok"] for check in response.json()["checks"].values())


def test_readyz_is_503_when_the_artifact_store_is_unreachable(client, settings):
    from botocore.config import Config

    settings.READYZ_WORKER_TIMEOUT = 0.3
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": "artifacts",
                "endpoint_url": "http://127.0.0.1:9",  # nothing listens on the discard port
                "access_key": "x",
                "secret_key": "y",
                "region_name": "us-east-1",
                "client_config": Config(connect_timeout=1, retries={"max_attempts": 0}),
            },
        },
    }
    body = client.get("/readyz").json()
    assert body["checks"]["storage"]["ok"] is False
    assert body["checks"]["database"]["ok"] and body["checks"]["redis"]["ok"]


@pytest.mark.django_db(transaction=True)
def test_readyz_is_503_when_the_database_is_unreachable(client, settings):
    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip("breaks the connection by pointing SQLite at a missing folder")
    settings.READYZ_WORKER_TIMEOUT = 0.3
    name = connection.settings_dict["NAME"]
    connection.close()
    connection.settings_dict["NAME"] = "/nonexistent/folder/db.sqlite3"
    try:
        response = client.get("/readyz")
    finally:
        connection.close()
        connection.settings_dict["NAME"] = name
    body = response.json()
    assert response.status_code == 503 and body["checks"]["database"]["ok"] is False
    assert body["checks"]["redis"]["ok"] and body["checks"]["storage"]["ok"]


def test_a_flood_of_probes_is_answered_from_one_check(client, settings, monkeypatch):
    # No worker: each check waits out the ping timeout and broadcasts a ping to the workers.
    settings.READYZ_WORKER_TIMEOUT, settings.READYZ_REUSE_SECONDS = 0.3, 30
    pings = []
    worker = health.CHECKS["worker"]
    monkeypatch.setitem(health.CHECKS, "worker", lambda: pings.append(1) or worker())

    answers = [client.get("/readyz") for _ in range(5)]

    assert [a.status_code for a in answers] == [503] * 5
    assert len(pings) == 1
    assert all(a.json()["checks"]["worker"]["ok"] is False for a in answers)
    assert answers[-1].json()["age_s"] >= answers[0].json()["age_s"] >= 0

    settings.READYZ_REUSE_SECONDS = 0  # the answer is now too old: the next probe checks again
    client.get("/readyz")
    assert len(pings) == 2


def test_a_probe_during_a_check_gets_the_last_answer_at_once(settings, monkeypatch):
    settings.READYZ_REUSE_SECONDS = 0  # every probe would check, but one at a time
    release, started = threading.Event(), threading.Event()
    answers = iter([None, "hung"])

    def worker():
        if next(answers) == "hung":  # the second check hangs, then fails
            started.set()
            release.wait(10)
            raise RuntimeError("no worker answered a ping")

    monkeypatch.setattr(health, "CHECKS", {"worker": worker})
    probe = RequestFactory().get("/readyz")
    assert health.readyz(probe).status_code == 200  # the first check: ready
    slow: list = []
    checking = threading.Thread(target=lambda: slow.append(health.readyz(probe)))
    checking.start()
    assert started.wait(10)

    meanwhile = health.readyz(probe)  # the check is running: the last answer, not a wait

    release.set()
    checking.join(10)
    assert meanwhile.status_code == 200
    assert json.loads(meanwhile.content)["checks"]["worker"]["ok"] is True
    assert slow[0].status_code == 503  # the check itself, once done
