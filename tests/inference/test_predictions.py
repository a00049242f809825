"""The predictions API through the real stack: web, Redis, a Celery worker and sandboxed
model hosts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from accounts.models import Scope
from billing.models import UsageRecord
from inference.models import CompressionJob, Prediction, WebhookDelivery
from tests.conftest import key_client, statements
from tests.inference.conftest import Classifier

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def run(api, model: str, x, *, wait: str | None = "wait", key: str | None = None, **body):
    headers = {"HTTP_PREFER": wait} if wait else {}
    if key:
        headers["HTTP_IDEMPOTENCY_KEY"] = key
    return api.post(
        "/api/v1/predictions", {"model": model, "input": {"x": x}, **body}, format="json", **headers
    )


def wait_until(api, prediction_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = api.get(f"/api/v1/predictions/{prediction_id}").json()
        if body["status"] in ("succeeded", "failed", "canceled"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


def test_sync_prediction_returns_the_models_output_and_is_billed(
    celery_worker_process, api, classifier
):
    x = [[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, 1.0, 1.0]]

    response = run(api, "acme/clf", x)

    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "succeeded", body
    expected = Classifier()(torch.tensor(x)).tolist()
    assert torch.allclose(torch.tensor(body["output"]["output"]), torch.tensor(expected), atol=1e-5)
    assert body["metrics"]["compute_ms"] > 0
    assert body["cost"] == {"amount": "0.000000", "currency": "usd", "free": False}
    assert UsageRecord.objects.filter(source_id=body["id"]).count() == 1
    assert "RateLimit-Remaining" in response


def test_a_page_of_predictions_reads_their_costs_at_once_and_not_their_inputs(
    celery_worker_process, api, classifier
):
    made = [run(api, "acme/clf", [[float(i), 0.0, 0.0, 0.0]]).json() for i in range(4)]
    assert all(body["status"] == "succeeded" for body in made), made
    with statements() as sql:
        page = api.get("/api/v1/predictions").json()

    listed = {body["id"]: body for body in page["results"]}
    assert listed.keys() >= {body["id"] for body in made}
    for body in made:
        assert listed[body["id"]]["cost"] == body["cost"] is not None
        assert api.get(f"/api/v1/predictions/{body['id']}").json()["cost"] == body["cost"]
    assert len([q for q in sql if "billing_usagerecord" in q]) == 1, sql  # not one each
    assert [q for q in sql if "inference_prediction" in q], sql
    assert not [q for q in sql if "input_data" in q], sql  # a row's input can be megabytes


def test_async_prediction_can_be_fetched_later(celery_worker_process, api, classifier):
    created = run(api, "acme/clf", [[1, 2, 3, 4]], wait=None)
    assert created.status_code == 201 and created.json()["status"] in (
        "queued",
        "running",
        "succeeded",
    )
    done = wait_until(api, created.json()["id"])
    assert done["status"] == "succeeded" and len(done["output"]["output"][0]) == 3


def test_wait_that_runs_out_returns_the_pending_prediction(celery_worker_process, api, slow):
    run(api, "acme/slow", [[1, 1, 1, 1]], wait=None)  # occupies the model
    response = run(api, "acme/slow", [[2, 2, 2, 2]], wait="wait=0.2")
    assert response.json()["status"] in ("queued", "running")
    assert wait_until(api, response.json()["id"])["status"] == "succeeded"


def test_cancelled_prediction_is_not_run_or_billed(celery_worker_process, api, slow):
    ahead = [run(api, "acme/slow", [[1, 1, 1, 1]], wait=None).json()["id"] for _ in range(3)]
    victim = run(api, "acme/slow", [[3, 3, 3, 3]], wait=None).json()

    cancelled = api.post(f"/api/v1/predictions/{victim['id']}/cancel").json()

    assert cancelled["status"] == "canceled"
    # The ones ahead of it still run (and none is still being written when the test's rows
    # are deleted: a worker's write racing that once deadlocked PostgreSQL's TRUNCATE).
    assert [wait_until(api, id)["status"] for id in ahead] == ["succeeded"] * 3
    time.sleep(1)
    final = api.get(f"/api/v1/predictions/{victim['id']}").json()
    assert final["status"] == "canceled" and final["output"] is None
    assert not UsageRecord.objects.filter(source_id=victim["id"]).exists()


def test_cancelling_a_prediction_that_just_finished_returns_its_result(
    celery_worker_process, api, classifier
):
    """An OIP call whose wait ran out cancels its prediction; when the worker committed the
    result in between, the call answers with that result (it is billed), never with an
    empty one."""
    from inference import services, tensors

    queued = run(api, "acme/clf", [[1, 2, 3, 4]], wait=None).json()
    stale = Prediction.objects.get(public_id=queued["id"])  # as the waiting request holds it
    assert wait_until(api, queued["id"])["status"] == "succeeded"

    answered = services.prediction_cancel(stale)

    assert answered.status == "succeeded"
    outputs = tensors.decode(answered.output_data)
    expected = Classifier()(torch.tensor([[1.0, 2, 3, 4]])).detach().numpy()
    assert outputs["output"][0].tolist() == pytest.approx(expected[0].tolist(), rel=1e-5)
    assert UsageRecord.objects.filter(source_id=queued["id"]).count() == 1


def test_cancelling_again_sends_no_second_completed_event(
    api, tenant, classifier, monkeypatch, django_capture_on_commit_callbacks
):
    """Each repeated cancel of a cancelled prediction sent its "completed" webhook again (a
    review helper's receiver got three)."""
    from celery import current_app

    sent = []
    monkeypatch.setattr(current_app, "send_task", lambda name, args, **_: sent.append(args))
    prediction = Prediction.objects.create(
        tenant=tenant,
        model=classifier.model,
        version=classifier,
        webhook_url="https://example.com/hook",
    )

    for _ in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            answer = api.post(f"/api/v1/predictions/{prediction.public_id}/cancel")
        assert answer.status_code == 200 and answer.json()["status"] == "canceled"

    assert sent == [[prediction.public_id, "completed"]]


def test_idempotent_retry_returns_the_same_prediction_billed_once(
    celery_worker_process, api, classifier
):
    first = run(api, "acme/clf", [[1, 2, 3, 4]], key="order-42")
    again = run(api, "acme/clf", [[1, 2, 3, 4]], key="order-42")
    other = run(api, "acme/clf", [[9, 9, 9, 9]], key="order-42")

    assert (first.status_code, again.status_code) == (201, 200)  # as a compression job's
    assert first.json()["id"] == again.json()["id"]
    assert again.json()["output"] == first.json()["output"]
    assert other.status_code == 409
    assert Prediction.objects.count() == 1
    assert UsageRecord.objects.count() == 1


def test_a_retry_answers_with_the_first_prediction_under_a_rate_limit_and_a_yank(
    celery_worker_process, api, classifier, tenant, settings
):
    # A retry used to be resolved and admitted again: 429 once the key's limit was used, and
    # 410 "use another version" once the version was yanked, though the first was billed.
    from accounts import services as accounts
    from marketplace import services as registry

    first = run(api, "acme/clf", [[1, 2, 3, 4]], key="order-7")
    assert first.json()["status"] == "succeeded"
    # No call left (a limit of 1 was racy: the fixed window could turn over between calls).
    settings.RATE_LIMIT_PER_MINUTE = 0
    assert run(api, "acme/clf", [[1, 1, 1, 1]], wait=None).status_code == 429
    registry.version_yank(version=classifier, reason="recalled", actor=accounts.SYSTEM)

    again = run(api, "acme/clf", [[1, 2, 3, 4]], key="order-7")
    other_model = key_client(tenant, allowed_models=["acme/other"])
    outside_its_models = run(other_model, "acme/clf", [[1, 2, 3, 4]], key="order-7")

    assert again.status_code == 200, again.content
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["output"] == first.json()["output"]
    assert outside_its_models.status_code == 403  # the key's own limit still holds
    assert UsageRecord.objects.count() == 1


def test_input_that_does_not_fit_is_400_naming_it(api, classifier):
    response = run(api, "acme/clf", [[1, 2, 3]])
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "'x'" in detail and "[-1, 4]" in detail and "[1, 3]" in detail
    assert Prediction.objects.count() == 0


def test_an_input_of_many_rows_without_values_is_400_naming_it(api, tenant):
    # 78 bytes of request: its answer, a list per row, took the web past 10 GB.
    from tests.inference.conftest import export, ready_version

    wide = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, -1]}],
    }
    ready_version(tenant, "seq", export(Classifier()), "pt2", wide)
    empty = {"data": [], "shape": [10_000_000, 0]}

    rest = run(api, "acme/seq", empty)
    oip = api.post(
        "/v2/models/acme/seq/infer",
        {"inputs": [{"name": "x", "datatype": "FP32", **empty}]},
        format="json",
    )

    assert rest.status_code == 400
    assert "'x' has shape [10000000, 0] and no values" in rest.json()["detail"]
    assert oip.status_code == 400 and "[10000000, 0] and no values" in oip.json()["error"]
    assert Prediction.objects.count() == 0


