"""Strings PostgreSQL cannot store, sent where the API keeps JSON as it came: a NUL character
("\\u0000", which text and jsonb refuse) or a lone UTF-16 surrogate ("\\ud800", which UTF-8
cannot encode). SQLite stored both, so these were 500s on PostgreSQL only."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from accounts import services as accounts
from marketplace import services as registry
from marketplace.models import Listing, Model, UploadSession

pytestmark = pytest.mark.django_db

UPLOAD = {"filename": "clf.pt2", "format": "pt2", "size": 10, "sha256": "0" * 64}


@pytest.fixture
def clf(tenant) -> Model:
    return registry.model_create(tenant=tenant, name="clf", actor=accounts.SYSTEM)


def send(api: APIClient, method: str, url: str, body) -> object:
    # json.dumps escapes both as \u0000 and \ud800, as any JSON client sends them.
    return api.generic(method, url, json.dumps(body), content_type="application/json")


@pytest.mark.postgres
@pytest.mark.parametrize(
    "method, url, body, where",
    [
        (
            "PUT",
            "/api/v1/models/acme/clf/listing",
            {"title": "Classifier", "example_input": {"x": [[1, 2], "a\u0000b"]}},
            "in example_input.x.1",
        ),
        (
            "POST",
            "/api/v1/models/acme/clf/uploads",
            {**UPLOAD, "architecture_config": {"layers": "a\u0000b"}},
            "in architecture_config.layers",
        ),
        (
            "POST",
            "/api/v1/models/acme/clf/uploads",
            {**UPLOAD, "architecture_config": {"lay\u0000ers": 3}},
            "in a key of architecture_config",
        ),
        (
            "POST",
            "/api/v1/models/acme/clf/uploads",
            {**UPLOAD, "example_input": ["a\u0000b"]},
            "in example_input.0",
        ),
    ],
    ids=["listing-example-input", "upload-config-value", "upload-config-key", "upload-example"],
)
def test_a_nul_character_in_stored_json_is_400_naming_where(api, clf, method, url, body, where):
    response = send(api, method, url, body)

    assert response.status_code == 400
    detail = response.json()["detail"]
    assert 'A NUL character ("\\u0000") cannot be stored' in detail
    assert where in detail
    assert not Listing.objects.exists()
    assert not UploadSession.objects.exists()


@pytest.mark.postgres
@pytest.mark.parametrize(
    "method, url, body",
    [
        ("PUT", "/api/v1/models/acme/clf/listing", {"title": "T", "example_input": ["\ud800"]}),
        (
            "POST",
            "/api/v1/models/acme/clf/uploads",
            {**UPLOAD, "architecture_config": {"a": "\udfff"}},
        ),
    ],
    ids=["listing", "upload"],
)
def test_a_lone_surrogate_in_stored_json_is_400_saying_what_to_send(api, clf, method, url, body):
    response = send(api, method, url, body)

    assert response.status_code == 400
    assert "lone UTF-16 surrogate" in response.json()["detail"]
    assert "surrogate pair, or as UTF-8" in response.json()["detail"]
    assert not Listing.objects.exists()
    assert not UploadSession.objects.exists()


def test_escaped_backslashes_and_surrogate_pairs_are_stored_as_sent(api, clf):
    """What only looks like an escape (a backslash, then u0000) and a character sent as a
    surrogate pair are ordinary text: both are kept."""
    example = {"path": "C:\\u0000\\new", "face": "\U0001f600"}

    response = send(
        api, "PUT", "/api/v1/models/acme/clf/listing", {"title": "T", "example_input": example}
    )

    assert response.status_code == 201
    assert Listing.objects.get().example_input == example


def test_a_nul_in_a_text_field_still_names_the_field(api, clf):
    response = send(api, "PATCH", "/api/v1/models/acme/clf", {"description": "a\u0000b"})

    assert response.status_code == 400
    assert "description" in response.json()["detail"]
    assert Model.objects.get().description == ""


@pytest.mark.postgres
def test_a_body_in_utf16_is_checked_too(api, clf):
    body = json.dumps({"title": "T", "example_input": ["a\u0000b"]}).encode("utf-16")

    response = api.generic(
        "PUT",
        "/api/v1/models/acme/clf/listing",
        body,
        content_type="application/json; charset=utf-16",
    )

    assert response.status_code == 400
    assert "in example_input.0" in response.json()["detail"]
    assert not Listing.objects.exists()


@pytest.mark.parametrize("number", ["1e400", "-1e400"])
def test_a_number_past_a_floats_range_in_an_architecture_config_is_400(api, clf, number):
    """JSON has no infinity, but 1e400 parses as one, which neither database stores as JSON:
    a 500 on PostgreSQL ('invalid input syntax for type json') and on SQLite (its JSON_VALID
    check)."""
    raw = json.dumps({**UPLOAD, "architecture_config": {"hidden": [64, 0]}}).replace(
        "0]", f"{number}]"
    )

    response = api.generic(
        "POST", "/api/v1/models/acme/clf/uploads", raw, content_type="application/json"
    )

    assert response.status_code == 400
    assert response.json()["errors"] == {
        "architecture_config": {
            "hidden": ["Numbers must fit a float (up to about 1.8e308): JSON has no infinity."]
        }
    }
    assert not UploadSession.objects.exists()
