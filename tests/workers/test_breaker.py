"""A version whose model keeps hanging or crashing its host is paused: its queued predictions
fail at once instead of each holding a worker thread up to its deadline, the API refuses new
ones with 503 and Retry-After, and after the pause the next request is let through."""

from __future__ import annotations

import time

import numpy as np
import pytest

from billing.models import UsageRecord
from tests.conftest import key_client
from tests.inference.conftest import ready_version, scripted, signature
from tests.workers.conftest import output_of, queued
from tests.workers.test_host_eviction import Spin
from workers.pool import HOSTS
from workers.services import prediction_host_key, prediction_run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fresh_hosts")]


def test_the_worker_pauses_a_version_even_when_it_cannot_tell_the_web():
    """Redis down as the breaker opens: the worker's own refusals still hold (it logs)."""
    from workers.batching import Breaker
    from workers.host import HostFailure

    def redis_down(reason, seconds):
        raise ConnectionError("Redis is down")

    breaker = Breaker(trip_after=1, cooldown=60, on_trip=redis_down)
    breaker.failed(HostFailure("timeout", "the model did not answer before its deadline"))

    refusal = breaker.refusal()
    assert refusal is not None and refusal.kind == "unavailable"
    assert "did not answer before its deadline" in str(refusal)


def ran(prediction):
    prediction_run(prediction_id=prediction.public_id)
    prediction.refresh_from_db()
    return prediction


def test_a_version_that_keeps_timing_out_is_paused_then_let_through_again(tenant, settings):
    settings.MODEL_REQUEST_TIMEOUT = 1
    settings.BREAKER_FAILURES = 2
    settings.BREAKER_SECONDS = 2
    version = ready_version(tenant, "spin", scripted(Spin()), "torchscript", signature(4, 4))
    endless = np.array([[1e9, 0, 0, 0]], np.float32)  # minutes of looping
    quick = np.ones((1, 4), np.float32)

    hung = [ran(queued(version, endless)) for _ in range(2)]
    paused = ran(queued(version, quick))
    refused = key_client(tenant).post(
        "/api/v1/predictions",
        {"model": "acme/spin", "input": {"x": quick.tolist()}},
        format="json",
    )

    assert [(p.status, p.error_kind) for p in hung] == [("failed", "timeout")] * 2, hung[0].error
    # Failed at once, unbilled, saying why; the model was not even loaded again for it.
    assert (paused.status, paused.error_kind) == ("failed", "unavailable")
    assert "paused for" in paused.error and "did not answer before its deadline" in paused.error
    assert "not billed" in paused.error
    assert HOSTS.loaded("cpu").get(prediction_host_key(version, tenant.pk)) is None
    assert refused.status_code == 503
    assert refused.json()["code"] == "model_paused"
    assert "acme/spin version 1 is paused for" in refused.json()["detail"]
    assert 1 <= int(refused["Retry-After"]) <= 2
    assert not UsageRecord.objects.exists()

    time.sleep(settings.BREAKER_SECONDS)
    assert np.array_equal(output_of(ran(queued(version, quick))), quick * 2)
    # A request that succeeds closes the breaker: one more hang does not pause the version.
    assert ran(queued(version, endless)).error_kind == "timeout"
    assert ran(queued(version, quick)).status == "succeeded"


def test_the_fast_path_leaves_a_hung_models_work_for_later_once_enough_threads_wait_on_it(
    tenant, settings, monkeypatch
):
    # Every fast-path thread waited on a model that hangs, one deadline after another, and
    # other organisations' predictions (other models) waited behind them for 90 s.
    import threading

    from workers import batching, services

    settings.MODEL_REQUEST_TIMEOUT = 5
    settings.INFERENCE_DIRECT_THREADS = 4  # a quarter: one thread may wait on a stalled model
    monkeypatch.setattr(batching, "STALL_SECONDS", 0.3)
    version = ready_version(tenant, "spin", scripted(Spin()), "torchscript", signature(4, 4))
    assert ran(queued(version, np.ones((1, 4), np.float32))).status == "succeeded"  # usual: ms
    hanging = queued(version, np.array([[1e9, 0, 0, 0]], np.float32))
    waiting = threading.Thread(target=ran, args=(hanging,))
    waiting.start()
    batcher = services._batcher(version)
    deadline = time.monotonic() + 10
    while not batcher.stalled():
        assert time.monotonic() < deadline
        time.sleep(0.05)

    later = queued(version, np.ones((1, 4), np.float32))
    deferred = prediction_run(prediction_id=later.public_id, defer_when_stalled=True)
    later.refresh_from_db()

    assert deferred == services.DEFERRED
    assert later.status == "queued" and later.started_at is None  # untouched, for later
    waiting.join(30)
    assert ran(hanging).status == "failed" and ran(later).status == "succeeded"
    assert output_of(later).tolist() == [[2.0] * 4]
