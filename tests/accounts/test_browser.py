"""A real person in headless Chromium: sign up, create an organisation, create an API key, see it
once, and use it against the live server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from accounts import services
from accounts.models import Role
from tests.conftest import PASSWORD

pytestmark = pytest.mark.browser


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(
        viewport={"width": 1280, "height": 900}, permissions=["clipboard-read", "clipboard-write"]
    )
    context.set_default_timeout(10_000)
    page = context.new_page()
    yield page
    context.close()


def browser_storage(page: Page) -> str:
    return page.evaluate("JSON.stringify(sessionStorage) + JSON.stringify(localStorage)")


def test_new_user_creates_a_key_sees_it_once_and_calls_the_api(live_server, page, tmp_path):
    page.goto(f"{live_server.url}/signup/")
    page.get_by_label("Name").fill("Dana")
    page.get_by_label("Email").fill("dana@initech.example")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()

    expect(page.get_by_role("heading", name="Create an organisation")).to_be_visible()
    page.get_by_label("Organisation name").fill("Initech")
    page.get_by_role("button", name="Create organisation").click()
    expect(page.get_by_role("heading", name="Initech")).to_be_visible()
    expect(page.get_by_text("Organisation Initech created.")).to_be_visible()

    page.get_by_role("navigation").get_by_role("link", name="API keys").click()
    expect(page.get_by_role("heading", name="API keys", exact=True)).to_be_visible()
    page.get_by_label("Name").fill("ci")
    page.get_by_role("button", name="Create key").click()

    secret_box = page.locator("#new-key-value")
    expect(secret_box).to_be_visible()
    secret = secret_box.inner_text().strip()
    assert secret.startswith("mm_live_")
    expect(page.get_by_text("It is shown only once")).to_be_visible()
    expect(page.locator("#keys tbody tr")).to_have_count(1)
    expect(page.locator("#keys .status")).to_have_text("active")
    page.screenshot(path=tmp_path / "keys-with-new-key.png", full_page=True)
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == secret

    # A second key through the same (htmx-boosted) form: the first secret is gone from the
    # page, and htmx did not keep it in its history cache in the browser's storage.
    page.get_by_label("Name").fill("deploy")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("heading", name="Key deploy created")).to_be_visible()
    expect(page.locator("#keys tbody tr")).to_have_count(2)
    assert secret not in page.content()
    assert secret not in browser_storage(page)

    page.goto(f"{live_server.url}/dashboard/keys/")
    expect(page.locator("#keys tbody tr")).to_have_count(2)
    expect(page.locator("#new-key-value")).to_have_count(0)
    assert secret not in page.content()

    response = requests.get(
        f"{live_server.url}/api/v1/organisation",
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["organisation"]["slug"] == "initech"
    assert body["via"] == "api_key" and body["scopes"] == ["inference", "models:read"]


@pytest.mark.django_db(transaction=True)
def test_dashboard_tables_fit_a_phone_without_sideways_scrolling(live_server, browser, tenant):
    # On a 390 px phone the members, keys and audit tables made the whole page wider than the
    # screen: the page scrolled sideways and the top bar stopped short of the right edge.
    services.invitation_create(
        tenant=tenant,
        email="a-rather-long-address@subsidiary.initech.example",
        role=Role.DEVELOPER,
        actor=services.SYSTEM,
    )
    context = browser.new_context(viewport={"width": 390, "height": 844})
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Email").fill("alice@acme.example")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Acme")).to_be_visible()

    widths = {}
    for path in ("/dashboard/members/", "/dashboard/keys/", "/dashboard/audit/"):
        page.goto(f"{live_server.url}{path}")
        widths[path] = page.evaluate("document.documentElement.scrollWidth")
    context.close()

    assert widths == dict.fromkeys(widths, 390)
    assert errors == []  # not even the browser's request for a favicon


def test_the_api_docs_render_with_no_internet(live_server, page):
    # Swagger UI's page loaded its scripts from the jsDelivr CDN: without internet it stayed
    # blank. Requests leaving the server are refused here, as on a machine offline.
    outside = []

    def only_ours(route):
        if route.request.url.startswith(live_server.url):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.route("**/*", only_ours)
    page.goto(f"{live_server.url}/api/docs/")

    expect(page.get_by_role("heading", name="Modelmarket API")).to_be_visible()
    expect(page.get_by_text("/api/v1/predictions").first).to_be_visible()
    assert outside == []
    assert errors == []  # its setup script is a file of its own: the page policy runs it


@pytest.mark.django_db(transaction=True)
def test_refusals_show_their_page_and_a_rotated_keys_page_survives_a_reload(
    live_server, browser, tenant
):
    """Three things a person saw go wrong in the boosted dashboard: a form the server refused
    (403: the organisation suspended) changed nothing on screen; after Rotate the address bar
    held the POST-only rotate URL, a 405 page on reload; a revoked key's message showed on the
    next page instead."""
    from tests.conftest import signed_in_page

    page = signed_in_page(browser, live_server, "alice@acme.example")
    expect(page.get_by_role("heading", name="Acme")).to_be_visible()
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{live_server.url}/dashboard/keys/")
    for name in ("ci", "old"):
        page.get_by_label("Name").fill(name)
        page.get_by_role("button", name="Create key").click()
        expect(page.get_by_role("heading", name=f"Key {name} created")).to_be_visible()

    page.locator("#keys tr", has_text="ci").get_by_role("button", name="Rotate").click()
    expect(page.get_by_role("heading", name="Replacement for ci")).to_be_visible()
    assert page.url == f"{live_server.url}/dashboard/keys/"
    page.reload()
    expect(page.get_by_role("heading", name="API keys", exact=True)).to_be_visible()

    page.locator("#keys tr", has_text="old").get_by_role("button", name="Revoke").click()
    expect(page.locator("#keys tr", has_text="old").locator(".status")).to_have_text("revoked")
    page.get_by_role("navigation").get_by_role("link", name="Models").click()
    expect(page.get_by_role("heading", name="Models acme")).to_be_visible()
    expect(page.get_by_text("Key old revoked.")).to_have_count(0)

    services.tenant_suspend(tenant=tenant, reason="Unpaid invoices", actor=services.SYSTEM)
    page.goto(f"{live_server.url}/dashboard/keys/")
    page.get_by_label("Name").fill("after")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    refusal = page.get_by_text("The organisation 'acme' is suspended: Unpaid invoices")
    expect(refusal).to_be_visible()
    page.context.close()


@pytest.mark.django_db(transaction=True)
def test_back_shows_the_list_as_it_is_now_and_a_long_word_does_not_widen_the_page(
    live_server, browser, tenant
):
    """Back after creating a model showed htmx's snapshot of the list without it (Forward
    showed "created" again); a URL in a model's description made its page 47,717 px wide."""
    from marketplace import services as registry
    from tests.conftest import signed_in_page

    registry.model_create(
        tenant=tenant,
        name="wide",
        actor=services.SYSTEM,
        description="https://x.example/" + "a" * 400,
    )
    page = signed_in_page(browser, live_server, "alice@acme.example")
    expect(page.get_by_role("heading", name="Acme")).to_be_visible()
    page.goto(f"{live_server.url}/dashboard/models/wide/")
    expect(page.get_by_role("heading", name="wide")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280

    page.get_by_role("navigation").get_by_role("link", name="Models").click()
    expect(page.get_by_role("heading", name="Models acme")).to_be_visible()
    page.get_by_label("Name").fill("backtest")
    page.get_by_role("button", name="Create model").click()
    expect(page.get_by_role("heading", name="backtest")).to_be_visible()
    page.go_back()
    expect(page.get_by_role("heading", name="Models acme")).to_be_visible()
    expect(page.get_by_role("link", name="backtest")).to_be_visible()
    page.context.close()
