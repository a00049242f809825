"""Faults on the predictions hot path: the web's result subscription dropped by Redis, and a
worker that died after finishing a prediction but before taking its id off its in-flight
list."""

from __future__ import annotations

import threading
import time

import pytest

from billing.models import UsageRecord
from inference import dispatch, realtime
from inference.models import Prediction
from workers.direct import DirectConsumer


def _wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_waiting_request_gets_its_result_after_the_subscription_is_dropped():
    listener = realtime.Listener()
    assert listener.subscribed.wait(5)
    waiter = realtime.expect("pred_dropped", shared=listener)
    checked = threading.Event()  # the waiter was told to look in the database

    def is_done() -> bool:
        checked.set()
        return False  # not written yet: keep waiting

    outcome: list = []
    waiting = threading.Thread(
        target=lambda: outcome.append(realtime.wait_result(waiter, 20, is_done))
    )
    waiting.start()

    killed = realtime.client().client_kill_filter(_type="pubsub")

    assert killed >= 1
    assert checked.wait(5)
    assert _wait_for(listener.subscribed.is_set)  # subscribed again
    realtime.publish_result("pred_dropped", {"status": "succeeded"}, b"out")
    waiting.join(10)
    assert outcome == [({"status": "succeeded"}, b"out")]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_finished_prediction_recovered_from_a_dead_worker_is_not_run_or_billed_again(
    celery_worker_process, api, classifier, settings
):
    queue = settings.INFERENCE_QUEUE
    assert _wait_for(lambda: dispatch.forget_liveness() or dispatch.fast_path_live(queue))
    body = api.post(
        "/api/v1/predictions",
        {"model": "acme/clf", "input": {"x": [[1, 2, 3, 4]]}},
        format="json",
        HTTP_PREFER="wait",
    ).json()
    assert body["status"] == "succeeded"
    before = Prediction.objects.get(public_id=body["id"])
    # A worker that wrote the result and died before its LREM: the id is still in flight.
    client = realtime.client()
    client.rpush(dispatch.inflight_key(queue, "dead-worker"), body["id"])
    client.zadd(dispatch.consumers_key(queue), {"dead-worker": time.time() - 1})
    survivor = DirectConsumer(queue, threads=1)
    try:
        survivor.beat_once()  # moves it back to the queue, where the live worker takes it

        assert _wait_for(lambda: client.llen(dispatch.queue_key(queue)) == 0)
        assert _wait_for(lambda: not _in_flight(client, queue, body["id"]))
    finally:
        survivor.pool.shutdown()
        client.zrem(dispatch.consumers_key(queue), survivor.name)
    after = Prediction.objects.get(public_id=body["id"])
    assert after.status == Prediction.Status.SUCCEEDED
    assert (after.attempts, after.completed_at, after.output_data) == (
        before.attempts,
        before.completed_at,
        before.output_data,
    )
    assert UsageRecord.objects.filter(source_id=body["id"]).count() == 1


def _in_flight(client, queue: str, prediction_id: str) -> bool:
    for key in client.scan_iter(dispatch.inflight_key(queue, "*")):
        if prediction_id.encode() in client.lrange(key, 0, -1):
            return True
    return False
