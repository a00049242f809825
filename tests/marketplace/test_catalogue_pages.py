"""The catalogue pages as visitors see them: browsing signed out, searching, reading a
listing, and subscribing or asking for access with the buttons."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from accounts import services as accounts
from accounts.models import Role
from marketplace import listings
from marketplace.models import AccessRequest, Entitlement, Task
from tests.conftest import make_user
from tests.marketplace.test_listings import listed, ready_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def charlie_client(charlie, outsider) -> Client:
    client = Client()
    client.force_login(charlie)
    return client


@pytest.fixture
def alice_client(alice, tenant) -> Client:
    client = Client()
    client.force_login(alice)
    return client


@pytest.fixture
def shop(tenant):
    resnet = listed(
        tenant,
        "resnet",
        title="ResNet-50",
        summary="Classifies photos.",
        task=Task.IMAGE_CLASSIFICATION,
        license="MIT",
        tags=["vision"],
        card_markdown="# ResNet\n\nTrained on **ImageNet**.",
    )
    listed(
        tenant,
        "bert",
        title="BERT sentiment",
        task=Task.TEXT_CLASSIFICATION,
        license="Apache-2.0",
        price_per_call="0.0005",
        price_per_second="0.01",
        free_calls_per_month=1000,
        tags=["nlp"],
    )
    listed(tenant, "medsam", title="MedSAM", gated=True)
    listed(tenant, "inhouse", title="In-house secret", visibility="private")
    listed(tenant, "preview", title="Preview build", visibility="unlisted")
    return {"resnet": resnet}


def test_a_listing_billed_per_second_says_so_on_its_card(client, tenant):
    """It read "0.00 USD per call", and nothing of its price per compute-second."""
    listed(tenant, "timed", title="Timed", price_per_call="0", price_per_second="2.5")
    listed(tenant, "both", title="Both", price_per_call="0.01", price_per_second="0.5")

    html = page(client, "/catalogue/")

    assert "2.50 USD per compute-second" in html and "0.00 USD per call" not in html
    assert "0.01 USD per call + 0.50 USD per compute-second" in html


def page(client: Client, url: str, **params) -> str:
    response = client.get(url, params)
    assert response.status_code == 200
    return response.content.decode()


# --- signed out -------------------------------------------------------------------------------


def test_signed_out_visitor_browses_public_listings(client, shop):
    html = page(client, "/catalogue/")

    assert "ResNet-50" in html and "BERT sentiment" in html and "MedSAM" in html
    assert "In-house secret" not in html and "Preview build" not in html
    assert "0.0005 USD per call" in html
    assert 'href="/catalogue/acme/resnet/"' in html


def test_signed_out_visitor_reads_a_listing_and_is_asked_to_sign_in(client, shop):
    ready_version(shop["resnet"], number=1)
    ready_version(shop["resnet"], number=2, status="validating")

    html = page(client, "/catalogue/acme/resnet/")

    assert "<h1>ResNet</h1>" in html and "<strong>ImageNet</strong>" in html
    assert "Sign in to subscribe" in html
    assert "/login/?next=/catalogue/acme/resnet/" in html
    assert "MIT" in html and "Image classification" in html
    assert "torch.export archive" in html  # version 1 is ready
    assert "<td>2" not in html  # version 2 is still validating


def test_private_listing_is_404_signed_out_and_unlisted_opens_by_link(client, shop):
    assert client.get("/catalogue/acme/inhouse/").status_code == 404
    assert client.get("/catalogue/acme/nothing/").status_code == 404
    assert "Preview build" in page(client, "/catalogue/acme/preview/")


def test_price_table_shows_every_price(client, shop):
    html = page(client, "/catalogue/acme/bert/")

    assert "<th>Per call</th><td>0.0005 USD</td>" in html
    assert "<th>Per compute-second</th><td>0.01 USD</td>" in html
    assert "<th>Free calls per month</th><td>1000</td>" in html


def test_free_listing_reads_free_in_its_price_table(client, shop):
    html = page(client, "/catalogue/acme/resnet/")

    assert "<th>Price</th><td>Free</td>" in html
    assert "0 USD" not in html and "Free calls per month" not in html


def test_amounts_show_the_currencys_minor_digits_as_on_the_billing_page(client, tenant):
    listed(tenant, "clf", title="Classifier", price_per_call="0.8")

    card = page(client, "/catalogue/")
    html = page(client, "/catalogue/acme/clf/")

    assert "0.80 USD per call" in card
    assert "<th>Per call</th><td>0.80 USD</td>" in html
    assert "<th>Per compute-second</th><td>0.00 USD</td>" in html
    assert "Free calls per month" not in html  # none: nothing to say


def test_paid_listing_asks_for_a_payment_method_only_where_calls_need_one(
    charlie_client, shop, settings
):
    settings.PAYMENT_METHOD_REQUIRED = True  # as with Stripe configured
    required = page(charlie_client, "/catalogue/acme/bert/")
    settings.PAYMENT_METHOD_REQUIRED = False  # no Stripe: paid calls go to the ledger
    not_required = page(charlie_client, "/catalogue/acme/bert/")

    assert "calls need a payment method" in required
    assert "Billed per call and compute-second" in not_required
    assert "payment method" not in not_required


def test_example_input_shows_an_images_rows_one_per_line(client, tenant):
    # indent=2 put every number on a line of its own: the demo's 28×28 stroke was 800 lines
    # in a scroll box, unreadable as a picture.
    rows = [[0, 1, 0], [0, 1, 0], [0, 1, 0]]
    listed(tenant, "strokes", example_input={"x": [[rows]]})

    html = page(client, "/catalogue/acme/strokes/")

    assert "  &quot;x&quot;: [[[[0, 1, 0],\n          [0, 1, 0],\n          [0, 1, 0]]]]" in html


def test_card_scripts_never_reach_the_page(client, tenant):
    listed(
        tenant,
        "evil",
        card_markdown=(
            "<script>alert('pwned-1')</script>\n\n"
            '<img src="x.png" onerror="steal()">\n\n[click](javascript:steal())'
        ),
    )

    html = page(client, "/catalogue/acme/evil/")

    assert "pwned-1" not in html and "onerror" not in html
    assert not re.search(r"""=\s*["']?\s*javascript:""", html)
    assert "<p>[click](javascript:steal())</p>" in html  # the refused link, as inert text


