"""A version still validating, or one that failed, is the publisher's own business: another
organisation, even one subscribed to the model, finds it no more than a version that does
not exist, on every route that takes a version (the registry already answered so)."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from accounts import services as accounts
from accounts.tenancy import SESSION_TENANT_KEY
from marketplace import listings
from marketplace.models import Alias, ModelVersion
from marketplace.vault.store import artifact_create
from tests.inference.conftest import signature

pytestmark = pytest.mark.django_db

REASON = "Traceback (most recent call last): /srv/acme/loader.py line 3"
INFER = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def version(model, number: int, status: str, **fields) -> ModelVersion:
    return ModelVersion.objects.create(
        model=model,
        number=number,
        format="pt2",
        status=status,
        signature=signature(4, 3),
        artifact=artifact_create(tenant=model.tenant, chunks=[b"weights"]),
        **fields,
    )


@pytest.fixture
def clf(tenant, outsider):
    """acme/clf, public, globex subscribed: version 1 ready, 7 failed, 8 validating."""
    from marketplace import services as registry

    model = registry.model_create(tenant=tenant, name="clf", actor=accounts.SYSTEM)
    version(model, 1, ModelVersion.Status.READY)
    version(model, 7, ModelVersion.Status.FAILED, failure_reason=REASON)
    version(model, 8, ModelVersion.Status.VALIDATING)
    model.next_version = 9
    model.save(update_fields=["next_version"])
    listing = listings.listing_publish(
        model=model, actor=accounts.SYSTEM, visibility="public", title="Classifier"
    )
    listings.listing_subscribe(listing=listing, tenant=outsider, actor=accounts.SYSTEM)
    return model


def answers(client, number: str) -> list[tuple[int, bytes]]:
    """What each route that takes a version answers for ``number``, the number masked."""
    base = "/v2/models/acme/clf/versions/" + number
    responses = [
        client.get(base),
        client.get(base + "/ready"),
        client.post(base + "/infer", INFER, format="json"),
        client.post(
            "/api/v1/predictions",
            {"model": "acme/clf", "version": number, "input": {"x": [[1, 2, 3, 4]]}},
            format="json",
        ),
        client.get("/api/v1/models/acme/clf/versions/" + number),
    ]
    masked = re.compile(rb"\b" + number.encode() + rb"\b")
    return [(r.status_code, masked.sub(b"N", r.content)) for r in responses]


@pytest.mark.parametrize("number", ["7", "8"])
def test_subscriber_cannot_tell_an_unpublished_version_from_a_missing_one(
    clf, outsider_api, number
):
    mine = answers(outsider_api, number)
    assert mine == answers(outsider_api, "9")
    assert {status for status, _ in mine} == {404}
    assert not any(REASON.encode() in body for _, body in mine)


def test_publisher_still_sees_why_its_version_failed(clf, api):
    response = api.get("/v2/models/acme/clf/versions/7/ready")
    assert response.status_code == 400
    assert REASON in response.json()["error"]


def test_production_alias_on_an_unpublished_version_tells_a_subscriber_nothing(clf, outsider_api):
    Alias.objects.create(model=clf, name="production", version=clf.versions.get(number=7))
    response = outsider_api.post(
        "/api/v1/predictions", {"model": "acme/clf", "input": {"x": [[1, 2, 3, 4]]}}, format="json"
    )
    assert response.status_code == 409
    assert response.json()["detail"] == "acme/clf has no ready version yet."


def test_playground_does_not_show_a_subscriber_the_failure_of_an_unpublished_version(
    clf, outsider, charlie
):
    browser = Client()
    browser.force_login(charlie)
    session = browser.session
    session[SESSION_TENANT_KEY] = outsider.slug
    session.save()
    page = browser.get("/dashboard/playground/acme/clf/?version=7").content.decode()
    assert REASON not in page
    assert "has no version or alias &#x27;7&#x27;" in page


def test_subscriber_sees_no_alias_pointing_at_an_unpublished_version(clf, outsider_api, api):
    Alias.objects.create(model=clf, name="staging", version=clf.versions.get(number=7))
    Alias.objects.create(model=clf, name="stable", version=clf.versions.get(number=1))

    assert outsider_api.get("/api/v1/models/acme/clf").json()["aliases"] == {"stable": 1}
    listed = outsider_api.get("/api/v1/models/acme/clf/aliases").json()
    assert [a["name"] for a in listed] == ["stable"]
    staging = outsider_api.get("/api/v1/models/acme/clf/aliases/staging")
    missing = outsider_api.get("/api/v1/models/acme/clf/aliases/nightly")
    assert (staging.status_code, staging.json()["code"]) == (404, "not_found")
    assert staging.status_code == missing.status_code
    assert api.get("/api/v1/models/acme/clf").json()["aliases"] == {"stable": 1, "staging": 7}


def test_subscriber_reads_an_aliass_history_without_its_unpublished_versions(
    clf, outsider_api, api
):
    from marketplace.models import AliasMove

    v1, v7 = clf.versions.get(number=1), clf.versions.get(number=7)
    stable = Alias.objects.create(model=clf, name="stable", version=v1)
    for before, after in [(None, v1), (v1, v7), (v7, v1)]:  # tried the failed one, rolled back
        AliasMove.objects.create(
            alias=stable, from_version=before, to_version=after, actor_label="acme"
        )

    theirs = outsider_api.get("/api/v1/models/acme/clf/aliases/stable").json()
    ours = api.get("/api/v1/models/acme/clf/aliases/stable").json()

    assert [(m["from_version"], m["to_version"]) for m in theirs] == [(None, 1)]
    assert [(m["from_version"], m["to_version"]) for m in ours] == [(7, 1), (1, 7), (None, 1)]
