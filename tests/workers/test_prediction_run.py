"""The worker's run of one prediction, in this process with its own model host: what
happens when the database refuses the result."""

from __future__ import annotations

import pytest
from django.db import OperationalError

from accounts import services as accounts
from billing.models import UsageRecord
from inference import services as inference
from inference import tensors
from inference.models import Prediction
from tests.inference.conftest import (
    classifier,  # noqa: F401 - a fixture
    listed_classifier,
)
from workers.pool import HOSTS
from workers.services import prediction_run

pytestmark = pytest.mark.django_db(transaction=True)  # the batcher loads in its own thread


@pytest.fixture(autouse=True)
def _hosts(settings):
    settings.MODEL_HOST_PRESTART = 0
    yield
    HOSTS.close()


def queued(version) -> Prediction:
    import numpy as np

    return Prediction.objects.create(
        tenant=version.model.tenant,
        model=version.model,
        version=version,
        input_data=tensors.encode({"x": np.ones((1, 4), np.float32)}),
    )


def test_a_result_the_database_refuses_fails_the_prediction_unbilled(classifier, monkeypatch):  # noqa: F811
    def refuse(**_):
        raise OperationalError("database is locked")

    monkeypatch.setattr(inference, "usage_record_create", refuse)
    prediction = queued(classifier)

    outcome = prediction_run(prediction_id=prediction.public_id)

    prediction.refresh_from_db()
    assert outcome == "failed"
    assert (prediction.status, prediction.error_kind) == ("failed", "internal")
    assert "recording the result (OperationalError); it was not billed" in prediction.error
    assert prediction.output_data is None  # the result's write was rolled back with it
    assert not UsageRecord.objects.exists()

    monkeypatch.undo()  # the database is back: the next prediction is served and billed once
    again = queued(classifier)
    assert prediction_run(prediction_id=again.public_id) == "succeeded"
    assert UsageRecord.objects.get().source_id == again.public_id


def test_a_prediction_cancelled_while_its_result_was_refused_counts_as_cancelled(
    classifier,  # noqa: F811
    monkeypatch,
):
    fail = inference.prediction_fail

    def refused(prediction, **_):
        raise ValueError("the result could not be written")

    def cancelled_first(prediction, **kwargs):  # the caller's cancel landed in between
        Prediction.objects.filter(pk=prediction.pk).update(status=Prediction.Status.CANCELED)
        return fail(prediction, **kwargs)

    monkeypatch.setattr(inference, "prediction_succeed", refused)
    monkeypatch.setattr(inference, "prediction_fail", cancelled_first)
    prediction = queued(classifier)

    outcome = prediction_run(prediction_id=prediction.public_id)

    assert outcome == "canceled"  # the metrics' label, where it said "succeeded"
    assert Prediction.objects.get(pk=prediction.pk).status == "canceled"
    assert not UsageRecord.objects.exists()


def test_an_input_the_worker_cannot_read_fails_the_prediction_unbilled(classifier):  # noqa: F811
    # The stored input is not safetensors (a record written by hand, or damaged): before, the
    # error escaped after the claim and left the prediction "running" until the stuck sweep.
    prediction = queued(classifier)
    Prediction.objects.filter(pk=prediction.pk).update(input_data=b"\x00not safetensors")

    outcome = prediction_run(prediction_id=prediction.public_id)

    prediction.refresh_from_db()
    assert outcome == "failed"
    assert (prediction.status, prediction.error_kind) == ("failed", "internal")
    assert prediction.error.startswith("Internal error while running the model")
    assert not UsageRecord.objects.exists()


def test_a_prediction_cancelled_before_its_claim_is_neither_run_nor_billed(classifier):  # noqa: F811
    # The forward pass starts while the claim is written; a prediction cancelled before the
    # worker took it keeps its status, gets no result, and bills nothing, and the batcher
    # serves the next prediction as usual.
    prediction = queued(classifier)
    Prediction.objects.filter(pk=prediction.pk).update(status=Prediction.Status.CANCELED)

    assert prediction_run(prediction_id=prediction.public_id) is None

    prediction.refresh_from_db()
    assert (prediction.status, prediction.output_data, prediction.started_at) == (
        "canceled",
        None,
        None,
    )
    assert not UsageRecord.objects.exists()
    again = queued(classifier)
    assert prediction_run(prediction_id=again.public_id) == "succeeded"
    assert UsageRecord.objects.get().source_id == again.public_id


@pytest.mark.parametrize("claimed", [3.6e6, -5.0, None, "soon"])
def test_a_host_cannot_bill_more_compute_than_the_worker_saw(classifier, monkeypatch, claimed):  # noqa: F811
    """The host runs the publisher's code and could claim any compute time (an hour, less
    than nothing, nothing readable): what is billed stays within the worker's own round trip."""
    import time

    from workers.host import ModelHost

    real_read = ModelHost._read_frame

    def claiming(self, *args, **kwargs):  # the reply as the host wrote it
        reply, body = real_read(self, *args, **kwargs)
        if "compute_ms" in reply:
            reply = {**reply, "compute_ms": claimed}
        return reply, body

    monkeypatch.setattr(ModelHost, "_read_frame", claiming)
    prediction = queued(classifier)

    started = time.perf_counter()
    assert prediction_run(prediction_id=prediction.public_id) == "succeeded"
    wall_ms = (time.perf_counter() - started) * 1000

    prediction.refresh_from_db()
    billed = UsageRecord.objects.get(source_id=prediction.public_id)
    assert 0 <= prediction.compute_ms <= wall_ms
    assert float(billed.compute_seconds) == pytest.approx(prediction.compute_ms / 1000, abs=1e-6)


