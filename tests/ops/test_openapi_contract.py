"""The OpenAPI schema at ``/api/schema/`` tells the truth: a client generated from it can
send every request and read every answer of ``/api/v1/``. Answers (and the JSON bodies we
send) are checked against the schema with ``jsonschema``: the status must be one the
operation lists (an error may fall to its ``default``), and the body must match that
status's schema, with no field the schema does not name."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import date, timedelta
from decimal import Decimal
from urllib.parse import parse_qsl, urlsplit

import jsonschema
import numpy as np
import pytest
import torch
from django.utils import timezone
from rest_framework.test import APIClient
from safetensors.torch import save as save_tensors

from accounts import services as accounts
from billing.models import Transfer
from billing.services import credit_create, invoice_build
from inference import compression_services as jobs
from inference import services as inference
from inference import tensors
from inference.models import AbuseFlag, CompressionJob, Prediction
from inference.runtime.architectures import MLP
from marketplace import services as registry
from marketplace.models import AccessRequest, Entitlement
from marketplace.vault.store import artifact_create
from tests.billing.conftest import listed, spend
from tests.compression.conftest import ready_version as ready_safetensors
from tests.compression.conftest import signature as mlp_signature
from tests.conftest import key_client
from tests.inference.conftest import (
    Classifier,
    export,
    listed_classifier,
    ready_version,
    signature,
)
from tests.marketplace.conftest import put_all, sha256

pytestmark = pytest.mark.django_db

METHODS = ("get", "put", "post", "delete", "patch")


def to_json_schema(node):
    """An OpenAPI 3.0 schema as JSON Schema: ``nullable`` becomes a null alternative, and an
    object that lists its properties admits no others (unless it says so): a field the
    answer has and the schema lacks is as much a lie as the other way round."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "nullable":
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(field) for name, field in value.items()}
        elif key in ("enum", "default", "example", "examples"):
            out[key] = value
        elif key == "oneOf":
            # drf-spectacular writes a blank URL as oneOf [uri, maxLength 0]; without a uri
            # format checker "" matches both, so read its alternatives as alternatives.
            out["anyOf"] = to_json_schema(value)
        else:
            out[key] = to_json_schema(value)
    if "properties" in node:
        out.setdefault("additionalProperties", False)
    return {"anyOf": [{"type": "null"}, out]} if node.get("nullable") else out


# Response headers that tell a client what to do: each sent must be documented.
SIGNAL_HEADERS = {
    "retry-after",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "ratelimit-policy",
    "deprecation",
    "sunset",
}


