"""Load: 32 concurrent clients on loopback against the live server and a worker, mixed sync
and async predictions on several models of two tenants, and uploads of new versions."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from billing.models import UsageRecord
from inference.models import Prediction
from tests.conftest import key_client
from tests.inference.conftest import Classifier, export, ready_version, scripted, signature
from tests.reliability.conftest import wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def rss_mb(pids: dict[str, list[int]]) -> dict[str, float]:
    out = {}
    for name, group in pids.items():
        total = 0
        for pid in group:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += psutil.Process(pid).memory_info().rss
        out[name] = total / 2**20
    return out


@pytest.mark.parametrize("worker", [{"concurrency": 16, "time_limit": 60}], indirect=True)
def test_32_clients_get_no_5xx_and_every_prediction_is_billed_once(
    scenario, knobs, worker, tenant, outsider, live_server, settings, tmp_path, model_files
):
    seconds, clients = knobs["load_seconds"], knobs["load_clients"]
    record = scenario(
        "Load: 32 concurrent clients",
        injected=f"{clients} clients for {seconds} s on loopback (a load process of its own "
        "against the live server and a 16-thread worker): 70 % sync and 30 % async "
        "predictions on 3 models of 2 tenants (each client its own key, model hosts warmed "
        "first), 2 of the clients uploading new versions every few seconds (which the worker "
        "validates in fresh model hosts)",
        expected="zero 5xx; every succeeded prediction billed exactly once; memory of the web "
        "process, the worker and the model hosts flat over the second half",
    )
    settings.RATE_LIMIT_PER_MINUTE = 100_000
    ready_version(tenant, "clf", export(Classifier()), "pt2", signature(4, 3))
    ready_version(tenant, "double", scripted(Classifier(4, 4)), "torchscript", signature(4, 4))
    ready_version(outsider, "gclf", export(Classifier()), "pt2", signature(4, 3))
    plan_clients = []
    for i in range(clients):
        if i < 2:
            plan_clients.append(
                {"kind": "upload", "key": key_client(tenant).secret, "owner": "acme"}
            )
        elif i % 2:
            plan_clients.append(
                {
                    "kind": "predict",
                    "key": key_client(tenant).secret,
                    "models": ["acme/clf", "acme/double"],
                }
            )
        else:
            plan_clients.append(
                {"kind": "predict", "key": key_client(outsider).secret, "models": ["globex/gclf"]}
            )
    upload_file = tmp_path / "upload.pt2"
    upload_file.write_bytes(model_files["pt2"])
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "url": live_server.url,
                "seconds": seconds,
                "clients": plan_clients,
                "upload_file": str(upload_file),
            }
        )
    )
    worker.start()
    # Steady state is what is measured: each model's host is started before the clock runs.
    for owner, model in ((tenant, "acme/clf"), (tenant, "acme/double"), (outsider, "globex/gclf")):
        warm = key_client(owner).post(
            "/api/v1/predictions",
            {"model": model, "input": {"x": [[1, 2, 3, 4]]}},
            format="json",
            HTTP_PREFER="wait=60",
        )
        assert warm.json()["status"] == "succeeded", warm.json()

    def pids():
        hosts = [p.pid for p in psutil.Process(worker.proc.pid).children(recursive=True)]
        return {"web": [os.getpid()], "worker": [worker.proc.pid], "model hosts": hosts}

    out = tmp_path / "results.json"
    started = time.monotonic()
    load = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.loadgen", str(plan), str(out)], cwd=ROOT
    )
    time.sleep(seconds / 2)
    middle = rss_mb(pids())
    load.wait(timeout=seconds + 180)
    wall = time.monotonic() - started
    end = rss_mb(pids())
    assert load.returncode == 0

    results = json.loads(out.read_text())
    ids = [r["id"] for r in results if "id" in r]
    wait_for(
        lambda: (
            Prediction.objects.filter(
                public_id__in=ids, status__in=("succeeded", "failed", "canceled")
            ).count()
            == len(ids)
        ),
        120,
        "every accepted prediction to finish",
    )
    final = Counter(Prediction.objects.filter(public_id__in=ids).values_list("status", flat=True))
    succeeded = set(
        Prediction.objects.filter(public_id__in=ids, status="succeeded").values_list(
            "public_id", flat=True
        )
    )
    usage = Counter(
        UsageRecord.objects.filter(source_id__in=ids).values_list("source_id", flat=True)
    )
    statuses = Counter(r["status"] for r in results)
    server_errors = [r for r in results if r["status"] >= 500 or r["status"] == 0]
    latency = {}
    for kind in ("sync predict", "async predict", "poll", "upload"):
        values = [r["ms"] for r in results if r["kind"] == kind and r["status"] < 500]
        latency[kind] = (
            f"n {len(values)}, p50 {percentile(values, 50):.0f} ms, "
            f"p99 {percentile(values, 99):.0f} ms"
        )
    async_done = [r["done_ms"] for r in results if "done_ms" in r]
    growth = {
        k: f"{middle[k]:.0f} -> {end[k]:.0f} MiB ({(end[k] - middle[k]) / max(middle[k], 1):+.0%})"
        for k in end
    }
    record.figures = {
        "requests": len(results),
        "requests per second": round(len(results) / wall, 1),
        "statuses": ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())),
        "5xx or connection errors": len(server_errors),
        "sent again after a refused connection": sum(1 for r in results if r.get("retried")),
        **{f"latency {k}": v for k, v in latency.items()},
        "async: submit to done p50 / p99": (
            f"{percentile(async_done, 50):.0f} / {percentile(async_done, 99):.0f} ms"
        ),
        "predictions accepted": len(ids),
        "their final statuses": dict(final),
        "succeeded and billed once": sum(1 for i in succeeded if usage.get(i) == 1),
        "billed twice": sum(1 for n in usage.values() if n > 1),
        "billed but not succeeded": len(set(usage) - succeeded),
        **{f"RSS {k} (middle -> end)": v for k, v in growth.items()},
        "median sync latency ms": round(
            statistics.median([r["ms"] for r in results if r["kind"] == "sync predict"] or [0])
        ),
    }
    record.observed = (
        f"{len(results)} requests, {len(server_errors)} 5xx; {len(succeeded)} predictions "
        f"succeeded, each billed once; "
        + "; ".join(f"{k} {v}" for k, v in latency.items() if k != "poll")
    )
    assert not server_errors, server_errors[:5]
    assert final == {"succeeded": len(ids)}
    assert set(usage) == succeeded and set(usage.values()) == {1}
    for name in ("web", "worker"):
        # Flat: the second half adds under 15 % (caches and allocator arenas settle early).
        assert end[name] <= middle[name] * 1.15 + 20, (name, middle, end)
