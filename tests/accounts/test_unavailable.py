"""Redis or the database failing under a request is a 503 with Retry-After, not a 500
(found by the reliability suite's Redis-outage and locked-database scenarios)."""

from __future__ import annotations

import pytest
import redis
from django.db import OperationalError

pytestmark = pytest.mark.django_db


def test_redis_down_is_503_with_retry_after(api, tenant, monkeypatch):
    from inference import limits
    from tests.inference.conftest import Classifier, export, ready_version, signature

    ready_version(tenant, "clf", export(Classifier()), "pt2", signature(4, 3))

    def down():
        raise redis.ConnectionError("Error 111 connecting to redis.sock. Connection refused.")

    monkeypatch.setattr(limits.realtime, "client", down)
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
