"""Latency and throughput of predictions through the whole API, against the model's own
forward pass in this process, in the same run.

Two models, both exported with ``torch.export`` (dynamic batch) and taking one 1x28x28 image:

- ``small_cnn``: the built-in small CNN (``architectures.build("small_cnn", ...)``).
- ``cnn_10ms``: the same architecture widened (channels ``[c, 2c]``) until one forward at
  batch 1 on one thread takes about 10 ms here; ``c`` is calibrated at startup. It keeps the
  input (and so the JSON the API parses) the same size and, like most real models, is bound by
  compute rather than by reading its weights.

The API runs as deployed, with its own temporary ``var/`` directory, SQLite database, Redis and
key file: gunicorn (``gthread``) serving ``config.wsgi`` and a Celery worker (thread pool, as
``config/devserver.py`` starts it, ``-Q default,cpu``) whose batcher merges concurrent
predictions into one request to a sandboxed model host (one torch thread). A consumer
organisation subscribed to the model's (free, public) listing calls
``POST /api/v1/predictions`` with ``Prefer: wait`` and an API key: authentication,
entitlement, rate limit and queue checks in Redis, the prediction recorded in SQLite, its id
through Redis to the worker (the fast path list, or the Celery task when no worker is on it),
the batcher, the host, the result and its usage record written in one transaction, the waiting
request woken by Redis pub/sub with the result. Clients are threads, each with its
own keep-alive ``http.client`` connection, sending back to back.

In interleaved rounds (the order rotates each round) it measures, per model:

- in-process ``model(x)``, batch 1, ``torch.set_num_threads(1)``: p50/p99 and calls per second
- in-process ``model(x[32])``, batch 32: samples per second (the batched baseline)
- the API at concurrency 1, 8 and 32: p50/p99 latency and requests per second, over a fixed
  window after a short ramp-up

Targets: at concurrency 1 the p50 overhead over the raw forward under 3 ms; at concurrency 32
the API's throughput at least 0.8x the raw batched forward's samples per second.

Every measured prediction's own timestamps (``created_at``, ``started_at``, ``completed_at``,
``compute_ms``, ``batched_with``) and the client's send and receive times split each request
into the web's side before the record exists, the way to the worker, the worker's run and the
way back; CPU seconds per request are read from each process (psutil).

    python bench/inference.py [--quick] [--json PATH] [--profile]

``--quick``: the small CNN only, fewer and shorter rounds (under a minute). ``--profile`` then
takes the server's work apart: the web's side of the POST (Django's WSGI handler in this
process) and ``workers.services.prediction_run`` (in this process, with its own host), each
timed on the thread's CPU clock, with their SQL statements and a cProfile of the project's
functions; then, alone, an authenticated GET, a POST without waiting, a Celery round trip, a
Redis round trip, a pub/sub subscription, a SQLite connection and a SQLite write.

The machine's other load skews latencies (each process waits for a core); the run prints the
load average and warns when it exceeded the CPU count. CPU milliseconds per request are the
steadier figure. All processes and temporary files are removed at the end, on errors and on
Ctrl-C.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script, the project is not on the path

import torch  # noqa: E402

TARGET_OVERHEAD_MS = 3.0
TARGET_THROUGHPUT_RATIO = 0.8
BATCH = 32
LEVELS = (1, 8, 32)
TARGET_FORWARD_MS = 10.0
PUBLISHER, CONSUMER = "bench", "consumer"
IMAGE = {"in_channels": 1, "image_size": 28, "classes": 10}
SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
    "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}],
}
PATH = "/api/v1/predictions"


@dataclass(frozen=True)
class Plan:
    models: tuple[str, ...]
    rounds: int
    level_seconds: float  # each API level's window per round
    ramp_seconds: float  # excluded from the window's start
    raw_seconds: float  # each in-process baseline per round
    warm_seconds: float  # the burst at the highest concurrency before measuring


FULL = Plan(
    models=("small_cnn", "cnn_10ms"),
    rounds=3,
    level_seconds=6.0,
    ramp_seconds=0.5,
    raw_seconds=2.0,
    warm_seconds=3.0,
)
QUICK = Plan(
    models=("small_cnn",),
    rounds=2,
    level_seconds=2.0,
    ramp_seconds=0.3,
    raw_seconds=0.5,
    warm_seconds=1.0,
)


# --- environment ----------------------------------------------------------------------------


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@contextmanager
def isolated_environment() -> Iterator[tuple[Path, subprocess.Popen]]:
    """A throwaway var/ dir, database, key file and Redis, with the variables production sets,
    put in the environment before Django reads settings; gunicorn and Celery inherit them."""
    from config import embedded

    tmp = Path(tempfile.mkdtemp(prefix="mm-bench-inference-"))
    sock, redis = embedded.start_redis(tmp / "redis", daemonize=False)
    try:
        os.environ.update(
            DJANGO_SETTINGS_MODULE="config.settings",
            DJANGO_DEBUG="0",  # as in production
            DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
            DJANGO_ALLOWED_HOSTS="127.0.0.1",
            DJANGO_SECURE_SSL_REDIRECT="0",  # plain http on 127.0.0.1
            DJANGO_LOG_LEVEL="WARNING",
            MM_VAR_DIR=str(tmp / "var"),
            DATABASE_URL=f"sqlite:///{tmp / 'bench.sqlite3'}",
            REDIS_URL=f"unix://{sock}",
            MM_KEK_FILE=str(tmp / "keyring.json"),
            MM_KEK_FILE_CREATE="1",
            # Production refuses to run models unsandboxed; without bubblewrap here the host
            # runs as a plain child process with the same limits and seccomp filter.
            MM_REQUIRE_SANDBOX="1" if shutil.which("bwrap") else "0",
            # The bench measures the path, not the limits.
            MM_RATE_LIMIT_PER_MINUTE=str(10**9),
            MM_MAX_QUEUE_DEPTH=str(10**6),
            PYTHONUNBUFFERED="1",
        )
        yield tmp, redis
    finally:
        redis.terminate()
        try:
            redis.wait(timeout=10)
        except subprocess.TimeoutExpired:
            redis.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def set_up_django() -> None:
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


@dataclass
class BenchModel:
    name: str
    config: dict[str, Any]
    data: bytes  # the .pt2 file
    parameters: int
    calibrated_ms: float | None = None
    ref: str = ""
    module: Any = None  # as the host loads it (inference.runtime.formats.load)
    x: Any = None  # torch, 1x1x28x28
    x_batch: Any = None  # torch, 32x1x28x28
    body: bytes = b""  # the POST body


def export(module: torch.nn.Module) -> bytes:
    program = torch.export.export(
        module.eval(),
        (torch.randn(2, 1, 28, 28),),
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
    )
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def _median_forward_ms(module: Callable, x: torch.Tensor, calls: int) -> float:
    with torch.inference_mode():
        for _ in range(3):
            module(x)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def calibrate() -> tuple[dict[str, Any], float]:
    """Channels ``[c, 2c]`` for about TARGET_FORWARD_MS per batch-1 forward on one thread. The
    cost is close to quadratic in ``c`` (the second convolution), so a few square-root steps
    converge."""
    from inference.runtime.architectures import build

    x = torch.randn(1, 1, 28, 28)
    width, measured = 128, 0.0
    for _ in range(4):
        torch.manual_seed(0)
        model = build("small_cnn", {**IMAGE, "channels": [width, 2 * width]}).eval()
        measured = _median_forward_ms(model, x, 15)
        if abs(measured - TARGET_FORWARD_MS) / TARGET_FORWARD_MS < 0.08:
            break
        width = max(8, round(width * (TARGET_FORWARD_MS / measured) ** 0.5 / 8) * 8)
    return {**IMAGE, "channels": [width, 2 * width]}, measured


def make_models(names: tuple[str, ...], calibrated: tuple[dict, float] | None) -> list[BenchModel]:
    from inference.runtime.architectures import build
    from inference.runtime.formats import load as load_model

    made = []
    rng = np.random.default_rng(0)
    for name in names:
        config, forward_ms = calibrated if name == "cnn_10ms" and calibrated else (IMAGE, None)
        torch.manual_seed(0)
        module = build("small_cnn", config)
        data = export(module)
        model = BenchModel(
            name=name,
            config=config,
            data=data,
            parameters=sum(p.numel() for p in module.parameters()),
            calibrated_ms=forward_ms,
        )
        model.module = load_model(data, format="pt2", device="cpu").module
        image = np.round(rng.standard_normal((1, 1, 28, 28)), 4).astype(np.float32)
        model.x = torch.from_numpy(image)
        batch = np.round(rng.standard_normal((BATCH, 1, 28, 28)), 4).astype(np.float32)
        model.x_batch = torch.from_numpy(batch)
        made.append(model)
    return made


def set_up_data(models: list[BenchModel]) -> str:
    """A publisher with the models (ready versions, public free listings) and a subscribed
    consumer; returns the consumer's API key secret."""
    from accounts import services
    from accounts.models import Scope, User
    from marketplace import listings
    from marketplace.models import ModelVersion
    from marketplace.services import model_create
    from marketplace.vault.store import artifact_create

    publisher = services.tenant_create(
        slug=PUBLISHER,
        name="Bench",
        owner=User.objects.create_user(email="publisher@example.com"),
        actor=services.SYSTEM,
    )
    consumer = services.tenant_create(
        slug=CONSUMER,
        name="Consumer",
        owner=User.objects.create_user(email="consumer@example.com"),
        actor=services.SYSTEM,
    )
    for bench_model in models:
        name = bench_model.name.replace("_", "-")
        model = model_create(tenant=publisher, name=name, actor=services.SYSTEM)
        # As validation leaves a version: ready, with its signature recorded.
        ModelVersion.objects.create(
            model=model,
            number=1,
            format="pt2",
            status=ModelVersion.Status.READY,
            signature=SIGNATURE,
            artifact=artifact_create(tenant=publisher, chunks=[bench_model.data]),
        )
        listing = listings.listing_publish(model=model, actor=services.SYSTEM, visibility="public")
        listings.listing_subscribe(listing=listing, tenant=consumer, actor=services.SYSTEM)
        bench_model.ref = model.ref
        bench_model.body = json.dumps(
            {"model": model.ref, "input": {"x": bench_model.x.numpy().tolist()}}
        ).encode()
    _key, secret = services.api_key_create(
        tenant=consumer, name="bench", scopes=[Scope.INFERENCE], actor=services.SYSTEM
    )
    return secret


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Servers:
    """gunicorn (gthread) and a Celery worker (thread pool), as deployed, with their logs in
    the temporary directory."""

    def __init__(self, tmp: Path, redis: subprocess.Popen, args: argparse.Namespace) -> None:
        self.tmp, self.redis = tmp, redis
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        try:
            self._start(
                "web",
                [
                    *("-m", "gunicorn", "config.wsgi:application", "--chdir", str(REPO)),
                    *("--bind", f"127.0.0.1:{self.port}", "--worker-class", "gthread"),
                    *("--workers", str(args.web_workers), "--threads", str(args.web_threads)),
                    *("--timeout", "120", "--keep-alive", "30"),
                ],
            )
            self._start(
                "worker",
                [
                    *("-m", "celery", "-A", "config", "worker", "-Q", "default,cpu"),
                    *("--pool", "threads", "--concurrency", str(args.worker_concurrency)),
                    *("--loglevel", "WARNING", "-n", f"bench-{os.getpid()}@%h"),
                    # Startup only: no waiting for other workers to answer.
                    *("--without-heartbeat", "--without-mingle", "--without-gossip"),
                ],
            )
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, argv: list[str]) -> None:
        self.logs[name] = self.tmp / f"{name}.log"
        with self.logs[name].open("ab") as log:
            self.procs[name] = subprocess.Popen(  # noqa: S603 - fixed argv
                [sys.executable, *argv],
                cwd=REPO,
                env=os.environ.copy(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, secret: str) -> None:
        from config.celery import app

        deadline = time.monotonic() + 90
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with status {proc.returncode}")
            try:
                status, _ = request(self.port, secret, "GET", f"{PATH}?status=succeeded")
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not answer within 90 s")
            time.sleep(0.2)
        # The first task doubles as the worker's readiness probe.
        app.send_task("workers.ping", args=["ready"], queue="default").get(timeout=90)

    def processes(self) -> dict[str, list[psutil.Process]]:
        """The processes by role, for CPU accounting: the web (gunicorn's master and
        workers), the Celery worker, its model hosts (everything it started), Redis and this
        process (the clients)."""
        web = psutil.Process(self.procs["web"].pid)
        worker = psutil.Process(self.procs["worker"].pid)
        return {
            "web": [web, *web.children(recursive=True)],
            "worker": [worker],
            "hosts": worker.children(recursive=True),
            "redis": [psutil.Process(self.redis.pid)],
            "client": [psutil.Process()],
        }

    def log_tail(self, name: str, chars: int = 3000) -> str:
        try:
            return self.logs[name].read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        descendants: list[psutil.Process] = []
        for proc in self.procs.values():
            with suppress(psutil.NoSuchProcess):
                descendants += psutil.Process(proc.pid).children(recursive=True)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            if proc.returncode not in (0, -signal.SIGTERM):
                print(
                    f"--- {name} exited {proc.returncode}:\n{self.log_tail(name)}", file=sys.stderr
                )
        # Model hosts end when the worker's pipes close; any left over are killed.
        for child in descendants:
            with suppress(psutil.NoSuchProcess):
                child.kill()


def headers(secret: str, extra: dict | None = None) -> dict:
    return {"Authorization": f"Bearer {secret}", "Accept": "application/json", **(extra or {})}


def request(port: int, secret: str, method: str, url: str, body=None, extra=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, url, body=body, headers=headers(secret, extra))
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


POST_HEADERS = {"Content-Type": "application/json", "Prefer": "wait"}


# --- measuring ------------------------------------------------------------------------------


@dataclass
class Call:
    start: float  # perf_counter
    end: float
    sent_at: float  # time.time(), for the prediction's own timestamps
    received_at: float
    status: int
    body: bytes


def load(
    port: int,
    secret: str,
    concurrency: int,
    seconds: float,
    make: Callable[[], tuple[str, str, bytes | None, dict]],
) -> tuple[list[Call], float, list[str]]:
    """``concurrency`` threads, each on its own keep-alive connection, sending ``make()``'s
    request back to back for ``seconds``. Returns the calls, the start (perf_counter) and
    errors."""
    calls: list[list[Call]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    barrier = threading.Barrier(concurrency + 1, timeout=60)
    window: list[float] = []

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.connect()
        barrier.wait()
        deadline = window[0] + seconds
        try:
            while time.perf_counter() < deadline:
                method, url, body, extra = make()
                sent_at, start = time.time(), time.perf_counter()
                try:
                    conn.request(method, url, body=body, headers=headers(secret, extra))
                    response = conn.getresponse()
                    data = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                    continue
                end, received_at = time.perf_counter(), time.time()
                calls[i].append(Call(start, end, sent_at, received_at, response.status, data))
        finally:
            conn.close()

    threads = [
        threading.Thread(target=client, args=(i,), daemon=True, name=f"client-{i}")
        for i in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    window.append(time.perf_counter())
    barrier.wait()
    for thread in threads:
        while thread.is_alive():
            thread.join(timeout=0.5)
    return [c for per in calls for c in per], window[0], errors


def cpu_seconds(groups: dict[str, list[psutil.Process]]) -> dict[str, dict[int, float]]:
    snapshot: dict[str, dict[int, float]] = {}
    for role, procs in groups.items():
        snapshot[role] = {}
        for proc in procs:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            snapshot[role][proc.pid] = times.user + times.system
    return snapshot


def cpu_delta(before: dict, after: dict) -> dict[str, float]:
    return {
        role: sum(after[role][pid] - t for pid, t in pids.items() if pid in after[role])
        for role, pids in before.items()
    }


def _ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


SEGMENTS = {
    "web_in": "web: HTTP, auth, parse, checks, until the record exists",
    "to_worker": "commit, enqueue (fast path list or Celery), pick-up, load, claim",
    "worker_wait": "worker: decode, batcher wait, host round trip, minus forward",
    "forward": "forward of the whole batch in the host",
    "web_out": "usage record, commit, result over pub/sub, wake, respond",
}


def breakdown(calls: list[Call]) -> dict[str, float]:
    """Medians, in ms, of each request's segments from its prediction's timestamps."""
    parts: dict[str, list[float]] = {name: [] for name in SEGMENTS}
    batched: list[int] = []
    for call in calls:
        p = json.loads(call.body)
        created, started, completed = (
            _ts(p["created_at"]),
            _ts(p["started_at"]),
            _ts(p["completed_at"]),
        )
        if created is None or started is None or completed is None:
            continue
        metrics = p["metrics"]
        forward = (metrics["compute_ms"] or 0) * (metrics["batched_with"] or 1)
        parts["web_in"].append((created - call.sent_at) * 1000)
        parts["to_worker"].append((started - created) * 1000)
        parts["worker_wait"].append((completed - started) * 1000 - forward)
        parts["forward"].append(forward)
        parts["web_out"].append((call.received_at - completed) * 1000)
        batched.append(metrics["batched_with"] or 1)
    figures = {name: statistics.median(v) if v else float("nan") for name, v in parts.items()}
    figures["batched_with_mean"] = statistics.fmean(batched) if batched else float("nan")
    return figures


@dataclass
class Level:
    """One API level (concurrency) of one model, pooled over rounds."""

    latencies_ms: list[float] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)  # req/s per round
    errors: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    cpu_ms: dict[str, float] = field(default_factory=dict)  # summed over rounds
    completed: int = 0  # requests the CPU figures are divided by
    wall_s: float = 0.0


@dataclass
class Raw:
    latencies_ms: list[float] = field(default_factory=list)
    throughput: list[float] = field(default_factory=list)  # calls (or samples) per second


def measure_level(
    servers: Servers, secret: str, model: BenchModel, concurrency: int, plan: Plan, level: Level
) -> None:
    def make():
        return "POST", PATH, model.body, POST_HEADERS

    groups = servers.processes()
    before = cpu_seconds(groups)
    started_wall = time.perf_counter()
    calls, start, errors = load(servers.port, secret, concurrency, plan.level_seconds, make)
    wall = time.perf_counter() - started_wall
    spent = cpu_delta(before, cpu_seconds(groups))
    good, bad = [], []
    for call in calls:
        if call.status == 201 and b'"status":"succeeded"' in call.body:
            good.append(call)
        else:
            bad.append(f"{call.status}: {call.body[:300]!r}")
    level.errors += errors + bad
    steady = start + plan.ramp_seconds
    end = start + plan.level_seconds
    level.latencies_ms += [(c.end - c.start) * 1000 for c in good if c.start >= steady]
    level.throughput.append(
        sum(1 for c in good if steady <= c.end <= end) / (plan.level_seconds - plan.ramp_seconds)
    )
    level.calls += [c for c in good if c.start >= steady]
    for role, seconds in spent.items():
        level.cpu_ms[role] = level.cpu_ms.get(role, 0.0) + seconds * 1000
    level.completed += len(calls)
    level.wall_s += wall


def measure_raw(module, x: torch.Tensor, seconds: float, raw: Raw) -> None:
    rows = x.shape[0]
    times = []
    with torch.inference_mode():
        module(x)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 10:
            start = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - start)
    raw.latencies_ms += [t * 1000 for t in times]
    raw.throughput.append(rows * len(times) / sum(times))


def warm_up(servers: Servers, secret: str, model: BenchModel, seconds: float) -> None:
    """The first call loads the model host; its output must equal the in-process forward.
    Then a burst at the highest concurrency starts every thread and connection."""
    start = time.perf_counter()
    status, body = request(servers.port, secret, "POST", PATH, model.body, POST_HEADERS)
    first = time.perf_counter() - start
    prediction = json.loads(body)
    if status != 201 or prediction.get("status") != "succeeded":
        raise RuntimeError(f"the first prediction of {model.ref} failed: {status} {body[:800]!r}")
    with torch.inference_mode():
        expected = model.module(model.x).numpy()
    got = np.asarray(prediction["output"]["output"], dtype=np.float32)
    if not np.allclose(got, expected, rtol=1e-4, atol=1e-4):
        raise RuntimeError(f"{model.ref}: the API's output differs from the in-process forward")
    print(f"{model.name}: first prediction (loads the host) {first:.2f} s", file=sys.stderr)

    def make():
        return "POST", PATH, model.body, POST_HEADERS

    _calls, _start, errors = load(servers.port, secret, max(LEVELS), seconds, make)
    if errors:
        raise RuntimeError(f"warm-up errors: {errors[:3]}")


Results = dict[str, dict[str, Any]]


def measure(servers: Servers, secret: str, models: list[BenchModel], plan: Plan) -> Results:
    results: Results = {
        m.name: {
            "raw": Raw(),
            "batched": Raw(),
            "api": {c: Level() for c in LEVELS},
        }
        for m in models
    }
    for model in models:
        warm_up(servers, secret, model, plan.warm_seconds)
    for round_no in range(plan.rounds):
        shift = round_no % len(models)
        for model in models[shift:] + models[:shift]:
            r = results[model.name]
            steps: list[tuple[str, Callable[[], None]]] = [
                ("raw", lambda m=model, r=r: measure_raw(m.module, m.x, plan.raw_seconds, r["raw"]))
            ]
            steps.append(
                (
                    "batched",
                    lambda m=model, r=r: measure_raw(
                        m.module, m.x_batch, plan.raw_seconds, r["batched"]
                    ),
                )
            )
            for c in LEVELS:
                steps.append(
                    (
                        f"c={c}",
                        lambda m=model, r=r, c=c: measure_level(
                            servers, secret, m, c, plan, r["api"][c]
                        ),
                    )
                )
            k = round_no % len(steps)
            for _name, step in steps[k:] + steps[:k]:
                step()
            api = r["api"]
            print(
                f"round {round_no + 1}/{plan.rounds} {model.name}: raw "
                f"{statistics.median(r['raw'].latencies_ms):.2f} ms, batched "
                f"{r['batched'].throughput[-1]:,.0f} samples/s; API "
                + ", ".join(
                    f"c={c} {statistics.median(api[c].latencies_ms or [float('nan')]):.1f} ms "
                    f"{api[c].throughput[-1]:,.0f} req/s"
                    for c in LEVELS
                ),
                file=sys.stderr,
            )
    return results


# --- profile --------------------------------------------------------------------------------


def cpu_profile(work: Callable[[], None], calls: int, label: str, top: int = 16) -> dict:
    """CPU ms per call of ``work`` in this thread: plainly, then under cProfile timed by the
    thread's CPU clock (waits cost nothing), printing the project's functions that cost most
    (inclusive) and the functions with the most own time; and the SQL it runs per call."""
    import cProfile
    import pstats

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    start = time.thread_time()
    for _ in range(calls):
        work()
    plain = (time.thread_time() - start) * 1000 / calls
    with CaptureQueriesContext(connection) as captured:
        work()
    queries = sql_summary([q["sql"] for q in captured.captured_queries])

    profiler = cProfile.Profile(time.thread_time)
    start = time.thread_time()
    profiler.enable()
    for _ in range(calls):
        work()
    profiler.disable()
    profiled = (time.thread_time() - start) * 1000 / calls
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    print(
        f"\n{label}: {plain:.2f} CPU ms per call ({profiled:.2f} under cProfile), "
        f"{sum(queries.values())} SQL statements"
    )
    print("  " + ", ".join(f"{n} {what}" for what, n in queries.items()))
    print(f"{'own ms':>8}{'incl ms':>9}{'calls':>7}  the project's functions, per call (cProfile)")
    rows = sorted(stats.items(), key=lambda row: -row[1][3])
    shown = 0
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in rows:
        if not filename.startswith(str(REPO)) or "/.venv/" in filename or "/bench/" in filename:
            continue
        where = f"{Path(filename).relative_to(REPO)}:{line}"
        print(
            f"{tottime * 1000 / calls:>8.2f}{cumtime * 1000 / calls:>9.2f}"
            f"{ncalls / calls:>7.1f}  {where} {func}"
        )
        shown += 1
        if shown == top:
            break
    print(f"{'own ms':>8}{'incl ms':>9}{'calls':>7}  most own time, any code")
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in sorted(
        stats.items(), key=lambda row: -row[1][2]
    )[:10]:
        short = filename.split("site-packages/")[-1].replace(str(REPO) + "/", "")
        print(
            f"{tottime * 1000 / calls:>8.2f}{cumtime * 1000 / calls:>9.2f}"
            f"{ncalls / calls:>7.1f}  {short}:{line} {func}"
        )
    return {"cpu_ms": plain, "cpu_ms_profiled": profiled, "sql": queries}


def sql_summary(statements: list[str]) -> dict[str, int]:
    """Statements counted by verb and first table: ``SELECT marketplace_model: 2``."""
    import re

    counts: dict[str, int] = {}
    for sql in statements:
        verb = sql.split(None, 1)[0].upper() if sql.strip() else "?"
        table = re.search(r'(?:FROM|INTO|UPDATE)\s+"?(\w+)"?', sql)
        key = (
            f"{verb} {table.group(1)}" if table and verb in ("SELECT", "INSERT", "UPDATE") else verb
        )
        counts[key] = counts.get(key, 0) + 1
    return counts


def wsgi_post(secret: str, model: BenchModel) -> Callable[[], None]:
    """One ``POST /api/v1/predictions`` with ``Prefer: wait`` through Django's WSGI handler in
    this process, as a gunicorn thread runs it; the real worker runs the prediction."""
    from django.core.handlers.wsgi import WSGIHandler

    handler = WSGIHandler()
    environ = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": PATH,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1",
        "HTTP_ACCEPT": "application/json",
        "HTTP_AUTHORIZATION": f"Bearer {secret}",
        "HTTP_PREFER": "wait",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(model.body)),
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
    }

    def start_response(status: str, headers: list) -> None:
        if not status.startswith("201"):
            raise RuntimeError(f"in-process POST answered {status}")

    def call() -> None:
        response = handler({**environ, "wsgi.input": io.BytesIO(model.body)}, start_response)
        b"".join(response)
        response.close()  # sends request_finished, as a WSGI server does

    return call


