"""Concurrent predictions for one version share a forward pass only when that cannot change
what any of them receives: one consumer tenant's calls, with the same shapes, and only while
the model answers one row per input row."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from billing.models import UsageRecord
from tests.inference.conftest import scripted
from tests.workers.conftest import output_of, queued, run_concurrently, validated
from workers.services import prediction_run

pytestmark = [
    pytest.mark.django_db(transaction=True),  # batcher and runs in their own threads
    pytest.mark.usefixtures("fresh_hosts"),
]

ROW = {"x": {"shape": [1, 4]}}  # the example validation runs: one row


class Flip(nn.Module):
    """Returns its rows in reverse order once a value passes 10: a correct model on the
    example validation runs (which finds a model that always mixes rows: see
    ``test_a_model_whose_rows_depend_on_each_other_is_never_batched``)."""

    def forward(self, x):
        if bool((x > 10).any()):
            return x.flip(0) * 1.0
        return x * 1.0


def test_a_model_cannot_hand_one_tenants_input_to_another_tenant(tenant, outsider):
    """The publisher calls its own model while another tenant's call is waiting: had they
    shared a forward pass, the model could route the other tenant's input into the
    publisher's result."""
    version = validated(tenant, "flip", scripted(Flip()), example_input=ROW)
    secret = np.full((1, 4), 42.0, np.float32)
    warm = queued(version, np.zeros((1, 4), np.float32))
    publishers = queued(version, np.ones((1, 4), np.float32))
    publishers_again = queued(version, np.full((1, 4), 2.0, np.float32))
    victims = queued(version, secret, outsider)

    batches = run_concurrently(version, warm, publishers, publishers_again, victims)

    seen_by_publisher = [output_of(publishers).tolist(), output_of(publishers_again).tolist()]
    assert secret.tolist() not in seen_by_publisher
    assert output_of(victims).tolist() == secret.tolist()
    assert batches == [2, 1]  # the publisher's two calls together, the other tenant's alone


class Remembers(nn.Module):
    """Answers with the input of the call before: state kept from one call to the next."""

    def __init__(self):
        super().__init__()
        self.register_buffer("last", torch.zeros(1, 4))

    def forward(self, x):
        previous = self.last.clone()
        self.last.copy_(x[:1])
        return previous.expand(x.shape[0], 4).contiguous()


def test_a_model_that_keeps_state_cannot_hand_one_tenants_input_to_another(tenant, outsider):
    # One host served every organisation in turn: the publisher's next call received the
    # other organisation's input. Each organisation now has the model's host to itself.
    version = validated(tenant, "remembers", scripted(Remembers()), example_input=ROW)
    secret = np.full((1, 4), 42.0, np.float32)
    victims = queued(version, secret, outsider)
    prediction_run(prediction_id=victims.public_id)
    publishers = queued(version, np.ones((1, 4), np.float32))
    prediction_run(prediction_id=publishers.public_id)
    victims_again = queued(version, np.full((1, 4), 7.0, np.float32), outsider)
    prediction_run(prediction_id=victims_again.public_id)

    assert secret.tolist() != output_of(publishers).tolist()
    assert output_of(publishers).tolist() == [[0.0] * 4]  # a host of its own, fresh
    assert output_of(victims_again).tolist() == secret.tolist()  # its own state, as before


