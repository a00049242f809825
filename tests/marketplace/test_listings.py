"""Listings, the catalogue and entitlements through the API, as publishers and consumers use
them: acme (alice) publishes, globex (charlie) consumes, and initech is a third organisation
whose access an outsider must not be able to touch."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import services as accounts
from accounts.exceptions import Forbidden, NotFound
from accounts.models import ALL_SCOPES, AuditEvent, Scope, Tenant
from accounts.tenancy import Access
from marketplace import listings, selectors
from marketplace import services as registry
from marketplace.models import (
    AccessRequest,
    Entitlement,
    Listing,
    Model,
    ModelVersion,
    Task,
)
from marketplace.vault import store
from tests.conftest import key_client, make_user

pytestmark = pytest.mark.django_db


# --- the cast and the props -------------------------------------------------------------------


@pytest.fixture
def initech(db) -> Tenant:
    return accounts.tenant_create(
        slug="initech", name="Initech", owner=make_user("dana@initech.example")
    )


@pytest.fixture
def initech_api(initech) -> APIClient:
    return key_client(initech)


def make_model(tenant: Tenant, name: str, **fields) -> Model:
    return registry.model_create(tenant=tenant, name=name, actor=accounts.SYSTEM, **fields)


def ready_version(model: Model, number: int = 1, status: str = "ready") -> ModelVersion:
    artifact = store.artifact_create(tenant=model.tenant, chunks=[b"not really weights"])
    return ModelVersion.objects.create(
        model=model, number=number, artifact=artifact, format="pt2", status=status
    )


def publish(api: APIClient, ref: str, **fields):
    body = {"visibility": "public", "title": ref.split("/")[1].title(), **fields}
    return api.put(f"/api/v1/models/{ref}/listing", body, format="json")


def listed(tenant: Tenant, name: str, **fields) -> Model:
    """A model of ``tenant`` published with ``fields`` (public and free unless told)."""
    model = make_model(
        tenant, name, task=fields.pop("task", Task.OTHER), description=fields.pop("description", "")
    )
    fields = {"visibility": "public", "title": name.title(), **fields}
    listings.listing_publish(model=model, actor=accounts.SYSTEM, **fields)
    return model


def access_of(tenant: Tenant) -> Access:
    return Access(tenant=tenant, scopes=ALL_SCOPES)


def can(tenant: Tenant, perm: str, model: Model) -> bool:
    """Whether ``tenant`` may ``perm`` the model right now, as the inference API will ask."""
    try:
        selectors.model_for_access(
            access_of(tenant), owner=model.tenant.slug, name=model.name, perm=perm
        )
    except (Forbidden, NotFound):
        return False
    return True


def refs(response) -> list[str]:
    assert response.status_code == 200, response.json()
    return [item["ref"] for item in response.json()["results"]]


# --- publish, find, subscribe, use ------------------------------------------------------------


def test_consumer_finds_a_published_model_subscribes_and_reads_its_versions(
    api, tenant, outsider, outsider_api
):
    model = make_model(
        tenant,
        "resnet",
        task=Task.IMAGE_CLASSIFICATION,
        description="A residual network trained on ImageNet.",
    )
    ready_version(model)
    published = publish(
        api,
        "acme/resnet",
        title="ResNet-50",
        summary="Classifies photos.",
        card_markdown="# ResNet\n\nTop-1 **76%**.",
        license="apache-2.0",
        tags=["vision", "ImageNet"],
        example_input={"image": [[0.0]]},
    )
    assert published.status_code == 201
    listing = published.json()
    assert listing["license"] == "Apache-2.0"  # SPDX ids are stored canonically
    assert listing["tags"] == ["vision", "imagenet"]
    assert "<strong>76%</strong>" in listing["card_html"]
    assert listing["platform_fee_percent"] == "20.00"
    assert listing["publisher_share_percent"] == "80.00"

    found = APIClient().get("/api/v1/catalogue", {"q": "imagenet residual"})
    assert refs(found) == ["acme/resnet"]
    assert not can(outsider, "run", model)
    with pytest.raises(Forbidden) as refused:
        selectors.model_for_access(access_of(outsider), owner="acme", name="resnet", perm="run")
    assert refused.value.extra["subscribe_url"] == "/api/v1/catalogue/acme/resnet/subscribe"

    subscribed = outsider_api.post("/api/v1/catalogue/acme/resnet/subscribe")
    again = outsider_api.post("/api/v1/catalogue/acme/resnet/subscribe")

    assert subscribed.status_code == 201
    assert again.status_code == 200 and again.json()["id"] == subscribed.json()["id"]
    assert subscribed.json()["kind"] == "subscription"
    assert subscribed.json()["can_download"] is False
    assert can(outsider, "run", model) and not can(outsider, "download", model)
    versions = outsider_api.get("/api/v1/models/acme/resnet/versions")
    assert versions.status_code == 200
    assert [v["number"] for v in versions.json()["results"]] == [1]
    assert "acme/resnet" in [m["ref"] for m in outsider_api.get("/api/v1/models").json()["results"]]
    assert [s["model"] for s in outsider_api.get("/api/v1/subscriptions").json()["results"]] == [
        "acme/resnet"
    ]
    detail = outsider_api.get("/api/v1/catalogue/acme/resnet").json()
    assert detail["access"]["subscribed"] is True
    assert detail["versions"][0]["number"] == 1
    assert AuditEvent.objects.filter(tenant=outsider, action="entitlement.subscribe").count() == 1


def test_unsubscribing_takes_the_right_away_on_the_next_request(tenant, outsider, outsider_api):
    model = listed(tenant, "resnet")
    entitlement = outsider_api.post("/api/v1/catalogue/acme/resnet/subscribe").json()["id"]

    assert outsider_api.delete(f"/api/v1/subscriptions/{entitlement}").status_code == 204

    assert not can(outsider, "run", model)
    assert outsider_api.get("/api/v1/subscriptions").json()["results"] == []
    assert outsider_api.delete(f"/api/v1/subscriptions/{entitlement}").status_code == 404
    assert AuditEvent.objects.filter(tenant=outsider, action="entitlement.cancel").exists()


def test_paid_listing_can_be_subscribed_its_calls_are_billed(tenant, outsider, outsider_api):
    # Calls without a payment method answer 402: tests/billing/test_stripe_billing.py.
    model = listed(tenant, "bert", price_per_call="0.002")

    response = outsider_api.post("/api/v1/catalogue/acme/bert/subscribe")

    assert response.status_code == 201
    assert can(outsider, "run", model)


def test_publisher_needs_no_subscription_to_its_own_model(api, tenant):
    listed(tenant, "resnet")

    response = api.post("/api/v1/catalogue/acme/resnet/subscribe")

    assert response.status_code == 409
    assert not Entitlement.objects.exists()


def test_a_key_without_the_inference_scope_cannot_subscribe(tenant, outsider):
    listed(tenant, "resnet")
    reader = key_client(outsider, scopes=[Scope.MODELS_READ])

    response = reader.post("/api/v1/catalogue/acme/resnet/subscribe")

    assert response.status_code == 403
    assert "inference" in response.json()["detail"]
    assert not Entitlement.objects.exists()


def test_a_key_limited_to_other_models_cannot_subscribe_ask_or_read_the_listing(tenant, outsider):
    listed(tenant, "resnet", gated=True)
    listed(tenant, "open")
    limited = key_client(outsider, allowed_models=["acme/other"])

    responses = [
        limited.post("/api/v1/catalogue/acme/open/subscribe"),
        limited.post("/api/v1/catalogue/acme/resnet/request-access", {}, format="json"),
        limited.get("/api/v1/catalogue/acme/open"),
    ]

    for response in responses:
        assert response.status_code == 403
        assert "may not use acme/" in response.json()["detail"]
    assert not Entitlement.objects.exists()
    everything = key_client(outsider)
    assert everything.get("/api/v1/catalogue/acme/open").status_code == 200
    # Subscribed by a key that may, the subscription is out of the limited key's lists too.
    made = everything.post("/api/v1/catalogue/acme/open/subscribe").json()
    assert [s["id"] for s in everything.get("/api/v1/subscriptions").json()["results"]] == [
        made["id"]
    ]
    assert limited.get("/api/v1/subscriptions").json()["results"] == []
    assert limited.get(f"/api/v1/subscriptions/{made['id']}").status_code == 404


# --- gated listings ---------------------------------------------------------------------------


def test_gated_listing_opens_after_the_publisher_approves(api, tenant, outsider, outsider_api):
    model = listed(tenant, "medsam", gated=True)

    refused = outsider_api.post("/api/v1/catalogue/acme/medsam/subscribe")
    asked = outsider_api.post(
        "/api/v1/catalogue/acme/medsam/request-access",
        {"message": "For our radiology pilot."},
        format="json",
    )
    asked_again = outsider_api.post("/api/v1/catalogue/acme/medsam/request-access")
    pending = api.get("/api/v1/models/acme/medsam/access-requests", {"status": "pending"})
    approved = api.post(f"/api/v1/access-requests/{asked.json()['id']}/approve")
    subscribed = outsider_api.post("/api/v1/catalogue/acme/medsam/subscribe")

    assert refused.status_code == 403
    assert refused.json()["request_access_url"] == "/api/v1/catalogue/acme/medsam/request-access"
    assert asked.status_code == 201 and asked.json()["status"] == "pending"
    assert asked_again.status_code == 200 and asked_again.json()["id"] == asked.json()["id"]
    assert [(r["tenant"], r["message"]) for r in pending.json()["results"]] == [
        ("globex", "For our radiology pilot.")
    ]
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    assert subscribed.status_code == 200  # approval already subscribed globex
    assert can(outsider, "run", model)
    assert AuditEvent.objects.filter(tenant=tenant, action="access_request.approve").exists()


def test_declined_request_keeps_the_gate_closed(api, tenant, outsider, outsider_api):
    model = listed(tenant, "medsam", gated=True)
    request_id = outsider_api.post("/api/v1/catalogue/acme/medsam/request-access").json()["id"]

    declined = api.post(f"/api/v1/access-requests/{request_id}/decline")
    approve_after = api.post(f"/api/v1/access-requests/{request_id}/approve")
    subscribe = outsider_api.post("/api/v1/catalogue/acme/medsam/subscribe")

    assert declined.status_code == 200 and declined.json()["status"] == "declined"
    assert approve_after.status_code == 409
    assert subscribe.status_code == 403
    assert not can(outsider, "run", model)
    assert outsider_api.get("/api/v1/catalogue/acme/medsam").json()["access"] == {
        "publisher": False,
        "subscribed": False,
        "entitlement": None,
        "can_download": False,
        "access_request": "declined",
    }


def test_requesting_access_to_an_open_listing_says_to_subscribe(tenant, outsider_api):
    listed(tenant, "resnet")

    response = outsider_api.post("/api/v1/catalogue/acme/resnet/request-access")

    assert response.status_code == 409
    assert "subscribe" in response.json()["detail"]
    assert not AccessRequest.objects.exists()


def test_revoking_a_gated_subscriber_withdraws_its_approval(api, tenant, outsider, outsider_api):
    model = listed(tenant, "medsam", gated=True)
    request_id = outsider_api.post("/api/v1/catalogue/acme/medsam/request-access").json()["id"]
    api.post(f"/api/v1/access-requests/{request_id}/approve")
    entitlement = Entitlement.objects.get(tenant=outsider)

    revoked = api.delete(f"/api/v1/models/acme/medsam/entitlements/{entitlement.public_id}")
    resubscribe = outsider_api.post("/api/v1/catalogue/acme/medsam/subscribe")

    assert revoked.status_code == 204
    assert resubscribe.status_code == 403
    assert not can(outsider, "run", model)
    assert AuditEvent.objects.filter(tenant=tenant, action="entitlement.revoke").exists()


@pytest.mark.parametrize("then", ["not_yet_subscribed", "cancelled"])
def test_an_approval_can_be_withdrawn_while_no_subscription_is_live(
    api, tenant, outsider, outsider_api, then, settings
):
    """Withdrawing went only through a live subscription: an approval on a paid listing not
    subscribed to yet, or one whose consumer had cancelled, stood for good (decline was a
    409, and the consumer subscribed later without asking). POST .../withdraw now."""
    settings.PAYMENT_METHOD_REQUIRED = False
    model = listed(tenant, "medsam", gated=True, price_per_call="0.5")
    request_id = outsider_api.post("/api/v1/catalogue/acme/medsam/request-access").json()["id"]
    api.post(f"/api/v1/access-requests/{request_id}/approve")
    if then == "cancelled":
        subscribed = outsider_api.post("/api/v1/catalogue/acme/medsam/subscribe")
        assert subscribed.status_code == 201
        entitlement = Entitlement.objects.get(tenant=outsider)
        cancelled = outsider_api.delete(f"/api/v1/subscriptions/{entitlement.public_id}")
        assert cancelled.status_code == 204, cancelled.content

    withdrawn = api.post(f"/api/v1/access-requests/{request_id}/withdraw")
    subscribe = outsider_api.post("/api/v1/catalogue/acme/medsam/subscribe")

    assert withdrawn.status_code == 200 and withdrawn.json()["status"] == "declined"
    assert subscribe.status_code == 403
    assert not can(outsider, "run", model)
    assert AuditEvent.objects.filter(action="access_request.withdraw").count() == 1


def test_withdrawing_an_approval_ends_the_subscription_it_allowed(
    api, tenant, outsider, outsider_api
):
    model = listed(tenant, "medsam", gated=True)  # free: approval subscribes at once
    request_id = outsider_api.post("/api/v1/catalogue/acme/medsam/request-access").json()["id"]
    api.post(f"/api/v1/access-requests/{request_id}/approve")
    assert can(outsider, "run", model)

    withdrawn = api.post(f"/api/v1/access-requests/{request_id}/withdraw")

    assert withdrawn.status_code == 200
    assert not can(outsider, "run", model)
    assert api.post(f"/api/v1/access-requests/{request_id}/withdraw").status_code == 409


# --- private models and shares ----------------------------------------------------------------


def test_private_model_is_404_until_shared_and_again_after_the_share_is_revoked(
    api, tenant, outsider, outsider_api
):
    model = make_model(tenant, "inhouse")
    ready_version(model)
    publish(api, "acme/inhouse", visibility="private")
    before = outsider_api.get("/api/v1/models/acme/inhouse/versions")
    before_listing = outsider_api.get("/api/v1/catalogue/acme/inhouse")
    before_subscribe = outsider_api.post("/api/v1/catalogue/acme/inhouse/subscribe")

    assert before.status_code == before_listing.status_code == 404
    assert before_subscribe.status_code == 404

    shared = api.post("/api/v1/models/acme/inhouse/shares", {"tenant": "globex"}, format="json")
    assert shared.status_code == 201 and shared.json()["kind"] == "share"
    assert outsider_api.get("/api/v1/models/acme/inhouse/versions").status_code == 200
    assert outsider_api.get("/api/v1/catalogue/acme/inhouse").status_code == 200
    assert can(outsider, "run", model)
    holders = api.get("/api/v1/models/acme/inhouse/entitlements").json()["results"]
    assert [(h["tenant"], h["kind"]) for h in holders] == [("globex", "share")]

    unshared = api.delete("/api/v1/models/acme/inhouse/shares", {"tenant": "globex"}, format="json")
    after = outsider_api.get("/api/v1/models/acme/inhouse/versions")
    assert unshared.status_code == 204
    assert after.status_code == 404
    assert not can(outsider, "view", model)
    assert outsider_api.get("/api/v1/catalogue/acme/inhouse").status_code == 404
    actions = set(AuditEvent.objects.filter(tenant=tenant).values_list("action", flat=True))
    assert {"model.share", "entitlement.revoke"} <= actions


def test_private_model_answers_the_catalogue_as_a_missing_one_does(tenant, outsider_api):
    """Found by the reliability suite's isolation sweep: "No listing" for a private model
    but "No model" for a missing one told an outsider which names exist."""
    make_model(tenant, "inhouse")

    private = outsider_api.get("/api/v1/catalogue/acme/inhouse")
    missing = outsider_api.get("/api/v1/catalogue/acme/nothing")

    assert private.status_code == missing.status_code == 404
    assert private.json()["detail"] == "No listing acme/inhouse."
    assert missing.json()["detail"] == "No listing acme/nothing."


@pytest.mark.parametrize(
    "slug, message", [("nobody", "no organisation"), ("acme", "already belongs")]
)
def test_sharing_needs_another_existing_organisation(api, tenant, slug, message):
    make_model(tenant, "inhouse")

    response = api.post("/api/v1/models/acme/inhouse/shares", {"tenant": slug}, format="json")

    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert not Entitlement.objects.exists()


# --- download grants --------------------------------------------------------------------------


def test_only_the_publisher_can_let_a_consumer_download(api, tenant, outsider, outsider_api):
    model = listed(tenant, "resnet")
    entitlement = outsider_api.post("/api/v1/catalogue/acme/resnet/subscribe").json()["id"]
    url = f"/api/v1/models/acme/resnet/entitlements/{entitlement}/download"

    self_granted = outsider_api.post(url)
    assert self_granted.status_code == 403
    assert not can(outsider, "download", model)

    granted = api.post(url)
    assert granted.status_code == 200 and granted.json()["can_download"] is True
    assert can(outsider, "download", model)

    withdrawn = api.delete(url)
    assert withdrawn.status_code == 200 and withdrawn.json()["can_download"] is False
    assert not can(outsider, "download", model)
    assert can(outsider, "run", model)
    actions = list(
        AuditEvent.objects.filter(tenant=tenant, action__startswith="entitlement.")
        .order_by("pk")
        .values_list("action", flat=True)
    )
    assert actions == ["entitlement.download_grant", "entitlement.download_revoke"]


def test_the_weights_download_to_the_publisher_and_to_a_granted_subscriber_only(
    api, tenant, outsider, outsider_api, initech_api
):
    import hashlib

    model = listed(tenant, "resnet")
    ready_version(model)
    url = "/api/v1/models/acme/resnet/versions/1/download"
    entitlement = outsider_api.post("/api/v1/catalogue/acme/resnet/subscribe").json()["id"]

    not_granted = outsider_api.get(url)
    api.post(f"/api/v1/models/acme/resnet/entitlements/{entitlement}/download")
    granted = outsider_api.get(url)
    own = api.get(url)
    stranger = initech_api.get(url)

    assert not_granted.status_code == 403
    assert stranger.status_code == 403  # a public model: seen, not downloadable
    body = b"".join(granted.streaming_content)
    assert body == b"not really weights" == b"".join(own.streaming_content)
    assert granted["X-Content-SHA256"] == hashlib.sha256(body).hexdigest()
    assert granted["Content-Length"] == str(len(body))
    assert 'filename="acme-resnet-v1.pt2"' in granted["Content-Disposition"]
    downloads = AuditEvent.objects.filter(action="artifact.decrypt", data__purpose="download")
    assert downloads.count() == 2


def test_the_publishers_own_readers_see_its_versions_but_do_not_download_the_weights(tenant):
    model = listed(tenant, "resnet")
    ready_version(model)
    reader = key_client(tenant, scopes=["models:read"])  # what a viewer or billing member holds
    writer = key_client(tenant, scopes=["models:read", "models:write"])
    url = "/api/v1/models/acme/resnet/versions/1"

    seen = reader.get(url)
    refused = reader.get(f"{url}/download")
    allowed = writer.get(f"{url}/download")

    assert seen.status_code == 200
    assert refused.status_code == 403 and "'models:write' scope" in refused.json()["detail"]
    assert allowed.status_code == 200
    assert b"".join(allowed.streaming_content) == b"not really weights"


def test_a_private_model_downloads_to_nobody_else_and_a_failed_version_to_no_one(
    api, tenant, outsider_api
):
    model = make_model(tenant, "inhouse")
    ready_version(model)
    ready_version(model, number=2, status="failed")

    assert outsider_api.get("/api/v1/models/acme/inhouse/versions/1/download").status_code == 404
    failed = api.get("/api/v1/models/acme/inhouse/versions/2/download")
    assert failed.status_code == 409 and "nothing to download" in failed.json()["detail"]


def test_a_model_taken_down_leaves_its_subscribers_lists_not_its_publishers(
    api, tenant, outsider, outsider_api
):
    listed(tenant, "resnet")
    listed(tenant, "bert")
    outsider_api.post("/api/v1/catalogue/acme/resnet/subscribe")
    outsider_api.post("/api/v1/catalogue/acme/bert/subscribe")
    listings.listing_take_down(
        listing=Listing.objects.get(model__name="resnet"), reason="DMCA", actor=accounts.SYSTEM
    )

    theirs = [m["name"] for m in outsider_api.get("/api/v1/models").json()["results"]]
    own = [m["name"] for m in api.get("/api/v1/models").json()["results"]]

    assert theirs == ["bert"]  # resnet answers 451 now; its entitlement stays for a restore
    assert sorted(own) == ["bert", "resnet"]


def test_unsubscribing_also_drops_a_download_grant(api, tenant, outsider, outsider_api):
    model = listed(tenant, "resnet")
    entitlement = outsider_api.post("/api/v1/catalogue/acme/resnet/subscribe").json()["id"]
    api.post(f"/api/v1/models/acme/resnet/entitlements/{entitlement}/download")

    outsider_api.delete(f"/api/v1/subscriptions/{entitlement}")
    outsider_api.post("/api/v1/catalogue/acme/resnet/subscribe")

    assert not can(outsider, "download", model)


# --- publishing rules -------------------------------------------------------------------------


def test_republishing_updates_the_listing_and_audits_price_changes(api, tenant, settings):
    make_model(tenant, "resnet")
    publish(api, "acme/resnet", price_per_call="0.001")
    settings.PLATFORM_FEE_PERCENT = "30"

    updated = api.put(
        "/api/v1/models/acme/resnet/listing",
        {"price_per_call": "0.0015", "summary": "Faster now."},
        format="json",
    )

    assert updated.status_code == 200
    body = updated.json()
    assert body["price_per_call"] == "0.001500"
    assert body["summary"] == "Faster now." and body["title"] == "Resnet"  # others kept
    assert body["platform_fee_percent"] == "20.00"  # the terms it was listed under
    change = AuditEvent.objects.get(tenant=tenant, action="listing.price_change")
    assert change.data["from"]["price_per_call"] == "0.001000"
    assert change.data["to"]["price_per_call"] == "0.001500"


def test_publishing_needs_the_admin_scope(tenant):
    make_model(tenant, "resnet")
    developer = key_client(tenant, scopes=[Scope.MODELS_READ, Scope.MODELS_WRITE])

    response = publish(developer, "acme/resnet")

    assert response.status_code == 403
    assert not Listing.objects.exists()


def test_unpublishing_makes_the_listing_private_and_keeps_subscribers(
    api, tenant, outsider, outsider_api
):
    model = listed(tenant, "resnet")
    outsider_api.post("/api/v1/catalogue/acme/resnet/subscribe")

    response = api.delete("/api/v1/models/acme/resnet/listing")

    assert response.status_code == 204
    assert api.get("/api/v1/models/acme/resnet/listing").json()["visibility"] == "private"
    assert refs(APIClient().get("/api/v1/catalogue")) == []
    assert APIClient().get("/api/v1/catalogue/acme/resnet").status_code == 404
    assert can(outsider, "run", model)  # existing consumers keep working until revoked


def test_reading_an_unlisted_model_listing_says_how_to_publish(api, tenant):
    make_model(tenant, "resnet")

    response = api.get("/api/v1/models/acme/resnet/listing")

    assert response.status_code == 404
    assert "PUT" in response.json()["detail"]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("license", "WTFPL-ish", "MIT, Apache-2.0"),
        ("license", "LicenseRef-", "SPDX"),
        ("price_per_call", "-1", "cannot be negative"),
        ("price_per_second", "0.0000001", "at most 6 decimal places"),
        ("price_per_call", "1e-999999999", "at most 6 decimal places"),
        ("price_per_call", "1000000", "below"),
        ("price_per_call", "cheap", "valid number"),
        ("currency", "xyz", "'xyz' is not a currency we bill in"),
        ("currency", "kwd", "one of: aed, aud,"),  # three decimals: Stripe rounds them
        ("tags", ["Bad Tag!"], "is not a tag"),
        ("tags", [f"t{i}" for i in range(21)], "at most 20 tags"),
        ("visibility", "secret", "not a valid choice"),
        ("free_calls_per_month", -5, "greater than or equal to 0"),
        ("colour", "blue", "Unknown field"),
    ],
)
def test_bad_listing_input_is_refused_with_a_reason(api, tenant, field, value, message):
    make_model(tenant, "resnet")

    response = publish(api, "acme/resnet", **{field: value})

    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert field in response.json()["errors"]
    assert not Listing.objects.exists()


def test_a_currency_is_taken_in_any_case_and_stored_as_stripe_takes_it(api, tenant):
    make_model(tenant, "a")
    make_model(tenant, "b")

    assert publish(api, "acme/a", currency="JPY").json()["currency"] == "jpy"
    assert publish(api, "acme/b", currency=" eur ").json()["currency"] == "eur"


def test_licence_refs_and_proprietary_are_accepted(api, tenant):
    make_model(tenant, "a")
    make_model(tenant, "b")

    assert publish(api, "acme/a", license="LicenseRef-Acme-1.0").json()["license"] == (
        "LicenseRef-Acme-1.0"
    )
    assert publish(api, "acme/b", license="proprietary").json()["license"] == "proprietary"


def test_scripts_handlers_and_javascript_links_are_stripped_from_the_card(api, tenant):
    make_model(tenant, "resnet")
    card = (
        "# Card\n\n<script>alert('pwned-1')</script>\n\n"
        '<img src="https://example.com/plot.png" alt="plot" onerror="steal()">\n\n'
        "[docs](javascript:steal()) and [paper](https://arxiv.org/abs/1512.03385)\n\n"
        "<style>body{display:none}</style><iframe src='https://evil.example'></iframe>"
    )

    html = publish(api, "acme/resnet", card_markdown=card).json()["card_html"]

    for bad in ("<script", "pwned", "onerror", "<style", "<iframe"):
        assert bad not in html
    # The refused link stays as its text, "[docs](javascript:steal())": inert.
    assert not re.search(r"""=\s*["']?\s*javascript:""", html)
    assert '<img src="https://example.com/plot.png" alt="plot">' in html
    assert (
        '<a href="https://arxiv.org/abs/1512.03385" rel="noopener noreferrer nofollow">paper</a>'
        in html
    )


