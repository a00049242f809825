"""Who may run and download a model, from the command line: acme publishes ``acme/clf``, globex
(charlie) asks for it, runs it, downloads it where acme lets it, and loses it again."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from modelmarket import Client, errors

from accounts import services as accounts
from marketplace import listings
from marketplace.models import AccessRequest, Artifact
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
    assert "lacks the right" not in refused.err  # the key holds every scope: not the reason
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


def test_subscribing_from_python_returns_the_subscription_it_lists(
    mm_env, as_org, globex, classifier
):
    publish(classifier)
    as_org(globex)

    with Client() as client:
        subscription = client.subscribe("acme/clf")
        again = client.subscribe("acme/clf")
        listed = list(client.list_subscriptions())

    assert (subscription.model, subscription.title) == ("acme/clf", "Classifier")
    assert not subscription.can_download
    assert again.id == subscription.id
    assert [s.id for s in listed] == [subscription.id]


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


# --- downloads --------------------------------------------------------------------------------


def test_a_download_right_lets_a_consumer_download_the_weights_until_withdrawn(
    mm, as_org, secret, globex, classifier, tmp_path
):
    weights = classifier.artifact
    mm("share", "acme/clf", "globex")
    as_org(globex)
    refused = mm("download", "acme/clf:1", "-o", tmp_path)
    as_org(secret)

    allowed = mm("allow-download", "acme/clf", "globex", "--json")
    as_org(globex)
    downloaded = mm("download", "acme/clf:1", "-o", tmp_path, "--json")

    assert refused.code == 3 and "needs its publisher's permission" in refused.err
    assert allowed.code == 0, allowed.err
    assert allowed.json()["tenant"] == "globex" and allowed.json()["can_download"] is True
    assert downloaded.code == 0, downloaded.err
    path = tmp_path / "acme-clf-v1.pt2"
    assert downloaded.json()["path"] == str(path)
    assert (
        downloaded.json()["sha256"]
        == weights.sha256
        == hashlib.sha256(path.read_bytes()).hexdigest()
    )
    assert downloaded.json()["size"] == weights.size == path.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ["acme-clf-v1.pt2"]  # no part file left

    as_org(secret)
    withdrawn = mm("withdraw-download", "acme/clf", "globex")
    as_org(globex)
    again = mm("download", "acme/clf:1", "-o", tmp_path / "again.pt2")

    assert withdrawn.code == 0, withdrawn.err
    assert "globex may no longer download the weights of acme/clf." in withdrawn.out
    assert again.code == 3 and "(HTTP 403)" in again.err
    assert not (tmp_path / "again.pt2").exists()


def test_a_subscriber_without_the_right_and_a_stranger_download_nothing(
    mm, as_org, globex, classifier, raising, tmp_path
):
    publish(classifier)
    as_org(globex)
    mm("subscribe", "acme/clf")

    subscriber = mm("download", "acme/clf:1", "-o", tmp_path, "--json")
    private = mm("download", "acme/raises:1", "-o", tmp_path)  # neither listed nor shared

    assert subscriber.code == 3
    assert subscriber.error() == {
        "status": 403,
        "code": "forbidden",
        "detail": "Downloading the weights of acme/clf needs its publisher's permission; ask "
        "them to allow downloads for your organisation.",
    }
    assert private.code == 4 and "(HTTP 404)" in private.err
    assert list(tmp_path.iterdir()) == []


def test_a_download_that_does_not_match_the_version_leaves_no_file(mm, classifier, tmp_path):
    Artifact.objects.filter(pk=classifier.artifact_id).update(sha256="0" * 64)

    run = mm("download", "acme/clf:1", "-o", tmp_path / "clf.pt2")

    assert run.code == errors.EXIT_FAILED == 7
    assert "does not match it" in run.err and "Nothing was kept" in run.err
    assert list(tmp_path.iterdir()) == []


class BreaksOff(httpx.HTTPTransport):
    """Downloads break off after half of their first piece, as a dropped connection does."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if not request.url.path.endswith("/download"):
            return response
        body = response.stream

        def half_then_reset():
            for piece in body:
                yield piece[: len(piece) // 2]
                raise httpx.ReadError("Connection reset by peer", request=request)

        return httpx.Response(
            response.status_code, headers=response.headers, content=half_then_reset()
        )


def test_a_download_cut_short_leaves_no_file(mm_env, classifier, tmp_path):
    with Client(transport=BreaksOff()) as client, pytest.raises(errors.ConnectionFailed) as cut:
        client.download("acme/clf:1", tmp_path)

    assert "broke off after" in cut.value.message and "nothing was kept" in cut.value.message
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_kept_unless_forced(mm, classifier, tmp_path):
    existing = tmp_path / "clf.pt2"
    existing.write_bytes(b"mine")

    kept = mm("download", "acme/clf:1", "-o", existing)
    forced = mm("download", "acme/clf:1", "-o", existing, "--force")

    assert kept.code == 2 and "exists" in kept.err and "--force" in kept.err
    assert forced.code == 0, forced.err
    assert hashlib.sha256(existing.read_bytes()).hexdigest() == classifier.artifact.sha256


# --- yanking ----------------------------------------------------------------------------------


def test_a_yanked_version_answers_gone_with_the_reason(mm, classifier):
    yanked = mm("yank", "acme/clf:1", "--reason", "leaks training data", "--json")
    shown = mm("version", "acme/clf:1")

    assert yanked.code == 0, yanked.err
    assert yanked.json()["status"] == "yanked"
    assert yanked.json()["status_reason"] == "leaks training data"
    assert shown.code == 4 and "withdrawn: leaks training data" in shown.err


def test_a_deprecated_version_says_until_when_and_why(mm, classifier):
    deprecated = mm("deprecate", "acme/clf:1", "--sunset", "2031-03-01", "--reason", "use v2")
    shown = mm("version", "acme/clf:1", "--json")
    unnumbered = mm("deprecate", "acme/clf", "--sunset", "2031-03-01T00:00:00Z")
    past = mm("deprecate", "acme/clf:1", "--sunset", "not a date")

    assert deprecated.code == 0, deprecated.err
    assert shown.json()["status"] == "deprecated"
    assert shown.json()["sunset_at"].startswith("2031-03-01")
    assert unnumbered.code == 2 and "owner/name:NUMBER" in unnumbered.err
    assert past.code != 0 and "sunset_at" in past.err


def test_a_version_an_alias_points_at_is_not_yanked(mm, classifier):
    mm("alias", "set", "acme/clf", "production", "1")

    refused = mm("yank", "acme/clf:1", "--reason", "leaks training data")

    assert refused.code == 5
    assert "Move the alias(es) production off version 1 before yanking it." in refused.err
    assert mm("version", "acme/clf:1", "--json").json()["status"] == "ready"


def test_a_folder_that_does_not_exist_is_not_taken_for_a_file_name(mm, classifier, tmp_path):
    run = mm("download", "acme/clf:1", "-o", f"{tmp_path}/models/")

    assert run.code == 2 and "No folder" in run.err
    assert list(tmp_path.iterdir()) == []


def test_the_publisher_withdraws_an_approval_from_the_command_line(
    mm, as_org, secret, globex, classifier
):
    """The API could take back an approval; neither mm nor the Client could."""
    publish(classifier, gated=True)
    as_org(globex)
    request_id = mm("access", "request", "acme/clf", "--json").json()["id"]
    as_org(secret)
    assert mm("access", "approve", request_id).code == 0

    withdrawn = mm("access", "withdraw", request_id)
    again = mm("access", "withdraw", request_id, "--json")

    assert withdrawn.code == 0, withdrawn.err
    assert "Declined globex's request for acme/clf." in withdrawn.out
    assert mm("entitlements", "acme/clf", "--json").json() == []  # its subscription ended
    assert again.code == errors.EXIT_REJECTED and again.error()["status"] == 409
