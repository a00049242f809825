"""Faults against the running stack: a worker SIGKILLed mid-prediction and mid-compression
job, Redis stopped and
restarted under traffic, model hosts that hang, crash or eat memory mid-batch, uploads cut
off and resumed, and a locked database."""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
import time
from collections import Counter

import pytest
import requests
import torch
from django.db import connection
from django.utils import timezone
from torch import nn

from accounts.models import ApiKey
from billing.models import UsageRecord
from inference.models import CompressionJob, Prediction
from marketplace.models import Model, ModelVersion, UploadSession
from marketplace.vault.store import artifact_read
from tests.conftest import key_client
from tests.inference.conftest import (
    Classifier,
    Slow,
    export,
    ready_version,
    scripted,
    signature,
)
from tests.marketplace.conftest import put_range, sha256
from tests.reliability.conftest import redis_start, redis_stop, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

TERMINAL = ("succeeded", "failed", "canceled")


def predict(api, model: str, x, *, wait: str | None = None):
    headers = {"HTTP_PREFER": wait} if wait else {}
    return api.post(
        "/api/v1/predictions", {"model": model, "input": {"x": x}}, format="json", **headers
    )


def test_worker_killed_mid_prediction_finishes_once_billed_once(scenario, worker, tenant):
    record = scenario(
        "Worker SIGKILLed mid-prediction",
        injected="8 async predictions on a model that takes about a second a call; SIGKILL "
        "of the worker (and its model hosts) while some run; a new worker started",
        expected="every prediction redelivered and finished exactly once, one usage record "
        "each, none lost",
    )
    ready_version(tenant, "slow", scripted(Slow()), "torchscript", signature(4, 4))
    api = key_client(tenant)
    worker.start()
    ids = [predict(api, "acme/slow", [[i, 1, 1, 1]]).json()["id"] for i in range(8)]
    wait_for(
        lambda: Prediction.objects.filter(status="running").exists(), 60, "a running prediction"
    )
    running_at_kill = Prediction.objects.filter(status="running").count()
    done_before = Prediction.objects.filter(status="succeeded").count()
    killed_at = time.monotonic()
    worker.kill()

    worker.start()
    wait_for(
        lambda: Prediction.objects.filter(public_id__in=ids, status__in=TERMINAL).count() == 8,
        240,
        "every prediction to finish after the restart",
    )
    recovered = time.monotonic() - killed_at
    statuses = Counter(
        Prediction.objects.filter(public_id__in=ids).values_list("status", flat=True)
    )
    usage = Counter(
        UsageRecord.objects.filter(source_id__in=ids).values_list("source_id", flat=True)
    )
    retried = Prediction.objects.filter(public_id__in=ids, attempts__gt=1).count()

    record.figures = {
        "predictions": len(ids),
        "running when killed": running_at_kill,
        "finished before the kill": done_before,
        "run again after the kill": retried,
        "final statuses": dict(statuses),
        "usage records": sum(usage.values()),
        "billed twice": sum(1 for n in usage.values() if n > 1),
        "seconds from kill to all finished": round(recovered, 1),
    }
    record.observed = (
        f"{statuses['succeeded']} of 8 succeeded, {retried} ran again after the kill, "
        f"{sum(usage.values())} usage records, none twice; all done {recovered:.0f} s after "
        "the kill (redelivery waits for the broker's visibility timeout)"
    )
    assert statuses == {"succeeded": 8}
    assert set(usage) == set(ids) and set(usage.values()) == {1}
    assert retried >= 1


# A killed worker's compression task comes back when the broker's visibility timeout
# (CELERY_TASK_TIME_LIMIT x 4) runs out, and its job is claimed again only once its heartbeat
# has been silent for MM_COMPRESSION_JOB_LOST_SECONDS: a redelivery before that finds the job
# "running in a live worker" and drops it. So the timeout must outlast the silence, and kombu
# looks for expired messages every 10 s. Production waits 2 min for the silence and 22 for the
# timeout; here 30 s and just long enough.
JOB_LOST_SECONDS = 30
REDELIVERY_TIME_LIMIT = math.ceil((JOB_LOST_SECONDS + 40) / 4)