def test_a_prediction_still_waiting_behind_hung_calls_fails_as_a_timeout(
    classifier,  # noqa: F811
    monkeypatch,
    settings,
):
    # Its wait ran out while the version's queue was held up: it failed as "internal".
    from concurrent.futures import Future

    from workers import services

    never: Future = Future()  # still queued behind calls that hang
    monkeypatch.setattr(services, "_submit", lambda prediction: never)
    settings.MODEL_REQUEST_TIMEOUT = -14.9  # the worker waits 2 x this + 30 s: 0.2 s

    prediction = queued(classifier)
    assert prediction_run(prediction_id=prediction.public_id) == "failed"

    prediction.refresh_from_db()
    assert prediction.error_kind == "timeout"
    assert "calls before this one kept it busy" in prediction.error
    assert never.cancelled()  # dropped from the queue: it will not run after all
    assert not UsageRecord.objects.exists()


def test_the_batcher_drops_a_job_whose_caller_stopped_waiting():
    import threading

    import numpy as np

    from workers.batching import VersionBatcher

    entered, release, seen = threading.Event(), threading.Event(), []

    class Host:
        def request(self, header, payload, **kwargs):
            seen.append(tensors.decode(payload)["x"].tolist())
            entered.set()
            release.wait(10)
            return {"ok": True, "compute_ms": 1.0}, tensors.encode(
                {"output": tensors.decode(payload)["x"]}
            )

    batcher = VersionBatcher(
        host=lambda tenant: Host(),
        drop_host=lambda tenant: None,
        batchable=True,
        max_batch=8,
        max_delay=0.0,
        timeout=10,
    )
    first = batcher.submit({"x": np.ones((1, 4), np.float32)}, 1)
    assert entered.wait(10)
    given_up = batcher.submit({"x": np.full((1, 4), 2.0, np.float32)}, 1)
    after = batcher.submit({"x": np.full((1, 4), 3.0, np.float32)}, 1, tenant="other")
    assert given_up.cancel()
    release.set()

    assert first.result(10)[0]["output"].tolist() == [[1.0] * 4]
    assert after.result(10)[0]["output"].tolist() == [[3.0] * 4]
    assert seen == [[[1.0] * 4], [[3.0] * 4]]  # the cancelled job never reached the model


def queued_for(version, consumer) -> Prediction:
    import numpy as np

    return Prediction.objects.create(
        tenant=consumer,
        model=version.model,
        version=version,
        input_data=tensors.encode({"x": np.ones((1, 4), np.float32)}),
    )


def _take_down(version):
    from marketplace.listings import listing_take_down

    listing_take_down(listing=version.model.listing, reason="court order", actor=accounts.SYSTEM)


def _revoke(version):
    from marketplace.listings import entitlement_revoke
    from marketplace.models import Entitlement

    entitlement_revoke(entitlement=Entitlement.objects.get(), actor=accounts.SYSTEM)


def _yank(version):
    from marketplace.services import version_yank

    version_yank(version=version, reason="leaks training data", actor=accounts.SYSTEM)


@pytest.mark.parametrize(
    "change, said",
    [
        (_take_down, "court order"),
        (_revoke, "globex may not run acme/clf version 1"),
        (_yank, "leaks training data"),
    ],
)
def test_work_queued_before_its_access_ended_is_not_run_nor_billed(tenant, outsider, change, said):
    """A new request would be refused (451, 403, 410): one that waited in a backlog ran, and
    was billed, with the cached verdict of a run before it."""
    version = listed_classifier(tenant, outsider, price_per_call="0.01")
    assert prediction_run(prediction_id=queued_for(version, outsider).public_id) == "succeeded"
    waiting = queued_for(version, outsider)

    from prometheus_client import REGISTRY

    def failed() -> float:
        labels = {"model": "acme/clf", "status": "failed"}
        return REGISTRY.get_sample_value("mm_predictions_total", labels) or 0

    change(version)
    before = failed()
    outcome = prediction_run(prediction_id=waiting.public_id)

    waiting.refresh_from_db()
    assert outcome == "failed" and waiting.error_kind == "refused"
    assert failed() == before + 1  # counted in mm_predictions_total
    assert waiting.error.startswith("Not run: ") and said in waiting.error
    assert waiting.compute_ms is None and waiting.output_data is None
    assert not UsageRecord.objects.filter(source_id=waiting.public_id).exists()


def test_a_prediction_cancelled_before_it_was_refused_stays_cancelled(tenant, outsider):
    from inference import services as inference

    version = listed_classifier(tenant, outsider, price_per_call="0.01")
    waiting = queued_for(version, outsider)
    inference.prediction_cancel(waiting)
    _yank(version)

    assert prediction_run(prediction_id=waiting.public_id) is None

    waiting.refresh_from_db()
    assert (waiting.status, waiting.error_kind, waiting.error) == ("canceled", "", "")
    assert not UsageRecord.objects.exists()
