"""What a model answers is checked before it is stored and billed: its size, and types the
API can carry back to the caller."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from billing.models import UsageRecord
from inference.runtime import codec
from tests.inference.conftest import scripted
from tests.workers.conftest import output_of, queued, validated
from workers.host import HostFailure
from workers.pool import HOSTS
from workers.services import prediction_run, version_key

pytestmark = [
    pytest.mark.django_db(transaction=True),  # the batcher runs in its own thread
    pytest.mark.usefixtures("fresh_hosts"),
]

ROW = {"x": {"shape": [1, 4]}}


class Blowup(nn.Module):
    """2 MiB of output per 16-byte row."""

    def forward(self, x):
        return x[:, :1].expand(x.shape[0], 512 * 1024) * 1.0


def test_an_output_over_the_size_limit_fails_as_the_models_fault_unbilled(tenant, settings):
    settings.MAX_OUTPUT_BYTES = 1024**2
    version = validated(tenant, "blowup", scripted(Blowup()), example_input=ROW)
    prediction = queued(version, np.ones((1, 4), np.float32))

    assert prediction_run(prediction_id=prediction.public_id) == "failed"

    prediction.refresh_from_db()
    assert (prediction.error_kind, prediction.error) == (
        "model",
        "The model's output is 2.0 MiB, over the limit of 1 MiB for one prediction.",
    )
    assert prediction.output_data is None
    assert not UsageRecord.objects.exists()


def test_a_host_that_sends_more_than_the_worker_reads_is_killed(tenant):
    version = validated(tenant, "blowup", scripted(Blowup()), example_input=ROW)
    host = HOSTS.loaded("cpu").get(version_key(version))

    with pytest.raises(HostFailure) as failure:
        host.request(
            {"op": "predict"},
            codec.encode({"x": torch.ones(1, 4)}),
            timeout=30,
            max_payload=1024**2,
        )

    assert failure.value.kind == "protocol"
    assert "over the limit of 1 MiB" in str(failure.value)
    assert not host.alive


class Shifty(nn.Module):
    """FP32 for the example validation runs; complex for large inputs."""

    def forward(self, x):
        if bool(x.abs().sum() > 100):
            return torch.complex(x, x)
        return x


def test_an_output_of_another_type_than_the_signature_fails_unbilled_and_stays_readable(
    tenant, api
):
    version = validated(tenant, "shifty", scripted(Shifty()), example_input=ROW)
    assert version.signature["outputs"][0]["datatype"] == "FP32"
    prediction = queued(version, np.full((1, 4), 50.0, np.float32))

    assert prediction_run(prediction_id=prediction.public_id) == "failed"

    response = api.get(f"/api/v1/predictions/{prediction.public_id}")
    assert response.status_code == 200
    assert response.json()["error_kind"] == "model"
    assert response.json()["error"] == (
        "The model's output 'output' is complex64, where its signature says FP32."
    )
    assert not UsageRecord.objects.exists()


class HalfOut(nn.Module):
    def forward(self, x):
        return (x * 2).to(torch.bfloat16)


def test_a_bfloat16_output_is_served_as_float32(tenant):
    version = validated(tenant, "bf16", scripted(HalfOut()), example_input=ROW)
    prediction = queued(version, np.ones((1, 4), np.float32))

    assert prediction_run(prediction_id=prediction.public_id) == "succeeded"

    assert version.signature["outputs"][0]["datatype"] == "FP32"
    assert output_of(prediction).dtype == np.float32
    assert output_of(prediction).tolist() == [[2.0] * 4]


class ThreeHeads(nn.Module):
    def forward(self, x) -> dict[str, torch.Tensor]:
        return {"scores": x * 2, "label": x.sum(1), "aux": x[:, :1]}


def test_outputs_keep_the_models_order_in_every_answer(tenant):
    """A model's named outputs come back in the order it returns them, for the first
    prediction and the ones after it (safetensors' own loader gives them in a random order)."""
    from inference import tensors

    version = validated(tenant, "heads", scripted(ThreeHeads()), example_input=ROW)
    for rows in (1, 1, 2, 1):
        prediction = queued(version, np.ones((rows, 4), np.float32))
        assert prediction_run(prediction_id=prediction.public_id) == "succeeded"
        prediction.refresh_from_db()

        answer = tensors.to_json(tensors.decode(prediction.output_data))  # as the API sends it

        assert list(answer) == ["scores", "label", "aux"]
        assert answer["label"] == [4.0] * rows


class EmptyRows(nn.Module):
    """The first value says how many lists without values to answer in each row."""

    def forward(self, x):
        return x.new_zeros((x.shape[0], int(x[0, 0].item()), 0))


def test_an_output_of_many_rows_without_values_fails_as_the_models_fault_unbilled(tenant):
    # 0 bytes whatever the rows, yet a list per row as JSON: 10 million took 868 MiB to show.
    version = validated(
        tenant, "empty", scripted(EmptyRows()), example_input={"x": {"data": [[2.0]]}}
    )
    small = queued(version, np.array([[5.0]], np.float32))
    huge = queued(version, np.array([[1e7]], np.float32))

    assert prediction_run(prediction_id=small.public_id) == "succeeded"
    assert output_of(small).shape == (1, 5, 0)
    assert prediction_run(prediction_id=huge.public_id) == "failed"

    huge.refresh_from_db()
    assert huge.error_kind == "model"
    assert "shape [1, 10000000, 0] and no values" in huge.error
    assert huge.output_data is None
    assert list(UsageRecord.objects.values_list("source_id", flat=True)) == [small.public_id]


class EitherOr(nn.Module):
    """Answers under one name or another, by the sign of its input."""

    def forward(self, x) -> dict[str, torch.Tensor]:
        if bool(x.sum() > 0):
            return {"pos": x * 1.0}
        return {"neg": x * -1.0}


def test_outputs_other_than_the_signatures_fail_as_the_models_fault_unbilled(tenant):
    # Validation saw "pos"; a caller asking /v2 for it got a 500 when the model said "neg".
    example = {"x": {"data": [[1.0, 1.0, 1.0, 1.0]]}}
    version = validated(tenant, "either", scripted(EitherOr()), example_input=example)
    assert [o["name"] for o in version.signature["outputs"]] == ["pos"]
    positive = queued(version, np.ones((1, 4), np.float32))
    negative = queued(version, -np.ones((1, 4), np.float32))

    assert prediction_run(prediction_id=positive.public_id) == "succeeded"
    assert prediction_run(prediction_id=negative.public_id) == "failed"

    negative.refresh_from_db()
    assert (negative.error_kind, negative.error) == (
        "model",
        "The model returned the output(s) neg, where its signature has pos.",
    )
    assert list(UsageRecord.objects.values_list("source_id", flat=True)) == [positive.public_id]
