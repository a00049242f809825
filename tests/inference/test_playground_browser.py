"""The demo as a newcomer meets it, in headless Chromium against the live server and a real
Celery worker: bob of globex opens the playground of acme-ai/strokes (seeded as ``make run``
seeds it), runs the prefilled example, fills the input from a picture, meets an error, and
finds his predictions in the list."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from playwright.sync_api import Browser, Page, expect

from accounts.management.commands.seed_demo import DEMO_PASSWORD
from inference.models import Prediction
from tests.conftest import signed_in_page

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# A dark vertical bar on a light background, as someone would draw it.
VERTICAL_BAR_SVG = """<svg xmlns="http://www.w3.org/2000/svg" width="280" height="280">
<rect width="280" height="280" fill="#fafafa"/><rect x="122" y="40" width="36" height="200"
fill="#111"/></svg>"""


@pytest.fixture
def demo(celery_worker_process):
    import io

    call_command("seed_demo", stdout=io.StringIO())
    call_command("seed_demo_model", stdout=io.StringIO())


@pytest.fixture
def page(browser: Browser, live_server, demo) -> Iterator[Page]:
    """Bob, owner of globex, signed in."""
    page = signed_in_page(browser, live_server, "bob@globex.example", DEMO_PASSWORD, timeout=30_000)
    expect(page.get_by_role("heading", name="Globex (consumer)")).to_be_visible()
    yield page
    page.context.close()


def top_class(page: Page):
    return page.locator("[data-role=classes] tbody tr").first


def test_run_goes_through_the_api_at_once_after_a_boosted_link(page):
    """A boosted link swaps the playground in; its script is loaded by every page, so Run is
    bound as the page appears. It was loaded by the swapped-in page, after the swap: a quick
    click submitted the form natively, a GET with the CSRF token in the URL."""
    page.get_by_role("navigation").get_by_role("link", name="Playground").click()
    expect(page.get_by_role("link", name="acme-ai/strokes")).to_be_visible()
    page.route("**/js/playground.js*", lambda route: route.abort())  # nothing loads it late

    page.get_by_role("link", name="acme-ai/strokes").click()
    page.get_by_role("button", name="Run").click()

    status = page.locator("#result").locator("[data-fact=status]")
    expect(status).to_have_text("succeeded", timeout=30_000)
    assert "csrfmiddlewaretoken" not in page.url


def test_consumer_runs_the_demo_model_in_the_playground(page, tmp_path):
    page.get_by_role("navigation").get_by_role("link", name="Playground").click()
    page.get_by_role("link", name="acme-ai/strokes").click()
    expect(page.get_by_role("heading", name="strokes acme-ai/strokes", exact=True)).to_be_visible()
    expect(page.get_by_label("Version")).to_have_value("production")
    example = page.get_by_label("JSON (nested list, first dimension the batch)")
    expect(example).to_have_value(re.compile(r"^\[\[\[\[0, 0, 0"))

    page.get_by_role("button", name="Run").click()

    result = page.locator("#result")
    # The first call may start a model host cold: in CI's PostgreSQL run another worker (on
    # the gpu queue) validated the version, so this worker has none warm.
    expect(result.locator("[data-fact=status]")).to_have_text("succeeded", timeout=30_000)
    expect(top_class(page)).to_contain_text("class 1")  # horizontal
    expect(top_class(page)).to_contain_text(re.compile(r"\d+\.\d%"))
    expect(result.locator("[data-fact=latency]")).to_have_text(re.compile(r"^\d+ ms$"))
    # Run was disabled while it ran, which dropped keyboard focus to the page: it is back.
    assert page.evaluate("document.activeElement.textContent.trim()") == "Run"
    expect(result.locator("[data-fact=compute]")).to_have_text(re.compile(r"^\d+\.\d\d ms"))
    # As the predictions table below and the billing page write it (money_text).
    expect(result.locator("[data-fact=cost]")).to_have_text("0.00 USD")
    expect(result.locator("[data-role=output]")).to_contain_text("output: [[")
    expect(page.locator("#predictions tr[id^=prediction-]")).to_have_count(1)
    page.screenshot(path=tmp_path / "playground.png", full_page=True)

    picture = tmp_path / "vertical.svg"
    picture.write_text(VERTICAL_BAR_SVG)
    page.get_by_label("Invert (for dark strokes on a light background)").check()
    page.get_by_label("Image for x").set_input_files(picture)
    expect(page.get_by_role("status")).to_contain_text("vertical.svg turned into 1×28×28")
    page.get_by_role("button", name="Run").click()
    expect(top_class(page)).to_contain_text("class 2")  # vertical
    expect(page.locator("#predictions tr[id^=prediction-]")).to_have_count(2)
    page.screenshot(path=tmp_path / "playground-picture.png", full_page=True)

    example.fill("[[1, 2, 3]]")
    page.get_by_role("button", name="Run").click()
    error = page.locator("#result [data-role=error]")
    expect(error).to_contain_text("Input 'x' should have shape [-1, 1, 28, 28]")
    expect(result.locator("[data-role=facts]")).to_be_hidden()

    page.get_by_role("navigation").get_by_role("link", name="Predictions").click()
    expect(page).to_have_url(re.compile(r"/dashboard/predictions/$"))
    expect(page.get_by_role("heading", name="Predictions globex", exact=True)).to_be_visible()
    rows = page.locator("#predictions tbody tr[id^=prediction-]")
    expect(rows).to_have_count(2)
    expect(rows.first.locator(".status")).to_have_text("succeeded")
    expect(rows.first).to_contain_text("0.00 USD")
    expect(rows.first).to_contain_text("bob@globex.example")
    assert Prediction.objects.filter(tenant__slug="globex", status="succeeded").count() == 2
    page.screenshot(path=tmp_path / "predictions.png", full_page=True)