def test_a_cards_images_on_other_hosts_are_links_and_its_own_stay_images(api, tenant):
    """Viewers' browsers fetched a card's images from wherever the publisher pointed them."""
    make_model(tenant, "resnet")
    card = (
        "![plot](https://stats.example/plot.png) ![logo](/static/logo.png)\n\n"
        "[![build](https://ci.example/badge.svg)](https://ci.example/acme)"
    )

    html = publish(api, "acme/resnet", card_markdown=card).json()["card_html"]

    assert (
        '<a href="https://stats.example/plot.png" title="Image on stats.example" '
        'rel="noopener noreferrer nofollow">Image: plot</a>'
    ) in html
    assert '<img src="/static/logo.png" alt="logo">' in html
    # A badge inside a link keeps its text (a link cannot hold another).
    assert '<a href="https://ci.example/acme" rel="noopener noreferrer nofollow">build</a>' in html
    assert "ci.example/badge.svg" not in html


def test_a_card_of_brackets_at_the_size_limit_renders_at_once(api, tenant):
    """Python-Markdown took time growing with the square of a run of "[" (15 s for 8,000):
    anyone could hold a web thread for most of an hour with one card within the limit."""
    make_model(tenant, "resnet")
    card = "[" * 50_000 + "![" * 25_000

    published = publish(api, "acme/resnet", card_markdown=card)

    assert published.status_code == 201, published.json()
    assert published.json()["card_html"].count("[") == 75_000


