"""The playground and the recent predictions pages as members see them: acme (alice, bob)
publishes, globex (charlie) is another organisation, a consumer or an outsider. Running a
prediction is the API's job; the browser test runs one through the real stack."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta
from decimal import Decimal

import numpy as np
import pytest
from django.test import Client

from accounts import services as accounts
from accounts.models import Role, Tenant
from billing.services import usage_record_create
from inference.models import Prediction, WebhookDelivery
from marketplace import listings
from marketplace import services as registry
from marketplace.models import Alias, AliasMove, ModelVersion, Task
from marketplace.vault.store import artifact_create
from tests.conftest import make_user, statements

pytestmark = pytest.mark.django_db

IMAGE_SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
    "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 6]}],
}
TABULAR_SIGNATURE = {
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}],
}


def version(model, number: int, signature: dict, status: str = "ready", **fields) -> ModelVersion:
    return ModelVersion.objects.create(
        model=model,
        number=number,
        format="pt2",
        status=status,
        signature=signature,
        artifact=artifact_create(tenant=model.tenant, chunks=[b"weights"]),
        **fields,
    )


def point(alias: str, to: ModelVersion) -> None:
    made = Alias.objects.create(model=to.model, name=alias, version=to)
    AliasMove.objects.create(alias=made, to_version=to, actor_label="test")


def member_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def textareas(response) -> dict[str, np.ndarray]:
    """The prefilled inputs of a playground page, parsed as the browser would."""
    found = re.findall(
        r'<textarea[^>]*data-input="([^"]+)"[^>]*>(.*?)</textarea>', response.content.decode(), re.S
    )
    return {name: np.array(json.loads(html.unescape(text))) for name, text in found}


@pytest.fixture
def strokes(tenant):
    """acme/strokes: an image classifier with a ready version under ``production``."""
    model = registry.model_create(
        tenant=tenant,
        name="strokes",
        task=Task.IMAGE_CLASSIFICATION,
        description="0 blank, 1 horizontal",
        actor=accounts.SYSTEM,
    )
    point("production", version(model, 1, IMAGE_SIGNATURE))
    return model


@pytest.fixture
def tabular(tenant):
    model = registry.model_create(
        tenant=tenant, name="churn", task=Task.TABULAR_CLASSIFICATION, actor=accounts.SYSTEM
    )
    version(model, 1, TABULAR_SIGNATURE)
    return model


@pytest.fixture
def alice_client(alice, tenant) -> Client:
    return member_client(alice)


@pytest.fixture
def charlie_client(charlie, outsider) -> Client:
    return member_client(charlie)


def published(model, visibility: str = "public"):
    return listings.listing_publish(
        model=model, actor=accounts.SYSTEM, visibility=visibility, title=model.name
    )


# --- the playground ---------------------------------------------------------------------------


def test_playground_builds_an_image_form_from_the_signature(alice_client, strokes):
    response = alice_client.get("/dashboard/playground/acme/strokes/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "data-playground" in page and 'data-model="acme/strokes"' in page
    assert 'data-version="production"' in page
    assert 'data-classifier-output="output"' in page
    assert "FP32[-1, 1, 28, 28]" in page
    example = textareas(response)["x"]
    assert example.shape == (1, 1, 28, 28) and not example.any()  # black, until a picture
    assert 'data-channels="1" data-height="28" data-width="28"' in page
    assert 'type="file"' in page and 'accept="image/*"' in page
    assert "0 blank, 1 horizontal" in page  # the description names the classes


def test_tabular_model_gets_a_json_input_of_its_shape_and_no_image_upload(alice_client, tabular):
    response = alice_client.get("/dashboard/playground/acme/churn/")

    example = textareas(response)["features"]
    assert example.shape == (1, 4) and example.any() and abs(example).max() <= 1
    assert "data-image" not in response.content.decode()


def test_the_publishers_example_prefills_the_form(alice_client, tenant):
    model = registry.model_create(tenant=tenant, name="adder", actor=accounts.SYSTEM)
    version(model, 1, TABULAR_SIGNATURE, example_input={"features": [[1, 2.5, 3, 4]]})

    response = alice_client.get("/dashboard/playground/acme/adder/")

    assert textareas(response)["features"].tolist() == [[1, 2.5, 3, 4]]
    assert 'data-classifier-output=""' in response.content.decode()  # task "other"


def test_the_publishers_example_is_shown_as_given_and_nan_as_null(alice_client, tenant):
    # It was rounded to 4 places (1e-05 ran as 0) and NaN written as nan, which is not JSON.
    model = registry.model_create(tenant=tenant, name="exact", actor=accounts.SYSTEM)
    example = {"features": [[1e-05, 0.123456, None, 123456.79]]}
    version(model, 1, TABULAR_SIGNATURE, example_input=example)

    response = alice_client.get("/dashboard/playground/acme/exact/")

    shown = re.search(
        r'data-input="features"[^>]*>(.*?)</textarea>', response.content.decode(), re.S
    )
    assert json.loads(html.unescape(shown.group(1))) == [[1e-05, 0.123456, None, 123456.79]]


def test_version_picker_offers_aliases_and_runnable_versions_only(alice_client, strokes):
    version(strokes, 2, IMAGE_SIGNATURE, status="failed")
    staging = version(strokes, 3, IMAGE_SIGNATURE, label="rc1")
    point("staging", staging)

    page = alice_client.get("/dashboard/playground/acme/strokes/").content.decode()
    picker = page.split('<select id="pg-version"')[1].split("</select>")[0]
    options = re.findall(r'<option value="([^"]+)"[^>]*>([^<]+)</option>', picker)

    assert options == [
        ("production", "production → v1"),
        ("staging", "staging → v3"),
        ("3", "v3 (rc1)"),
        ("1", "v1"),
    ]
    chosen = alice_client.get("/dashboard/playground/acme/strokes/?version=3").content.decode()
    assert 'data-version="3"' in chosen and '<option value="3" selected>' in chosen


def test_a_version_that_is_not_runnable_falls_back_with_the_reason(alice_client, strokes):
    version(strokes, 2, IMAGE_SIGNATURE, status="failed", failure_reason="bad file")

    page = alice_client.get("/dashboard/playground/acme/strokes/?version=2").content.decode()

    assert "Version 2 of acme/strokes is failed: bad file." in page
    assert 'data-version="production"' in page


def test_model_without_a_ready_version_says_so(alice_client, tenant):
    model = registry.model_create(tenant=tenant, name="fresh", actor=accounts.SYSTEM)
    version(model, 1, IMAGE_SIGNATURE, status="validating")

    page = alice_client.get("/dashboard/playground/acme/fresh/").content.decode()

    assert "acme/fresh has no ready version yet." in page and "data-playground" not in page


def test_outsider_gets_404_for_a_private_model_and_an_unknown_one(charlie_client, strokes):
    assert charlie_client.get("/dashboard/playground/acme/strokes/").status_code == 404
    assert charlie_client.get("/dashboard/playground/acme/nothing/").status_code == 404
    published(strokes, visibility="private")
    assert charlie_client.get("/dashboard/playground/acme/strokes/").status_code == 404


def test_consumer_without_a_subscription_to_a_public_model_is_asked_to_subscribe(
    charlie_client, strokes
):
    published(strokes)

    response = charlie_client.get("/dashboard/playground/acme/strokes/")

    page = response.content.decode()
    assert response.status_code == 200
    assert "Subscribe to it first" in page
    assert 'href="/catalogue/acme/strokes/"' in page
    assert "data-playground" not in page


def test_subscribed_consumer_gets_the_playground(charlie_client, charlie, outsider, strokes):
    listing = published(strokes)
    listings.listing_subscribe(listing=listing, tenant=outsider, actor=accounts.Actor(user=charlie))

    page = charlie_client.get("/dashboard/playground/acme/strokes/").content.decode()

    assert "data-playground" in page and "by Acme" in page
    assert "This listing is free." in page
    index = charlie_client.get("/dashboard/playground/").content.decode()
    assert 'href="/dashboard/playground/acme/strokes/"' in index


def test_a_role_without_the_inference_scope_is_told_who_can_run(tenant, strokes):
    viewer = make_user("vera@acme.example")
    accounts.membership_add(tenant=tenant, user=viewer, role=Role.VIEWER, actor=accounts.SYSTEM)

    page = member_client(viewer).get("/dashboard/playground/acme/strokes/").content.decode()

    assert "data-playground" not in page
    assert "Your role (viewer) cannot run models" in page


def test_signed_out_visitor_is_sent_to_sign_in(client, strokes):
    response = client.get("/dashboard/playground/acme/strokes/")
    assert response.status_code == 302 and response.url.startswith("/login/")


def test_the_model_page_links_to_its_playground(alice_client, strokes):
    page = alice_client.get("/dashboard/models/strokes/").content.decode()
    assert 'href="/dashboard/playground/acme/strokes/"' in page


# --- recent predictions -----------------------------------------------------------------------


def prediction(tenant: Tenant, model, status: str = "succeeded", **fields) -> Prediction:
    return Prediction.objects.create(
        tenant=tenant, model=model, version=model.versions.get(number=1), status=status, **fields
    )


def test_predictions_list_shows_only_the_tenants_predictions(
    alice_client, charlie_client, outsider, strokes
):
    ours = prediction(strokes.tenant, strokes)
    theirs = prediction(outsider, strokes)
    with statements() as sql:
        page = alice_client.get("/dashboard/predictions/").content.decode()
    # Neither inputs nor outputs are shown, and each can be megabytes.
    assert not [q for q in sql if "input_data" in q or "output_data" in q], sql
    other = charlie_client.get("/dashboard/predictions/").content.decode()

    assert ours.public_id in page and theirs.public_id not in page
    assert theirs.public_id in other and ours.public_id not in other
    rows = charlie_client.get("/dashboard/predictions/rows/").content.decode()
    assert ours.public_id not in rows


def test_predictions_show_status_latency_cost_error_and_webhook_attempts(alice_client, strokes):
    done = prediction(
        strokes.tenant,
        strokes,
        compute_ms=3.25,
        webhook_url="https://hooks.example/mm",
        webhook_events=["completed"],
    )
    Prediction.objects.filter(pk=done.pk).update(
        completed_at=done.created_at + timedelta(milliseconds=42)
    )
    usage_record_create(
        kind="prediction",
        source_id=done.public_id,
        consumer=strokes.tenant,
        model=strokes,
        compute_seconds=Decimal("0.00325"),
    )
    WebhookDelivery.objects.create(
        prediction=done,
        event="completed",
        webhook_id="msg_1",
        attempt=1,
        status_code=500,
        error="HTTP 500",
    )
    WebhookDelivery.objects.create(
        prediction=done,
        event="completed",
        webhook_id="msg_1",
        attempt=2,
        status_code=200,
        delivered=True,
    )
    failed = prediction(
        strokes.tenant, strokes, status="failed", error="The model raised an error: boom"
    )

    page = alice_client.get("/dashboard/predictions/").content.decode()

    row = _row(page, done.public_id)
    assert 'class="status succeeded"' in row and "42 ms" in row and "compute 3.25 ms" in row
    assert "0.00 USD" in row and "alice@acme.example" not in row  # as the billing page has it
    assert "2 attempts" in row and "HTTP 500" in row and ">500<" in row and ">200<" in row
    failed_row = _row(page, failed.public_id)
    assert "The model raised an error: boom" in failed_row and "not billed" in failed_row


def test_the_list_polls_only_while_a_prediction_is_pending(alice_client, strokes):
    prediction(strokes.tenant, strokes, status="queued")
    assert "every 2s" in alice_client.get("/dashboard/predictions/rows/").content.decode()

    Prediction.objects.update(status="succeeded")
    assert "every 2s" not in alice_client.get("/dashboard/predictions/rows/").content.decode()


def test_the_list_is_paginated_and_filtered_by_model(alice_client, strokes, tabular):
    made = [prediction(strokes.tenant, strokes) for _ in range(23)]
    churn = prediction(strokes.tenant, tabular)

    first = alice_client.get("/dashboard/predictions/?model=acme/strokes").content.decode()
    second = alice_client.get("/dashboard/predictions/?model=acme/strokes&page=2").content.decode()

    assert "Page 1 of 2" in first and churn.public_id not in first
    assert made[-1].public_id in first and made[0].public_id in second
    assert "Page 2 of 2" in second
    playground = alice_client.get("/dashboard/playground/acme/strokes/").content.decode()
    assert "model=acme%2Fstrokes" in playground and churn.public_id not in playground


@pytest.mark.parametrize("typed", ["strokes", "ACME/Strokes ", "acme/strokes!"])
def test_a_model_filter_that_is_no_reference_is_kept_and_explained(alice_client, strokes, typed):
    # It was dropped without a word: the field came back empty over the unfiltered list.
    page = alice_client.get("/dashboard/predictions/", {"model": typed}).content.decode()

    if typed.strip().lower() == "acme/strokes":  # only the case and spaces were off: taken
        assert 'value="acme/strokes"' in page and "is not one" not in page
    else:
        assert f'value="{typed.strip()}"' in page
        assert f"Filter by owner/name, e.g. acme-ai/strokes; &#x27;{typed.strip()}&#x27;" in page


def test_a_run_from_the_playground_is_listed_as_the_playground(alice_client, strokes):
    # Runs made with a session (the playground's) were recorded as "Predictions API".
    response = alice_client.post(
        "/api/v1/predictions",
        {"model": "acme/strokes", "input": {"x": np.zeros((1, 1, 28, 28)).tolist()}},
        content_type="application/json",
    )

    assert response.status_code == 201, response.content[:300]
    assert Prediction.objects.get().source == Prediction.Source.DASHBOARD
    page = alice_client.get("/dashboard/predictions/").content.decode()
    assert "Dashboard playground" in page


def _row(page: str, public_id: str) -> str:
    """The table row of one prediction (up to the next one's)."""
    return page.split(f'<tr id="prediction-{public_id}">')[1].split('<tr id="prediction-')[0]


@pytest.mark.parametrize("role", [Role.VIEWER, Role.BILLING])
def test_roles_without_the_inference_scope_see_no_predictions(tenant, classifier, role):
    """As in the API, which answers them 403: no list, no rows, none in the playground."""

    Prediction.objects.create(
        tenant=tenant,
        model=classifier.model,
        version=classifier,
        webhook_url="https://hooks.acme.example/secret-path",
    )
    member = make_user(f"{role}@acme.example")
    accounts.membership_add(tenant=tenant, user=member, role=role, actor=accounts.SYSTEM)
    client = Client()
    client.force_login(member)

    listed = client.get("/dashboard/predictions/")
    rows = client.get("/dashboard/predictions/rows/")
    playground = client.get("/dashboard/playground/acme/clf/")

    assert listed.status_code == 403 and rows.status_code == 403
    assert f"Your role ({role}) does not include &#x27;inference&#x27;" in listed.content.decode()
    assert playground.status_code == 200
    assert "secret-path" not in playground.content.decode()
    assert 'id="predictions"' not in playground.content.decode()
