"""The Open Inference Protocol (``/v2``) through the real stack, spoken by an unmodified
``tritonclient.http`` client over HTTP to a live server, with a Celery worker and sandboxed
model hosts behind it."""

from __future__ import annotations

import http.client
import json
from datetime import timedelta

import numpy as np
import pytest
import torch
import tritonclient.http as triton
from django.utils import timezone
from rest_framework.test import APIClient
from tritonclient.utils import InferenceServerException

from accounts.models import Scope
from billing.models import UsageRecord
from inference.models import Prediction
from marketplace.models import Alias, ModelVersion
from marketplace.vault.store import artifact_create
from tests.conftest import key_client
from tests.inference.conftest import Classifier

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

X = np.array([[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, 1.0, 1.0]], dtype=np.float32)


@pytest.fixture
def client(live_server):
    with triton.InferenceServerClient(url=live_server.url.removeprefix("http://")) as client:
        yield client


@pytest.fixture
def auth(api) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.secret}"}


def expected(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return Classifier()(torch.from_numpy(x)).numpy()


def infer_input(x: np.ndarray, *, binary: bool, name: str = "x") -> triton.InferInput:
    tensor = triton.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def binary(x: np.ndarray) -> list[triton.InferInput]:
    return [infer_input(x, binary=True)]


def failure(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def infer_json(api, path: str, body: dict):
    return api.post(path, data=json.dumps(body), content_type="application/json")


def test_health_and_server_metadata_need_no_key(client, api):
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "modelmarket" and metadata["version"]
    assert metadata["extensions"] == ["binary_tensor_data"]
    anonymous = APIClient()
    assert anonymous.get("/v2/health/live").json() == {"live": True}
    assert anonymous.get("/v2/health/ready").json() == {"ready": True}


def test_model_metadata_and_readiness(client, auth, api, tenant, classifier):
    Alias.objects.create(model=classifier.model, name="staging", version=classifier)
    ModelVersion.objects.create(
        model=classifier.model,
        number=2,
        format="pt2",
        status=ModelVersion.Status.VALIDATING,
        artifact=artifact_create(tenant=tenant, chunks=[b"not yet validated"]),
    )
    ModelVersion.objects.create(
        model=classifier.model,
        number=3,
        format="pt2",
        status=ModelVersion.Status.DEPRECATED,
        sunset_at=timezone.now() - timedelta(minutes=1),
        artifact=artifact_create(tenant=tenant, chunks=[b"withdrawn"]),
    )

    metadata = client.get_model_metadata("acme/clf", headers=auth)

    assert metadata == {
        "name": "acme/clf",
        "versions": ["1"],  # not 2 (validating) nor 3 (past its sunset)
        "platform": "pytorch",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}],
    }
    assert client.get_model_metadata("acme/clf", "1", headers=auth) == metadata
    assert client.get_model_metadata("acme/clf", "staging", headers=auth) == metadata
    assert client.is_model_ready("acme/clf", headers=auth)
    assert client.is_model_ready("acme/clf", "staging", headers=auth)
    assert not client.is_model_ready("acme/clf", "2", headers=auth)
    validating = api.get("/v2/models/acme/clf/versions/2/ready")
    assert validating.status_code == 400 and "validating" in validating.json()["error"]
    assert api.get("/v2/models/acme/clf/versions/9/ready").status_code == 404


def test_a_version_paused_by_the_breaker_is_not_ready(client, auth, api, classifier):
    """Ready said true while every infer was a 503 (KServe: ready "for inferencing")."""
    from inference import limits

    limits.breaker_trip(classifier.pk, "The model did not answer before its deadline.", 30)
    try:
        paused = api.get("/v2/models/acme/clf/ready")
    finally:
        limits.realtime.client().delete(limits.breaker_key(classifier.pk))

    assert paused.status_code == 400
    assert "acme/clf version 1 is paused for" in paused.json()["error"]
    assert "did not answer before its deadline" in paused.json()["error"]
    assert client.is_model_ready("acme/clf", headers=auth)  # the pause over