def test_a_card_keeps_its_tables_and_code(api, tenant):
    make_model(tenant, "resnet")
    card = "| k | top-1 |\n| --- | --- |\n| 5 | 76% |\n\n```\nmm push\n```\n\n~~old~~"

    html = publish(api, "acme/resnet", card_markdown=card).json()["card_html"]

    assert "<table>" in html and "<td>76%</td>" in html
    assert "<pre><code>mm push\n</code></pre>" in html and "<s>old</s>" in html


# --- the catalogue ----------------------------------------------------------------------------


@pytest.fixture
def shelf(tenant, outsider, initech):
    """Three public listings published a day apart, and some that must never show."""
    resnet = listed(
        tenant,
        "resnet",
        title="ResNet",
        task=Task.IMAGE_CLASSIFICATION,
        license="MIT",
        tags=["vision", "imagenet"],
    )
    bert = listed(
        tenant,
        "bert",
        title="BERT",
        task=Task.TEXT_CLASSIFICATION,
        license="Apache-2.0",
        tags=["nlp"],
        price_per_call="0.002",
        description="Sentiment from text.",
    )
    tabnet = listed(
        outsider,
        "tabnet",
        title="TabNet",
        task=Task.TABULAR_CLASSIFICATION,
        license="MIT",
        tags=["tabular"],
        price_per_call="0.0005",
    )
    listed(tenant, "inhouse", visibility="private")
    listed(tenant, "preview", visibility="unlisted")
    taken_down = listed(tenant, "banned")
    Listing.objects.filter(model=taken_down).update(taken_down_at=timezone.now())
    now = timezone.now()
    for days, model in enumerate([tabnet, bert, resnet]):
        Listing.objects.filter(model=model).update(published_at=now - timedelta(days=days))
    # resnet is the most used (two subscribers), then tabnet (one). bert's private shares
    # do not count: anyone could have read how many organisations it is shared with.
    for consumer in ("globex", "initech"):
        subscribe(resnet, consumer)
        share_with(bert, consumer)
    subscribe(tabnet, "initech")
    return {"resnet": resnet, "bert": bert, "tabnet": tabnet}