class Contract:
    """Checks requests and answers against the schema; remembers which operations answered
    with what, and every mismatch (so one run shows them all)."""

    def __init__(self, schema: dict):
        self.schema = schema
        self.components = to_json_schema(schema["components"])
        self.operations = {
            (method.upper(), path)
            for path, operations in schema["paths"].items()
            for method in operations
            if method in METHODS
        }
        # The most literal template first: ``versions/{number}/yank`` before ``{ref}``.
        self.templates = sorted(schema["paths"], key=lambda p: (-p.count("/"), p.count("{")))
        self.answered: dict[tuple[str, str], set[int]] = defaultdict(set)
        self.problems: list[str] = []

    def operation(self, method: str, url: str) -> tuple[str, dict] | tuple[None, None]:
        path = url.split("?", 1)[0]
        for template in self.templates:
            pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
            operation = self.schema["paths"][template].get(method.lower())
            if operation is not None and re.match(pattern, path):
                return template, operation
        return None, None

    def _mismatches(self, schema: dict, value) -> list[str]:
        root = {"allOf": [to_json_schema(schema)], "components": self.components}
        validator = jsonschema.Draft7Validator(
            root, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
        )
        return [
            f"at {'/'.join(str(p) for p in e.absolute_path) or '(body)'}: {e.message[:300]}"
            for e in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
        ]

    def check_parameters(self, method: str, url: str, query: dict, headers: list[str]) -> None:
        """Each query parameter and header we send is one the operation documents."""
        _template, operation = self.operation(method, url)
        if operation is None:
            return  # check() says so
        names = {(p["in"], p["name"].lower()) for p in operation.get("parameters", [])}
        sent = [("query", name.lower()) for name in query]
        sent += [("header", name.lower()) for name in headers]
        for where, name in sent:
            if (where, name) not in names:
                self.problems.append(f"{method} {url}: the schema documents no {where} {name}")

    def check_request(self, method: str, url: str, body) -> None:
        _template, operation = self.operation(method, url)
        if operation is None:
            return  # check() says so
        content = operation.get("requestBody", {}).get("content", {})
        if "application/json" not in content:
            self.problems.append(f"{method} {url}: the schema documents no JSON body; sent one")
            return
        for problem in self._mismatches(content["application/json"]["schema"], body):
            self.problems.append(f"{method} {url} request {problem}")

    def check(self, response, method: str, url: str) -> None:
        label = f"{method} {url} -> {response.status_code}"
        template, operation = self.operation(method, url)
        if operation is None:
            self.problems.append(f"{label}: the schema has no such operation")
            return
        status = response.status_code
        declared = operation["responses"].get(str(status))
        if declared is None and status >= 400:
            declared = operation["responses"].get("default")
        if declared is None:
            listed = ", ".join(sorted(operation["responses"]))
            self.problems.append(f"{label}: the schema lists only {listed}")
            return
        # Headers a client acts on must be in the schema where they are sent (an error answer
        # is checked for Retry-After only: the rate limit's headers are documented on success).
        watched = SIGNAL_HEADERS if status < 400 else {"retry-after"}
        documented = {name.lower() for name in declared.get("headers", {})}
        for name in sorted(watched & {h.lower() for h in response.headers} - documented):
            self.problems.append(f"{label}: the {name} header is not in the schema")
        content = declared.get("content")
        media = response.get("Content-Type", "").split(";")[0]
        if not content:
            if response.content:
                self.problems.append(f"{label}: the schema says no body; got {response.content!r}")
                return
        elif media not in content:
            self.problems.append(f"{label}: {media!r} is not among {sorted(content)}")
            return
        elif media == "application/json":
            problems = self._mismatches(content[media]["schema"], response.json())
            self.problems += [f"{label}: {problem}" for problem in problems]
            if problems:
                return
        self.answered[(method, template)].add(status)


@pytest.fixture
def contract(db) -> Contract:
    return Contract(APIClient().get("/api/schema/", {"format": "json"}).json())


@pytest.fixture
def call(contract):
    """``call(client, method, url, expect, body)``: the answer's JSON, after checking the
    status is ``expect`` and the request and answer match the schema."""

    def call(client, method: str, url: str, expect: int, body=None, **extra):
        query = dict(parse_qsl(urlsplit(url).query))
        query.update(body if method == "GET" and body else {})
        headers = [
            name[5:].replace("_", "-")
            for name in extra
            if name.startswith("HTTP_") and name != "HTTP_CONTENT_RANGE"
        ]
        contract.check_parameters(method, url, query, headers)
        if method == "GET":
            response = client.get(url, body, **extra)
        elif body is None:
            response = client.generic(method, url, **extra)
        else:
            contract.check_request(method, url, body)
            response = getattr(client, method.lower())(url, body, format="json", **extra)
        if response.status_code != expect:
            got = response.content[:300]
            contract.problems.append(f"{method} {url}: {response.status_code}, not {expect}: {got}")
        contract.check(response, method, url)
        return response.json() if response.get("Content-Type") == "application/json" else None

    return call


NOVEMBER = date(2026, 11, 1)


def small_mlp(tenant):
    """acme's ``mlp``: version 1, safetensors of a tiny MLP, as validation leaves it."""
    torch.manual_seed(0)
    config = {"in_features": 4, "hidden": [8], "classes": 3}
    return ready_safetensors(
        tenant,
        "mlp",
        save_tensors(MLP(**config).state_dict()),
        sig=mlp_signature([4], classes=3),
        architecture="mlp",
        config=config,
    )


def test_an_unfinished_upload_and_a_new_alias_answer_null_as_the_schema_allows(
    contract, call, tenant, api
):
    """An upload's ``version`` before completion and an alias's first move's
    ``from_version`` are null; the schema said integer, so a generated client failed."""
    ready_version(tenant, "clf", export(Classifier()), "pt2", signature(4, 3))
    start = {"filename": "clf.pt2", "format": "pt2", "size": 4, "sha256": "0" * 64}

    upload = call(api, "POST", "/api/v1/models/acme/clf/uploads", 201, start)
    call(api, "PUT", "/api/v1/models/acme/clf/aliases/production", 200, {"version": 1})
    history = call(api, "GET", "/api/v1/models/acme/clf/aliases/production", 200)

    assert upload["version"] is None and history[0]["from_version"] is None
    assert not contract.problems, "\n".join(contract.problems)


