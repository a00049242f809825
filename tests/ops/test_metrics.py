"""Prometheus metrics: who may read them, and that they move with traffic, in the web and in
a live worker."""

from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from accounts.models import User
from tests.conftest import PASSWORD, make_user

pytestmark = pytest.mark.django_db


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of an exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, name: str, **labels) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def staff(client) -> User:
    user = make_user("ops@modelmarket.example")
    User.objects.filter(pk=user.pk).update(is_staff=True)
    client.login(email=user.email, password=PASSWORD)
    return user


def test_metrics_are_hidden_from_signed_out_visitors_and_customers(client, alice):
    assert client.get("/metrics").status_code == 404
    client.login(email=alice.email, password=PASSWORD)
    assert client.get("/metrics").status_code == 404


def test_metrics_answer_a_scraper_with_the_token(client, settings):
    settings.METRICS_TOKEN = "scrape-secret"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 404
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert "mm_queue_depth" in response.content.decode()


def test_requests_are_counted_by_route_name_and_status(client, staff):
    before = client.get("/metrics").content.decode()

    client.get("/healthz")
    client.get("/api/v1/models/acme/nothing-here/versions/1")  # 401: no key

    after = client.get("/metrics").content.decode()
    ok = {"route": "healthz", "method": "GET", "status": "200"}
    assert (
        value(after, "mm_http_requests_total", **ok)
        == value(before, "mm_http_requests_total", **ok) + 1
    )
    routes = {dict(labels).get("route") for (_name, labels) in samples(after)}
    assert not any(route and "nothing-here" in route for route in routes)  # never a raw path
    assert value(after, "mm_http_request_duration_seconds_count", route="healthz", method="GET")


def test_made_up_methods_are_counted_as_other_not_as_a_series_each(client, staff):
    before = client.get("/metrics").content.decode()

    for method in ("XFOO1", "XFOO2", "PROPFIND"):
        client.generic(method, "/healthz")

    after = client.get("/metrics").content.decode()
    methods = {dict(labels).get("method") for (_name, labels) in samples(after)}
    assert not methods & {"XFOO1", "XFOO2", "PROPFIND"}
    other = {"route": "healthz", "method": "other"}
    assert (
        value(after, "mm_http_request_duration_seconds_count", **other)
        == value(before, "mm_http_request_duration_seconds_count", **other) + 3
    )


def test_queue_depth_counts_the_predictions_fast_path_too(client, staff):
    """The queue-full check counts the fast path's list; the metric read Celery's alone and
    said 0 while predictions were refused as "queue full"."""
    from inference import dispatch, realtime

    redis = realtime.client()
    redis.lpush(dispatch.queue_key("gpu"), "pred_a", "pred_b")
    redis.zadd(dispatch.consumers_key("gpu"), {"w1": 9e9})
    redis.lpush(dispatch.inflight_key("gpu", "w1"), "pred_c")
    User.objects.filter(pk=staff.pk).update(is_superuser=True)  # the operations page too
    try:
        text = client.get("/metrics").content.decode()
        page = client.get("/admin/operations/").content.decode()
    finally:
        redis.delete(
            dispatch.queue_key("gpu"),
            dispatch.consumers_key("gpu"),
            dispatch.inflight_key("gpu", "w1"),
        )

    assert value(text, "mm_queue_depth", queue="gpu") == 2
    assert value(text, "mm_queue_inflight", queue="gpu") == 1
    assert "<tr><td>gpu</td><td>2</td><td>1</td></tr>" in page


def test_queue_depth_counts_waiting_tasks(client, staff):
    from config.celery import app

    with app.connection_for_write() as connection:
        for _ in range(3):
            app.send_task("workers.ping", queue="gpu", connection=connection)
    text = client.get("/metrics").content.decode()
    try:
        assert value(text, "mm_queue_depth", queue="gpu") >= 3
    finally:
        from inference import realtime

        realtime.client().delete("gpu")


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_worker_metrics_move_with_predictions(celery_worker_process, api, tenant):
    from tests.inference.conftest import Classifier, export, ready_version, signature

    ready_version(tenant, "clf", export(Classifier()), "pt2", signature(4, 3))

    def scrape() -> str:
        return urllib.request.urlopen(celery_worker_process.metrics_url, timeout=10).read().decode()  # noqa: S310

    before = scrape()
    for _ in range(2):
        response = api.post(
            "/api/v1/predictions",
            {"model": "acme/clf", "input": {"x": [[1, 2, 3, 4]]}},
            format="json",
            HTTP_PREFER="wait",
        )
        assert response.json()["status"] == "succeeded", response.json()
    done = {"model": "acme/clf", "status": "succeeded"}
    # The waiting request has its result as the worker commits it; the worker's thread
    # counts it just after, so a scrape at once can miss the last one.
    deadline = time.monotonic() + 10
    while True:
        after = scrape()
        counted = value(after, "mm_predictions_total", **done)
        if counted >= value(before, "mm_predictions_total", **done) + 2:
            break
        assert time.monotonic() < deadline, after
        time.sleep(0.05)

    assert counted == value(before, "mm_predictions_total", **done) + 2
    assert value(after, "mm_prediction_duration_seconds_count", model="acme/clf") >= 2
    assert value(after, "mm_batch_size_count") >= value(before, "mm_batch_size_count") + 1
    # The first call loaded the model (a miss), the second found it loaded (a hit).
    assert value(after, "mm_model_cache_lookups_total", result="miss") >= 1
    assert (
        value(after, "mm_model_cache_lookups_total", result="hit")
        >= value(before, "mm_model_cache_lookups_total", result="hit") + 1
    )
    assert value(after, "mm_celery_tasks_total", task="workers.run_prediction", state="SUCCESS")
    assert "mm_queue_depth" in after


def test_failed_calls_to_the_payment_provider_are_counted():
    from billing import stripe_gateway as gateway
    from config.metrics import BILLING_FAILURES

    def failures() -> float:
        return sum(
            sample.value
            for metric in BILLING_FAILURES.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        )

    before = failures()
    # localstripe is not running for this test (unavailable) or knows no such invoice (404).
    with pytest.raises(gateway.GatewayError):
        gateway.invoice_retrieve("in_nonexistent")
    assert failures() == before + 1


def test_models_past_the_label_limit_are_counted_as_other(settings, monkeypatch):
    """Tenants create models at will: a worker names the first MM_METRICS_MODEL_LABELS in its
    per-model series and counts the rest together, so no tenant can grow every scrape."""
    from config import metrics

    monkeypatch.setattr(metrics, "_model_labels", set())
    settings.METRICS_MODEL_LABELS = 2
    before = metrics.exposition().decode()
    labels = [metrics.model_label(ref) for ref in ("a/one", "b/two", "c/three", "a/one", "d/four")]
    for label in labels:
        metrics.PREDICTIONS.labels(label, "succeeded").inc()
    after = metrics.exposition().decode()

    assert labels == ["a/one", "b/two", "other", "a/one", "other"]
    counted = {
        ref: value(after, "mm_predictions_total", model=ref, status="succeeded")
        - value(before, "mm_predictions_total", model=ref, status="succeeded")
        for ref in ("a/one", "b/two", "c/three", "d/four", "other")
    }
    assert counted == {"a/one": 2, "b/two": 1, "c/three": 0, "d/four": 0, "other": 2}