class Counts(nn.Module):
    """A torch.export graph that writes a buffer: state kept from call to call."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x):
        self.calls.add_(1)
        return x * 2 + self.calls


def test_a_stateless_export_serves_every_organisation_from_one_host(tenant, outsider):
    # One host per organisation multiplies a model's memory: validation tells the models that
    # keep nothing between calls (a torch.export graph writing no state), which may share one.
    from tests.inference.conftest import Classifier, export
    from workers.pool import HOSTS
    from workers.services import version_key

    shared = validated(tenant, "clf", export(Classifier()), fmt="pt2")
    stateful = validated(tenant, "counts", export(Counts()), fmt="pt2")
    for version in (shared, stateful):
        for who in (tenant, outsider):
            call = queued(version, np.ones((1, 4), np.float32), who)
            prediction_run(prediction_id=call.public_id)

    assert (shared.stateless, stateful.stateless) == (True, False)
    keys = HOSTS.loaded("cpu").keys()
    assert keys.count(version_key(shared)) == 1
    assert not [k for k in keys if k.startswith(version_key(shared) + "@")]
    assert sorted(k for k in keys if k.startswith(version_key(stateful))) == sorted(
        [f"{version_key(stateful)}@{tenant.pk}", f"{version_key(stateful)}@{outsider.pk}"]
    )


class Draws(nn.Module):
    """Random numbers: the generator is state the host process keeps. A caller's input can set
    how far its call moves it, and the next caller can read that back from its own draws."""

    def forward(self, x):
        return x + torch.rand_like(x)


class Uninitialised(nn.Module):
    """Memory as the allocator hands it out: whatever the last call freed there."""

    def forward(self, x):
        return torch.empty_like(x)


class EvalDropout(nn.Module):
    """Dropout as an exported model in eval mode calls it: no random numbers drawn."""

    def forward(self, x):
        return nn.functional.dropout(x * 2, 0.5, training=False)


@pytest.mark.parametrize(
    ("module", "stateless"),
    [(Draws(), False), (Uninitialised(), False), (EvalDropout(), True)],
    ids=["random", "empty", "eval-dropout"],
)
def test_an_export_that_draws_random_numbers_or_reads_unset_memory_is_not_shared(
    tenant, module, stateless
):
    """Such graphs write no buffer, and validation took them for stateless: one host served
    every organisation, and a reviewer read another organisation's input back through the
    random generator."""
    from tests.inference.conftest import export

    version = validated(tenant, "m", export(module), fmt="pt2")

    assert version.stateless is stateless


class FirstRow(nn.Module):
    """Right at batch 1; for more rows, one row for everyone."""

    def forward(self, x):
        return x[:1] * 2


class FirstRowOfLarge(nn.Module):
    """As ``FirstRow``, only for several rows all over 1.5: right on the example validation
    runs (zeros), so it is batched, and wrong on a merged batch."""

    def forward(self, x):
        if x.shape[0] > 1 and bool((x > 1.5).all()):
            return x[:1] * 2
        return x * 2


ZEROS = {"x": {"data": [[0.0, 0.0, 0.0, 0.0]], "shape": [1, 4], "datatype": "FP32"}}


def test_a_merged_batch_answered_with_too_few_rows_is_run_again_one_call_at_a_time(tenant):
    version = validated(tenant, "firstrow", scripted(FirstRowOfLarge()), example_input=ZEROS)
    ones = np.ones((1, 4), np.float32)
    warm, first, second = (queued(version, ones * k) for k in (1, 2, 3))

    batches = run_concurrently(version, warm, first, second)

    assert batches == [2]  # merged; the model's single row could not be split between them
    assert output_of(first).tolist() == [[4.0] * 4]
    assert output_of(second).tolist() == [[6.0] * 4]  # not an empty tensor
    assert UsageRecord.objects.count() == 3


def test_a_call_answered_with_fewer_rows_than_it_sent_fails_as_the_models_fault_unbilled(
    tenant,
):
    version = validated(tenant, "firstrow", scripted(FirstRowOfLarge()), example_input=ZEROS)
    prediction = queued(version, np.full((2, 4), 2.0, np.float32))

    assert prediction_run(prediction_id=prediction.public_id) == "failed"

    prediction.refresh_from_db()
    assert prediction.error_kind == "model"
    assert prediction.error == (
        "The model's output 'output' has 1 rows for an input of 2; it should have one row per "
        "input row."
    )
    assert not UsageRecord.objects.filter(source_id=prediction.public_id).exists()


class Double(nn.Module):
    def forward(self, x):
        return x * 2


def test_calls_with_different_sequence_lengths_each_get_their_own_answer(tenant):
    program = torch.export.export(
        Double().eval(),
        (torch.randn(2, 5),),
        dynamic_shapes={"x": {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}},
    )
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    version = validated(tenant, "seq", buffer.getvalue(), fmt="pt2")
    assert version.signature["inputs"][0]["shape"] == [-1, -1]  # batchable, any length
    warm = queued(version, np.ones((1, 5), np.float32))
    short = queued(version, np.ones((1, 3), np.float32))
    long = queued(version, np.ones((1, 7), np.float32))
    short_again = queued(version, np.full((1, 3), 2.0, np.float32))

    batches = run_concurrently(version, warm, short, long, short_again)

    assert batches == [2, 1]  # the two of length 3 together
    assert output_of(short).tolist() == [[2.0] * 3]
    assert output_of(long).tolist() == [[2.0] * 7]
    assert output_of(short_again).tolist() == [[4.0] * 3]


def test_a_batch_never_holds_more_rows_than_the_setting_allows(tenant, settings):
    settings.BATCH_MAX_SIZE = 3
    version = validated(tenant, "double", scripted(Double()), example_input=ROW)
    warm = queued(version, np.ones((1, 4), np.float32))
    calls = [queued(version, np.full((2, 4), k, np.float32)) for k in (1.0, 2.0, 3.0)]

    batches = run_concurrently(version, warm, *calls)

    assert batches == [1, 1, 1]  # 2 rows each: a second call would make 4
    for k, call in zip((1.0, 2.0, 3.0), calls, strict=True):
        assert output_of(call).tolist() == [[2 * k] * 4] * 2


class Scores(nn.Module):
    """A two-tower retrieval model: each query scored against every item sent. Both inputs'
    first dimension is dynamic, and neither is a batch of rows."""

    def forward(self, query, items):
        return query @ items.t()


class Centred(nn.Module):
    """Each row less the batch's mean: statistics over the batch."""

    def forward(self, x):
        return x - x.mean(0, keepdim=True)


