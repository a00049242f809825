from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


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
