"""Who may run a model, from the command line: acme publishes ``acme/clf``, globex (charlie)
asks for it, runs it, and loses it again."""

from __future__ import annotations

import pytest
from modelmarket import errors

from accounts import services as accounts
from marketplace import listings
from marketplace.models import AccessRequest
from tests.client.conftest import api_key

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def globex(outsider) -> str:
    """An all-scopes key of ``globex``, the consumer."""
    return api_key(outsider)


@pytest.fixture
def as_org(monkeypatch):
    """``as_org(key)``: the next ``mm`` runs act for the organisation of ``key``."""
    return lambda key: monkeypatch.setenv("MM_API_KEY", key)


def publish(version, **fields):
    return listings.listing_publish(
        model=version.model,
        actor=accounts.SYSTEM,
        **{"visibility": "public", "title": "Classifier", **fields},
    )


def test_a_gated_model_is_asked_for_approved_run_and_revoked(
    celery_worker_process, mm, as_org, secret, globex, classifier
):
    publish(classifier, gated=True)
    as_org(globex)

    refused = mm("subscribe", "acme/clf")
    asked = mm("access", "request", "acme/clf", "--message", "For our triage bot", "--json")

    assert refused.code == 3 and "request access" in refused.err
    assert asked.code == 0, asked.err
    assert asked.json()["status"] == "pending"
    request_id = asked.json()["id"]

    as_org(secret)
    listed = mm("access", "requests", "acme/clf", "--status", "pending")
    approved = mm("access", "approve", request_id)
    entitled = mm("entitlements", "acme/clf", "--json")

    assert listed.code == 0, listed.err
    assert request_id in listed.out and "Globex (globex)" in listed.out
    assert "For our triage bot" in listed.out
    assert approved.code == 0, approved.err
    assert "Approved globex's request for acme/clf." in approved.out
    assert [(e["tenant"], e["kind"]) for e in entitled.json()] == [("globex", "subscription")]

    as_org(globex)
    held = mm("subscriptions", "--json")
    ran = mm("predict", "acme/clf", "--data", "[[1, 2, 3, 4]]", "--json")

    assert [s["model"] for s in held.json()] == ["acme/clf"]
    assert ran.code == 0, ran.err
    assert ran.json()["status"] == "succeeded"

    as_org(secret)
    revoked = mm("revoke", "acme/clf", "globex")

    assert revoked.code == 0, revoked.err
    assert "Revoked globex's access to acme/clf." in revoked.out
    assert mm("entitlements", "acme/clf", "--json").json() == []
    as_org(globex)
    assert mm("subscriptions", "--json").json() == []
    again = mm("predict", "acme/clf", "--data", "[[1, 2, 3, 4]]")
    assert again.code == 3 and "Subscribe to it first" in again.err


def test_a_decided_request_cannot_be_decided_again(mm, as_org, secret, globex, classifier):
    publish(classifier, gated=True)
    as_org(globex)
    request_id = mm("access", "request", "acme/clf", "--json").json()["id"]
    as_org(secret)

    declined = mm("access", "decline", request_id)
    approved = mm("access", "approve", request_id, "--json")

    assert declined.code == 0, declined.err
    assert "Declined globex's request for acme/clf." in declined.out
    assert approved.code == errors.EXIT_REJECTED
    assert approved.error() == {
        "status": 409,
        "code": "conflict",
        "detail": "This request was already declined.",
    }
    assert AccessRequest.objects.get().status == "declined"


def test_only_the_publisher_sees_and_decides_requests(mm, as_org, globex, classifier):
    publish(classifier, gated=True)
    as_org(globex)
    request_id = mm("access", "request", "acme/clf", "--json").json()["id"]

    listed = mm("access", "requests", "acme/clf")
    approved = mm("access", "approve", request_id)

    assert listed.code == 3 and "Only the publisher of acme/clf may do that." in listed.err
    assert approved.code == 4 and "(HTTP 404)" in approved.err
    assert AccessRequest.objects.get().status == "pending"


def test_asking_for_a_model_that_is_not_gated_says_to_subscribe(mm, as_org, globex, classifier):
    publish(classifier)
    as_org(globex)

    asked = mm("access", "request", "acme/clf")

    assert asked.code == 5
    assert "acme/clf is not gated; subscribe to it directly." in asked.err


def test_a_private_model_is_shared_and_unshared(mm, as_org, secret, globex, classifier):
    as_org(globex)
    assert mm("model", "acme/clf").code == 4
    as_org(secret)

    shared = mm("share", "acme/clf", "globex")

    assert shared.code == 0, shared.err
    assert "Globex (globex) may view and run acme/clf" in shared.out
    as_org(globex)
    assert mm("model", "acme/clf").code == 0
    assert [(s["model"], s["kind"]) for s in mm("subscriptions", "--json").json()] == [
        ("acme/clf", "share")
    ]

    as_org(secret)
    unshared = mm("unshare", "acme/clf", "globex")
    twice = mm("unshare", "acme/clf", "globex")

    assert unshared.code == 0, unshared.err
    assert "acme/clf is no longer shared with globex." in unshared.out
    assert twice.code == 4 and "acme/clf is not shared with 'globex'." in twice.err
    as_org(globex)
    assert mm("model", "acme/clf").code == 4


def test_sharing_with_an_unknown_organisation_is_refused_naming_it(mm, classifier):
    shared = mm("share", "acme/clf", "nobody", "--json")

    assert shared.code == errors.EXIT_REJECTED
    assert shared.error()["status"] == 400
    assert shared.error()["errors"] == {"tenant": ["There is no organisation 'nobody'."]}
    assert "There is no organisation 'nobody'." in shared.error()["detail"]


def test_revoking_an_organisation_without_access_names_it(mm, outsider, classifier):
    revoked = mm("revoke", "acme/clf", "globex")

    assert revoked.code == 4
    assert "'globex' holds no access to acme/clf" in revoked.err


def test_a_consumer_gives_up_its_subscription(mm, as_org, globex, classifier):
    publish(classifier)
    as_org(globex)
    assert mm("subscribe", "acme/clf").code == 0

    given_up = mm("unsubscribe", "acme/clf")
    twice = mm("unsubscribe", "acme/clf")

    assert given_up.code == 0, given_up.err
    assert "Gave up access to acme/clf." in given_up.out
    assert mm("subscriptions", "--json").json() == []
    assert twice.code == 4 and "Your organisation holds no access to acme/clf" in twice.err