def subscribe(model: Model, slug: str) -> None:
    listings.listing_subscribe(
        listing=model.listing, tenant=Tenant.objects.get(slug=slug), actor=accounts.SYSTEM
    )


def share_with(model: Model, slug: str) -> None:
    listings.model_share(model=model, tenant_slug=slug, actor=accounts.SYSTEM)


@pytest.mark.parametrize(
    "params, expected",
    [
        ({}, ["globex/tabnet", "acme/bert", "acme/resnet"]),
        ({"q": "sentiment"}, ["acme/bert"]),
        ({"q": "VISION"}, ["acme/resnet"]),
        ({"q": "net"}, ["globex/tabnet", "acme/resnet"]),
        ({"q": "imagenet"}, ["acme/resnet"]),  # a tag
        # Punctuation of the tags' JSON text is not a match ('"' was every tagged listing).
        ({"q": '"'}, []),
        ({"q": "vision,"}, []),
        ({"task": "text-classification"}, ["acme/bert"]),
        ({"license": "mit"}, ["globex/tabnet", "acme/resnet"]),
        ({"publisher": "globex"}, ["globex/tabnet"]),
        ({"tag": "nlp"}, ["acme/bert"]),
        ({"max_price_per_call": "0.001"}, ["globex/tabnet", "acme/resnet"]),
        ({"free": "true"}, ["acme/resnet"]),
        ({"sort": "price"}, ["acme/resnet", "globex/tabnet", "acme/bert"]),
        ({"sort": "most_used"}, ["acme/resnet", "globex/tabnet", "acme/bert"]),
        ({"sort": "newest", "license": "MIT", "q": "tab"}, ["globex/tabnet"]),
    ],
)
def test_catalogue_search_filters_and_sorts_public_listings(shelf, params, expected):
    assert refs(APIClient().get("/api/v1/catalogue", params)) == expected


