"""A publisher releases, rolls back and publishes a model from the model page in headless
Chromium: points ``production`` at a version, moves it on, rolls it back with the button the
history offers, then publishes the listing with a price and finds it in the catalogue signed
out. The versions are made ready through the registry's services (no worker runs here)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from accounts import services as accounts
from accounts.models import Scope
from accounts.services import Actor
from accounts.tenancy import Access
from marketplace import listings, services
from marketplace.models import Listing, Model
from tests.conftest import PASSWORD, signed_in_page
from tests.marketplace.test_dashboard_models import make_ready, upload_version

pytestmark = pytest.mark.browser


@pytest.fixture
def classifier(transactional_db, isolated_store, model_files) -> Model:
    """Erin owns Acme, whose ``acme/classifier`` has two ready versions."""
    erin = accounts.user_create(email="erin@acme.example", password=PASSWORD, name="Erin")
    acme = accounts.tenant_create(slug="acme", name="Acme", owner=erin)
    model = services.model_create(
        tenant=acme, name="classifier", task="tabular-classification", actor=Actor(user=erin)
    )
    for label in ("1.0.0", "1.1.0"):
        make_ready(upload_version(model, model_files["pt2"], erin, label=label))
    return model


@pytest.fixture
def page(browser: Browser, live_server, classifier) -> Iterator[Page]:
    page = signed_in_page(browser, live_server, "erin@acme.example")
    expect(page.get_by_role("heading", name="Acme")).to_be_visible()
    page.goto(f"{live_server.url}/dashboard/models/classifier/")
    yield page
    page.context.close()


def point(page: Page, alias: str, version: str) -> None:
    page.get_by_label("Alias", exact=True).fill(alias)
    page.locator("#alias-version").select_option(label=version)
    page.get_by_role("button", name="Point it there").click()


def test_a_publisher_releases_rolls_back_and_publishes_from_the_model_page(
    page: Page, live_server, classifier, browser
):
    point(page, "production", "v1 (1.0.0)")
    expect(page.get_by_text("production now points at v1.")).to_be_visible()
    point(page, "production", "v2 (1.1.0)")
    row = page.locator("#alias-production")
    expect(row).to_contain_text("v2")

    row.get_by_role("button", name="Roll back to v1").click()

    expect(page.get_by_text("production now points at v1.")).to_be_visible()
    expect(page.locator("#alias-production")).to_contain_text("v1")
    expect(page.locator("#alias-history")).to_contain_text("v2 → v1")
    assert classifier.aliases.get(name="production").version.number == 1

    page.get_by_role("link", name="Publish it").click()
    page.get_by_label("Title").fill("Tabular classifier")
    page.get_by_label("Visibility").select_option("public")
    page.get_by_label("Price per call").fill("0.002")
    page.get_by_label("Tags").fill("tabular, iris")
    page.get_by_label("Model card (Markdown)").fill("# Tabular classifier\n\nThree classes.")
    page.get_by_role("button", name="Publish").click()

    expect(page.get_by_text("Listing published: Public: in the catalogue.")).to_be_visible()
    expect(page.locator("#listing")).to_contain_text("0.002 USD per call")
    listing = Listing.objects.get(model=classifier)
    assert (listing.visibility, listing.tags) == ("public", ["tabular", "iris"])
    visitor = browser.new_context()
    try:
        catalogue = visitor.new_page()
        catalogue.goto(f"{live_server.url}/catalogue/?q=tabular")
        catalogue.get_by_role("link", name="Tabular classifier").click()
        expect(catalogue.get_by_role("heading", name="Tabular classifier").first).to_be_visible()
    finally:
        visitor.close()


def test_a_refused_price_is_explained_on_the_form_and_nothing_is_published(page: Page):
    page.get_by_role("link", name="Publish it").click()
    page.get_by_label("Price per call").fill("-1")
    page.get_by_role("button", name="Publish").click()

    expect(page.get_by_text("A price cannot be negative.")).to_be_visible()
    assert not Listing.objects.exists()


def test_on_a_phone_the_alias_and_access_buttons_are_on_screen(
    browser: Browser, live_server, classifier
):
    """At a phone's width (390 px) the rows' buttons (Roll back, Approve, Decline, Allow,
    Revoke) were past the right edge of their tables' sideways scroll, and 'Roll back to v2'
    wrapped a word a line."""
    erin = classifier.tenant.memberships.get().user
    versions = list(classifier.versions.order_by("number"))
    access = Access(tenant=classifier.tenant, scopes=frozenset({Scope.ADMIN}), user=erin)
    for version in reversed(versions):  # production: v2, then v1 -> "Roll back to v2"
        services.alias_set(
            model=classifier, name="production", version=version, access=access, actor=Actor()
        )
    listing = listings.listing_publish(
        model=classifier, actor=accounts.SYSTEM, visibility="public", gated=True
    )
    for slug, name in (("globex", "Globex Corporation International"), ("initech", "Initech")):
        owner = accounts.user_create(email=f"owner@{slug}.example", password=PASSWORD)
        consumer = accounts.tenant_create(slug=slug, name=name, owner=owner)
        listings.access_request_create(
            listing=listing, tenant=consumer, actor=Actor(user=owner), message="For our pilot."
        )
    listings.model_share(model=classifier, tenant_slug="initech", actor=accounts.SYSTEM)
    page = signed_in_page(browser, live_server, "erin@acme.example", viewport=(390, 844))
    try:
        expect(page.get_by_role("heading", name="Acme")).to_be_visible()
        page.goto(f"{live_server.url}/dashboard/models/classifier/")
        rollback = page.get_by_role("button", name="Roll back to v2").bounding_box()
        page.goto(f"{live_server.url}/dashboard/models/classifier/access/")
        buttons = [
            page.get_by_role("button", name=name, exact=True).first.bounding_box()
            for name in ("Approve", "Decline", "Allow", "Revoke")
        ]
        width = page.evaluate("document.documentElement.scrollWidth")
    finally:
        page.context.close()

    # Where they are without scrolling anything sideways: within the 390 px.
    assert all(box["x"] + box["width"] <= 390 for box in [rollback, *buttons])
    assert rollback["height"] < 40  # one line
    assert width <= 390


def test_after_an_alias_move_or_a_publish_the_page_shows_that_section(page: Page):
    # A boosted form follows the redirect without its #aliases: the page came back scrolled
    # to the top, far from the section just changed.
    page.set_viewport_size({"width": 1000, "height": 320})

    point(page, "production", "v1 (1.0.0)")

    expect(page.locator("#alias-production")).to_contain_text("v1")
    expect(page.locator("#aliases")).to_be_in_viewport()
    assert page.evaluate("window.scrollY") > 0

    page.get_by_role("link", name="Publish it").click()
    page.get_by_label("Title").fill("Tabular classifier")
    page.get_by_role("button", name="Publish").click()

    expect(page.locator("#listing")).to_contain_text("Tabular classifier")
    expect(page.locator("#listing")).to_be_in_viewport()


def test_a_refused_alias_move_is_said_where_the_person_looks(
    browser: Browser, live_server, classifier
):
    """A developer pointing production (an admin's move) was scrolled to the aliases, and the
    refusal, at the top of the page, was some 700 px out of sight."""
    from accounts.models import Role

    dave = accounts.user_create(email="dave@acme.example", password=PASSWORD, name="Dave")
    accounts.membership_add(
        tenant=classifier.tenant, user=dave, role=Role.DEVELOPER, actor=accounts.SYSTEM
    )
    page = signed_in_page(browser, live_server, "dave@acme.example", viewport=(1280, 600))
    expect(page.get_by_role("heading", name="Acme")).to_be_visible()
    page.goto(f"{live_server.url}/dashboard/models/classifier/")

    point(page, "production", "v1 (1.0.0)")

    refusal = page.locator("main .messages .error")
    expect(refusal).to_contain_text("needs the admin role")
    expect(refusal).to_be_in_viewport()
    page.context.close()