def test_an_invoice_with_a_credits_line_reads_as_the_schema_says(contract, call, tenant, outsider):
    """A credits line names no model (null; the schema said a string), and periods are
    ``YYYY-MM`` (the schema said a full date)."""
    spend(outsider, listed(tenant, "paid"), 3)
    credit_create(consumer=outsider, amount=Decimal("0.30"), reason="x", actor=accounts.SYSTEM)
    outsider.usage.update(period=NOVEMBER)
    invoice = invoice_build(consumer=outsider, period=NOVEMBER, currency="usd")
    Transfer.objects.create(invoice=invoice, publisher=tenant, amount_cents=36, currency="usd")

    shown = call(key_client(outsider), "GET", f"/api/v1/invoices/{invoice.public_id}", 200)
    transfers = call(key_client(tenant), "GET", "/api/v1/transfers", 200)

    assert shown["period"] == transfers["results"][0]["invoice_period"] == "2026-11"
    assert None in [line["model"] for line in shown["lines"]]
    assert not contract.problems, "\n".join(contract.problems)


def test_withdrawing_a_download_grant_answers_200_with_the_entitlement_as_documented(
    contract, call, tenant, outsider, api
):
    listed_classifier(tenant, outsider)
    entitlement = Entitlement.objects.get(tenant=outsider)
    grant = f"/api/v1/models/acme/clf/entitlements/{entitlement.public_id}/download"
    call(api, "POST", grant, 200)

    withdrawn = call(api, "DELETE", grant, 200)

    assert withdrawn["can_download"] is False
    assert not contract.problems, "\n".join(contract.problems)


def test_unsharing_names_the_organisation_in_the_query_as_the_schema_says(
    contract, call, tenant, outsider, api
):
    """OpenAPI gives a DELETE no body, so the schema could not say which organisation to
    stop sharing with; a generated client got 400 whatever it did."""
    registry.model_create(tenant=tenant, name="inhouse", actor=accounts.SYSTEM)
    call(api, "POST", "/api/v1/models/acme/inhouse/shares", 201, {"tenant": "globex"})

    call(api, "DELETE", "/api/v1/models/acme/inhouse/shares?tenant=globex", 204)

    assert not Entitlement.objects.filter(tenant=outsider, revoked_at=None).exists()
    assert not contract.problems, "\n".join(contract.problems)


def test_a_retried_compression_job_is_a_documented_200_with_a_documented_header(
    contract, call, tenant, api
):
    small_mlp(tenant)
    body = {"model": "acme/mlp", "version": "1", "method": "quantize", "params": {}}

    first = call(api, "POST", "/api/v1/compression-jobs", 201, body, HTTP_IDEMPOTENCY_KEY="a")
    again = call(api, "POST", "/api/v1/compression-jobs", 200, body, HTTP_IDEMPOTENCY_KEY="a")

    assert again["id"] == first["id"]
    assert not contract.problems, "\n".join(contract.problems)


def test_the_key_and_audit_event_filters_are_documented(contract, call, api):
    active = call(api, "GET", "/api/v1/keys", 200, {"status": "active"})
    events = call(api, "GET", "/api/v1/audit-events", 200, {"action": "api_key.create"})

    assert active["results"] and events["results"]
    assert not contract.problems, "\n".join(contract.problems)


def test_the_public_catalogue_is_documented_as_needing_no_key(contract):
    """It answers anyone; the schema said a key or a session was required, so generated
    clients and Swagger UI insisted on one. Everything else still needs one."""
    paths = contract.schema["paths"]
    for path in ("/api/v1/catalogue", "/api/v1/catalogue/{owner}/{name}"):
        assert {} in paths[path]["get"]["security"], path
    assert {} not in paths["/api/v1/predictions"]["post"]["security"]
    assert APIClient().get("/api/v1/catalogue").status_code == 200


STATUS_FILTERS = {
    "/api/v1/predictions": Prediction.Status.values,
    "/api/v1/compression-jobs": CompressionJob.Status.values,
    "/api/v1/keys": ["active", "expired", "revoked"],
    "/api/v1/models/{owner}/{name}/access-requests": AccessRequest.Status.values,
}


