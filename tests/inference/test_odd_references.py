"""Odd version references and identifiers, in the API, the dashboard and the OIP endpoints:
each is a 4xx (or the page with a message), never a 500."""

from __future__ import annotations

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

ODD = ["²", "1²", "٣", "99999999999999999999", "0" * 5000 + "1"]


@pytest.mark.parametrize("ref", ODD)
def test_a_version_reference_that_is_no_number_is_a_404(api, classifier, ref):
    response = api.get(f"/api/v1/models/acme/clf/versions/{ref}")

    assert response.status_code == 404
    assert "has no version or alias" in response.json()["detail"]


def test_a_version_number_past_the_databases_integer_is_a_404(api, classifier):
    response = api.post(
        "/api/v1/models/acme/clf/versions/99999999999999999999/deprecate",
        {"sunset": "2027-01-01"},
        format="json",
    )

    assert response.status_code == 404


@pytest.mark.parametrize("ref", ODD[:3])
def test_the_playground_shows_the_default_version_for_an_odd_reference(alice, classifier, ref):
    client = Client()
    client.force_login(alice)

    response = client.get("/dashboard/playground/acme/clf/", {"version": ref})

    assert response.status_code == 200
    assert "has no version or alias" in response.content.decode()


@pytest.mark.parametrize(
    "fields",
    [
        {"version": "abc"},
        {"version": "1.5"},
        {"version": "²"},
        {"version": "1", "params": "[" * 100_000},
    ],
)
def test_starting_a_compression_job_with_bad_fields_says_what_is_wrong(alice, classifier, fields):
    client = Client()
    client.force_login(alice)

    response = client.post(
        "/dashboard/compression/start/clf/", {"method": "quantize", **fields}, follow=True
    )

    assert response.status_code == 200
    page = response.content.decode()
    assert "Choose a version to compress." in page or "Parameters are a JSON object" in page


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/models/acme/a%00b",
        "/dashboard/models/a%00b/",
        "/dashboard/audit/?action=a%00b",
        "/v2/models/acme/a%00b",
    ],
)
def test_a_nul_character_in_a_url_is_a_400(api, alice, url):
    client = Client()
    client.force_login(alice)

    for response in (client.get(url), api.get(url)):
        assert response.status_code == 400
        assert "NUL characters are not allowed" in response.content.decode()


def test_a_nul_character_in_a_form_field_is_a_400_and_changes_nothing(alice, tenant):
    client = Client()
    client.force_login(alice)

    response = client.post("/dashboard/switch/", {"tenant": "ac\x00me"})

    assert response.status_code == 400