@pytest.mark.parametrize(
    "worker",
    [
        {
            "time_limit": REDELIVERY_TIME_LIMIT,
            "env": {"MM_COMPRESSION_JOB_LOST_SECONDS": str(JOB_LOST_SECONDS)},
        }
    ],
    indirect=True,
)
def test_worker_killed_mid_compression_job_finishes_once_billed_once(
    scenario, worker, tenant, mlp_version
):
    visibility = REDELIVERY_TIME_LIMIT * 4
    record = scenario(
        "Worker SIGKILLed mid-compression job",
        injected="a distillation job started through the API; SIGKILL of the worker (and the "
        "model host training the student) once the job reports training progress; a new "
        f"worker started at once; broker visibility timeout {visibility} s, a job is lost "
        f"after {JOB_LOST_SECONDS} s of heartbeat silence",
        expected="the task redelivered and the job claimed again (attempt 2) once its "
        "heartbeat has been silent long enough; it succeeds exactly once, with exactly one "
        "new version and one compression usage record",
    )
    api = key_client(tenant)
    worker.start()
    response = api.post(
        "/api/v1/compression-jobs",
        {
            "model": "acme/mlp",
            "version": "1",
            "method": "distill",
            "params": {
                "student": {"architecture": "mlp", "config": {"hidden": [64]}},
                "samples": 4096,
                "epochs": 80,
                "patience": 80,
            },
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    job_id = response.json()["id"]
    jobs = CompressionJob.objects.filter(public_id=job_id)
    wait_for(
        lambda: jobs.filter(status="running", phase="distill").exists(), 180, "training progress"
    )
    at_kill = jobs.get()
    killed_at = time.monotonic()
    worker.kill()
    worker.start()
    wait_for(
        lambda: jobs.filter(status__in=("succeeded", "failed", "cancelled")).exists(),
        600,
        "the job to finish after the restart",
    )
    recovered = time.monotonic() - killed_at
    job = jobs.get()
    new_versions = list(
        ModelVersion.objects.filter(model=mlp_version.model).exclude(pk=mlp_version.pk)
    )
    usage = UsageRecord.objects.filter(source_id=job_id)
    silent = (job.started_at - at_kill.heartbeat_at).total_seconds()

    record.figures = {
        "phase / percent when killed": f"{at_kill.phase} / {at_kill.percent:.0f} %",
        "attempts": job.attempts,
        "heartbeat silent before the re-claim": f"{silent:.0f} s",
        "final status": job.status,
        "new versions": len(new_versions),
        "usage records (kind)": ", ".join(usage.values_list("kind", flat=True)) or "none",
        "billed compute seconds": job.compute_seconds and round(job.compute_seconds, 1),
        "seconds from kill to finished": round(recovered, 1),
    }
    record.observed = (
        f"{job.status} on attempt {job.attempts}, re-claimed after {silent:.0f} s of heartbeat "
        f"silence; {len(new_versions)} new version, {usage.count()} usage record; done "
        f"{recovered:.0f} s after the kill"
    )
    assert job.status == "succeeded", job.error
    assert job.attempts == 2
    assert [v.pk for v in new_versions] == [job.result_version_id]
    assert list(usage.values_list("kind", flat=True)) == ["compression"]


def test_redis_outage_answers_503_and_recovers_by_itself(
    scenario, knobs, worker, tenant, live_server
):
    outage = knobs["redis_outage_seconds"]
    record = scenario(
        "Redis stopped and restarted under traffic",
        injected=f"4 clients sending sync predictions and reads against the live server; "
        f"Redis shut down (SHUTDOWN SAVE) for {outage} s, then started again on its socket",
        expected="no 500; predictions during the outage get 503 with Retry-After; reads "
        "that need only the database keep answering; predictions succeed again by "
        "themselves after the restart; every accepted prediction finishes, billed once",
    )
    ready_version(tenant, "clf", export(Classifier()), "pt2", signature(4, 3))
    secret = key_client(tenant).secret
    worker.start()
    phase = {"now": "before"}
    results: list[tuple[str, str, int, str | None, str | None]] = []
    stop = threading.Event()

    def client(n: int):
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {secret}"
        while not stop.is_set():
            try:
                r = session.post(
                    f"{live_server.url}/api/v1/predictions",
                    json={"model": "acme/clf", "input": {"x": [[n, 1, 2, 3]]}},
                    headers={"Prefer": "wait=10"},
                    timeout=30,
                )
                body = r.json() if r.headers.get("Content-Type", "").startswith("appl") else {}
                results.append(
                    (
                        phase["now"],
                        "predict",
                        r.status_code,
                        r.headers.get("Retry-After"),
                        body.get("id") if r.status_code == 201 else None,
                    )
                )
                r = session.get(f"{live_server.url}/api/v1/models", timeout=30)
                results.append((phase["now"], "read", r.status_code, None, None))
            except requests.RequestException as exc:
                results.append((phase["now"], "predict", 0, None, type(exc).__name__))
            time.sleep(0.05)

    warm = predict(key_client(tenant), "acme/clf", [[1, 2, 3, 4]], wait="wait=60").json()
    assert warm["status"] == "succeeded", warm  # the model host is up before the clock starts
    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(5)
    phase["now"] = "outage"
    outage_from = timezone.now()
    redis_stop()
    time.sleep(outage)
    phase["now"] = "after"
    restarted = time.monotonic()
    redis_start()
    outage_to = timezone.now()
    first_ok = wait_for(
        lambda: next(
            (
                t
                for p, k, s, _, _ in results[-8:]
                if p == "after" and k == "predict" and s == 201
                for t in [time.monotonic()]
            ),
            None,
        ),
        120,
        "a prediction to succeed after the restart",
    )
    time.sleep(5)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    # Known (reported): the Celery worker does not ride out a broker restart; kombu's Redis
    # transport fails to reconnect ("Unrecoverable error: AttributeError: 'NoneType' object
    # has no attribute 'hostname'") and the worker exits. A supervisor restarts it, as here.
    worker_survived = worker.proc.poll() is None
    if not worker_survived:
        worker.start()

    by_phase = {p: Counter((k, s) for q, k, s, _, _ in results if q == p) for p in phase_names()}
    outage_503 = [r for r in results if r[0] == "outage" and r[2] == 503]
    accepted = [r[4] for r in results if r[2] == 201 and r[4]]
    with contextlib.suppress(AssertionError):  # what is left unfinished is reported below
        wait_for(
            lambda: (
                Prediction.objects.filter(public_id__in=accepted, status__in=TERMINAL).count()
                == len(accepted)
            ),
            90,
            "every accepted prediction to finish",
        )
    unfinished = [
        f"{p.public_id} {p.status} attempts {p.attempts} created {p.created_at:%H:%M:%S.%f}"
        for p in Prediction.objects.filter(public_id__in=accepted).exclude(status__in=TERMINAL)
    ]
    statuses = Counter(
        Prediction.objects.filter(public_id__in=accepted).values_list("status", flat=True)
    )
    billed = UsageRecord.objects.filter(source_id__in=accepted).count()
    server_errors = [r for r in results if r[2] >= 500 and r[2] != 503]
    record.figures = {
        "requests": len(results),
        **{
            f"{p}": ", ".join(f"{k} {s}: {n}" for (k, s), n in sorted(c.items()))
            for p, c in by_phase.items()
        },
        "503 with Retry-After during the outage": sum(1 for r in outage_503 if r[3]),
        "500s": len(server_errors),
        "seconds from restart to the first 201": round(first_ok - restarted, 1),
        "worker survived the outage": "yes"
        if worker_survived
        else "no: exited on the broker restart (kombu reconnect bug, reported); restarted",
        "accepted predictions": len(accepted),
        "their final statuses": dict(statuses),
        "usage records for them": billed,
        "outage from / to": f"{outage_from:%H:%M:%S.%f} / {outage_to:%H:%M:%S.%f}",
        "unfinished": "; ".join(unfinished) or "none",
    }
    record.observed = (
        f"{len(server_errors)} 500s; {len(outage_503)} 503s during the outage, all with "
        f"Retry-After; the web recovered {first_ok - restarted:.1f} s after the restart; "
        + (
            "the worker survived; "
            if worker_survived
            else "THE WORKER EXITED on the broker "
            "restart (kombu reconnect bug, reported) and was restarted; "
        )
        + f"{statuses.get('succeeded', 0)} of {len(accepted)} accepted predictions "
        f"succeeded, {billed} usage records"
    )
    assert not server_errors, server_errors[:5]
    assert outage_503 and all(r[3] for r in outage_503)
    assert statuses == {"succeeded": len(accepted)} and billed == len(accepted)


def phase_names():
    return ("before", "outage", "after")


class Hang(nn.Module):
    def forward(self, x):
        if bool(x.sum() > 100):
            i = 0
            while i >= 0:
                i += 1
        return x * 2


class OutOfBounds(nn.Module):
    def forward(self, x):
        if bool(x.sum() > 100):
            # A view far outside the tensor's storage: torch refuses it inside the host.
            return torch.ops.aten.as_strided(x, [1 << 30], [1 << 30])
        return x * 2


class Hog(nn.Module):
    def forward(self, x):
        if bool(x.sum() > 100):
            big = torch.ones(512 * 1024 * 1024)  # 2 GiB, over the host's limit
            return x + big.sum()
        return x * 2


@pytest.mark.parametrize(
    "worker",
    [{"env": {"MM_MODEL_REQUEST_TIMEOUT": "5", "MM_HOST_MEMORY_LIMIT": str(1024**3)}}],
    indirect=True,
)
def test_model_hosts_that_hang_crash_or_eat_memory_fail_clearly(scenario, worker, tenant):
    record = scenario(
        "Model hosts that hang, fault or eat memory mid-batch",
        injected="three models (an endless loop, an out-of-bounds view, a 2 GiB allocation "
        "over a 1 GiB host limit) each sent a batch of good and poisoned predictions at once, "
        "while a healthy model keeps being called; request timeout 5 s. (A host process "
        "killed by a signal mid-request is tests/workers/test_validation.py's "
        "test_a_host_that_crashes_mid_request_fails_clearly_and_is_replaced.)",
        expected="the poisoned requests fail with a reason (timeout, model error, memory); "
        "batch-mates succeed or fail with the same clear reason; the worker stays up and the "
        "healthy model keeps answering, during and after",
    )
    for name, module in (("hang", Hang()), ("oob", OutOfBounds()), ("hog", Hog())):
        ready_version(tenant, name, scripted(module), "torchscript", signature(4, 4))
    ready_version(tenant, "clf", export(Classifier()), "pt2", signature(4, 3))
    api = key_client(tenant)
    worker.start()
    assert predict(api, "acme/clf", [[1, 2, 3, 4]], wait="wait=60").json()["status"] == "succeeded"

    sent: dict[str, list[str]] = {}
    for name in ("hang", "oob", "hog"):
        sent[name] = [
            predict(api, f"acme/{name}", [[x, 1, 1, 1]]).json()["id"] for x in (1, 500, 2, 3)
        ]
    healthy = [predict(api, "acme/clf", [[i, 1, 1, 1]], wait="wait=60") for i in range(5)]
    every = [i for ids in sent.values() for i in ids]
    wait_for(
        lambda: (
            Prediction.objects.filter(public_id__in=every, status__in=TERMINAL).count()
            == len(every)
        ),
        180,
        "every poisoned batch to finish",
    )
    after = [predict(api, "acme/clf", [[i, 1, 1, 1]], wait="wait=60") for i in range(3)]
    outcomes = {}
    for name, ids in sent.items():
        rows = {p.public_id: p for p in Prediction.objects.filter(public_id__in=ids)}
        poisoned = rows[ids[1]]
        others = [rows[i].status for i in ids if i != ids[1]]
        outcomes[name] = (poisoned.status, poisoned.error_kind, poisoned.error[:100], others)

    record.figures = {
        **{f"{name}: poisoned": f"{o[0]} ({o[1]}): {o[2]}" for name, o in outcomes.items()},
        **{f"{name}: the rest of its batch": ", ".join(o[3]) for name, o in outcomes.items()},
        "healthy model during": ", ".join(r.json()["status"] for r in healthy),
        "healthy model after": ", ".join(r.json()["status"] for r in after),
        "worker alive": worker.proc.poll() is None,
    }
    record.observed = "; ".join(f"{n}: {o[0]} ({o[1]})" for n, o in outcomes.items())
    assert worker.proc.poll() is None
    assert all(r.json()["status"] == "succeeded" for r in healthy + after)
    for name, (status, kind, error, _others) in outcomes.items():
        assert status == "failed" and error, (name, status, kind, error)


class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 40_000)

    def forward(self, x):
        return self.fc(x)


def test_upload_cut_at_random_points_resumes_byte_identical(scenario, knobs, tenant, settings):
    import random

    settings.UPLOAD_CHUNK_SIZE = 64 * 1024
    record = scenario(
        "Upload cut off and resumed",
        injected=f"a {knobs['upload_cuts']}-times interrupted upload: chunks whose bodies stop "
        "at random byte offsets (as when a connection drops), chunks re-sent, out of order",
        expected="each cut chunk refused (400) and not stored; the upload's missing ranges "
        "say what to resend; after completion the artifact decrypts byte-identical; no "
        "version is visible before completion",
    )
    rng = random.Random(11)
    torch.manual_seed(3)
    data = export(Wide())  # a real 640 KiB export archive: 11 chunks
    api = key_client(tenant)
    api.post("/api/v1/models", {"name": "resumed"}, format="json")
    upload = api.post(
        "/api/v1/models/acme/resumed/uploads",
        {"filename": "w.pt2", "format": "pt2", "size": len(data), "sha256": sha256(data)},
        format="json",
    ).json()
    size = upload["chunk_size"]
    ranges = [(s, min(s + size, len(data)) - 1) for s in range(0, len(data), size)]
    cut_answers, visible_before = [], 0
    for _ in range(knobs["upload_cuts"]):
        start, end = rng.choice(ranges)
        cut = rng.randrange(start, end)
        r = put_range(api, upload, data, start, end, body=data[start:cut])
        cut_answers.append(r.status_code)
        visible_before += ModelVersion.objects.filter(model__name="resumed").count()
    order = list(ranges)
    rng.shuffle(order)
    for start, end in order[: len(order) // 2]:
        put_range(api, upload, data, start, end)
    state = api.get(upload["upload_url"]).json()
    early_complete = api.post(f"{upload['upload_url']}/complete")
    visible_before += ModelVersion.objects.filter(model__name="resumed").count()
    missing = [
        tuple(int(n) for n in text.removeprefix("bytes ").split("-"))
        for text in state["missing_ranges"]
    ]
    resend = [(s, e) for s, e in ranges if any(s <= me and ms <= e for ms, me in missing)]
    for start, end in resend:
        put_range(api, upload, data, start, end)
    version = api.post(f"{upload['upload_url']}/complete").json()
    stored = ModelVersion.objects.get(public_id=version["id"])
    plaintext = bytes(artifact_read(artifact=stored.artifact, purpose="download"))

    record.figures = {
        "size": len(data),
        "chunks": len(ranges),
        "cut chunks sent": len(cut_answers),
        "their answers": ", ".join(map(str, cut_answers)),
        "missing ranges after half was sent": len(missing),
        "complete before all chunks": early_complete.status_code,
        "versions visible before completion": visible_before,
        "byte-identical": plaintext == data,
    }
    record.observed = (
        f"cut chunks answered {sorted(set(cut_answers))}; completion refused while ranges "
        f"were missing ({early_complete.status_code}); the artifact decrypts byte-identical"
    )
    assert set(cut_answers) == {400}
    assert early_complete.status_code in (400, 409) and visible_before == 0
    assert plaintext == data and stored.artifact.sha256 == sha256(data)
    assert UploadSession.objects.get(public_id=upload["id"]).status == "completed"


def test_locked_database_answers_503_and_writes_nothing(scenario, tenant, monkeypatch):
    record = scenario(
        "Database locked (SQLite busy)",
        injected="another connection holds SQLite's write lock (BEGIN EXCLUSIVE) while the "
        "API is asked to create a model, a key and a prediction; the busy timeout set to 1 s",
        expected="503 with Retry-After after the timeout, not 500; no row of any of them "
        "written; the same requests succeed once the lock is released",
    )
    ready_version(tenant, "clf", export(Classifier()), "pt2", signature(4, 3))
    api = key_client(tenant)
    api.raise_request_exception = False
    api.get("/api/v1/models")  # authenticated once: the key is cached
    connection.close()
    # The settings dict is shared by every connection made after this (live servers'
    # threads too): monkeypatch puts the 20 s busy timeout back at the end.
    monkeypatch.setitem(
        connection.settings_dict, "OPTIONS", {**connection.settings_dict["OPTIONS"], "timeout": 1}
    )
    before = (Model.objects.count(), ApiKey.objects.count(), Prediction.objects.count())
    connection.close()

    locker = sqlite3.connect(connection.settings_dict["NAME"], timeout=1, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    locked = [
        api.post("/api/v1/models", {"name": "during-lock"}, format="json"),
        api.post("/api/v1/keys", {"name": "during-lock", "scopes": ["inference"]}, format="json"),
        predict(api, "acme/clf", [[1, 2, 3, 4]]),
    ]
    seconds = (time.monotonic() - started) / len(locked)
    locker.execute("ROLLBACK")
    locker.close()
    after = (Model.objects.count(), ApiKey.objects.count(), Prediction.objects.count())
    retried = api.post("/api/v1/models", {"name": "after-lock"}, format="json")

    record.figures = {
        "answers while locked": ", ".join(str(r.status_code) for r in locked),
        "Retry-After": ", ".join(str(r.headers.get("Retry-After")) for r in locked),
        "seconds per locked request": round(seconds, 2),
        "rows written while locked": sum(after) - sum(before),
        "after the lock": retried.status_code,
    }
    record.observed = (
        f"answers {[r.status_code for r in locked]} while locked, nothing written; "
        f"{retried.status_code} after"
    )
    assert [r.status_code for r in locked] == [503, 503, 503]
    assert all(r.headers.get("Retry-After") for r in locked)
    assert after == before
    assert retried.status_code == 201
    connection.close()  # the next test's connection gets the usual timeout
