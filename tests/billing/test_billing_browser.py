"""The card form in headless Chromium: Stripe.js (localstripe's stand-in, served by the fake
Stripe) confirms a SetupIntent in the browser, and the billing page then shows the card."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from billing.models import BillingAccount
from tests.conftest import signed_in_page

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
PASSWORD = "correct horse battery staple"


def test_owner_saves_a_card_through_stripe_js(browser, live_server, stripe_api, charlie, outsider):
    charlie.set_password(PASSWORD)
    charlie.save(update_fields=["password"])
    page = signed_in_page(browser, live_server, charlie.email, PASSWORD, timeout=30_000)

    page.get_by_role("navigation").get_by_role("link", name="Billing").click()
    page.get_by_role("link", name="Add a card").click()
    page.get_by_placeholder("number").fill("4242424242424242")
    page.get_by_placeholder("exp_month").fill("12")
    page.get_by_placeholder("exp_year").fill("31")
    page.get_by_placeholder("cvc").fill("123")
    page.get_by_placeholder("postal_code").fill("75001")
    page.get_by_role("button", name="Save card").click()

    expect(page.locator("#payment")).to_contain_text("visa •••• 4242")
    expect(page.get_by_text("Payment method saved.")).to_be_visible()
    account = BillingAccount.objects.get(tenant=outsider)
    assert account.payment_method_id.startswith("pm_")
    page.context.close()
