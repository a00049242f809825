"""The pages' Content-Security-Policy in headless Chromium: a model card cannot make its
viewers' browsers call the publisher's server, and the dashboard's controls that submit on
change still work without inline handlers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import Browser, Page, expect

from accounts import services as accounts
from accounts.models import Membership, Role
from tests.conftest import signed_in_page
from tests.marketplace.test_listings import listed

pytestmark = pytest.mark.browser


@pytest.fixture
def tracker() -> Iterator[tuple[str, list[str]]]:
    """A server on another origin that records every request made to it, as a publisher's
    image host would log its visitors."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/gif")
            self.end_headers()
            self.wfile.write(b"GIF89a")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def console_errors(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    return errors


def test_a_card_never_makes_its_viewers_fetch_from_the_publishers_server(
    live_server, browser: Browser, tenant, tracker
):
    """An image on another host in a card was fetched by every visitor's browser: its host
    learned each visitor's address and when they looked."""
    origin, seen = tracker
    listed(
        tenant,
        "resnet",
        title="ResNet-50",
        card_markdown=(
            f"# ResNet\n\n![Architecture diagram]({origin}/diagram.png)\n\n"
            f'<img src="{origin}/pixel.gif" alt="pixel">\n\n'
            f"[![build passing]({origin}/badge.svg)](https://ci.example/acme)"
        ),
    )
    context = browser.new_context()
    context.set_default_timeout(10_000)
    page = context.new_page()
    errors = console_errors(page)

    response = page.goto(f"{live_server.url}/catalogue/acme/resnet/")
    expect(page.get_by_role("heading", name="ResNet", exact=True)).to_be_visible()
    diagram = page.get_by_role("link", name="Image: Architecture diagram")
    link = diagram.get_attribute("href"), diagram.get_attribute("title")
    page.wait_for_load_state("networkidle")
    context.close()

    assert "img-src 'self' data: blob:" in response.headers["content-security-policy"]
    assert seen == []
    # The Markdown image is a link the visitor may follow, titled with its host; the raw one
    # was refused by the policy.
    assert link == (f"{origin}/diagram.png", "Image on 127.0.0.1")
    assert len(errors) == 1 and "Content Security Policy" in errors[0], errors


def test_the_selects_that_submit_on_change_work_under_the_policy(
    live_server, browser: Browser, tenant, bob, outsider
):
    """The organisation switcher and the members' role selects submitted from inline
    ``onchange`` handlers, which the policy refuses; they now bind in app.js."""
    accounts.membership_add(tenant=outsider, user=bob, role=Role.VIEWER, actor=accounts.SYSTEM)
    page = signed_in_page(browser, live_server, "alice@acme.example")
    errors = console_errors(page)
    expect(page.get_by_role("heading", name="Acme")).to_be_visible()
    page.goto(f"{live_server.url}/dashboard/members/")

    page.get_by_label("Role of bob@acme.example").select_option("viewer")
    expect(page.get_by_text("bob@acme.example is now Viewer.")).to_be_visible()
    page.context.close()

    bob_page = signed_in_page(browser, live_server, "bob@acme.example")
    bob_errors = console_errors(bob_page)
    expect(bob_page.get_by_role("heading", name="Acme")).to_be_visible()
    bob_page.get_by_label("Organisation").select_option("globex")
    expect(bob_page.get_by_role("heading", name="Globex")).to_be_visible()
    bob_page.context.close()

    assert Membership.objects.get(tenant=tenant, user=bob).role == Role.VIEWER
    assert errors == [] and bob_errors == []