def test_a_draft_made_public_is_the_newest_as_of_then(api, tenant):
    """Its date was the draft's: a listing made public sorted below one published after the
    draft was created, and its page said it was published before it was."""
    make_model(tenant, "draft")
    make_model(tenant, "later")
    publish(api, "acme/draft", visibility="private")
    Listing.objects.filter(model__name="draft").update(
        published_at=timezone.now() - timedelta(days=3)
    )
    publish(api, "acme/later")

    made_public = publish(api, "acme/draft", visibility="public").json()

    assert refs(APIClient().get("/api/v1/catalogue")) == ["acme/draft", "acme/later"]
    assert made_public["published_at"][:10] == timezone.now().isoformat()[:10]  # not 3 days ago


def test_a_price_of_minus_zero_is_zero(api, tenant):
    make_model(tenant, "m")

    listing = publish(api, "acme/m", price_per_call="-0").json()

    assert listing["price_per_call"] == "0.000000"
    event = AuditEvent.objects.get(action="listing.publish")
    assert event.data["price_per_call"] == "0.000000"


def test_catalogue_prices_compare_within_a_currency(tenant, outsider):
    listed(tenant, "cheap-usd", price_per_call="0.5", currency="usd")
    listed(outsider, "dear-eur", price_per_call="2", currency="eur")
    listed(tenant, "cheap-eur", price_per_call="1", currency="eur")
    client = APIClient()

    by_price = client.get("/api/v1/catalogue", {"sort": "price"})
    under = client.get("/api/v1/catalogue", {"currency": "EUR", "max_price_per_call": "1.5"})
    wrong = client.get("/api/v1/catalogue", {"currency": "xyz"})

    # Grouped by currency, cheapest first in each: 0.5 USD is not "cheaper" than 1 EUR.
    assert refs(by_price) == ["acme/cheap-eur", "globex/dear-eur", "acme/cheap-usd"]
    assert refs(under) == ["acme/cheap-eur"]
    assert wrong.status_code == 400
    assert "not a currency we bill in" in wrong.json()["errors"]["currency"][0]