def test_a_prediction_failed_by_a_pause_says_how_long_the_pause_has_left(
    api, classifier, monkeypatch
):
    """It answered Retry-After: 10 whatever the pause left (its body said 30 s)."""
    from inference import limits, services

    def failed_as_the_breaker_opens(prediction, timeout):
        limits.breaker_trip(classifier.pk, "The model did not answer before its deadline.", 40)
        Prediction.objects.filter(pk=prediction.pk).update(
            status=Prediction.Status.FAILED, error="paused", error_kind="unavailable"
        )
        prediction.refresh_from_db()
        return prediction

    monkeypatch.setattr(services, "prediction_wait", failed_as_the_breaker_opens)
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    try:
        response = infer_json(api, "/v2/models/acme/clf/infer", body)
    finally:
        limits.realtime.client().delete(limits.breaker_key(classifier.pk))

    assert response.status_code == 503
    assert 38 <= int(response["Retry-After"]) <= 40


def test_json_tensors_give_the_models_outputs_and_are_billed(
    celery_worker_process, client, auth, classifier
):
    result = client.infer(
        "acme/clf",
        [infer_input(X, binary=False)],
        outputs=[triton.InferRequestedOutput("output", binary_data=False)],
        request_id="req-1",
        headers=auth,
    )

    np.testing.assert_allclose(result.as_numpy("output"), expected(X), atol=1e-5)
    response = result.get_response()
    assert response["model_name"] == "acme/clf" and response["model_version"] == "1"
    assert response["id"] == "req-1"
    assert "data" in response["outputs"][0]  # JSON, not binary
    prediction = Prediction.objects.get(public_id=response["parameters"]["prediction_id"])
    assert prediction.source == "oip" and prediction.status == "succeeded"
    assert UsageRecord.objects.filter(source_id=prediction.public_id).count() == 1


def test_binary_tensors_give_the_models_outputs(celery_worker_process, client, auth, classifier):
    x = np.random.default_rng(7).standard_normal((5, 4), dtype=np.float32)

    result = client.infer("acme/clf", binary(x), "1", headers=auth)
    compressed = client.infer(
        "acme/clf",
        binary(x),
        outputs=[triton.InferRequestedOutput("output", binary_data=True)],
        request_compression_algorithm="gzip",
        headers=auth,
    )

    for answer in (result, compressed):
        output = answer.get_output("output")
        assert output["parameters"] == {"binary_data_size": 5 * 3 * 4} and "data" not in output
        np.testing.assert_allclose(answer.as_numpy("output"), expected(x), atol=1e-5)


def test_model_that_raises_is_400_with_its_message(celery_worker_process, client, auth, raising):
    x = np.full((1, 4), 999, dtype=np.float32)

    error = failure(lambda: client.infer("acme/raises", binary(x), headers=auth))

    assert error.status() == "400" and "input out of range" in error.message()
    assert not UsageRecord.objects.exists()


def test_call_over_its_deadline_is_504_and_not_billed(
    celery_worker_process, client, auth, slow, settings
):
    settings.OIP_TIMEOUT = 0.3
    x = np.ones((1, 4), dtype=np.float32)

    error = failure(lambda: client.infer("acme/slow", binary(x), headers=auth))

    assert error.status() == "504" and "0.3 s" in error.message()
    assert Prediction.objects.get().status == "canceled"
    assert not UsageRecord.objects.exists()


