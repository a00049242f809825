"""A publisher's decisions about one consumer landing at once: on PostgreSQL a download grant
and a revocation overlap, and the revocation must take every right with it."""

from __future__ import annotations

import pytest

from accounts import services as accounts
from accounts.exceptions import Conflict, Forbidden
from marketplace import listings
from marketplace.models import AccessRequest, Entitlement
from tests.marketplace.test_listings import can, listed
from tests.races import race

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_a_download_grant_racing_a_revocation_leaves_no_right_to_download(
    monkeypatch, tenant, outsider
):
    model = listed(tenant, "resnet")
    listings.listing_subscribe(listing=model.listing, tenant=outsider, actor=accounts.SYSTEM)
    read_by_the_grant = Entitlement.objects.select_related("tenant__group", "model__tenant").get()

    granted, _ = race(
        monkeypatch,
        pause_before=(listings, "download_grant"),  # the entitlement read, nothing written
        first=lambda: listings.download_grant(entitlement=read_by_the_grant, actor=accounts.SYSTEM),
        second=lambda: listings.entitlement_revoke(
            entitlement=Entitlement.objects.get(), actor=accounts.SYSTEM
        ),
    )

    assert not can(outsider, "download", model), "downloads after revocation"
    assert isinstance(granted, Conflict), granted
    assert not can(outsider, "download", model)
    listings.listing_subscribe(listing=model.listing, tenant=outsider, actor=accounts.SYSTEM)
    assert can(outsider, "run", model) and not can(outsider, "download", model)


def test_an_approval_racing_a_revocation_leaves_no_way_back_in(monkeypatch, tenant, outsider):
    model = listed(tenant, "medsam", gated=True)
    listings.model_share(model=model, tenant_slug=outsider.slug, actor=accounts.SYSTEM)
    request = listings.access_request_create(
        listing=model.listing, tenant=outsider, actor=accounts.SYSTEM
    )

    approved, _ = race(
        monkeypatch,
        pause_before=(listings, "audit_record"),  # approved, the live share found, not committed
        first=lambda: listings.access_request_approve(
            request=AccessRequest.objects.get(), actor=accounts.SYSTEM
        ),
        second=lambda: listings.entitlement_revoke(
            entitlement=Entitlement.objects.get(), actor=accounts.SYSTEM
        ),
    )

    assert approved == request, approved
    assert not can(outsider, "run", model)
    with pytest.raises(Forbidden):
        listings.listing_subscribe(listing=model.listing, tenant=outsider, actor=accounts.SYSTEM)
    assert not can(outsider, "run", model), "runs the model again after its revocation"


def test_a_decline_racing_an_approval_says_the_request_was_approved(monkeypatch, tenant, outsider):
    model = listed(tenant, "medsam", gated=True)
    listings.access_request_create(listing=model.listing, tenant=outsider, actor=accounts.SYSTEM)

    _, declined = race(
        monkeypatch,
        pause_before=(listings, "audit_record"),  # approved and subscribed, not committed
        first=lambda: listings.access_request_approve(
            request=AccessRequest.objects.get(), actor=accounts.SYSTEM
        ),
        second=lambda: listings.access_request_decline(
            request=AccessRequest.objects.get(), actor=accounts.SYSTEM
        ),
    )

    assert isinstance(declined, Conflict), declined
    assert str(declined) == "This request was already approved."
    assert can(outsider, "run", model)


def test_two_first_publishes_of_a_model_at_once_make_one_listing(monkeypatch, tenant):
    """A double-clicked Publish or a retried PUT: both found no listing and made one; the
    second was a 500 on the listing's unique model."""
    from marketplace import services as registry
    from marketplace.models import Listing

    model = registry.model_create(tenant=tenant, name="resnet", actor=accounts.SYSTEM)

    def publish(title: str):
        return lambda: listings.listing_publish(
            model=model, actor=accounts.SYSTEM, visibility="public", title=title
        )

    first, second = race(
        monkeypatch,
        pause_before=(listings, "platform_fee_percent"),  # no listing found, about to make one
        first=publish("First"),
        second=publish("Second"),
    )

    assert isinstance(first, Listing) and isinstance(second, Listing), (first, second)
    assert Listing.objects.get().pk == first.pk == second.pk