@pytest.mark.parametrize(
    ("module", "example"),
    [
        (Scores(), {"query": {"shape": [2, 8]}, "items": {"shape": [2, 8]}}),
        (Centred(), {"x": {"shape": [2, 4]}}),
        (FirstRow(), ROW),
    ],
    ids=["retrieval", "batch-statistics", "first-row"],
)
def test_a_model_whose_rows_depend_on_each_other_is_never_batched(tenant, module, example):
    """Concurrent calls of the retrieval model were merged: each got scores against the other
    call's items too (shape (2, 4) for (2, 2)), billed, with no error."""
    version = validated(tenant, "m", scripted(module), example_input=example)
    rng = np.random.default_rng(0)
    names = list(example)
    calls = [
        {n: rng.random(tuple(example[n]["shape"]), dtype=np.float32) for n in names}
        for _ in range(3)
    ]
    predictions = [queued(version, call if len(names) > 1 else call["x"]) for call in calls]

    batches = run_concurrently(version, *predictions)

    assert version.signature.get("rows_independent") is False
    assert batches == [1, 1]
    if isinstance(module, FirstRow):
        return  # alone, each of its one-row calls is right
    for call, prediction in zip(calls, predictions, strict=True):
        expected = module(*[torch.from_numpy(call[n]) for n in names]).numpy()
        np.testing.assert_allclose(output_of(prediction), expected, rtol=1e-5, atol=1e-6)


class Weighted(nn.Module):
    """A batch of rows and a weight vector with no batch dimension."""

    def forward(self, x, w):
        return x * w


def test_an_input_without_a_batch_dimension_takes_any_number_of_rows(tenant):
    """w [4] was taken for a batch of 4: a call with one row of x was "All inputs need the same
    batch size; 'w' has 4, others 1", and only calls of exactly 4 rows ran."""
    x, w = torch.ones(2, 4), torch.tensor([1.0, 10.0, 100.0, 1000.0])
    batch = torch.export.Dim("batch")
    program = torch.export.export(Weighted(), (x, w), dynamic_shapes=({0: batch}, None))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    version = validated(tenant, "weighted", buffer.getvalue(), fmt="pt2")
    one_row = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    prediction = queued(version, {"x": one_row, "w": w.numpy()})

    assert prediction_run(prediction_id=prediction.public_id) == "succeeded"
    assert output_of(prediction).tolist() == [[1.0, 20.0, 300.0, 4000.0]]


class HalfMLP(nn.Module):
    """bf16 weights behind float32 inputs and outputs."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 3)).bfloat16()

    def forward(self, x):
        return self.net(x.to(torch.bfloat16)).float()


class Tokens(nn.Module):
    """A text classifier on int64 token ids."""

    def __init__(self):
        super().__init__()
        self.embed = nn.EmbeddingBag(50, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, ids):
        return self.head(self.embed(ids))


@pytest.mark.parametrize(
    ("module", "example"),
    [
        (HalfMLP(), {"x": {"shape": [3, 4]}}),
        (Tokens(), {"ids": {"data": [[1, 2, 3], [4, 5, 6]], "shape": [2, 3], "datatype": "INT64"}}),
        (Double(), ROW),
    ],
    ids=["bf16-mlp", "token-ids", "fp32"],
)
def test_ordinary_models_are_still_batched(tenant, module, example):
    """The check that keeps a model mixing its rows out of merged batches must not take an
    ordinary one for such a model (a bf16 MLP was, on a GPU, at float32's tolerance)."""
    version = validated(tenant, "m", scripted(module.eval()), example_input=example)

    assert "rows_independent" not in version.signature