# --- searching --------------------------------------------------------------------------------


def test_search_box_filters_and_sort_orders(client, shop):
    assert "BERT sentiment" not in page(client, "/catalogue/", q="photos")
    assert "ResNet-50" in page(client, "/catalogue/", q="photos")
    free = page(client, "/catalogue/", free="on")
    assert "ResNet-50" in free and "BERT sentiment" not in free
    text = page(client, "/catalogue/", task="text-classification")
    assert "BERT sentiment" in text and "ResNet-50" not in text
    by_price = page(client, "/catalogue/", sort="price", license="MIT")
    assert "ResNet-50" in by_price and "MedSAM" not in by_price


def test_bad_filter_is_shown_and_the_rest_still_applies(client, shop):
    html = page(client, "/catalogue/", max_price_per_call="cheap", q="photos")

    assert "Enter a number." in html
    assert "ResNet-50" in html and "BERT sentiment" not in html


def test_catalogue_pages_through_many_listings(client, tenant):
    for i in range(23):
        listed(tenant, f"m{i:02}", title=f"Model {i:02}")

    first = page(client, "/catalogue/", q="model")
    second = page(client, "/catalogue/", q="model", page=2)

    assert "Page 1 of 2" in first and "?q=model&page=2" in first
    assert "Model 22" in first and "Model 00" in second and "Model 22" not in second


# --- subscribing with the buttons -------------------------------------------------------------


def test_member_of_another_organisation_subscribes_with_the_button(charlie_client, outsider, shop):
    assert "Subscribe</button>" in page(charlie_client, "/catalogue/acme/resnet/")

    response = charlie_client.post("/catalogue/acme/resnet/subscribe/", follow=True)

    html = response.content.decode()
    assert "Globex is subscribed to ResNet-50." in html
    assert "Globex has access" in html and "Unsubscribe" in html
    assert Entitlement.objects.filter(tenant=outsider, revoked_at__isnull=True).count() == 1

    response = charlie_client.post("/catalogue/acme/resnet/unsubscribe/", follow=True)

    assert "no longer subscribed" in response.content.decode()
    assert not Entitlement.objects.filter(tenant=outsider, revoked_at__isnull=True).exists()


def test_paid_listing_explains_how_it_is_billed(charlie_client, outsider, shop):
    assert "need a payment method" in page(charlie_client, "/catalogue/acme/bert/")


def test_gated_listing_offers_request_access_then_opens_on_approval(charlie_client, outsider, shop):
    assert "Request access</button>" in page(charlie_client, "/catalogue/acme/medsam/")

    response = charlie_client.post(
        "/catalogue/acme/medsam/request-access/", {"message": "Pilot"}, follow=True
    )

    assert "waiting for the publisher" in response.content.decode()
    request = AccessRequest.objects.get(tenant=outsider)
    assert request.message == "Pilot"
    listings.access_request_approve(request=request, actor=accounts.SYSTEM)
    assert "Globex has access" in page(charlie_client, "/catalogue/acme/medsam/")


def test_publisher_sees_its_own_listing_and_private_ones(alice_client, shop):
    assert "Acme publishes this model." in page(alice_client, "/catalogue/acme/resnet/")
    assert "In-house secret" in page(alice_client, "/catalogue/acme/inhouse/")


def test_viewer_role_cannot_subscribe(outsider, shop):
    viewer = make_user("vic@globex.example")
    accounts.membership_add(tenant=outsider, user=viewer, role=Role.VIEWER, actor=accounts.SYSTEM)
    client = Client()
    client.force_login(viewer)

    response = client.post("/catalogue/acme/resnet/subscribe/", follow=True)

    assert "Your role cannot subscribe" in response.content.decode()
    assert not Entitlement.objects.exists()


def test_subscribing_signed_out_goes_to_sign_in(client, shop):
    response = client.post("/catalogue/acme/resnet/subscribe/")

    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert not Entitlement.objects.exists()


def test_outsider_cannot_reach_or_subscribe_to_a_private_listing(charlie_client, outsider, shop):
    assert charlie_client.get("/catalogue/acme/inhouse/").status_code == 404
    assert charlie_client.post("/catalogue/acme/inhouse/subscribe/").status_code == 404
    assert charlie_client.post("/catalogue/acme/inhouse/request-access/").status_code == 404
    assert not Entitlement.objects.filter(tenant=outsider).exists()
