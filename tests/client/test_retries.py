"""A request whose answer is lost on the way back is sent again only when a repeat cannot do
the work twice: the server honours the idempotency key, or the client can tell."""

from __future__ import annotations

import httpx
import pytest
from modelmarket import Client
from safetensors.torch import save

from inference.models import CompressionJob, Prediction
from inference.runtime.architectures import MLP
from tests.compression.conftest import ready_version, signature

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


class LosesFirstAnswer(httpx.HTTPTransport):
    """The server does the work, but its first answer to ``method path`` never arrives."""

    def __init__(self, method: str, path: str):
        super().__init__()
        self.method, self.path, self.lost = method, path, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == self.method and request.url.path == self.path and not self.lost:
            self.lost += 1
            response.read()
            raise httpx.ReadError("Connection reset by peer", request=request)
        return response


def test_a_prediction_whose_answer_is_lost_is_asked_for_again_and_made_once(mm_env, classifier):
    transport = LosesFirstAnswer("POST", "/api/v1/predictions")

    with Client(transport=transport) as client:
        prediction = client.predict_async("acme/clf", [[1, 2, 3, 4]])

    assert transport.lost == 1
    assert Prediction.objects.get().public_id == prediction.id


def test_a_compression_job_whose_answer_is_lost_is_asked_again_and_started_once(mm_env, tenant):
    config = {"in_features": 16, "hidden": [32], "classes": 4}
    ready_version(
        tenant,
        "small",
        save(MLP(**config).state_dict()),
        sig=signature([16], 4),
        architecture="mlp",
        config=config,
    )
    transport = LosesFirstAnswer("POST", "/api/v1/compression-jobs")

    with Client(transport=transport) as client:
        job = client.compress("acme/small:1", "quantize")

    assert transport.lost == 1
    assert CompressionJob.objects.get().public_id == job.id
