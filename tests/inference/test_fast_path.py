"""The predictions hot path: what the web caches between requests, the fast path to the
worker (a Redis list, with the Celery task as the durable fallback) and the result pushed with
its output."""

from __future__ import annotations

import time
from decimal import Decimal

import numpy as np
import pytest

from accounts import services as accounts
from billing.models import UsageRecord
from inference import catalog, dispatch, realtime
from marketplace import listings
from tests.conftest import key_client
from workers.direct import DirectConsumer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_caches():
    catalog.clear()
    dispatch.forget_liveness()
    yield
    catalog.clear()
    dispatch.forget_liveness()


def post(api, model: str, **headers):
    return api.post(
        "/api/v1/predictions",
        {"model": model, "input": {"x": [[1, 2, 3, 4]]}},
        format="json",
        **headers,
    )


def test_ending_a_subscription_is_seen_by_the_next_prediction(classifier, outsider):
    listing = listings.listing_publish(
        model=classifier.model, actor=accounts.SYSTEM, visibility="public"
    )
    entitlement = listings.listing_subscribe(
        listing=listing, tenant=outsider, actor=accounts.SYSTEM
    )
    consumer = key_client(outsider)
    assert post(consumer, "acme/clf").status_code == 201  # resolved and cached

    listings.subscription_cancel(entitlement=entitlement, actor=accounts.SYSTEM)

    assert post(consumer, "acme/clf").status_code == 403


def test_a_take_down_is_seen_by_the_next_prediction(classifier, outsider):
    listing = listings.listing_publish(
        model=classifier.model, actor=accounts.SYSTEM, visibility="public"
    )
    listings.listing_subscribe(listing=listing, tenant=outsider, actor=accounts.SYSTEM)
    consumer = key_client(outsider)
    assert post(consumer, "acme/clf").status_code == 201

    # An update() without a model signal: the audit event it writes clears the cache.
    listings.listing_take_down(listing=listing, reason="complaint", actor=accounts.SYSTEM)

    assert post(consumer, "acme/clf").status_code == 451


def test_a_new_price_is_seen_by_the_next_prediction(classifier, outsider, settings):
    settings.PAYMENT_METHOD_REQUIRED = True
    listing = listings.listing_publish(
        model=classifier.model, actor=accounts.SYSTEM, visibility="public"
    )
    listings.listing_subscribe(listing=listing, tenant=outsider, actor=accounts.SYSTEM)
    consumer = key_client(outsider)
    assert post(consumer, "acme/clf").status_code == 201

    listing.price_per_call = Decimal("0.01")
    listing.save(update_fields=["price_per_call"])

    assert post(consumer, "acme/clf").status_code == 402


def test_without_a_worker_on_the_fast_path_the_celery_task_is_sent(api, classifier, settings):
    settings.INFERENCE_QUEUE = "fast-path-test"
    client = realtime.client()
    client.delete("fast-path-test", dispatch.queue_key("fast-path-test"))
    try:
        assert post(api, "acme/clf").status_code == 201

        assert client.llen("fast-path-test") == 1  # a Celery message
        assert client.llen(dispatch.queue_key("fast-path-test")) == 0
    finally:
        client.delete("fast-path-test", dispatch.queue_key("fast-path-test"))


def test_with_a_worker_on_the_fast_path_the_id_goes_to_its_list(api, classifier, settings):
    settings.INFERENCE_QUEUE = "fast-path-test"
    client = realtime.client()
    queue = dispatch.queue_key("fast-path-test")
    consumers = dispatch.consumers_key("fast-path-test")
    client.zadd(consumers, {"somebody": time.time() + 10})
    try:
        created = post(api, "acme/clf").json()

        assert client.lrange(queue, 0, -1) == [created["id"].encode()]
        assert client.llen("fast-path-test") == 0
    finally:
        client.delete("fast-path-test", queue, consumers)


def test_the_work_of_a_worker_that_stopped_beating_goes_back_to_the_queue(settings):
    client = realtime.client()
    queue = "fast-path-test"
    client.delete(dispatch.queue_key(queue), dispatch.consumers_key(queue))
    client.rpush(dispatch.inflight_key(queue, "dead"), "pred_a", "pred_b")
    client.zadd(dispatch.consumers_key(queue), {"dead": time.time() - 1})
    client.lpush(dispatch.queue_key(queue), "pred_new")
    survivor = DirectConsumer(queue, threads=1)
    try:
        survivor.beat_once()

        # Back at the front (the end taken next), before work that came in since.
        assert client.lrange(dispatch.queue_key(queue), 0, -1) == [
            b"pred_new",
            b"pred_a",
            b"pred_b",
        ]
        assert client.zscore(dispatch.consumers_key(queue), "dead") is None
        assert client.zscore(dispatch.consumers_key(queue), survivor.name) > time.time()
        assert not client.exists(dispatch.inflight_key(queue, "dead"))
    finally:
        survivor.pool.shutdown()
        client.delete(dispatch.queue_key(queue), dispatch.consumers_key(queue))


@pytest.mark.e2e
def test_sync_result_arrives_with_its_output_and_cost(celery_worker_process, api, classifier):
    assert dispatch.fast_path_live(_inference_queue())  # the test worker took the fast path

    body = post(api, "acme/clf", HTTP_PREFER="wait").json()

    assert body["status"] == "succeeded" and len(body["output"]["output"][0]) == 3
    record = UsageRecord.objects.get(source_id=body["id"])
    assert body["cost"] == {"amount": str(record.amount), "currency": "usd", "free": False}
    assert body["started_at"] and body["completed_at"] and body["metrics"]["compute_ms"] > 0