def test_input_of_the_wrong_shape_is_400_naming_it(client, auth, api, classifier):
    bad = np.ones((1, 3), dtype=np.float32)

    error = failure(lambda: client.infer("acme/clf", binary(bad), headers=auth))
    raw = infer_json(
        api,
        "/v2/models/acme/clf/infer",
        {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
    )

    assert error.status() == "400"
    assert "'x'" in error.message() and "[-1, 4]" in error.message()
    assert raw.status_code == 400 and list(raw.json()) == ["error"]
    assert "'x'" in raw.json()["error"] and "FP32[1, 3]" in raw.json()["error"]
    assert not Prediction.objects.exists()


def test_malformed_requests_are_400_saying_what_is_wrong(api, classifier):
    path = "/v2/models/acme/clf/infer"
    cases = {
        "FP64": {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]},
        "holds 4 values": {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2]},
        "BYTES": {"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]},
        # Shapes numpy cannot build were a 500 (the element count matched).
        "at most 32 dimensions": {"name": "x", "shape": [1] * 70, "datatype": "FP32", "data": [1]},
        "each under 2**31": {"name": "x", "shape": [0, 10**30], "datatype": "FP32", "data": []},
    }
    for message, tensor in cases.items():
        response = infer_json(api, path, {"inputs": [tensor]})
        assert response.status_code == 400 and message in response.json()["error"], message

    x = {"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 8}}
    header = json.dumps({"inputs": [x]}).encode()
    binary = api.post(
        path,
        data=header + bytes(8),
        content_type="application/octet-stream",
        HTTP_INFERENCE_HEADER_CONTENT_LENGTH=str(len(header)),
    )
    assert binary.status_code == 400 and "takes 16 bytes" in binary.json()["error"]
    flags = {
        "name": "x",
        "shape": [1, 4],
        "datatype": "BOOL",
        "parameters": {"binary_data_size": 4},
    }
    header = json.dumps({"inputs": [flags]}).encode()
    not_boolean = api.post(
        path,
        data=header + bytes([0, 1, 2, 255]),
        content_type="application/octet-stream",
        HTTP_INFERENCE_HEADER_CONTENT_LENGTH=str(len(header)),
    )
    assert not_boolean.status_code == 400 and "0 or 1" in not_boolean.json()["error"]
    unknown = infer_json(
        api,
        path,
        {
            "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
            "outputs": [{"name": "logits"}],
        },
    )
    assert unknown.status_code == 400 and "'logits'" in unknown.json()["error"]
    assert not Prediction.objects.exists()


@pytest.mark.parametrize(
    "kind, status",
    [("model", 400), ("timeout", 504), ("unavailable", 503), ("crash", 500), ("internal", 500)],
)
def test_a_failed_prediction_answers_by_whose_fault_it_was(
    api, classifier, monkeypatch, kind, status
):
    """The caller's or the model's (400: not worth sending again), the deadline (504), a
    paused version (503 with Retry-After), the platform's (500). All were 400."""
    from inference import services

    def failed(prediction, timeout):
        Prediction.objects.filter(pk=prediction.pk).update(
            status=Prediction.Status.FAILED, error=f"failed: {kind}", error_kind=kind
        )
        prediction.refresh_from_db()
        return prediction

    monkeypatch.setattr(services, "prediction_wait", failed)
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}

    response = infer_json(api, "/v2/models/acme/clf/infer", body)

    assert response.status_code == status and response.json() == {"error": f"failed: {kind}"}
    assert ("Retry-After" in response) == (kind == "unavailable")


def test_json_outputs_that_are_not_finite_read_back_exactly_in_tritonclient(classifier):
    # They were null, which tritonclient reads as NaN, an infinity included. Triton's server
    # writes NaN, Infinity and -Infinity (rapidjson's tokens), which its client reads back.
    from inference import services, tensors
    from inference.api.oip import InferRequest, infer_response

    output = np.array([[np.nan, np.inf, -np.inf, 1.0]], np.float32)
    prediction = Prediction.objects.create(
        tenant=classifier.model.tenant,
        model=classifier.model,
        version=classifier,
        status=Prediction.Status.SUCCEEDED,
        output_data=tensors.encode({"output": output}),
    )

    response = infer_response(
        model=classifier.model,
        version=classifier,
        prediction=prediction,
        request=InferRequest("", {}, None, False),
        signature=services.signature(classifier),
    )

    assert b'"data": [NaN, Infinity, -Infinity, 1.0]' in response.content
    read = triton.InferResult.from_response_body(response.content).as_numpy("output")
    np.testing.assert_array_equal(read, output)


def test_unknown_model_is_404(client, auth, tenant):
    error = failure(lambda: client.get_model_metadata("acme/nope", headers=auth))
    assert error.status() == "404" and "acme/nope" in error.message()


def test_outsider_sees_404_for_a_private_model(client, outsider_api, classifier):
    outsider = {"Authorization": f"Bearer {outsider_api.secret}"}
    x = np.ones((1, 4), dtype=np.float32)

    infer = failure(lambda: client.infer("acme/clf", binary(x), headers=outsider))
    metadata = failure(lambda: client.get_model_metadata("acme/clf", headers=outsider))

    assert infer.status() == metadata.status() == "404"
    assert not client.is_model_ready("acme/clf", headers=outsider)
    assert outsider_api.get("/v2/models/acme/clf").json() == {"error": "No model acme/clf."}