def test_a_tag_filter_that_is_not_a_tag_is_refused_not_matched_across_tags(shelf):
    response = APIClient().get("/api/v1/catalogue", {"tag": 'vision","imagenet'})

    assert response.status_code == 400
    assert "is not a tag" in response.json()["errors"]["tag"][0]


def test_catalogue_pages_through_results(shelf, outsider_api):
    first = outsider_api.get("/api/v1/catalogue", {"page_size": 2}).json()
    second = outsider_api.get(first["next"]).json()

    assert first["count"] == 3
    assert [r["ref"] for r in first["results"]] == ["globex/tabnet", "acme/bert"]
    assert [r["ref"] for r in second["results"]] == ["acme/resnet"]
    assert first["results"][1]["price_per_call"] == "0.002000"
    assert first["results"][1]["url"] == "/catalogue/acme/bert/"


@pytest.mark.parametrize(
    "params, past_last",
    [({"page": p}, False) for p in ("abc", "0", "-1", "1.5", "²", "9" * 5000)]
    + [({"page_size": p}, False) for p in ("abc", "0", "-1", "")]
    + [({"page": "3", "page_size": "2"}, True)],
)
def test_a_bad_catalogue_page_is_a_400_naming_it(shelf, params, past_last):
    """``page=abc`` and a page past the last were 404 "not_found" (a client reads: no such
    endpoint), and a bad ``page_size`` was ignored."""
    response = APIClient().get("/api/v1/catalogue", params)

    assert response.status_code == 400, response.json()
    name = "page" if "page" in params else "page_size"
    assert name in response.json()["errors"]
    if past_last:
        assert "Page 3 is past the last page (2)." in response.json()["detail"]
    huge = APIClient().get("/api/v1/catalogue", {"page_size": "1000000000"}).json()
    assert len(huge["results"]) == 3  # at most 100, as the schema says
    last = APIClient().get("/api/v1/catalogue", {"page": "last", "page_size": "2"})
    assert last.status_code == 200 and len(last.json()["results"]) == 1