def _inference_queue() -> str:
    from django.conf import settings

    deadline = time.monotonic() + 10
    while not dispatch.fast_path_live(settings.INFERENCE_QUEUE) and time.monotonic() < deadline:
        dispatch.forget_liveness()
        time.sleep(0.2)
    return settings.INFERENCE_QUEUE


def test_representation_matches_the_declared_fields(classifier, tenant):
    from django.utils import timezone
    from rest_framework import serializers

    from inference.api.predictions import PredictionSerializer
    from inference.models import Prediction
    from inference.tensors import encode

    now = timezone.now()
    common = {"tenant": tenant, "model": classifier.model, "version": classifier}
    cases = [
        Prediction.objects.create(**common),
        Prediction.objects.create(
            **common,
            status=Prediction.Status.SUCCEEDED,
            output_data=encode({"output": np.ones((1, 3), "float32")}),
            compute_ms=1.5,
            batched_with=2,
            started_at=now,
            completed_at=now,
        ),
        Prediction.objects.create(
            **common,
            status=Prediction.Status.FAILED,
            error="boom",
            error_kind="model",
            started_at=now,
            completed_at=now,
            data_purged_at=now,
        ),
    ]
    for prediction in cases:
        serializer = PredictionSerializer(prediction)
        generic = serializers.ModelSerializer.to_representation(serializer, prediction)

        assert serializer.data == dict(generic)


def test_concurrent_writes_share_a_transaction_and_a_failing_one_fails_alone(tenant):
    import threading

    from django.db import connection, transaction

    from accounts.models import Tenant
    from workers.groupcommit import GroupCommit

    writes = GroupCommit()
    committed: list[int] = []
    first_started = threading.Event()

    def write(i: int):
        if i == 0:
            first_started.set()
            time.sleep(0.3)  # the others queue up behind this round
        Tenant.objects.filter(pk=tenant.pk).update(name=f"name {i}")
        transaction.on_commit(lambda: committed.append(i))
        if i == 3:
            raise ValueError("bad write")
        return i

    results: dict[int, object] = {}

    def worker(i: int) -> None:
        if i:
            first_started.wait()
        try:
            results[i] = writes.run(lambda: write(i))
        except ValueError as exc:
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert isinstance(results.pop(3), ValueError)
    assert results == {0: 0, 1: 1, 2: 2, 4: 4, 5: 5}
    assert sorted(committed) == [0, 1, 2, 4, 5]  # the failed write's hook never ran
    assert writes.rounds[0] == 1 and max(writes.rounds) > 1
    tenant.refresh_from_db()
    assert tenant.name != "name 3"


def test_a_write_that_loses_a_lock_runs_once_more(tenant):
    """A deadlock or a lock wait that ran out fails the write's attempt, not the write."""
    from django.db import OperationalError, transaction

    from accounts.models import Tenant
    from workers.groupcommit import GroupCommit

    writes = GroupCommit()
    attempts, committed = [], []

    def deadlocks_once():
        attempts.append(1)
        Tenant.objects.filter(pk=tenant.pk).update(name="renamed")
        transaction.on_commit(lambda: committed.append(len(attempts)))
        if len(attempts) == 1:
            raise OperationalError("deadlock detected")
        return "done"

    def always_locked():
        raise OperationalError("database is locked")

    assert writes.run(deadlocks_once) == "done"
    assert len(attempts) == 2 and committed == [2]  # the failed attempt's hook never ran
    with pytest.raises(OperationalError):
        writes.run(always_locked)


def test_a_prediction_left_for_later_goes_to_the_back_of_the_queue(monkeypatch):
    from workers import services

    client = realtime.client()
    queue = "fast-path-test"
    source, consumers = dispatch.queue_key(queue), dispatch.consumers_key(queue)
    client.delete(source, consumers)
    consumer = DirectConsumer(queue, threads=1)
    monkeypatch.setattr(services, "prediction_run", lambda **kwargs: services.DEFERRED)
    try:
        client.lpush(source, "pred_older", "pred_newer")
        client.rpush(consumer.inflight, "pred_stalled")
        consumer.free.acquire()  # as the take loop does before it hands an id over

        consumer._run(b"pred_stalled")

        # Taken last: behind the work queued before and after it was first taken.
        assert client.lrange(source, 0, -1) == [b"pred_stalled", b"pred_newer", b"pred_older"]
        assert client.llen(consumer.inflight) == 0
    finally:
        consumer.pool.shutdown()
        client.delete(source, consumers, consumer.inflight)


def test_a_prediction_that_cannot_be_put_back_is_run_here_after_all(monkeypatch):
    import redis as redis_client

    from workers import services

    client = realtime.client()
    queue = "fast-path-test"
    consumer = DirectConsumer(queue, threads=1)
    runs = []

    def prediction_run(**kwargs):
        runs.append(kwargs)
        return services.DEFERRED if kwargs.get("defer_when_stalled") else "succeeded"

    def redis_down():
        raise redis_client.ConnectionError("Redis went away")

    monkeypatch.setattr(services, "prediction_run", prediction_run)
    monkeypatch.setattr(consumer.redis, "pipeline", redis_down)
    try:
        client.rpush(consumer.inflight, "pred_stalled")
        consumer.free.acquire()

        consumer._run(b"pred_stalled")

        # Not lost in flight: run without deferring, then dropped from the in-flight list.
        assert runs == [
            {"prediction_id": "pred_stalled", "defer_when_stalled": True},
            {"prediction_id": "pred_stalled"},
        ]
        assert client.llen(consumer.inflight) == 0
        assert client.llen(dispatch.queue_key(queue)) == 0
    finally:
        consumer.pool.shutdown()
        client.delete(dispatch.queue_key(queue), consumer.inflight)
