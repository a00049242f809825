"""Redis or the database failing under a request is a 503 with Retry-After, not a 500
(found by the reliability suite's Redis-outage and locked-database scenarios)."""

from __future__ import annotations

import pytest
import redis
from django.db import OperationalError

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "failure",
    [
        redis.ConnectionError("Error 111 connecting to redis.sock. Connection refused."),
        # Up but refusing writes: full, or a replica after a failover (these were a 500).
        redis.exceptions.OutOfMemoryError(
            "OOM command not allowed when used memory > 'maxmemory'."
        ),
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
    ],
    ids=["down", "full", "read-only"],
)
def test_redis_failing_is_503_with_retry_after(api, tenant, monkeypatch, failure):
    from inference import limits
    from tests.inference.conftest import Classifier, export, ready_version, signature

    ready_version(tenant, "clf", export(Classifier()), "pt2", signature(4, 3))

    def failing():
        raise failure

    monkeypatch.setattr(limits.realtime, "client", failing)
    response = api.post(
        "/api/v1/predictions", {"model": "acme/clf", "input": {"x": [[1, 2, 3, 4]]}}, format="json"
    )

    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json()["code"] == "unavailable"


def test_database_error_is_503_with_retry_after(api, monkeypatch):
    from marketplace.api import registry

    def locked(*args, **kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(registry.services, "model_create", locked)
    response = api.post("/api/v1/models", {"name": "clf"}, format="json")

    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json()["code"] == "unavailable"


def test_a_store_that_cannot_take_writes_is_503_with_retry_after(api, monkeypatch):
    """A full or read-only artifact store answered an upload with a 500."""
    import errno

    from marketplace.api import registry

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(registry.services, "model_create", full)
    response = api.post("/api/v1/models", {"name": "clf"}, format="json")

    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json() == {
        "detail": "The model store cannot take writes right now; retry shortly.",
        "code": "unavailable",
    }