def test_model_that_raises_fails_the_prediction_with_its_message(
    celery_worker_process, api, raising
):
    body = run(api, "acme/raises", [[999, 999, 999, 999]]).json()
    assert body["status"] == "failed"
    # The error, not the model's code: TorchScript's text carried the publisher's source
    # lines (and file paths) to whoever called the model.
    assert body["error"] == "The model raised an error: RuntimeError: input out of range"
    assert not UsageRecord.objects.filter(source_id=body["id"]).exists()
    # The worker keeps serving the same model.
    assert run(api, "acme/raises", [[1, 1, 1, 1]]).json()["status"] == "succeeded"


def test_batched_outputs_equal_single_outputs_and_each_is_billed_once(
    celery_worker_process, api, classifier
):
    torch.manual_seed(3)
    inputs = [torch.randn(1, 4).tolist() for _ in range(50)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        bodies = list(pool.map(lambda x: run(api, "acme/clf", x).json(), inputs))

    reference = Classifier()
    for x, body in zip(inputs, bodies, strict=True):
        assert body["status"] == "succeeded", body
        expected = reference(torch.tensor(x))
        assert torch.allclose(torch.tensor(body["output"]["output"]), expected, atol=1e-5)
    assert UsageRecord.objects.count() == 50
    assert len({r.source_id for r in UsageRecord.objects.all()}) == 50
    assert max(b["metrics"]["batched_with"] for b in bodies) > 1  # merged in the worker


def test_rate_limit_is_429_with_retry_after(api, classifier, settings):
    settings.RATE_LIMIT_PER_MINUTE = 2
    codes = [run(api, "acme/clf", [[1, 2, 3, 4]], wait=None).status_code for _ in range(3)]
    assert codes == [201, 201, 429]
    limited = run(api, "acme/clf", [[1, 2, 3, 4]], wait=None)
    assert int(limited["Retry-After"]) > 0
    assert limited["RateLimit-Remaining"] == "0"


def test_full_queue_is_503_with_retry_after(api, classifier, settings):
    settings.MAX_QUEUE_DEPTH = 0
    response = run(api, "acme/clf", [[1, 2, 3, 4]], wait=None)
    assert response.status_code == 503 and response["Retry-After"] == "1"
    assert Prediction.objects.count() == 0


@pytest.mark.parametrize(
    "prefer, seconds",
    [
        ("wait", 60),
        ("wait=5", 5),
        ("respond-async, wait=2.5", 2.5),
        ("wait=600", 60),
        ("wait=-5", 0),  # malformed: ignored (RFC 7240), where it held the request 60 s
        ("wait=abc", 0),
        ("", 0),
        # RFC 7240: names are case-insensitive (WAIT=3 answered at once), values may be quoted.
        ("WAIT=3", 3),
        ("Wait", 60),
        ('wait="4"', 4),
        ("respond-async;x=1, wait = 2", 2),
        ("wait-for=5", 0),  # another preference: it held the request 60 s
        ("handling=lenient", 0),
    ],
)
def test_prefer_wait_holds_the_request_as_long_as_asked_and_ignores_nonsense(prefer, seconds):
    from inference.api.predictions import wait_seconds

    assert wait_seconds(prefer) == seconds


def test_too_large_is_413(api, classifier, settings):
    settings.MAX_INPUT_BYTES = 100
    response = run(api, "acme/clf", [[1.0] * 4] * 50, wait=None)
    assert response.status_code == 413


def test_key_model_allowlist_applies(tenant, classifier):
    limited = key_client(tenant, scopes=[Scope.INFERENCE], allowed_models=["acme/other"])
    response = run(limited, "acme/clf", [[1, 2, 3, 4]], wait=None)
    assert response.status_code == 403 and "may not use acme/clf" in response.json()["detail"]


def test_a_key_limited_to_one_model_reaches_nothing_of_the_others(api, tenant, classifier, slow):
    """Not only running: another model's metadata, predictions and compression jobs are out
    of a limited key's reach, and a model outside its list reads the same whether it exists
    or not."""
    ids = {
        ref: run(api, ref, [[1, 2, 3, 4]], wait=None).json()["id"]
        for ref in ("acme/clf", "acme/slow")
    }
    bf16 = {"model": "acme/clf", "version": "1", "method": "quantize", "params": {"scheme": "bf16"}}
    job = api.post("/api/v1/compression-jobs", bf16, format="json").json()
    limited = key_client(tenant, allowed_models=["acme/slow"])

    assert limited.get("/v2/models/acme/slow").status_code == 200
    assert [m["name"] for m in limited.get("/api/v1/models").json()["results"]] == ["slow"]
    listed = limited.get("/api/v1/predictions").json()["results"]
    assert [p["id"] for p in listed] == [ids["acme/slow"]]
    assert limited.get(f"/api/v1/predictions/{ids['acme/clf']}").status_code == 404
    assert limited.post(f"/api/v1/predictions/{ids['acme/clf']}/cancel").status_code == 404
    assert limited.get("/api/v1/compression-jobs").json()["results"] == []
    assert limited.get(f"/api/v1/compression-jobs/{job['id']}").status_code == 404
    for response in (
        limited.get("/v2/models/acme/clf"),
        limited.get("/api/v1/models/acme/clf/versions"),
        limited.post("/api/v1/compression-jobs", bf16, format="json"),
    ):
        assert response.status_code == 403
        assert "may not use acme/clf; its allowed models are acme/slow" in response.text
    elsewhere = limited.get("/v2/models/globex/private")
    assert elsewhere.status_code == 403 and "may not use globex/private" in elsewhere.text
    assert Prediction.objects.get(public_id=ids["acme/clf"]).status != "canceled"
    assert CompressionJob.objects.count() == 1


def test_a_prediction_keeps_the_id_of_the_request_that_made_it(api, classifier):
    """For the worker's log lines (workers.services.prediction_run binds it): the fast path
    carries the prediction's id alone."""
    longest = "rid-" + "7" * 124  # the longest id the web takes (128)
    made = api.post(
        "/api/v1/predictions",
        {"model": "acme/clf", "input": {"x": [[1, 2, 3, 4]]}},
        format="json",
        HTTP_X_REQUEST_ID=longest,
    )

    assert made.status_code == 201 and made["X-Request-ID"] == longest
    assert Prediction.objects.get(public_id=made.json()["id"]).request_id == longest


def test_outsider_cannot_run_or_see_private_models_or_predictions(api, outsider_api, classifier):
    assert run(outsider_api, "acme/clf", [[1, 2, 3, 4]], wait=None).status_code == 404
    mine = run(api, "acme/clf", [[1, 2, 3, 4]], wait=None).json()
    seen = outsider_api.get(f"/api/v1/predictions/{mine['id']}")
    assert seen.status_code == 404
    # Saying what was not found, in the API's shape ("No Prediction matches the given query.").
    assert seen.json() == {
        "detail": f"No prediction {mine['id']} in your organisation.",
        "code": "not_found",
    }
    assert outsider_api.post(f"/api/v1/predictions/{mine['id']}/cancel").status_code == 404
    assert outsider_api.get("/api/v1/predictions").json()["results"] == []


class _Receiver(BaseHTTPRequestHandler):
    received: list = []
    failures_left = 1

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        if type(self).failures_left:
            type(self).failures_left -= 1
            self.send_response(500)
        else:
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_is_signed_and_retried_until_delivered(
    celery_worker_process, api, tenant, classifier
):
    from inference.webhooks import signing_record, signing_secret

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    secret = signing_secret(signing_record(tenant))
    try:
        body = run(
            api, "acme/clf", [[1, 2, 3, 4]], webhook=url, webhook_events_filter=["completed"]
        ).json()
        deadline = time.monotonic() + 30
        while not WebhookDelivery.objects.filter(delivered=True).exists():
            assert time.monotonic() < deadline, list(WebhookDelivery.objects.values())
            time.sleep(0.1)
    finally:
        server.shutdown()

    attempts = list(WebhookDelivery.objects.filter(prediction__public_id=body["id"]))
    assert [(a.attempt, a.status_code) for a in attempts] == [(1, 500), (2, 204)]
    headers, payload = _Receiver.received[-1]
    # Verify exactly as the Standard Webhooks spec says a receiver must.
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + payload
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    event = json.loads(payload)
    assert event["type"] == "prediction.completed"
    assert event["data"]["id"] == body["id"] and event["data"]["status"] == "succeeded"


def test_a_nan_input_runs_and_its_nan_outputs_read_as_null(celery_worker_process, api, classifier):
    """null in an input is NaN; the model's NaN outputs come back as null, and the call,
    which ran, is billed once (it was billed and then answered 500)."""
    response = run(api, "acme/clf", [[None, 0, 0, 0]])

    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "succeeded" and body["output"]["output"] == [[None, None, None]]
    assert api.get(f"/api/v1/predictions/{body['id']}").json()["output"] == body["output"]
    assert UsageRecord.objects.filter(source_id=body["id"]).count() == 1


@pytest.mark.django_db(transaction=True)  # the hand-off runs after the real commit
def test_a_prediction_that_cannot_be_handed_to_a_worker_leaves_nothing_behind(
    api, classifier, monkeypatch
):
    """Redis down just after the commit: the caller got a 503, but the prediction stayed
    queued for good, counted against the spend cap, the key's budget and the free calls, and
    a retry under its Idempotency-Key was answered with it, queued, every time."""
    import redis

    from inference import dispatch

    def down(queue, prediction_id):
        raise redis.ConnectionError("Redis is restarting")

    monkeypatch.setattr(dispatch, "send", down)

    refused = run(api, "acme/clf", [[1, 2, 3, 4]], wait=None, key="order-7")

    assert refused.status_code == 503 and refused.json()["code"] == "unavailable"
    assert not Prediction.objects.exists()
    monkeypatch.undo()
    retried = run(api, "acme/clf", [[1, 2, 3, 4]], wait=None, key="order-7")
    assert retried.status_code == 201 and retried.json()["status"] == "queued"


def test_a_prediction_whose_hand_off_was_lost_is_sent_again_and_runs_once(
    celery_worker_process, api, tenant, classifier
):
    """A worker whose claim failed (the database locked or restarting) dropped the id it had
    taken, and nothing sent it again: queued for good. The beat's sweep sends such ones."""
    from datetime import timedelta

    from django.utils import timezone

    from inference import services, tensors

    def recorded(age: timedelta) -> Prediction:
        return Prediction.objects.create(
            tenant=tenant,
            model=classifier.model,
            version=classifier,
            input_data=tensors.encode({"x": np.ones((1, 4), np.float32)}),
            created_at=timezone.now() - age,
        )

    lost = recorded(timedelta(minutes=10))
    recent = recorded(timedelta(seconds=1))  # only waiting its turn (here: never sent)

    assert services.predictions_resend_queued() == 1
    assert wait_until(api, lost.public_id)["status"] == "succeeded"
    assert services.predictions_resend_queued() == 0  # ran: nothing left to send
    recent.refresh_from_db()
    assert recent.status == "queued"
    assert UsageRecord.objects.filter(source_id=lost.public_id).count() == 1


def test_queued_predictions_are_not_sent_again_while_a_backlog_waits(
    api, tenant, classifier, settings
):
    """A slow model's backlog can take longer to drain than the sweep waits: sending its
    predictions again would count each twice against the queue's depth (and new work gets a
    503 past MM_MAX_QUEUE_DEPTH). Only once nothing waits is what is still queued lost."""
    from datetime import timedelta

    from django.utils import timezone

    from inference import realtime, services, tensors

    settings.INFERENCE_QUEUE = "backlog-test"  # a queue no worker of this test run takes
    redis = realtime.client()
    lost = Prediction.objects.create(
        tenant=tenant,
        model=classifier.model,
        version=classifier,
        input_data=tensors.encode({"x": np.ones((1, 4), np.float32)}),
        created_at=timezone.now() - timedelta(minutes=10),
    )
    redis.rpush("backlog-test", b"a task ahead of it")
    try:
        assert services.predictions_resend_queued() == 0
        redis.delete("backlog-test")
        assert services.predictions_resend_queued() == 1
        assert redis.llen("backlog-test") == 1  # sent to the queue
    finally:
        redis.delete("backlog-test")
    lost.refresh_from_db()
    assert lost.status == "queued"


def test_a_replay_on_a_deprecated_version_carries_its_deprecation_headers(api, classifier):
    """The first answer said the version was deprecated; a retry under the same
    Idempotency-Key answered without saying so."""
    from datetime import timedelta

    from django.utils import timezone

    from accounts.services import SYSTEM
    from marketplace.services import version_deprecate

    version_deprecate(
        version=classifier,
        sunset_at=timezone.now() + timedelta(days=30),
        reason="v2 is out",
        actor=SYSTEM,
    )

    first = run(api, "acme/clf", [[1, 2, 3, 4]], wait=None, key="order-9")
    again = run(api, "acme/clf", [[1, 2, 3, 4]], wait=None, key="order-9")

    assert (first.status_code, again.status_code) == (201, 200)
    assert first["Deprecation"].startswith("@")
    assert again["Deprecation"] == first["Deprecation"] and again["Sunset"] == first["Sunset"]


def test_list_filters_take_either_spelling_of_cancelled_and_refuse_a_model_that_is_no_ref(
    api, tenant, classifier
):
    """Predictions are "canceled" and jobs "cancelled": `mm jobs --status canceled` was a 400.
    A model filter that is no owner/name ("nope", "acme/clf:1") listed nothing without a word."""
    Prediction.objects.create(
        tenant=tenant, model=classifier.model, version=classifier, status="canceled"
    )
    CompressionJob.objects.create(
        tenant=tenant,
        model=classifier.model,
        version=classifier,
        method="quantize",
        status="cancelled",
    )

    for spelling in ("canceled", "cancelled"):
        predictions = api.get("/api/v1/predictions", {"status": spelling})
        jobs = api.get("/api/v1/compression-jobs", {"status": spelling})
        assert [p["status"] for p in predictions.json()["results"]] == ["canceled"], spelling
        assert [j["status"] for j in jobs.json()["results"]] == ["cancelled"], spelling
    for path in ("/api/v1/predictions", "/api/v1/compression-jobs"):
        for model in ("nope", "acme/clf:1"):
            refused = api.get(path, {"model": model})
            assert (
                refused.status_code == 400 and "owner/name" in refused.json()["errors"]["model"][0]
            )
        assert api.get(path, {"model": "acme/clf"}).status_code == 200
