"""Failure paths that need no worker: webhook targets we refuse, deliveries that give up, and
data past its retention."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from inference import services, tensors, webhooks
from inference.models import Prediction, WebhookDelivery
from inference.tasks import deliver_webhook

pytestmark = pytest.mark.django_db


def make_prediction(version, **fields) -> Prediction:
    import numpy as np

    return Prediction.objects.create(
        tenant=version.model.tenant,
        model=version.model,
        version=version,
        input_data=tensors.encode({"x": np.zeros((1, 4), np.float32)}),
        **fields,
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://10.0.0.8/hook",
        "http://169.254.169.254/latest/meta-data",
        "ftp://example.com/x",
        # IPv6 addresses that lead to private IPv4 ones through a gateway (is_global says yes)
        "http://[64:ff9b::a00:8]/hook",  # NAT64 to 10.0.0.8
        "http://[2002:a9fe:a9fe::]/hook",  # 6to4 of 169.254.169.254
        "http://[::7f00:1]/hook",  # IPv4-compatible 127.0.0.1
        "http://[::ffff:10.0.0.8]/hook",  # IPv4-mapped
    ],
)
def test_webhooks_to_our_own_network_are_refused(settings, url):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    with pytest.raises(ValueError):
        webhooks.check_url(url)


def test_an_empty_event_filter_delivers_no_webhook(settings, classifier, monkeypatch):
    sent = []
    monkeypatch.setattr(webhooks, "deliver", lambda p, event, attempt: sent.append(event))
    prediction = make_prediction(
        classifier,
        status=Prediction.Status.SUCCEEDED,
        webhook_url="https://example.com/hook",
        webhook_events=[],
    )

    delivered = deliver_webhook.apply(args=[prediction.public_id, "completed"]).get()

    assert delivered is False and sent == []  # [] asked for no events, not the default


def test_a_refused_webhook_is_recorded_and_retried_until_it_gives_up(settings, classifier):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    settings.WEBHOOK_RETRY_DELAYS = [0, 0]
    prediction = make_prediction(
        classifier,
        status=Prediction.Status.SUCCEEDED,
        webhook_url="http://127.0.0.1:9/hook",
        webhook_events=["completed"],
    )

    result = deliver_webhook.apply(args=[prediction.public_id, "completed"])

    attempts = list(WebhookDelivery.objects.filter(prediction=prediction))
    assert result.get() is False
    assert [a.attempt for a in attempts] == [1, 2, 3]
    assert not any(a.delivered for a in attempts)
    assert "private address" in attempts[0].error


def test_inputs_and_outputs_are_purged_after_retention_but_the_record_stays(settings, classifier):
    old = timezone.now() - settings.PREDICTION_DATA_TTL - timedelta(minutes=1)
    done = make_prediction(classifier, status=Prediction.Status.SUCCEEDED, output_data=b"out")
    running = make_prediction(classifier, status=Prediction.Status.RUNNING)
    fresh = make_prediction(classifier, status=Prediction.Status.SUCCEEDED, output_data=b"out")
    Prediction.objects.filter(pk__in=[done.pk, running.pk]).update(created_at=old)

    assert services.predictions_purge() == 1

    done.refresh_from_db()
    running.refresh_from_db()
    fresh.refresh_from_db()
    assert done.input_data is None and done.output_data is None and done.data_purged_at
    assert done.status == "succeeded"
    assert running.input_data is not None  # a worker may still need it
    assert fresh.output_data is not None


def test_idempotency_keys_are_released_after_a_day(settings, classifier):
    prediction = make_prediction(classifier, idempotency_key="order-1")
    Prediction.objects.filter(pk=prediction.pk).update(
        created_at=timezone.now() - settings.IDEMPOTENCY_TTL - timedelta(minutes=1)
    )
    services.predictions_purge()
    prediction.refresh_from_db()
    assert prediction.idempotency_key == ""


@contextmanager
def receiver(status: int, **headers) -> Iterator[tuple[int, list[str]]]:
    """A webhook receiver on 127.0.0.1 answering every request with ``status``: its port
    and the paths it was sent."""
    hits: list[str] = []

    class Answer(BaseHTTPRequestHandler):
        def do_POST(self):
            hits.append(self.path)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()

        do_GET = do_POST

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], hits
    finally:
        server.shutdown()


def test_a_redirecting_webhook_receiver_is_not_followed(classifier):
    with receiver(302, Location="http://169.254.169.254/latest/meta-data") as (port, hits):
        prediction = make_prediction(
            classifier,
            status=Prediction.Status.SUCCEEDED,
            webhook_url=f"http://127.0.0.1:{port}/h",
        )
        delivered = webhooks.deliver(prediction, "completed", attempt=1)

    assert delivered is False and hits == ["/h"]
    assert WebhookDelivery.objects.get(prediction=prediction).status_code == 302


def test_a_webhook_host_that_resolves_again_to_our_network_is_not_reached(
    settings, classifier, monkeypatch
):
    """DNS rebinding: the name answers with a public address when it is checked and with
    ours when the delivery looks it up again. The delivery goes to the address checked."""
    import socket

    real = socket.getaddrinfo
    lookups = []

    def rebinding(host, *args, **kwargs):
        if host != "rebind.example":
            return real(host, *args, **kwargs)
        lookups.append(host)
        answer = "198.51.99.7" if len(lookups) == 1 else "127.0.0.1"  # public, then ours
        return real(answer, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    settings.WEBHOOK_ALLOW_PRIVATE = False
    settings.WEBHOOK_TIMEOUT = 1
    with receiver(204) as (port, hits):
        prediction = make_prediction(
            classifier,
            status=Prediction.Status.SUCCEEDED,
            webhook_url=f"http://rebind.example:{port}/hook",
        )
        delivered = webhooks.deliver(prediction, "completed", attempt=1)

    assert delivered is False and hits == []  # it tried 198.51.99.7 (unreachable here)
    assert lookups == ["rebind.example"]
    assert WebhookDelivery.objects.get(prediction=prediction).error


def test_an_idempotency_key_older_than_a_day_starts_a_new_prediction(api, settings, classifier):
    body = {"model": "acme/clf", "input": {"x": [[1, 2, 3, 4]]}}
    first = api.post("/api/v1/predictions", body, format="json", HTTP_IDEMPOTENCY_KEY="k1")
    Prediction.objects.filter(public_id=first.json()["id"]).update(
        created_at=timezone.now() - settings.IDEMPOTENCY_TTL - timedelta(minutes=1)
    )
    # The purge has not run: the old key is released on use, not turned into an error.
    again = api.post(
        "/api/v1/predictions",
        {**body, "input": {"x": [[5, 6, 7, 8]]}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k1",
    )

    assert again.status_code == 201 and again.json()["id"] != first.json()["id"]


@pytest.mark.django_db(transaction=True)  # the batcher thread reads with its own connection
def test_a_prediction_whose_model_cannot_be_loaded_fails_instead_of_hanging(settings, classifier):
    from marketplace.models import TenantKey
    from workers.pool import HOSTS
    from workers.services import prediction_run

    settings.MODEL_HOST_PRESTART = 0
    prediction = make_prediction(classifier)
    TenantKey.objects.filter(tenant=classifier.model.tenant).update(
        wrapped=None, status="destroyed"
    )
    try:
        assert prediction_run(prediction_id=prediction.public_id) == "failed"
    finally:
        HOSTS.close()

    prediction.refresh_from_db()
    assert prediction.status == "failed" and prediction.error_kind == "internal"
    assert "KeyUnavailableError" in prediction.error


def test_a_prediction_whose_worker_was_lost_fails_unbilled_instead_of_running_forever(
    api, settings, classifier
):
    from billing.models import UsageRecord
    from inference.tasks import fail_stuck_predictions

    settings.PREDICTION_STUCK_SECONDS = 300
    long_ago = timezone.now() - timedelta(seconds=301)
    lost = make_prediction(classifier, status=Prediction.Status.RUNNING, started_at=long_ago)
    busy = make_prediction(classifier, status=Prediction.Status.RUNNING, started_at=timezone.now())

    swept = fail_stuck_predictions.apply().get()
    shown = api.get(f"/api/v1/predictions/{lost.public_id}").json()
    lost.refresh_from_db()
    late = services.prediction_succeed(lost, output=b"", compute_ms=5.0)  # its worker, at last

    assert swept == 1
    assert (shown["status"], shown["error_kind"]) == ("failed", "internal")
    assert "did not finish within 300 s of starting" in shown["error"]
    assert "not billed" in shown["error"]
    assert api.get(f"/api/v1/predictions/{busy.public_id}").json()["status"] == "running"
    assert late is False
    assert not UsageRecord.objects.exists()


@pytest.mark.postgres  # where a failed INSERT aborts the transaction until its savepoint
def test_a_retry_that_raced_in_first_is_answered_with_its_prediction(
    api, monkeypatch, classifier, django_capture_on_commit_callbacks
):
    """Two requests with one Idempotency-Key at once, each looking the key up before the other
    wrote: the second insert meets the first's row and answers with that prediction. One
    prediction, queued once, so billed at most once."""
    from tests.conftest import race_idempotency_key

    body = {"model": "acme/clf", "input": {"x": [[1, 2, 3, 4]]}}

    def send():
        return api.post("/api/v1/predictions", body, format="json", HTTP_IDEMPOTENCY_KEY="k2")

    raced, queued = race_idempotency_key(monkeypatch, services, send)
    with django_capture_on_commit_callbacks(execute=True):
        late = send()

    [first] = raced
    assert (first.status_code, late.status_code) == (201, 200)
    assert late.json()["id"] == first.json()["id"]
    assert Prediction.objects.filter(idempotency_key="k2").count() == 1
    assert queued == [first.json()["id"]]  # the loser's went with its rolled-back write


def test_a_start_event_says_running_even_when_delivered_after_the_result(
    settings, classifier, monkeypatch
):
    # It was serialised at delivery: prediction.start carried "succeeded" and the output.
    import json

    import numpy as np

    settings.WEBHOOK_ALLOW_PRIVATE = True
    sent = []
    monkeypatch.setattr(
        webhooks, "_post", lambda url, body, headers, address: sent.append(body) or 204
    )
    now = timezone.now()
    prediction = make_prediction(
        classifier,
        status=Prediction.Status.SUCCEEDED,
        webhook_url="https://example.com/hook",
        started_at=now,
        completed_at=now + timedelta(milliseconds=5),
        compute_ms=1.5,
        output_data=tensors.encode({"output": np.ones((1, 3), np.float32)}),
    )

    assert webhooks.deliver(prediction, "start", attempt=1)
    assert webhooks.deliver(prediction, "completed", attempt=1)

    start, completed = (json.loads(body) for body in sent)
    assert start["type"] == "prediction.start"
    assert start["data"]["status"] == "running" and start["data"]["output"] is None
    assert start["data"]["completed_at"] is None and start["data"]["cost"] is None
    assert start["data"]["started_at"] == completed["data"]["started_at"]
    assert completed["data"]["status"] == "succeeded"
    assert completed["data"]["output"] == {"output": [[1.0, 1.0, 1.0]]}


@pytest.fixture
def sent_tasks(monkeypatch) -> list[tuple]:
    """The tasks sent to the broker, by name and arguments (not sent)."""
    from celery import current_app

    sent: list[tuple] = []
    monkeypatch.setattr(
        current_app, "send_task", lambda name, args=(), **options: sent.append((name, *args))
    )
    return sent


def test_a_webhook_goes_out_even_when_waking_the_waiters_fails(classifier, sent_tasks, monkeypatch):
    """Redis down as a prediction finished: the publish raised, so its webhook task was never
    sent, and the worker logged the recorded, billed result as a failed write."""
    from inference import realtime

    def down(*args, **kwargs):
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(realtime, "publish_result", down)
    prediction = make_prediction(
        classifier,
        status=Prediction.Status.SUCCEEDED,
        webhook_url="https://example.com/hook",
        webhook_events=["completed"],
    )

    services._announce(prediction, b"output")

    assert sent_tasks == [("inference.deliver_webhook", prediction.public_id, "completed")]


def test_the_beat_sends_webhooks_missed_when_their_predictions_finished(classifier, sent_tasks):
    now = timezone.now()

    def finished(minutes_ago: float, **fields) -> Prediction:
        return make_prediction(
            classifier,
            status=Prediction.Status.SUCCEEDED,
            completed_at=now - timedelta(minutes=minutes_ago),
            **{
                "webhook_url": "https://example.com/hook",
                "webhook_events": ["completed"],
                **fields,
            },
        )

    missed = finished(10)
    tried = finished(10)
    WebhookDelivery.objects.create(
        prediction=tried, event="completed", webhook_id="m", attempt=1, error="HTTP 500"
    )
    finished(1)  # its task may still be waiting in the queue
    finished(10, webhook_events=[])  # asked for none
    finished(10, webhook_url="")
    finished(60 * 25)  # too old to send now

    assert webhooks.resend_missed() == 1
    assert sent_tasks == [("inference.deliver_webhook", missed.public_id, "completed")]


def test_predictions_asking_no_completed_event_do_not_crowd_out_a_missed_one(
    classifier, sent_tasks, monkeypatch
):
    """The sweep cut its query at 1,000 rows and then dropped those that asked for no
    "completed" event: never delivered, they came back every sweep for a day, and enough of
    them hid the ones really missed."""
    monkeypatch.setattr(webhooks, "MAX_RESENT", 2)
    now = timezone.now()
    common = {
        "status": Prediction.Status.SUCCEEDED,
        "webhook_url": "https://example.com/hook",
    }
    for minutes in (20, 19, 18):  # older: first in the sweep's order
        make_prediction(
            classifier,
            completed_at=now - timedelta(minutes=minutes),
            webhook_events=["start"],
            **common,
        )
    missed = [
        make_prediction(
            classifier,
            completed_at=now - timedelta(minutes=m),
            webhook_events=["completed"],
            **common,
        )
        for m in (10, 9, 8)
    ]

    assert webhooks.resend_missed() == 2  # at most MAX_RESENT, all of them missed ones
    assert [task[1] for task in sent_tasks] == [p.public_id for p in missed[:2]]