def test_every_status_filter_is_an_enum_of_its_states(contract):
    """A generated client offers the states to choose from; a plain string let it send
    ``cancelled`` to predictions (which say ``canceled``) and get an empty list."""
    filters = {
        path: parameter["schema"].get("enum")
        for path, operations in contract.schema["paths"].items()
        for parameter in operations.get("get", {}).get("parameters", [])
        if (parameter["in"], parameter["name"]) == ("query", "status")
    }

    assert filters.keys() == STATUS_FILTERS.keys()
    for path, states in STATUS_FILTERS.items():
        assert sorted(filters[path] or []) == sorted(states), path


def test_an_unknown_status_is_a_400_naming_the_states(contract, call, tenant, api):
    registry.model_create(tenant=tenant, name="clf", actor=accounts.SYSTEM)

    for path, states in STATUS_FILTERS.items():
        url = path.format(owner="acme", name="clf")
        refused = call(api, "GET", url, 400, {"status": "bogus"})
        call(api, "GET", url, 200, {"status": states[-1]})

        assert refused["errors"] == {
            "status": [f"Filter by one of {', '.join(states)}, or leave status out for all."]
        }
    assert not contract.problems, "\n".join(contract.problems)


def test_error_answers_are_in_the_documented_shape(contract, tenant, api):
    """Every operation called with made-up names and an empty body, signed out and with a
    key: what comes back (401, 404, 400, ...) is what the schema says errors look like."""
    for method, template in sorted(contract.operations):
        operation = contract.schema["paths"][template][method.lower()]
        url = template.replace("{owner}", "acme")
        for parameter in operation.get("parameters", []):
            made_up = "999" if parameter["schema"].get("type") == "integer" else "nope"
            url = url.replace(f"{{{parameter['name']}}}", made_up)
        for client in (APIClient(), api):
            body = {} if method in ("POST", "PUT", "PATCH") else None
            response = client.generic(
                method, url, "{}" if body is not None else "", content_type="application/json"
            )
            assert response.status_code < 500, f"{method} {url}: {response.content[:300]}"
            contract.check(response, method, url)
    assert not contract.problems, "\n".join(contract.problems)


def test_a_method_an_endpoint_does_not_take_is_a_documented_json_405(contract, api):
    response = api.delete("/api/v1/organisation")

    assert response.status_code == 405 and response.json()["code"] == "method_not_allowed"
    contract.check(response, "GET", "/api/v1/organisation")  # the path's error shape
    assert not contract.problems, contract.problems


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/nope",
        "/api/v1/",
        "/api/nope",
        "/api/v1/models/acme/a%2Fb",  # the name's slash, quoted, still splits the path
        "/api/v1/models/acme/clf/versions/two/yank",  # the schema's {number} is an integer
    ],
)
def test_an_unknown_url_under_the_api_is_a_json_404(url):
    response = APIClient().get(url)

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == "not_found" and response.json()["detail"]


def test_an_unknown_page_outside_the_api_is_still_a_page(client):
    response = client.get("/nope")

    assert response.status_code == 404 and response["Content-Type"].startswith("text/html")


def _boom(*args, **kwargs):
    raise RuntimeError("a bug")


def test_an_unexpected_error_under_the_api_is_a_documented_json_500(contract, api, monkeypatch):
    from accounts.api.views import OrganisationView

    monkeypatch.setattr(OrganisationView, "get", _boom)
    api.raise_request_exception = False

    response = api.get("/api/v1/organisation")

    assert response.status_code == 500 and response["Content-Type"] == "application/json"
    assert response.json()["code"] == "server_error" and "a bug" not in response.json()["detail"]
    contract.check(response, "GET", "/api/v1/organisation")
    assert not contract.problems, contract.problems


def test_an_unexpected_error_under_v2_is_a_protocol_500(monkeypatch):
    from inference.api import oip

    monkeypatch.setattr(oip.ServerMetadataView, "get", _boom)
    client = APIClient(raise_request_exception=False)

    response = client.get("/v2")

    assert response.status_code == 500 and response["Content-Type"] == "application/json"
    assert set(response.json()) == {"error"}