def test_missing_key_is_401(client, classifier):
    anonymous = APIClient()

    error = failure(lambda: client.get_model_metadata("acme/clf"))
    response = anonymous.post("/v2/models/acme/clf/infer", data=b"{}", content_type="text/plain")

    assert error.status() == "401"
    assert response.status_code == 401 and list(response.json()) == ["error"]
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_scopes_infer_needs_inference_and_metadata_needs_models_read(client, tenant, classifier):
    reader = {"Authorization": f"Bearer {key_client(tenant, scopes=[Scope.MODELS_READ]).secret}"}
    runner = {"Authorization": f"Bearer {key_client(tenant, scopes=[Scope.INFERENCE]).secret}"}
    x = np.ones((1, 4), dtype=np.float32)

    infer = failure(lambda: client.infer("acme/clf", binary(x), headers=reader))
    metadata = failure(lambda: client.get_model_metadata("acme/clf", headers=runner))

    assert infer.status() == metadata.status() == "403"
    assert "'inference'" in infer.message() and "'models:read'" in metadata.message()
    # Either scope may ask whether the model is ready.
    assert client.is_model_ready("acme/clf", headers=reader)
    assert client.is_model_ready("acme/clf", headers=runner)


def test_a_quoted_slash_in_the_model_name_is_understood(live_server, api, classifier):
    connection = http.client.HTTPConnection(live_server.url.removeprefix("http://"), timeout=10)
    connection.request(
        "GET",
        "/v2/models/acme%2Fclf/versions/1",
        headers={"Authorization": f"Bearer {api.secret}"},
    )
    response = connection.getresponse()
    assert response.status == 200 and json.load(response)["name"] == "acme/clf"
    connection.close()


def test_admission_errors_keep_their_status_and_headers(api, classifier, settings):
    path = "/v2/models/acme/clf/infer"
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}

    settings.MAX_INPUT_BYTES = 50
    too_large = infer_json(api, path, body)
    settings.MAX_INPUT_BYTES = 10_000
    settings.MAX_QUEUE_DEPTH = 0
    busy = infer_json(api, path, body)
    settings.RATE_LIMIT_PER_MINUTE = 0
    limited = infer_json(api, path, body)

    assert too_large.status_code == 413 and "50 bytes" in too_large.json()["error"]
    assert busy.status_code == 503 and busy["Retry-After"] == "1"
    assert limited.status_code == 429 and int(limited["Retry-After"]) > 0
    assert limited["RateLimit-Remaining"] == "0" and "Rate limit" in limited.json()["error"]
    assert not Prediction.objects.exists()


def test_unsupported_protocol_endpoints_are_a_json_404(api):
    response = api.get("/v2/models/acme/clf/config")
    assert response.status_code == 404 and "not supported" in response.json()["error"]


@pytest.mark.parametrize(
    "method, path",
    [
        ("POST", "/v2/models/clf/infer"),  # read as the metadata of a model "clf/infer": 405
        ("GET", "/v2/models/clf"),
        ("POST", "/v2/models/clf/versions/1/infer"),
    ],
)
def test_a_model_named_without_its_owner_is_a_404_that_says_to_name_the_owner(api, method, path):
    response = api.generic(method, path, b"{}", content_type="application/json")
    assert response.status_code == 404
    assert "owner/name" in response.json()["error"] and path in response.json()["error"]


def test_tritonclient_told_a_model_without_its_owner_learns_to_name_it(client, auth, classifier):
    error = failure(lambda: client.infer("clf", binary(X), headers=auth))
    assert "owner/name" in str(error) and "model_name='acme/clf'" in str(error)


def test_a_prediction_refused_while_it_waited_is_a_409_not_a_server_error():
    # The worker fails it "refused" when its version was yanked, its model taken down or its
    # access ended while it waited: the caller's situation changed, the server did not fail.
    from inference.api.oip import _failure_status

    assert _failure_status(Prediction(error_kind="refused")) == (409, {})
