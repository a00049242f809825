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
