"""The web's cache of what a prediction resolves (inference/catalog.py) never outlives a change
made in another process: an entitlement revoked by another process holds from the next
request, not after the cache's TTL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from inference import catalog
from marketplace.models import Entitlement
from tests.conftest import worker_env
from tests.inference.conftest import listed_classifier

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]

REVOKE = """
from accounts import services as accounts
from marketplace.listings import entitlement_revoke
from inference import catalog
from marketplace.models import Entitlement
entitlement = Entitlement.objects.get(public_id={entitlement!r})
entitlement_revoke(entitlement=entitlement, actor=accounts.SYSTEM)
"""


def predict(client):
    return client.post(
        "/api/v1/predictions",
        {"model": "acme/clf", "input": {"x": [[1.0, 2.0, 3.0, 4.0]]}},
        format="json",
    )


def test_an_entitlement_revoked_in_another_process_holds_from_the_next_request(
    tenant, outsider, outsider_api, settings, django_db_blocker
):
    settings.INFERENCE_CACHE_SECONDS = 300  # far longer than the test: only the sync can help
    listed_classifier(tenant, outsider)
    entitlement = Entitlement.objects.get(tenant=outsider)
    assert predict(outsider_api).status_code == 201
    assert predict(outsider_api).status_code == 201  # now answered from this process's cache
    assert catalog._entries, "the resolution was not cached: this test would prove nothing"

    revoked = subprocess.run(  # another process, as another web or an admin's would be
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            REVOKE.format(entitlement=entitlement.public_id),
        ],
        cwd=ROOT,
        env=worker_env(django_db_blocker),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert revoked.returncode == 0, revoked.stderr[-2000:]

    refused = predict(outsider_api)
    assert refused.status_code == 403, refused.json()
    assert "subscribe" in refused.json()["detail"].lower()


def test_without_redis_no_cached_resolution_is_trusted(settings, monkeypatch):
    """When Redis cannot say whether anything changed, lookups resolve afresh."""
    import time

    import redis

    from inference import realtime

    settings.INFERENCE_CACHE_SECONDS = 300
    resolved = object()
    catalog.get(("acme/clf",))  # in step with the counter, as a lookup before this one leaves it
    catalog.put(("acme/clf",), resolved, time.monotonic())
    assert catalog.get(("acme/clf",)) is resolved

    monkeypatch.setattr(realtime, "client", lambda: redis.Redis(unix_socket_path="/nonexistent"))

    assert catalog.get(("acme/clf",)) is None