def worker_run(model: BenchModel) -> Callable[[], None]:
    """What the worker's task does for one prediction (``workers.services.prediction_run``),
    in this process on a prediction recorded without a task, with this process's own model
    host: the worker's CPU without Celery."""
    from accounts.models import ApiKey
    from inference import tensors
    from inference.models import Prediction
    from marketplace.models import ModelVersion
    from workers.services import prediction_run

    version = ModelVersion.objects.select_related("model").get(model__name=model.ref.split("/")[1])
    key = ApiKey.objects.select_related("tenant").get(name="bench")
    arrays = {"x": model.x.numpy()}
    encoded = tensors.encode(arrays)

    def call() -> None:
        prediction = Prediction.objects.create(
            tenant=key.tenant,
            api_key=key,
            model=version.model,
            version=version,
            input_data=encoded,
        )
        if prediction_run(prediction_id=prediction.public_id) != "succeeded":
            raise RuntimeError("the in-process prediction failed")

    return call


def _p50_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def profile(
    servers: Servers, secret: str, model: BenchModel, tmp: Path
) -> tuple[dict[str, float], dict[str, Any]]:
    """The pieces alone, one at a time (concurrency 1), each the median of many."""
    from django.db import connection

    from config.celery import app
    from inference import realtime
    from workers.pool import HOSTS

    figures: dict[str, float] = {}
    details: dict[str, Any] = {}

    # CPU in the web's and the worker's code, each in this process (the real worker runs the
    # web's predictions; this process runs prediction_run itself, with its own host).
    post = wsgi_post(secret, model)
    for _ in range(10):
        post()
    details["web_post"] = cpu_profile(
        post, 100, "The web's side of POST /api/v1/predictions with Prefer: wait, in-process"
    )
    figures["web CPU per POST, in-process WSGI"] = details["web_post"]["cpu_ms"]
    run = worker_run(model)
    try:
        for _ in range(5):
            run()  # the first loads this process's own host
        details["worker_run"] = cpu_profile(
            run, 100, "Recording a prediction + workers.services.prediction_run, in-process"
        )
        started = time.process_time()
        for _ in range(50):
            run()
        all_threads = (time.process_time() - started) * 1000 / 50
    finally:
        HOSTS.close()
    connection.close()
    figures["worker CPU per prediction_run (+ INSERT of the record), in-process"] = details[
        "worker_run"
    ]["cpu_ms"]
    figures["  the same, all threads (the batcher's too)"] = all_threads

    # An authenticated GET of one prediction: the web's floor for an API call.
    _status, body = request(servers.port, secret, "POST", PATH, model.body, POST_HEADERS)
    prediction_id = json.loads(body)["id"]
    calls, _s, errors = load(
        servers.port, secret, 1, 2.0, lambda: ("GET", f"{PATH}/{prediction_id}", None, {})
    )
    figures["GET /api/v1/predictions/{id} (auth, one row, serialize)"] = statistics.median(
        (c.end - c.start) * 1000 for c in calls
    )

    # A POST without waiting: the web's side of a prediction (it runs in the background).
    headers_no_wait = {"Content-Type": "application/json"}
    calls, _s, errors = load(
        servers.port, secret, 1, 2.0, lambda: ("POST", PATH, model.body, headers_no_wait)
    )
    figures["POST without Prefer: wait (201 once queued)"] = statistics.median(
        (c.end - c.start) * 1000 for c in calls
    )
    last = json.loads(calls[-1].body)["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # let the background predictions finish
        _status, body = request(servers.port, secret, "GET", f"{PATH}/{last}")
        if json.loads(body)["status"] in ("succeeded", "failed", "canceled"):
            break
        time.sleep(0.2)

    # A Celery round trip: publish, the worker's task (one SELECT), result via Redis.
    times = []
    for _ in range(100):
        start = time.perf_counter()
        app.send_task("workers.ping", args=["x"], queue="default").get(timeout=30)
        times.append(time.perf_counter() - start)
    figures["Celery round trip (workers.ping, result backend)"] = _p50_ms(times)

    times = []
    for _ in range(100):
        start = time.perf_counter()
        app.send_task("workers.ping", args=["x"], queue="default")
        times.append(time.perf_counter() - start)
    figures["Celery send_task alone (publish to Redis)"] = _p50_ms(times)

    client = realtime.client()
    times = []
    for _ in range(1000):
        start = time.perf_counter()
        client.ping()
        times.append(time.perf_counter() - start)
    figures["Redis round trip (PING, unix socket)"] = _p50_ms(times)

    times = []
    for _ in range(200):
        start = time.perf_counter()
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe("mm:bench")
        pubsub.close()
        times.append(time.perf_counter() - start)
    figures["Redis pub/sub subscribe + close (a wait for another request's prediction)"] = _p50_ms(
        times
    )

    # SQLite, as settings open it (once per thread, kept for DATABASE_CONN_MAX_AGE seconds).
    path = tmp / "scratch.sqlite3"
    times = []
    for _ in range(200):
        start = time.perf_counter()
        conn = sqlite3.connect(path, timeout=20)
        conn.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
        conn.close()
        times.append(time.perf_counter() - start)
    figures["SQLite connect + PRAGMA WAL (once per thread)"] = _p50_ms(times)

    conn = sqlite3.connect(path, timeout=20, isolation_level=None)
    conn.executescript(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
        "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body BLOB);"
    )
    payload = os.urandom(3200)  # about one encoded input
    times = []
    for _ in range(500):
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (body) VALUES (?)", (payload,))
        conn.execute("COMMIT")
        times.append(time.perf_counter() - start)
    conn.close()
    figures["SQLite write transaction (BEGIN IMMEDIATE, INSERT, COMMIT)"] = _p50_ms(times)
    return figures, details


# --- report ---------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(results: Results, models: list[BenchModel]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in models:
        r = results[model.name]
        raw, batched = r["raw"], r["batched"]
        figures: dict[str, Any] = {
            "config": model.config,
            "parameters": model.parameters,
            "calibrated_forward_ms": model.calibrated_ms,
            "raw_batch1": {
                "p50_ms": _pct(raw.latencies_ms, 50),
                "p99_ms": _pct(raw.latencies_ms, 99),
                "calls_per_s": statistics.median(raw.throughput),
                "calls": len(raw.latencies_ms),
            },
            f"raw_batch{BATCH}": {
                "p50_ms_per_batch": _pct(batched.latencies_ms, 50),
                "p99_ms_per_batch": _pct(batched.latencies_ms, 99),
                "samples_per_s": statistics.median(batched.throughput),
                "samples_per_s_per_round": batched.throughput,
                "calls": len(batched.latencies_ms),
            },
            "api": {},
        }
        for c, level in r["api"].items():
            figures["api"][str(c)] = {
                "p50_ms": _pct(level.latencies_ms, 50),
                "p99_ms": _pct(level.latencies_ms, 99),
                "req_per_s": statistics.median(level.throughput),
                "req_per_s_per_round": level.throughput,
                "requests": len(level.latencies_ms),
                "errors": len(level.errors),
                "error_samples": level.errors[:5],
                "breakdown_ms": breakdown(level.calls),
                "cpu_ms_per_request": {
                    role: ms / max(level.completed, 1) for role, ms in level.cpu_ms.items()
                },
                "cpu_utilisation": sum(level.cpu_ms.values())
                / 1000
                / (level.wall_s * (os.cpu_count() or 1)),
            }
            total = sum(level.cpu_ms.values()) / max(level.completed, 1)
            # What the cores could serve if nothing else ran and nothing waited.
            figures["api"][str(c)]["cpu_bound_ceiling_req_per_s"] = (
                (os.cpu_count() or 1) * 1000 / total if total else float("nan")
            )
        api1, api32 = figures["api"]["1"], figures["api"][str(max(LEVELS))]
        overhead = api1["p50_ms"] - figures["raw_batch1"]["p50_ms"]
        ratio = api32["req_per_s"] / figures[f"raw_batch{BATCH}"]["samples_per_s"]
        figures["ratios"] = {
            "p50_overhead_ms_at_1": overhead,
            "throughput_32_over_raw_batched": ratio,
            "throughput_32_over_raw_batch1": api32["req_per_s"]
            / figures["raw_batch1"]["calls_per_s"],
        }
        figures["targets_met"] = {
            "overhead": overhead < TARGET_OVERHEAD_MS,
            "throughput": ratio >= TARGET_THROUGHPUT_RATIO,
        }
        out[model.name] = figures
    return out


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def report(
    summary: dict[str, Any], plan: Plan, args: argparse.Namespace, load: tuple[float, float]
) -> None:
    from django.conf import settings

    sandbox = "bubblewrap" if shutil.which("bwrap") else "no bubblewrap (plain child process)"
    print(
        f"\nPredictions through the API (gunicorn gthread {args.web_workers}x{args.web_threads}, "
        f"Celery threads x{args.worker_concurrency}, batcher up to {settings.BATCH_MAX_SIZE} "
        f"rows / {settings.BATCH_MAX_DELAY_MS:g} ms, model host on {settings.MODEL_HOST_THREADS} "
        f"thread, {sandbox}; SQLite, Redis on a unix socket; {os.cpu_count()} CPUs)\n"
        f"against the forward in this process (1 thread); {plan.rounds} interleaved rounds, "
        f"{plan.level_seconds:g} s per API level after a warm-up; load average "
        f"{load[0]:.1f} before, {load[1]:.1f} after"
    )
    if max(load) > (os.cpu_count() or 1):
        print(
            "WARNING: other processes kept the CPUs busy (load average above the CPU count); "
            "latencies are inflated, CPU ms per request less so."
        )
    print(f"{'model':<10}{'path':<40}{'conc':>5}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'n':>7}")
    for name, f in summary.items():
        raw, batched = f["raw_batch1"], f[f"raw_batch{BATCH}"]
        print(
            f"{name:<10}{'in-process model(x), batch 1':<40}{1:>5}{raw['p50_ms']:>9.2f}"
            f"{raw['p99_ms']:>9.2f}{raw['calls_per_s']:>9,.0f}{raw['calls']:>7}"
        )
        print(
            f"{'':<10}{f'in-process model(x[{BATCH}]), per batch':<40}{'-':>5}"
            f"{batched['p50_ms_per_batch']:>9.2f}{batched['p99_ms_per_batch']:>9.2f}"
            f"{batched['samples_per_s']:>9,.0f}{batched['calls']:>7}  (samples/s)"
        )
        for c, level in f["api"].items():
            errors = f"  {level['errors']} errors" if level["errors"] else ""
            print(
                f"{'':<10}{'API: POST /predictions, Prefer: wait':<40}{c:>5}"
                f"{level['p50_ms']:>9.2f}{level['p99_ms']:>9.2f}{level['req_per_s']:>9,.0f}"
                f"{level['requests']:>7}{errors}"
            )
    print(f"\n{'ratio':<62}{'value':>10}  target")
    for name, f in summary.items():
        ratios, met = f["ratios"], f["targets_met"]
        print(
            f"{name + ': p50 overhead over model(x) at concurrency 1':<62}"
            f"{ratios['p50_overhead_ms_at_1']:>7.2f} ms  < {TARGET_OVERHEAD_MS:g} ms  "
            f"{verdict(met['overhead'])}"
        )
        print(
            f"{name + f': throughput at 32 / model(x[{BATCH}]) samples/s':<62}"
            f"{ratios['throughput_32_over_raw_batched']:>9.3f}x  >= {TARGET_THROUGHPUT_RATIO}x  "
            f"{verdict(met['throughput'])}"
        )
        print(
            f"{name + ': throughput at 32 / model(x) calls/s':<62}"
            f"{ratios['throughput_32_over_raw_batch1']:>9.3f}x"
        )

    print("\nWhere a request's time goes: medians in ms, from each prediction's timestamps")
    print(f"{'model':<10}{'conc':>5}" + "".join(f"{k:>12}" for k in SEGMENTS) + f"{'batched':>9}")
    for name, f in summary.items():
        for c, level in f["api"].items():
            b = level["breakdown_ms"]
            print(
                f"{name:<10}{c:>5}"
                + "".join(f"{b[k]:>12.2f}" for k in SEGMENTS)
                + f"{b['batched_with_mean']:>9.1f}"
            )
    for key, label in SEGMENTS.items():
        print(f"  {key:<12} {label}")

    roles = ["web", "worker", "hosts", "redis", "client"]
    print(
        "\nCPU ms per request by process (user + system), the share of all cores used, and the "
        "requests per second\nthe cores could serve at that CPU cost (cores x 1000 / total)"
    )
    print(
        f"{'model':<10}{'conc':>5}"
        + "".join(f"{r:>9}" for r in roles)
        + f"{'total':>9}{'use':>7}{'ceiling':>9}"
    )
    for name, f in summary.items():
        for c, level in f["api"].items():
            cpu = level["cpu_ms_per_request"]
            print(
                f"{name:<10}{c:>5}"
                + "".join(f"{cpu.get(r, 0):>9.2f}" for r in roles)
                + f"{sum(cpu.values()):>9.2f}{level['cpu_utilisation']:>7.0%}"
                + f"{level['cpu_bound_ceiling_req_per_s']:>9,.0f}"
            )
    for name, f in summary.items():
        for c, level in f["api"].items():
            for sample in level["error_samples"]:
                print(f"error ({name}, c={c}): {sample}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small CNN only, under a minute")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument("--profile", action="store_true", help="then time the pieces alone")
    parser.add_argument("--web-workers", type=int, default=max(2, os.cpu_count() or 1))
    parser.add_argument("--web-threads", type=int, default=max(LEVELS))
    parser.add_argument("--worker-concurrency", type=int, default=max(LEVELS))
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    # Clean up on SIGTERM too, and on SIGINT even when started where it is ignored (a
    # background job of a script).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    torch.set_num_threads(1)

    with isolated_environment() as (tmp, redis):
        began = time.perf_counter()
        set_up_django()
        calibrated = None
        if "cnn_10ms" in plan.models:  # before anything else runs, so the timing is clean
            calibrated = calibrate()
            print(
                f"cnn_10ms: channels {calibrated[0]['channels']}, {calibrated[1]:.1f} ms per "
                "forward",
                file=sys.stderr,
            )
        servers = Servers(tmp, redis, args)  # they boot while the models are exported
        try:
            models = make_models(plan.models, calibrated)
            secret = set_up_data(models)
            try:
                servers.wait_ready(secret)
            except RuntimeError:
                for name in servers.procs:
                    print(f"--- {name} log:\n{servers.log_tail(name)}", file=sys.stderr)
                raise
            print(f"set up in {time.perf_counter() - began:.1f} s", file=sys.stderr)
            load_before = os.getloadavg()[0]
            results = measure(servers, secret, models, plan)
            load = (load_before, os.getloadavg()[0])
            summary = summarize(results, models)
            report(summary, plan, args, load)
            figures: dict[str, Any] = {
                "targets": {
                    "p50_overhead_ms_max": TARGET_OVERHEAD_MS,
                    "throughput_ratio_min": TARGET_THROUGHPUT_RATIO,
                },
                "plan": asdict(plan),
                "models": summary,
                "environment": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "cpus": os.cpu_count(),
                    "machine": platform.machine(),
                    "sandbox": "bubblewrap" if shutil.which("bwrap") else "none",
                    "web": f"gunicorn gthread {args.web_workers}x{args.web_threads}",
                    "worker": f"celery threads x{args.worker_concurrency}",
                    "load_average_1m": {"before": load[0], "after": load[1]},
                },
            }
            if args.profile:
                pieces, details = profile(servers, secret, models[0], tmp)
                print(f"\nThe pieces alone, concurrency 1 (medians; {models[0].name})")
                for label, ms in pieces.items():
                    print(f"{ms:>9.3f} ms  {label}")
                figures["profile_ms"] = pieces
                figures["profile_in_process"] = details
            if args.json:
                args.json.write_text(json.dumps(figures, indent=2) + "\n")
        finally:
            servers.stop()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted; the servers and temporary files are removed", file=sys.stderr)
        sys.exit(130)