@pytest.mark.parametrize(
    "params", [{"sort": "popular"}, {"max_price_per_call": "-1"}, {"task": "poetry"}]
)
def test_bad_catalogue_query_is_a_400(params):
    response = APIClient().get("/api/v1/catalogue", params)

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"


@pytest.mark.postgres
@pytest.mark.parametrize(
    "value, message",
    [
        ("1e999999", "no more than 12 digits"),
        ("1e-999999", "no more than 12 digits"),
        ("0.0000001", "no more than 6 decimal places"),
    ],
)
def test_a_catalogue_price_filter_finer_than_any_price_is_a_400_saying_so(value, message):
    """As the catalogue page's form says: prices have 12 digits, 6 after the point. The first
    two PostgreSQL cannot hold as numbers at all: the filter was a 500 there."""
    response = APIClient().get("/api/v1/catalogue", {"max_price_per_call": value})

    assert response.status_code == 400
    assert message in response.json()["detail"]


def test_signed_out_callers_see_public_and_unlisted_listings_only(shelf):
    anonymous = APIClient()

    assert anonymous.get("/api/v1/catalogue/acme/resnet").status_code == 200
    assert anonymous.get("/api/v1/catalogue/acme/preview").status_code == 200
    assert anonymous.get("/api/v1/catalogue/acme/inhouse").status_code == 404
    assert anonymous.get("/api/v1/catalogue/acme/banned").status_code == 451  # taken down
    assert anonymous.get("/api/v1/catalogue/acme/nothing").status_code == 404
    assert anonymous.post("/api/v1/catalogue/acme/resnet/subscribe").status_code == 401


def test_a_bad_key_is_refused_even_on_the_public_catalogue():
    anonymous = APIClient()
    anonymous.credentials(HTTP_AUTHORIZATION="Bearer mm_live_nope")

    assert anonymous.get("/api/v1/catalogue").status_code == 401


def test_new_endpoints_are_in_the_openapi_schema():
    schema = APIClient().get("/api/schema/", {"format": "json"}).json()

    for path in [
        "/api/v1/catalogue",
        "/api/v1/catalogue/{owner}/{name}",
        "/api/v1/catalogue/{owner}/{name}/subscribe",
        "/api/v1/catalogue/{owner}/{name}/request-access",
        "/api/v1/subscriptions",
        "/api/v1/subscriptions/{id}",
        "/api/v1/models/{owner}/{name}/listing",
        "/api/v1/models/{owner}/{name}/access-requests",
        "/api/v1/access-requests/{id}/approve",
        "/api/v1/access-requests/{id}/decline",
        "/api/v1/models/{owner}/{name}/shares",
        "/api/v1/models/{owner}/{name}/entitlements",
        "/api/v1/models/{owner}/{name}/entitlements/{id}/download",
    ]:
        assert path in schema["paths"], path


# --- the outsider matrix ----------------------------------------------------------------------


@pytest.fixture
def acme_ids(tenant, initech):
    """acme's private model shared with initech, and initech's pending request to acme's
    gated one: what globex, the outsider, will try to reach."""
    secret = listed(tenant, "secret", visibility="private")
    listed(tenant, "gated", gated=True)
    share = (
        key_client(tenant)
        .post("/api/v1/models/acme/secret/shares", {"tenant": "initech"}, format="json")
        .json()["id"]
    )
    request = key_client(initech).post("/api/v1/catalogue/acme/gated/request-access").json()["id"]
    return {"model": secret, "share": share, "request": request}


SECRET = "/api/v1/models/acme/secret"