def test_an_unexpected_error_on_a_page_is_still_a_page(client, monkeypatch):
    from accounts import views

    monkeypatch.setattr(views, "render", _boom)  # the landing page's
    client.raise_request_exception = False

    response = client.get("/")

    assert response.status_code == 500 and response["Content-Type"].startswith("text/html")


def succeed(prediction_id: str) -> None:
    """What the worker does with a queued prediction: claim, run, write the result."""
    prediction = Prediction.objects.get(public_id=prediction_id)
    assert inference.prediction_claim(prediction)
    output = tensors.encode({"output": np.array([[0.1, float("nan"), 2.0]], dtype=np.float32)})
    assert inference.prediction_succeed(prediction, output=output, compute_ms=3.5)


def test_every_operation_answers_as_the_schema_says(
    contract, call, tenant, outsider, bob, api, monkeypatch
):
    """One story through every operation the schema lists, as a publisher (acme) and a
    consumer (globex), each answer checked; an operation the story does not reach (a new
    endpoint) fails the test until the story calls it."""
    consumer = key_client(outsider)
    anonymous = APIClient()
    clf = ready_version(tenant, "clf", export(Classifier()), "pt2", signature(4, 3))
    small_mlp(tenant)
    v1 = "/api/v1"

    # --- the organisation, members, invitations, keys, audit ------------------------------
    call(api, "GET", f"{v1}/organisation", 200)
    members = call(api, "GET", f"{v1}/members", 200)
    bob_id = next(m["id"] for m in members["results"] if m["email"] == bob.email)
    call(api, "GET", f"{v1}/members/{bob_id}", 200)
    call(api, "PATCH", f"{v1}/members/{bob_id}", 200, {"role": "viewer"})
    call(api, "DELETE", f"{v1}/members/{bob_id}", 204)
    invitation = call(api, "POST", f"{v1}/invitations", 201, {"email": "dave@acme.example"})
    call(api, "GET", f"{v1}/invitations", 200)
    call(api, "GET", f"{v1}/invitations/{invitation['id']}", 200)
    call(api, "POST", f"{v1}/invitations/{invitation['id']}/revoke", 200)
    key = call(api, "POST", f"{v1}/keys", 201, {"name": "ci", "scopes": ["models:read"]})
    call(api, "GET", f"{v1}/keys", 200, {"status": "active"})
    call(api, "GET", f"{v1}/keys/{key['id']}", 200)
    call(api, "PUT", f"{v1}/keys/{key['id']}/budget", 200, {"monthly_limit": "10.00"})
    call(api, "GET", f"{v1}/keys/{key['id']}/budget", 200)
    call(api, "POST", f"{v1}/keys/{key['id']}/rotate", 201)
    call(api, "POST", f"{v1}/keys/{key['id']}/revoke", 200)
    call(api, "GET", f"{v1}/audit-events", 200, {"action": "api_key.create"})

    # --- models, uploads, versions, aliases -------------------------------------------------
    call(api, "POST", f"{v1}/models", 201, {"name": "fresh", "task": "other"})
    call(api, "GET", f"{v1}/models", 200)
    call(api, "GET", f"{v1}/models/acme/clf", 200)
    call(api, "PATCH", f"{v1}/models/acme/clf", 200, {"description": "Three classes."})
    data = export(Classifier())
    start = {"filename": "clf.pt2", "format": "pt2", "size": len(data), "sha256": sha256(data)}
    upload = call(api, "POST", f"{v1}/models/acme/fresh/uploads", 201, start)
    put_all(api, upload, data)
    call(
        api,
        "PUT",
        upload["upload_url"],
        200,
        None,
        data=data[: upload["chunk_size"]],
        content_type="application/octet-stream",
        HTTP_CONTENT_RANGE=f"bytes 0-{min(upload['chunk_size'], len(data)) - 1}/{len(data)}",
    )
    call(api, "GET", upload["upload_url"], 200)
    call(api, "POST", f"{upload['upload_url']}/complete", 201)
    abandoned = call(api, "POST", f"{v1}/models/acme/fresh/uploads", 201, start)
    call(api, "DELETE", abandoned["upload_url"], 204)
    call(api, "GET", f"{v1}/models/acme/clf/versions", 200)
    call(api, "GET", f"{v1}/models/acme/clf/versions/1", 200)
    call(api, "GET", f"{v1}/models/acme/clf/versions/1/download", 200)
    call(api, "PUT", f"{v1}/models/acme/clf/aliases/production", 200, {"version": 1})
    call(api, "GET", f"{v1}/models/acme/clf/aliases", 200)
    call(api, "GET", f"{v1}/models/acme/clf/aliases/production", 200)

    # --- listings, the catalogue, subscriptions, shares, access requests ------------------
    listing = {"visibility": "public", "title": "Classifier", "price_per_call": "0"}
    call(api, "PUT", f"{v1}/models/acme/clf/listing", 201, listing)
    call(api, "PUT", f"{v1}/models/acme/clf/listing", 200, {"summary": "Three classes."})
    call(api, "GET", f"{v1}/models/acme/clf/listing", 200)
    call(anonymous, "GET", f"{v1}/catalogue", 200)
    call(consumer, "GET", f"{v1}/catalogue/acme/clf", 200)
    subscription = call(consumer, "POST", f"{v1}/catalogue/acme/clf/subscribe", 201)
    call(consumer, "POST", f"{v1}/catalogue/acme/clf/subscribe", 200)
    call(consumer, "GET", f"{v1}/subscriptions", 200)
    call(consumer, "GET", f"{v1}/subscriptions/{subscription['id']}", 200)
    call(api, "GET", f"{v1}/models/acme/clf/entitlements", 200)
    grant = f"{v1}/models/acme/clf/entitlements/{subscription['id']}/download"
    call(api, "POST", grant, 200)
    call(api, "DELETE", grant, 200)
    call(api, "DELETE", f"{v1}/models/acme/clf/entitlements/{subscription['id']}", 204)
    call(consumer, "POST", f"{v1}/catalogue/acme/clf/subscribe", 201)
    mine = call(consumer, "GET", f"{v1}/subscriptions", 200)["results"][0]
    call(consumer, "DELETE", f"{v1}/subscriptions/{mine['id']}", 204)
    call(api, "POST", f"{v1}/models/acme/fresh/shares", 201, {"tenant": "globex"})
    call(api, "POST", f"{v1}/models/acme/fresh/shares", 200, {"tenant": "globex"})
    call(api, "DELETE", f"{v1}/models/acme/fresh/shares?tenant=globex", 204)
    gated = {"visibility": "public", "title": "Gated", "gated": True}
    call(api, "PUT", f"{v1}/models/acme/mlp/listing", 201, gated)
    asked = call(consumer, "POST", f"{v1}/catalogue/acme/mlp/request-access", 201, {})
    call(consumer, "POST", f"{v1}/catalogue/acme/mlp/request-access", 200, {"message": "again"})
    call(api, "GET", f"{v1}/models/acme/mlp/access-requests", 200)
    call(api, "POST", f"{v1}/access-requests/{asked['id']}/decline", 200)
    asked = call(consumer, "POST", f"{v1}/catalogue/acme/mlp/request-access", 201, {})
    call(api, "POST", f"{v1}/access-requests/{asked['id']}/approve", 200)
    call(api, "POST", f"{v1}/access-requests/{asked['id']}/withdraw", 200)
    call(api, "DELETE", f"{v1}/models/acme/mlp/listing", 204)

    # --- predictions --------------------------------------------------------------------
    run = {"model": "acme/clf", "input": [[1.0, 2.0, 3.0, 4.0]]}
    queued = call(api, "POST", f"{v1}/predictions", 201, run)
    succeed(queued["id"])
    call(api, "GET", f"{v1}/predictions/{queued['id']}", 200)
    call(api, "GET", f"{v1}/predictions", 200)
    cancelled = call(api, "POST", f"{v1}/predictions", 201, run)
    call(api, "POST", f"{v1}/predictions/{cancelled['id']}/cancel", 200)
    once = {"HTTP_IDEMPOTENCY_KEY": "run-1"}
    keyed = call(api, "POST", f"{v1}/predictions", 201, run, **once)
    assert call(api, "POST", f"{v1}/predictions", 200, run, **once)["id"] == keyed["id"]

    # --- compression jobs -----------------------------------------------------------------
    job_body = {"model": "acme/mlp", "version": "1", "method": "quantize", "params": {}}
    retry = {"HTTP_IDEMPOTENCY_KEY": "job-1"}
    job = call(api, "POST", f"{v1}/compression-jobs", 201, job_body, **retry)
    call(api, "POST", f"{v1}/compression-jobs", 200, job_body, **retry)  # the same job
    row = CompressionJob.objects.get(public_id=job["id"])
    assert jobs.job_claim(row)
    made = jobs.job_succeed(
        row,
        artifact=artifact_create(tenant=tenant, chunks=[b"weights"]),
        format="safetensors",
        architecture="mlp",
        architecture_config={"compression": "dynamic_int8"},
        report={"fidelity": {"agreement": 0.995, "cosine": 0.999}},
        compute_seconds=1.5,
        actor=accounts.SYSTEM,
    )
    registry.version_record_validation(version=made, ok=True, signature=mlp_signature([4], 3))
    call(api, "GET", f"{v1}/compression-jobs", 200)
    call(api, "GET", f"{v1}/compression-jobs/{job['id']}", 200)
    promote = {"alias": "staging", "min_agreement": 0.99}
    call(api, "POST", f"{v1}/compression-jobs/{job['id']}/promote", 200, promote)
    other = call(
        api, "POST", f"{v1}/compression-jobs", 201, {**job_body, "params": {"scheme": "fp16"}}
    )
    call(api, "POST", f"{v1}/compression-jobs/{other['id']}/cancel", 200)
    sunset = {"sunset_at": (timezone.now() + timedelta(days=30)).isoformat()}
    call(api, "POST", f"{v1}/models/acme/mlp/versions/1/deprecate", 200, sunset)
    call(api, "POST", f"{v1}/models/acme/mlp/versions/1/yank", 200, {"reason": "worse"})

    # --- abuse flags, money ---------------------------------------------------------------
    flag = AbuseFlag.objects.create(
        tenant=tenant,
        model=clf.model,
        consumer=outsider,
        key_prefix="mm_live_abcd",
        window_start=timezone.now(),
        rejected=10,
        predictions=100,
        distinct_inputs=90,
    )
    call(api, "GET", f"{v1}/webhooks/secret", 200)
    call(api, "POST", f"{v1}/webhooks/secret/rotate", 200)
    call(api, "GET", f"{v1}/abuse-flags", 200)
    call(api, "GET", f"{v1}/abuse-flags/{flag.public_id}", 200)
    last_month = (timezone.now().date().replace(day=1) - timedelta(days=1)).replace(day=1)
    spend(outsider, listed(tenant, "paid"), 3)
    credit_create(consumer=outsider, amount=Decimal("0.30"), reason="x", actor=accounts.SYSTEM)
    outsider.usage.update(period=last_month)
    invoice = invoice_build(consumer=outsider, period=last_month, currency="usd")
    Transfer.objects.create(invoice=invoice, publisher=tenant, amount_cents=0, currency="usd")
    call(consumer, "GET", f"{v1}/usage", 200, {"period": f"{last_month:%Y-%m}"})
    call(api, "GET", f"{v1}/usage", 200)
    call(consumer, "GET", f"{v1}/invoices", 200)
    call(consumer, "GET", f"{v1}/invoices/{invoice.public_id}", 200)
    call(api, "GET", f"{v1}/transfers", 200)
    call(api, "GET", f"{v1}/billing/settings", 200)
    call(api, "PUT", f"{v1}/billing/settings", 200, {"spend_cap": "100.00"})
    call(api, "PUT", f"{v1}/billing/settings", 200, {"spend_cap": None})

    # --- the Open Inference Protocol (/v2) -------------------------------------------------
    def run_now(prediction, timeout):  # the worker's part, done here
        succeed(prediction.public_id)
        prediction.refresh_from_db()
        return prediction

    monkeypatch.setattr(inference, "prediction_wait", run_now)
    call(anonymous, "GET", "/v2", 200)
    call(anonymous, "GET", "/v2/health/live", 200)
    call(anonymous, "GET", "/v2/health/ready", 200)
    for base in ("/v2/models/acme/clf", "/v2/models/acme/clf/versions/1"):
        call(api, "GET", base, 200)
        call(api, "GET", f"{base}/ready", 200)
        tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
        call(api, "POST", f"{base}/infer", 200, {"inputs": [tensor]})

    assert not contract.problems, "\n".join(contract.problems)
    unanswered = sorted(
        f"{method} {path}"
        for method, path in contract.operations
        if not any(s < 300 for s in contract.answered[method, path])
    )
    assert not unanswered, "no validated answer for:\n" + "\n".join(unanswered)
