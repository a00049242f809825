"""Lists follow the API's pages to the end."""

from __future__ import annotations

import httpx
import pytest
from modelmarket._http import Transport
from modelmarket.errors import ApiError

from accounts import services as accounts
from marketplace import services as registry

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_models_lists_every_page(mm, tenant):
    for i in range(55):  # the API pages 50 at a time
        registry.model_create(tenant=tenant, name=f"m{i:02d}", actor=accounts.SYSTEM)

    listed = mm("models", "--json")

    assert listed.code == 0, listed.err
    assert sorted(m["name"] for m in listed.json()) == [f"m{i:02d}" for i in range(55)]


def _answering(response: httpx.Response) -> Transport:
    return Transport(
        base_url="http://mm.test",
        api_key="k",
        transport=httpx.MockTransport(lambda request: response),
    )


@pytest.mark.parametrize("status", [200, 204])
def test_a_list_answered_with_no_body_is_empty(status):
    assert list(_answering(httpx.Response(status)).paginate("/api/v1/models")) == []


def test_a_list_answered_with_a_proxys_html_page_says_what_came_back():
    page = httpx.Response(
        200, headers={"Content-Type": "text/html"}, content=b"<html><body>Sign in to Corp"
    )

    with pytest.raises(ApiError) as raised:
        list(_answering(page).paginate("/api/v1/models"))

    message = raised.value.message
    assert "200" in message and "text/html" in message and "<html><body>Sign in" in message
    assert "not JSON" in message
