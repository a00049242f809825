from __future__ import annotations

import pytest

from accounts.models import ApiKey
from tests.inference.conftest import classifier  # noqa: F401 - a fixture

pytestmark = pytest.mark.django_db


def _post_raw(api, body: str, content_type: str = "application/json"):
    return api.generic("POST", "/api/v1/keys", body, content_type=content_type)


def test_malformed_json_is_400_and_creates_nothing(api):
    before = ApiKey.objects.count()
    response = _post_raw(api, '{"name": "x", "scopes": [')
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]
    assert ApiKey.objects.count() == before


def test_json_nested_too_deeply_is_400_not_500(api):
    """Found by the reliability suite: json.loads' RecursionError was a 500."""
    response = _post_raw(api, '{"name": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert response.status_code == 400
    assert response.json()["detail"] == "The JSON body is nested too deeply."


@pytest.mark.parametrize(
    "url, raw",
    [
        ("/api/v1/predictions", b'{"model": "acme/clf", "input": {"\\ud800": [[1, 2, 3, 4]]}}'),
        (
            "/v2/models/acme/clf/infer",
            b'{"inputs": [{"name": "\\ud800", "datatype": "FP32", "shape": [1, 4],'
            b' "data": [1, 2, 3, 4]}]}',
        ),
    ],
)
@pytest.mark.usefixtures("classifier")
def test_a_lone_surrogate_echoed_in_an_error_is_400_not_500(api, url, raw):
    """A lone surrogate ("\\ud800") is valid JSON that UTF-8 cannot encode: the message
    naming the unknown input failed to render (a 500) until the renderer escaped it."""
    response = api.generic("POST", url, raw, content_type="application/json")

    assert response.status_code == 400
    assert "\\ud800" in response.content.decode()


def test_unknown_field_is_400_naming_it(api):
    response = api.post(
        "/api/v1/keys", {"name": "x", "scopes": ["inference"], "scope": "admin"}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["errors"] == {"scope": ["Unknown field."]}


def test_over_long_name_is_400_with_the_limit(api):
    response = api.post("/api/v1/keys", {"name": "n" * 101, "scopes": ["inference"]}, format="json")
    assert response.status_code == 400
    assert "100 characters" in response.json()["detail"]


def test_unknown_scope_is_400(api):
    response = api.post("/api/v1/keys", {"name": "x", "scopes": ["root"]}, format="json")
    assert response.status_code == 400
    assert "scopes" in response.json()["errors"]


def test_bad_ip_network_is_400_with_an_example(api):
    response = api.post(
        "/api/v1/keys",
        {"name": "x", "scopes": ["inference"], "allowed_ips": ["not-an-ip"]},
        format="json",
    )
    assert response.status_code == 400
    assert "CIDR" in response.json()["detail"]


def test_expiry_in_the_past_is_400(api):
    response = api.post(
        "/api/v1/keys",
        {"name": "x", "scopes": ["inference"], "expires_at": "2001-01-01T00:00:00Z"},
        format="json",
    )
    assert response.status_code == 400
    assert "future" in response.json()["detail"]


def test_bad_model_reference_is_400(api):
    response = api.post(
        "/api/v1/keys",
        {"name": "x", "scopes": ["inference"], "allowed_models": ["Not A Model"]},
        format="json",
    )
    assert response.status_code == 400
    assert "owner/name" in response.json()["detail"]


def test_wrong_content_type_is_415(api):
    response = _post_raw(api, "name=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415


def test_body_that_is_not_an_object_is_400(api):
    response = _post_raw(api, '["name"]')
    assert response.status_code == 400


def test_bad_invitation_email_is_400(api):
    response = api.post("/api/v1/invitations", {"email": "nobody"}, format="json")
    assert response.status_code == 400
    assert "email" in response.json()["errors"]


class _BrokenOff:
    """A request body whose client reset the connection halfway (what gunicorn's reader
    raises then)."""

    def read(self, size=-1):
        raise ConnectionResetError(104, "Connection reset by peer")

    readline = read


@pytest.mark.parametrize(
    "url, body, content_type",
    [
        # Exempt from CSRF (whose check would otherwise swallow the error and answer 403).
        ("/billing/stripe/webhook", '{"id": "evt_1"}', "application/json"),
        ("/dashboard/keys/", "name=ci&scopes=inference", "application/x-www-form-urlencoded"),
    ],
)
def test_a_plain_django_view_whose_body_breaks_off_is_a_400_not_a_500(
    client, alice, tenant, caplog, url, body, content_type
):
    client.force_login(alice)
    before = ApiKey.objects.count()

    response = client.post(url, body, content_type=content_type, **{"wsgi.input": _BrokenOff()})

    assert response.status_code == 400
    assert ApiKey.objects.count() == before
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_body_over_the_memory_limit_is_413_saying_the_limit(api, settings, caplog):
    """DRF reads a JSON body through Django's ``request.body``, whose RequestDataTooBig was
    answered as Django's bare HTML 400 page and logged as an ERROR."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    before = ApiKey.objects.count()

    response = _post_raw(api, '{"name": "' + "x" * 2000 + '", "scopes": ["inference"]}')

    assert response.status_code == 413
    assert response.json() == {
        "detail": "The request body is larger than 1000 bytes; send a smaller one.",
        "code": "too_large",
    }
    assert ApiKey.objects.count() == before
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
