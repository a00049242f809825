"""The web's cache of what a prediction resolves (inference/catalog.py) never outlives a change
made in another process: an entitlement revoked by another process holds from the next
request, not after the cache's TTL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from accounts import services as accounts
from marketplace.listings import listing_publish, listing_subscribe
from tests.conftest import worker_env
from tests.inference.conftest import Classifier, export, ready_version, signature

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]

REVOKE = """
from accounts import services as accounts
from marketplace.listings import entitlement_revoke
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
    version = ready_version(tenant, "clf", export(Classifier()), "pt2", signature(4, 3))
    listing = listing_publish(
        model=version.model,
        actor=accounts.SYSTEM,
        visibility="public",
        title="Classifier",
        price_per_call="0",
        price_per_second="0",
    )
    entitlement = listing_subscribe(listing=listing, tenant=outsider, actor=accounts.SYSTEM)
    assert predict(outsider_api).status_code == 201
    assert predict(outsider_api).status_code == 201  # now answered from this process's cache

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