@pytest.mark.parametrize(
    "method, url, body",
    [
        ("get", f"{SECRET}/listing", None),
        ("put", f"{SECRET}/listing", {"visibility": "public"}),
        ("delete", f"{SECRET}/listing", None),
        ("get", "/api/v1/catalogue/acme/secret", None),
        ("post", "/api/v1/catalogue/acme/secret/subscribe", None),
        ("post", "/api/v1/catalogue/acme/secret/request-access", {}),
        ("get", "/api/v1/subscriptions/{share}", None),
        ("delete", "/api/v1/subscriptions/{share}", None),
        ("get", f"{SECRET}/access-requests", None),
        ("post", "/api/v1/access-requests/{request}/approve", None),
        ("post", "/api/v1/access-requests/{request}/decline", None),
        ("post", f"{SECRET}/shares", {"tenant": "globex"}),
        ("delete", f"{SECRET}/shares", {"tenant": "initech"}),
        ("get", f"{SECRET}/entitlements", None),
        ("delete", f"{SECRET}/entitlements/{{share}}", None),
        ("post", f"{SECRET}/entitlements/{{share}}/download", None),
        ("delete", f"{SECRET}/entitlements/{{share}}/download", None),
    ],
)
def test_outsider_gets_404_and_changes_nothing(
    outsider, outsider_api, acme_ids, initech, method, url, body
):
    before = AuditEvent.objects.count()

    response = getattr(outsider_api, method)(url.format(**acme_ids), body, format="json")

    assert response.status_code == 404, response.json()
    assert AuditEvent.objects.count() == before
    share = Entitlement.objects.get(public_id=acme_ids["share"])
    assert share.revoked_at is None and share.can_download is False
    assert AccessRequest.objects.get(public_id=acme_ids["request"]).status == "pending"
    assert not Entitlement.objects.filter(tenant=outsider).exists()
    assert Listing.objects.get(model=acme_ids["model"]).visibility == "private"
    assert can(initech, "run", acme_ids["model"]) and not can(outsider, "view", acme_ids["model"])


def test_outsider_lists_show_nothing_of_other_organisations(outsider_api, acme_ids):
    subscriptions = outsider_api.get("/api/v1/subscriptions").json()
    catalogue = outsider_api.get("/api/v1/catalogue").json()

    assert subscriptions["results"] == []
    assert [r["ref"] for r in catalogue["results"]] == ["acme/gated"]
    assert acme_ids["share"] not in str(catalogue)


def test_publisher_only_endpoints_on_a_public_model_answer_403_to_others(tenant, outsider_api):
    listed(tenant, "resnet")
    before = AuditEvent.objects.count()

    responses = [
        outsider_api.put(
            "/api/v1/models/acme/resnet/listing", {"price_per_call": "9"}, format="json"
        ),
        outsider_api.delete("/api/v1/models/acme/resnet/listing"),
        outsider_api.get("/api/v1/models/acme/resnet/access-requests"),
        outsider_api.get("/api/v1/models/acme/resnet/entitlements"),
        outsider_api.post("/api/v1/models/acme/resnet/shares", {"tenant": "globex"}, format="json"),
    ]

    assert [r.status_code for r in responses] == [403] * 5
    assert AuditEvent.objects.count() == before
    assert Listing.objects.get(model__name="resnet").price_per_call == Decimal(0)


def test_an_example_input_over_a_mebibyte_is_a_400_and_the_listing_keeps_its_own(api, tenant):
    # It is shown on every catalogue and playground view: 10 MiB of JSON went out with each.
    make_model(tenant, "resnet")
    assert publish(api, "acme/resnet", example_input={"x": [[1, 2]]}).status_code in (200, 201)

    huge = publish(api, "acme/resnet", example_input={"x": [[0.5] * 300_000]})

    assert huge.status_code == 400
    assert "An example input is at most 1048576 bytes of JSON" in huge.json()["detail"]
    assert Listing.objects.get().example_input == {"x": [[1, 2]]}


def test_an_example_input_nested_past_any_tensor_is_a_400_and_old_ones_still_render(api, tenant):
    # The catalogue page lays the example out row by row, recursively: one nested a few
    # hundred deep (the JSON parser takes it) was a 500 on the listing's public page.
    model = make_model(tenant, "resnet")
    deep = json.loads("[" * 300 + "1" + "]" * 300)

    refused = publish(api, "acme/resnet", example_input={"x": deep})
    assert refused.status_code == 400
    assert "nests at most 40 lists and objects deep" in refused.json()["detail"]

    assert publish(api, "acme/resnet").status_code in (200, 201)
    Listing.objects.filter(model=model).update(example_input={"x": deep})  # stored before
    page = Client().get("/catalogue/acme/resnet/")
    assert page.status_code == 200 and "[[[[" in page.content.decode()


def test_an_example_input_is_kept_when_left_out_and_removed_by_null(api, tenant):
    make_model(tenant, "resnet")
    publish(api, "acme/resnet", example_input={"x": [[1, 2]]})

    kept = publish(api, "acme/resnet", title="Renamed")
    kept_value = Listing.objects.get().example_input
    removed = publish(api, "acme/resnet", example_input=None)

    assert kept.status_code == 200 and kept_value == {"x": [[1, 2]]}
    assert removed.status_code == 200 and removed.json()["example_input"] is None
    assert Listing.objects.get().example_input is None


def test_a_head_of_a_download_gives_its_size_and_checksum_and_is_not_audited_as_one(tenant):
    """A client asking the size first was logged as having downloaded the weights."""
    from accounts.models import AuditEvent

    model = listed(tenant, "resnet")
    version = ready_version(model)
    writer = key_client(tenant, scopes=["models:read", "models:write"])
    url = "/api/v1/models/acme/resnet/versions/1/download"

    head = writer.head(url)

    assert head.status_code == 200 and head.content == b""
    assert head["Content-Length"] == str(version.artifact.size)
    assert head["X-Content-SHA256"] == version.artifact.sha256
    assert not AuditEvent.objects.filter(action="artifact.decrypt").exists()
    got = writer.get(url)
    assert b"".join(got.streaming_content) == b"not really weights"
    assert AuditEvent.objects.filter(action="artifact.decrypt").count() == 1
