"""Cost of running a model in a sandboxed model host instead of in the calling process.

Same run, same files: the built-in small CNN and an MLP of about 200 MB are exported with
``torch.export`` (dynamic batch) to ``.pt2`` files, and each is encrypted with the vault's
format into a temporary directory, as the artifact store holds it. Then, in interleaved rounds:

Cold start
- in-process baseline: ``torch.export.load(path).module()`` in a fresh interpreter, timed after
  ``import torch``, so only the load (which includes the export machinery's first-use imports).
- platform, fresh host: decrypt the artifact into memory (``decrypt_to_bytes``), start a model
  host (``ModelHost.start()``: sandbox, interpreter, ``import torch``) and send it a ``load``
  request with the bytes, as ``workers.services.load_into`` does.
- platform, pre-started host: decrypt + load only, into a host that has finished starting, as
  when ``workers.pool.IdleHosts`` has one waiting (its start is paid ahead, off the request).
  Target: under 2x the in-process load for the ~200 MB model.

Warm prediction
- one ``predict`` round trip through a loaded, validated host: encode the input, frame, pipe,
  the host's decode, check, forward and encode, back, decode the output; against ``module(x)``
  in-process under ``torch.inference_mode()`` on the same input, both on one thread
  (``MM_HOST_THREADS=1`` in the host). Target: under 0.3 ms added per call (median).
  Also printed, not the target's figure: each call's round trip minus its forward pass as the
  host timed it, which leaves out the forward's own noise (for the 200 MB model on a shared
  VM, a millisecond or more between runs).

    python bench/runtime.py [--quick] [--json PATH] [--profile] [--no-bubblewrap] [--device cuda]

With ``--device cuda`` (a GPU worker's hosts) both sides run the model on the GPU: the hosts
are started as a GPU worker starts them (CUDA context made while the host waits in the pool),
and the in-process yardstick loads onto the GPU after making its own CUDA context. The warm
in-process call then includes the copies a caller holding CPU tensors pays:
``module(x.to("cuda")).cpu()``.

Then a table of where the added microseconds go (each part timed alone with the same functions,
and the voluntary context switches per call on both sides); ``--profile`` adds a cProfile of
the worker's side and what-ifs (a hand-written encoder, one write per frame, a 1 MiB pipe).

Works with or without bubblewrap (without it the host is a plain child process with the same
limits and seccomp filter; ``--no-bubblewrap`` forces that here). Hosts are killed and the
temporary files removed at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import fcntl
import gc
import json
import os
import platform
import pstats
import resource
import shutil
import site
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script, the project is not on the path

import torch  # noqa: E402
from torch.export.passes import move_to_device_pass  # noqa: E402

from inference.runtime import architectures, codec  # noqa: E402  (needs the path above)
from inference.runtime.protocol import pack  # noqa: E402
from inference.runtime.serve import outputs_to_dict  # noqa: E402
from inference.runtime.signature import Signature, validate_inputs  # noqa: E402
from marketplace.vault.stream import decrypt_to_bytes, encrypt_stream  # noqa: E402
from workers import host as host_module  # noqa: E402
from workers import sandbox  # noqa: E402
from workers.host import ModelHost  # noqa: E402

TARGET_WARM_OVERHEAD_US = 300.0
TARGET_COLD_RATIO = 2.0
COLD_TARGET_MODEL = "mlp_200mb"
KEY_ID = "bench-key"
THREADS = 1  # settings.MODEL_HOST_THREADS
DEVICE = "cpu"  # --device
SPIN_SECONDS: float | None = None  # --spin-us; None: the worker's default for the device
# As workers.pool.new_host with the default settings (MM_HOST_ADDRESS_SPACE etc.).
HOST_LIMITS = sandbox.Limits(memory_bytes=16 * 1024**3, cpu_seconds=3600, threads=THREADS)
HOST_RSS_LIMIT = 4 * 1024**3
LOAD_TIMEOUT = 120.0  # settings.MODEL_LOAD_TIMEOUT
PREDICT_TIMEOUT = 60.0


@dataclass(frozen=True)
class ModelSpec:
    key: str
    label: str
    architecture: str
    config: dict[str, Any]
    sample_shape: tuple[int, ...]  # one input without the batch dimension


MODELS = [
    ModelSpec(
        "small_cnn",
        "small CNN (built-in small_cnn, 1x28x28)",
        "small_cnn",
        {"in_channels": 1, "image_size": 28, "classes": 10},
        (1, 28, 28),
    ),
    ModelSpec(
        "mlp_200mb",
        "MLP 4096-4096x3-10 (~50M float32 parameters)",
        "mlp",
        {"in_features": 4096, "hidden": [4096, 4096, 4096], "classes": 10},
        (4096,),
    ),
]


@dataclass(frozen=True)
class WarmCase:
    key: str
    model: str
    batch: int


WARM_CASES = [
    WarmCase("small_cnn_b1", "small_cnn", 1),
    WarmCase("small_cnn_b32", "small_cnn", 32),
    WarmCase("mlp_200mb_b1", "mlp_200mb", 1),
]
PING = "ping"


@dataclass(frozen=True)
class Plan:
    cold_rounds: int
    warm_rounds: int
    calls: dict[str, int]  # per round, per side (host and in-process), by warm case
    warmup: int


FULL = Plan(
    cold_rounds=5,
    warm_rounds=10,
    calls={"small_cnn_b1": 400, "small_cnn_b32": 60, "mlp_200mb_b1": 40, PING: 400},
    warmup=30,
)
QUICK = Plan(
    cold_rounds=1,
    warm_rounds=4,
    calls={"small_cnn_b1": 100, "small_cnn_b32": 15, "mlp_200mb_b1": 10, PING: 100},
    warmup=10,
)


@dataclass
class Artifact:
    spec: ModelSpec
    plain: Path
    encrypted: Path
    data_key: bytes
    artifact_id: str
    parameters: int


STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f} s] {message}", file=sys.stderr)


# --- files --------------------------------------------------------------------------------


def export_model(spec: ModelSpec, root: Path) -> Artifact:
    """Export with a dynamic batch dimension, then encrypt as the artifact store would."""
    torch.manual_seed(0)
    module = architectures.build(spec.architecture, spec.config).eval()
    # Batch 2: torch.export would specialise an example batch of 1 despite the Dim.
    example = torch.randn(2, *spec.sample_shape)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(module, (example,), dynamic_shapes={"x": {0: batch}})
    plain = root / f"{spec.key}.pt2"
    torch.export.save(program, plain)
    artifact = Artifact(
        spec=spec,
        plain=plain,
        encrypted=root / f"{spec.key}.pt2.mmv",
        data_key=os.urandom(32),
        artifact_id=f"bench-{spec.key}",
        parameters=sum(p.numel() for p in module.parameters()),
    )
    with plain.open("rb") as src, artifact.encrypted.open("wb") as dst:
        encrypt_stream(
            src, dst, data_key=artifact.data_key, artifact_id=artifact.artifact_id, key_id=KEY_ID
        )
    return artifact


def decrypt(artifact: Artifact) -> bytearray:
    with artifact.encrypted.open("rb") as src:
        return decrypt_to_bytes(src, data_key=artifact.data_key, artifact_id=artifact.artifact_id)


# --- hosts --------------------------------------------------------------------------------


class Hosts:
    """Every host this bench starts, so that all of them are killed on the way out."""

    def __init__(self) -> None:
        self.started: list[ModelHost] = []

    def start(self) -> ModelHost:
        # As workers.pool.new_host: no address-space limit on CUDA hosts (the driver maps
        # far more than it uses).
        limits = HOST_LIMITS if DEVICE == "cpu" else replace(HOST_LIMITS, memory_bytes=None)
        host = ModelHost(
            device=DEVICE,
            limits=limits,
            rss_limit=HOST_RSS_LIMIT,
            require_sandbox=False,
            spin_seconds=SPIN_SECONDS,
        )
        self.started.append(host)  # before start(): a failed start leaves a process to kill
        return host.start(timeout=LOAD_TIMEOUT)

    def close(self) -> None:
        for host in self.started:
            host.kill()
        self.started.clear()


def load(host: ModelHost, artifact: Artifact, data: bytes | bytearray) -> None:
    """The load request of ``workers.services.load_into`` for an uploaded .pt2."""
    header = {
        "op": "load",
        "format": "pt2",
        "architecture": "",
        "config": {},
        "device": host.device,
        "signature": None,
        "huge_pages": host_module.HUGE_PAGE_WEIGHTS,
    }
    reply, _ = host.request(header, data, timeout=LOAD_TIMEOUT)
    if reply["parameter_count"] != artifact.parameters:
        raise SystemExit(f"{artifact.spec.key}: the host loaded {reply['parameter_count']} params")
    host.loaded_bytes = len(data)


# --- cold start ---------------------------------------------------------------------------

# Started as the host is (isolated, no site, same thread settings), so that both pay the same
# interpreter and torch import; only what follows "imported" is the baseline.
BASELINE_CODE = """\
import sys, time
sys.path[:0] = {paths!r}
import io, json
import torch
torch.set_num_threads({threads})
device = {device!r}
if device != "cpu":
    torch.zeros(1, device=device)  # the CUDA context, made before the clock starts
    from torch.export.passes import move_to_device_pass

def load(source):
    program = torch.export.load(source)
    if device != "cpu":
        program = move_to_device_pass(program, device)
        torch.cuda.synchronize()
    return program.module()

print("imported", flush=True)
started = time.perf_counter()
load(sys.argv[1])
loaded = time.perf_counter()
load(sys.argv[1])
again = time.perf_counter()
with open(sys.argv[1], "rb") as f:
    data = f.read()
from_bytes = time.perf_counter()
load(io.BytesIO(data))
done = time.perf_counter()
print(json.dumps({{
    "load_s": loaded - started, "reload_s": again - loaded, "reload_bytes_s": done - from_bytes
}}), flush=True)
"""


def baseline_load(artifact: Artifact) -> dict[str, float]:
    """In-process ``torch.export.load`` in a fresh interpreter: the start (to ``import torch``
    done, seen from here), the first load, then the same load again in that interpreter, from
    the path and from bytes in memory (the export code now imported)."""
    paths = [p for p in site.getsitepackages() if os.path.isdir(p)]
    code = BASELINE_CODE.format(paths=paths, threads=THREADS, device=DEVICE)
    env = {"OMP_NUM_THREADS": str(THREADS), "PATH": "/usr/bin:/bin", "HOME": tempfile.gettempdir()}
    env.update(sandbox.cuda_env() if DEVICE != "cpu" else {})
    started = time.perf_counter()
    proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
        [sys.executable, "-I", "-S", "-c", code, str(artifact.plain)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "imported":
        proc.kill()
        raise SystemExit("the baseline interpreter did not start")
    imported = time.perf_counter()
    out = proc.stdout.read()
    if proc.wait() != 0:
        raise SystemExit(f"the baseline load failed (status {proc.returncode})")
    figures = json.loads(out)
    return {"start_s": imported - started, **figures}


def platform_load(artifact: Artifact, hosts: Hosts) -> tuple[dict[str, float], ModelHost]:
    """Start a host, decrypt, load: the worker's path when no idle host is waiting. The host
    has finished starting before the decrypt begins, so decrypt + load is also the path with
    a pre-started host (``IdleHosts.take`` hands over one in exactly that state). Returns the
    loaded host."""
    clock = time.perf_counter
    started = clock()
    host = hosts.start()
    host_started = clock()
    data = decrypt(artifact)
    decrypted = clock()
    load(host, artifact, data)
    loaded = clock()
    figures = {
        "host_start_s": host_started - started,
        "decrypt_s": decrypted - host_started,
        "host_load_s": loaded - decrypted,
    }
    return figures, host


@dataclass(frozen=True)
class Spread:
    median: float
    min: float
    max: float


def spread(values: list[float], scale: float = 1.0) -> Spread:
    return Spread(statistics.median(values) * scale, min(values) * scale, max(values) * scale)


def measure_cold(
    artifacts: dict[str, Artifact], hosts: Hosts, plan: Plan
) -> tuple[dict[str, dict[str, list[float]]], dict[str, ModelHost]]:
    """Rounds alternating which path goes first. Seconds per round, by model and figure, and
    the hosts loaded in the last round, kept for the warm predictions."""
    samples: dict[str, dict[str, list[float]]] = {key: {} for key in artifacts}
    kept: dict[str, ModelHost] = {}
    for round_no in range(plan.cold_rounds):
        for key, artifact in artifacts.items():
            for path in ("baseline", "platform") if round_no % 2 == 0 else ("platform", "baseline"):
                gc.collect()
                if path == "baseline":
                    figures = baseline_load(artifact)
                else:
                    figures, host = platform_load(artifact, hosts)
                    if round_no == plan.cold_rounds - 1:
                        kept[key] = host
                    else:
                        host.kill()  # before the next load, as a worker's memory would be
                for name, value in figures.items():
                    samples[key].setdefault(name, []).append(value)
        progress(f"cold round {round_no + 1}/{plan.cold_rounds} done")
    for figures in samples.values():
        rounds = range(plan.cold_rounds)
        figures["fresh_host_s"] = [
            figures["host_start_s"][i] + figures["decrypt_s"][i] + figures["host_load_s"][i]
            for i in rounds
        ]
        figures["prestarted_s"] = [
            figures["decrypt_s"][i] + figures["host_load_s"][i] for i in rounds
        ]
    return samples, kept


def measure_transfer(
    artifacts: dict[str, Artifact], kept: dict[str, ModelHost], plan: Plan
) -> dict[str, list[float]]:
    """Seconds to send each model's bytes to a host that reads and drops them (a ``ping`` with
    the file as payload): the pipe's share of the load request."""
    samples: dict[str, list[float]] = {}
    for key, artifact in artifacts.items():
        data = decrypt(artifact)
        for _ in range(plan.cold_rounds):
            started = time.perf_counter()
            kept[key].request({"op": "ping"}, data, timeout=LOAD_TIMEOUT)
            samples.setdefault(key, []).append(time.perf_counter() - started)
    return samples


# --- warm prediction ----------------------------------------------------------------------


@dataclass
class Loaded:
    host: ModelHost
    module: Callable[..., Any]
    signature: Signature
    input_name: str


def load_warm(artifact: Artifact, host: ModelHost) -> Loaded:
    """Validate the host's model and load the same file in-process."""
    # The archive carries its example input, as uploaded .pt2 files do.
    reply, _ = host.request({"op": "validate", "example": None}, timeout=LOAD_TIMEOUT)
    signature = Signature.from_json(reply["signature"])
    program = torch.export.load(artifact.plain)
    if DEVICE != "cpu":
        program = move_to_device_pass(program, DEVICE)
    return Loaded(host, program.module(), signature, signature.inputs[0].name)


def host_call(loaded: Loaded, x: torch.Tensor, compute_ms: list[float]) -> Callable[[], Any]:
    """Tensors in, tensors out, as the worker would call it."""
    host, name = loaded.host, loaded.input_name

    def call() -> torch.Tensor:
        reply, body = host.request(
            {"op": "predict"}, codec.encode({name: x}), timeout=PREDICT_TIMEOUT
        )
        compute_ms.append(reply["compute_ms"])
        return codec.decode(body)["output"]

    return call


def local_call(loaded: Loaded, x: torch.Tensor) -> Callable[[], Any]:
    module = loaded.module

    def call() -> torch.Tensor:
        with torch.inference_mode():
            if DEVICE == "cpu":
                return module(x)
            return module(x.to(DEVICE)).cpu()

    return call


def ping_call(host: ModelHost) -> Callable[[], Any]:
    return lambda: host.request({"op": "ping"}, timeout=PREDICT_TIMEOUT)


def timed(call: Callable[[], Any], n: int) -> list[int]:
    """Nanoseconds per call, with the collector off so its pauses land between rounds."""
    clock = time.perf_counter_ns
    times = [0] * n
    gc.collect()
    gc.disable()
    try:
        for i in range(n):
            start = clock()
            call()
            times[i] = clock() - start
    finally:
        gc.enable()
    return times


@dataclass(frozen=True)
class Summary:
    median_us: float
    p90_us: float


def summarize(times_ns: list[int]) -> Summary:
    ordered = sorted(times_ns)
    return Summary(ordered[len(ordered) // 2] / 1000, ordered[len(ordered) * 9 // 10] / 1000)


def median_us(call: Callable[[], Any], n: int) -> float:
    return summarize(timed(call, n)).median_us


@dataclass
class WarmResult:
    host: list[int] = field(default_factory=list)
    local: list[int] = field(default_factory=list)
    compute_ms: list[float] = field(default_factory=list)
    overhead_per_round_us: list[float] = field(default_factory=list)
    # Voluntary context switches during the host calls, this process and the host's.
    switches: list[int] = field(default_factory=lambda: [0, 0])

    def switches_per_call(self) -> dict[str, float]:
        calls = len(self.host)
        return {"worker": self.switches[0] / calls, "host": self.switches[1] / calls}


def voluntary_switches(tree: list[psutil.Process]) -> tuple[int, int]:
    """Voluntary context switches so far of this process and of the host's process tree: each
    is a sleep (waiting in ``select`` for a reply, or in ``read`` for a request) and so a
    wake-up that the scheduler has to serve, which costs most on a busy machine."""
    mine = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
    return mine, sum(p.num_ctx_switches().voluntary for p in tree)


def process_tree(host: ModelHost) -> list[psutil.Process]:
    """The host's processes (prlimit exec'd into bwrap, and the interpreter bwrap started)."""
    assert host.proc is not None
    root = psutil.Process(host.proc.pid)
    return [root, *root.children(recursive=True)]


def timed_host(
    call: Callable[[], Any], tree: list[psutil.Process], n: int, result: WarmResult
) -> list[int]:
    before = voluntary_switches(tree)
    times = timed(call, n)
    after = voluntary_switches(tree)
    result.switches[0] += after[0] - before[0]
    result.switches[1] += after[1] - before[1]
    return times


def warm_inputs(case: WarmCase, artifacts: dict[str, Artifact]) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(case.batch, *artifacts[case.model].spec.sample_shape)


def measure_warm(
    loaded: dict[str, Loaded], artifacts: dict[str, Artifact], plan: Plan
) -> dict[str, WarmResult]:
    """Each round times every case on both sides, alternating which side goes first, so that
    drift and neighbours on a shared machine hit both alike; plus empty round trips (ping)."""
    results = {case.key: WarmResult() for case in WARM_CASES}
    results[PING] = WarmResult()
    calls: dict[str, tuple[list[psutil.Process], Callable[[], Any], Callable[[], Any] | None]] = {}
    for case in WARM_CASES:
        x = warm_inputs(case, artifacts)
        model = loaded[case.model]
        through_host = host_call(model, x, results[case.key].compute_ms)
        in_process = local_call(model, x)
        if not torch.allclose(through_host(), in_process(), atol=1e-5):
            raise SystemExit(f"{case.key}: the host and the in-process model disagree")
        calls[case.key] = (process_tree(model.host), through_host, in_process)
    first = loaded[WARM_CASES[0].model].host
    calls[PING] = (process_tree(first), ping_call(first), None)
    for key, (_tree, through_host, in_process) in calls.items():
        timed(through_host, plan.warmup)
        if in_process is not None:
            timed(in_process, plan.warmup)
        results[key].compute_ms.clear()
    for round_no in range(plan.warm_rounds):
        for key, (tree, through_host, in_process) in calls.items():
            n, result = plan.calls[key], results[key]
            if in_process is None:
                result.host += timed_host(through_host, tree, n, result)
                continue
            medians = {}
            for side in ("host", "local") if round_no % 2 == 0 else ("local", "host"):
                if side == "host":
                    times = timed_host(through_host, tree, n, result)
                else:
                    times = timed(in_process, n)
                getattr(result, side).extend(times)
                medians[side] = summarize(times).median_us
            result.overhead_per_round_us.append(medians["host"] - medians["local"])
        progress(f"warm round {round_no + 1}/{plan.warm_rounds} done")
    return results


def breakdown(
    case: WarmCase,
    loaded: Loaded,
    artifacts: dict[str, Artifact],
    result: WarmResult,
    ping: WarmResult,
    n: int,
) -> dict[str, float]:
    """Where the added time goes: the work around the forward, timed here with the same
    functions the worker and the host run, medians in µs. The empty round trip (ping) covers
    the framing, both pipes, the select loop, JSON and the two process wake-ups."""
    x = warm_inputs(case, artifacts)
    name = loaded.input_name
    payload = codec.encode({name: x})
    with torch.inference_mode():
        out = outputs_to_dict(loaded.module(x.to(DEVICE)).cpu())
    reply_body = codec.encode(out)
    reply_header = {"ok": True, "compute_ms": 1.0}

    def host_side() -> None:
        validate_inputs(loaded.signature, codec.decode(payload))
        codec.encode(outputs_to_dict(out["output"]))

    def framing() -> None:
        pack({"op": "predict"}, payload)
        pack(reply_header, reply_body)
        json.loads(b'{"op":"predict"}')
        json.loads(b'{"ok":true,"compute_ms":1.0}')

    host = summarize(result.host).median_us
    local = summarize(result.local).median_us
    host_forward = statistics.median(result.compute_ms) * 1000
    rows = {
        "worker_encode": median_us(lambda: codec.encode({name: x}), n),
        "worker_decode": median_us(lambda: codec.decode(reply_body), n),
        "host_codec_and_checks": median_us(host_side, n),
        "empty_round_trip": summarize(ping.host).median_us,
        "host_forward_minus_in_process": host_forward - local,
    }
    rows["rest"] = host - local - sum(rows.values())
    rows["framing_within_round_trip"] = median_us(framing, n)
    rows["worker_codec_after_forward"] = codec_after_forward(loaded, x, reply_body, min(n, 40))
    return rows


def codec_after_forward(loaded: Loaded, x: torch.Tensor, reply_body: bytes, n: int) -> float:
    """The worker's encode + decode timed right after an in-process forward, with the caches
    as the model leaves them: a forward that reads 200 MB of weights evicts everything the
    host and the worker run next, which then costs several times what it costs alone."""
    times = []
    for _ in range(n):
        with torch.inference_mode():
            loaded.module(x.to(DEVICE))
        start = time.perf_counter_ns()
        codec.encode({loaded.input_name: x})
        codec.decode(reply_body)
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1000


BREAKDOWN_LABELS = {
    "worker_encode": "worker: codec.encode(input)",
    "worker_decode": "worker: codec.decode(output)",
    "host_codec_and_checks": "host: decode input + validate_inputs + encode output",
    "empty_round_trip": "empty round trip (ping): pipes, select, wake-ups, JSON, host loop",
    "host_forward_minus_in_process": "forward in the host (its own clock) minus in-process call",
    "rest": "rest: payload through the pipes, extra wake-ups, unexplained",
    "framing_within_round_trip": "(within the ping: pack + json.loads both ways, timed alone)",
    "worker_codec_after_forward": "(the worker's encode + decode, timed after a forward)",
}


# --- profile ------------------------------------------------------------------------------


def fast_encode(tensors: dict[str, torch.Tensor]) -> bytes:
    """The same safetensors bytes as ``codec.encode``, written by hand (float32 only here):
    shows what ``safetensors.torch.save``'s own checks cost on small tensors."""
    header, parts, offset = {}, [], 0
    for name, tensor in tensors.items():
        array = tensor.detach().cpu().contiguous().numpy()
        header[name] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        parts.append(array)
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return b"".join([struct.pack("<Q", len(encoded)), encoded, *parts])


def profile_warm(loaded: Loaded, artifacts: dict[str, Artifact], n: int) -> dict[str, Any]:
    """cProfile of the worker's side of ``n`` batch-1 predictions through the host (time in
    ``select`` is time waiting for the host), then two what-ifs: a hand-written encoder of the
    same bytes, and request frames sent with one write."""
    case = WARM_CASES[0]
    x = warm_inputs(case, artifacts)
    call = host_call(loaded, x, [])
    profiler = cProfile.Profile()
    profiler.runcall(lambda: [call() for _ in range(n)])
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = sorted(stats.items(), key=lambda row: -row[1][2])[:12]
    print(
        f"\ncProfile of the worker's side of {n:,} predictions, {case.key} "
        "(own time per call, excluding callees; inflated by the profiler)"
    )
    print(f"{'µs/call':>9}{'calls/call':>12}  function")
    table = []
    for (filename, line, func), (_cc, calls, tottime, *_rest) in rows:
        where = f"{Path(filename).name}:{line} " if line else ""
        print(f"{tottime / n * 1e6:>9.1f}{calls / n:>12.2f}  {where}{func}")
        table.append({"function": f"{where}{func}", "us_per_call": tottime / n * 1e6})

    tensors = {loaded.input_name: x}
    if not torch.equal(codec.decode(fast_encode(tensors))[loaded.input_name], x):
        raise SystemExit("the hand-written encoder does not round-trip")
    encoders = {
        "safetensors_save": median_us(lambda: codec.encode(tensors), n),
        "hand_written": median_us(lambda: fast_encode(tensors), n),
    }
    print(f"\nencoding one {case.key} input, median µs")
    print(f"{encoders['safetensors_save']:>9.1f}  codec.encode (safetensors.torch.save)")
    print(f"{encoders['hand_written']:>9.1f}  hand-written safetensors encoder, same bytes")

    # What-if: the worker writes each request frame with one write() instead of two (prefix
    # and header, then the payload), so the host wakes once to a whole frame. The host's
    # replies are still two writes (protocol.write_frame), which this cannot change.
    host, tree = loaded.host, process_tree(loaded.host)
    payload = codec.encode(tensors)

    def one_write() -> None:
        deadline = time.monotonic() + PREDICT_TIMEOUT
        host._write([b"".join(pack({"op": "predict"}, payload))], deadline)
        host._read_frame(deadline)

    def two_writes() -> None:
        host.request({"op": "predict"}, payload, timeout=PREDICT_TIMEOUT)

    writes: dict[str, WarmResult] = {"two_writes": WarmResult(), "one_write": WarmResult()}
    variants = list(zip(writes, (two_writes, one_write), strict=True))
    for round_no in range(6):
        for label, call in variants if round_no % 2 == 0 else variants[::-1]:
            writes[label].host += timed_host(call, tree, n, writes[label])
    print(f"\nrequest frame written in one write or two, {case.key}, without encode/decode")
    print(f"{'median µs':>10}{'p90 µs':>10}{'worker sleeps':>15}{'host sleeps':>13}  request frame")
    frames = {}
    for label, result in writes.items():
        summary, sleeps = summarize(result.host), result.switches_per_call()
        print(
            f"{summary.median_us:>10,.0f}{summary.p90_us:>10,.0f}{sleeps['worker']:>15.2f}"
            f"{sleeps['host']:>13.2f}  {label.replace('_', ' ')}"
        )
        frames[label] = {**asdict(summary), "voluntary_switches_per_call": sleeps}
    return {"worker_side": table, "encoders_us": encoders, "request_frame": frames}


def profile_pipe(artifact: Artifact, host: ModelHost, repeats: int) -> dict[str, float]:
    """What-if: the model's bytes through a pipe of 1 MiB (``F_SETPIPE_SZ``, the unprivileged
    maximum by default) instead of Linux's 64 KiB: fewer wake-ups per megabyte."""
    assert host.proc is not None and host.proc.stdin is not None
    fd = host.proc.stdin.fileno()
    data = decrypt(artifact)

    def send() -> float:
        started = time.perf_counter()
        host.request({"op": "ping"}, data, timeout=LOAD_TIMEOUT)
        return time.perf_counter() - started

    default = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
    try:
        grown = fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    except OSError as exc:
        print(f"\ncould not grow the pipe: {exc}")
        return {}
    samples: dict[int, list[float]] = {default: [], grown: []}
    for round_no in range(repeats):
        for size in (default, grown) if round_no % 2 == 0 else (grown, default):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)  # the pipe is empty between requests
            samples[size].append(send())
    fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, default)
    medians = {
        f"pipe_{size // 1024}_kib": statistics.median(v) * 1000 for size, v in samples.items()
    }
    print(f"\n{artifact.spec.key} bytes ({len(data) / 1e6:,.0f} MB) to a host, median ms")
    for label, value in medians.items():
        print(f"{value:>9,.0f}  {label.replace('_', ' ').replace('kib', 'KiB')}")
    return medians


# --- report -------------------------------------------------------------------------------

# (label, figure); a figure of None is a heading.
COLD_ROWS: list[tuple[str, str | None]] = [
    ("in-process baseline, fresh interpreter, after `import torch`:", None),
    ("  torch.export.load(path).module()  <- the yardstick", "load_s"),
    ("  the same load again in that interpreter (export code imported)", "reload_s"),
    ("  the same again, from the bytes in memory (io.BytesIO, as in the host)", "reload_bytes_s"),
    ("  (interpreter start + import torch, no sandbox: not in the yardstick)", "start_s"),
    ("platform parts:", None),
    ("  decrypt_to_bytes (vault file -> memory)", "decrypt_s"),
    ("  ModelHost.start() (sandbox + interpreter + import torch)", "host_start_s"),
    ("  load request (bytes through the pipe, formats.load in the host)", "host_load_s"),
    ("    of which the pipe: the same bytes to a host that drops them", "pipe_transfer_s"),
    ("cold start, fresh host: start + decrypt + load", "fresh_host_s"),
    ("cold start, pre-started host (IdleHosts): decrypt + load", "prestarted_s"),
]


def report_cold(
    artifacts: dict[str, Artifact], samples: dict[str, dict[str, list[float]]], plan: Plan
) -> tuple[dict, bool]:
    figures: dict[str, Any] = {}
    met = True
    print(
        f"\nCold start, ms ({plan.cold_rounds} interleaved round(s); a fresh interpreter or "
        "host per load; files in the page cache)"
    )
    for key, artifact in artifacts.items():
        s = {name: spread(values, 1000) for name, values in samples[key].items()}
        base = s["load_s"].median
        ratios = {name: s[name].median / base for name in ("fresh_host_s", "prestarted_s")}
        size = artifact.plain.stat().st_size
        print(
            f"\n{artifact.spec.label}: {artifact.parameters:,} parameters, "
            f".pt2 {size / 1e6:,.1f} MB"
        )
        print(f"{'':<72}{'median':>9}{'min':>9}{'max':>9}{'ratio':>8}")
        for label, name in COLD_ROWS:
            if name is None:
                print(label)
                continue
            ratio = f"{ratios[name]:>7.2f}x" if name in ratios else ""
            row = s[name]
            print(f"{label:<72}{row.median:>9,.1f}{row.min:>9,.1f}{row.max:>9,.1f}{ratio}")
        target_met = None
        if key == COLD_TARGET_MODEL:
            target_met = ratios["prestarted_s"] < TARGET_COLD_RATIO
            met = met and target_met
            print(
                f"target, pre-started host under {TARGET_COLD_RATIO:.0f}x the in-process load: "
                f"{'met' if target_met else 'NOT MET'}"
            )
        figures[key] = {
            "parameters": artifact.parameters,
            "pt2_bytes": size,
            "encrypted_bytes": artifact.encrypted.stat().st_size,
            "ms": {name.removesuffix("_s"): asdict(value) for name, value in s.items()},
            "ratio_to_in_process_load": {
                "fresh_host": ratios["fresh_host_s"],
                "prestarted_host": ratios["prestarted_s"],
            },
            "target_met": target_met,
            "seconds_per_round": samples[key],
        }
    print(
        "\nratio: median / median of the in-process load. A worker normally takes a pre-started "
        "host\n(workers.pool.IdleHosts), which hides ModelHost.start(); the target is about that "
        "row.\nThe fresh-host row is a worker with no idle host left."
    )
    return figures, met


def outside_forward_us(result: WarmResult) -> float:
    """Median over the calls through the host of the round trip minus that call's forward
    pass, timed by the host itself around ``module(x)``."""
    return statistics.median(
        ns / 1000 - ms * 1000 for ns, ms in zip(result.host, result.compute_ms, strict=True)
    )


def report_warm(
    results: dict[str, WarmResult],
    breakdowns: dict[str, dict[str, float]],
    plan: Plan,
) -> tuple[dict, bool]:
    figures: dict[str, Any] = {}
    met = True
    print(
        f"\nWarm prediction, µs per call ({plan.warm_rounds} interleaved rounds; "
        f"{THREADS} thread on both sides)"
    )
    print(
        f"{'':<22}{'in-process':>20}{'through the host':>20}{'added':>20}{'ratio':>8}{'target':>9}"
    )
    print(f"{'':<22}" + f"{'median':>10}{'p90':>10}" * 3)
    for case in WARM_CASES:
        result = results[case.key]
        local, host = summarize(result.local), summarize(result.host)
        added = Summary(host.median_us - local.median_us, host.p90_us - local.p90_us)
        ratio = host.median_us / local.median_us
        case_met = added.median_us < TARGET_WARM_OVERHEAD_US
        met = met and case_met
        print(
            f"{case.key:<22}{local.median_us:>10,.0f}{local.p90_us:>10,.0f}"
            f"{host.median_us:>10,.0f}{host.p90_us:>10,.0f}"
            f"{added.median_us:>10,.0f}{added.p90_us:>10,.0f}{ratio:>7.2f}x"
            f"{'met' if case_met else 'NOT MET':>9}"
        )
        figures[case.key] = {
            "model": case.model,
            "batch": case.batch,
            "calls_per_round": plan.calls[case.key],
            "in_process": asdict(local),
            "host": asdict(host),
            "added": {**asdict(added), "per_round_median_us": result.overhead_per_round_us},
            "ratio": {"median": ratio, "p90": host.p90_us / local.p90_us},
            "host_compute_ms_median": statistics.median(result.compute_ms),
            "outside_forward_median_us": outside_forward_us(result),
            "target_met": case_met,
            "breakdown_us": breakdowns[case.key],
            "voluntary_switches_per_call": result.switches_per_call(),
        }
    print(
        "added per round (median host - median in-process): "
        + "; ".join(
            f"{case.key} {min(rounds):,.0f} to {max(rounds):,.0f} µs"
            for case in WARM_CASES
            for rounds in [results[case.key].overhead_per_round_us]
        )
    )
    print(
        "outside the forward (each call's round trip minus the forward on the host's own "
        "clock), median: "
        + "; ".join(
            f"{case.key} {outside_forward_us(results[case.key]):,.0f} µs" for case in WARM_CASES
        )
    )
    print(
        "  (what the platform adds around the model; free of the forward's own noise, which "
        "for the\n  200 MB model moves the added time by a millisecond or more between runs; "
        "not the target's figure)"
    )
    ping = summarize(results[PING].host)
    print(f"{'ping (empty request)':<22}{'':>20}{ping.median_us:>10,.0f}{ping.p90_us:>10,.0f}")
    figures[PING] = {
        **asdict(ping),
        "voluntary_switches_per_call": results[PING].switches_per_call(),
    }
    print(
        f"target, under {TARGET_WARM_OVERHEAD_US:.0f} µs added per call (median): "
        f"{'met' if met else 'NOT MET'}"
    )
    print(
        "through the host: codec.encode(input) + ModelHost.request(predict) + "
        "codec.decode(output);\nin-process: module(x) under torch.inference_mode(). The host "
        + (
            "moves weights of 2 MiB or more into transparent huge pages (MM_HOST_HUGE_PAGES=1);"
            "\nthe in-process module keeps them where torch.export.load put them."
            if host_module.HUGE_PAGE_WEIGHTS
            else "keeps its weights where torch.export.load put them (MM_HOST_HUGE_PAGES=0)."
        )
    )

    print(
        "\nWhere the added µs go (medians; the parts are timed alone, so they add up only roughly)"
    )
    print(f"{'':<68}" + "".join(f"{case.key:>15}" for case in WARM_CASES))
    for key, label in BREAKDOWN_LABELS.items():
        print(f"{label:<68}" + "".join(f"{breakdowns[c.key][key]:>15,.1f}" for c in WARM_CASES))
    print(
        "\nVoluntary context switches per call (sleeps, each a wake-up to wait for; 1 each is "
        "the least\nfor a request and its reply)"
    )
    keys = [*(case.key for case in WARM_CASES), PING]
    print(f"{'':<30}" + "".join(f"{key:>15}" for key in keys))
    for side in ("worker", "host"):
        per_call = [results[key].switches_per_call()[side] for key in keys]
        print(f"{side:<30}" + "".join(f"{value:>15.2f}" for value in per_call))
    return figures, met


def spin_seconds() -> float | None:
    """The worker's polling for a reply: fixed, or None for the CPU hosts' adaptive polling."""
    return host_module.default_spin_seconds(DEVICE) if SPIN_SECONDS is None else SPIN_SECONDS


def spin_text() -> str:
    spin = spin_seconds()
    if spin is None:
        cap = host_module.CPU_SPIN_CAP_SECONDS * 1e6
        return f"up to twice a recent prediction's round trip (when under {cap:,.0f} µs)"
    return f"{spin * 1e6:,.0f} µs"


def device_name() -> str:
    return torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"


def force_fallback_sandbox() -> None:
    """Run hosts as on a machine without bubblewrap: plain children, limits and seccomp."""
    sandbox.bubblewrap = lambda: None  # type: ignore[assignment]  # host_command looks it up too


def main() -> None:
    global DEVICE, SPIN_SECONDS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, about a minute")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument("--profile", action="store_true", help="then profile a warm prediction")
    parser.add_argument(
        "--no-bubblewrap", action="store_true", help="run hosts without bubblewrap, as on a laptop"
    )
    parser.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="where both sides run the model"
    )
    parser.add_argument(
        "--spin-us",
        type=int,
        help="how long the worker polls for a reply before sleeping (default: the worker's, "
        f"{host_module.CUDA_SPIN_SECONDS * 1e6:,.0f} on cuda, adaptive on cpu)",
    )
    args = parser.parse_args()
    DEVICE = args.device
    SPIN_SECONDS = None if args.spin_us is None else args.spin_us / 1e6
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    plan = QUICK if args.quick else FULL
    if args.no_bubblewrap:
        force_fallback_sandbox()
    isolation = "bubblewrap" if sandbox.bubblewrap() else "no bubblewrap: limits + seccomp only"
    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()
    if load_before[0] > (os.cpu_count() or 1) / 2:
        print(
            f"warning: load average {load_before[0]:.1f} on {os.cpu_count()} CPUs; other "
            "processes compete for them, which inflates every wake-up (the warm overhead) "
            "and makes all figures noisy",
            file=sys.stderr,
        )

    root = Path(tempfile.mkdtemp(prefix="mm-bench-runtime-"))
    hosts = Hosts()
    try:
        artifacts = {spec.key: export_model(spec, root) for spec in MODELS}
        progress(f"exported and encrypted {len(artifacts)} models in {root}")
        cold, kept = measure_cold(artifacts, hosts, plan)
        loaded = {key: load_warm(artifact, kept[key]) for key, artifact in artifacts.items()}
        for key, seconds in measure_transfer(artifacts, kept, plan).items():
            cold[key]["pipe_transfer_s"] = seconds
        progress("validated the models in their hosts and timed the pipe")
        warm = measure_warm(loaded, artifacts, plan)
        breakdowns = {
            case.key: breakdown(
                case, loaded[case.model], artifacts, warm[case.key], warm[PING], plan.calls[PING]
            )
            for case in WARM_CASES
        }
        progress("timed the parts")

        print(
            f"\nModel hosts: {isolation}; device {device_name()}; worker polls "
            f"{spin_text()} for a reply; torch {torch.__version__}; "
            f"{os.cpu_count()} CPUs; "
            f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after"
        )
        cold_figures, cold_met = report_cold(artifacts, cold, plan)
        warm_figures, warm_met = report_warm(warm, breakdowns, plan)
        print(
            f"\ntargets: warm added < {TARGET_WARM_OVERHEAD_US:.0f} µs: "
            f"{'met' if warm_met else 'NOT MET'}; cold start of {COLD_TARGET_MODEL} with a "
            f"pre-started host < {TARGET_COLD_RATIO:.0f}x in-process load: "
            f"{'met' if cold_met else 'NOT MET'}"
        )
        figures: dict[str, Any] = {
            "targets": {
                "warm_added_us_max": TARGET_WARM_OVERHEAD_US,
                "warm_met": warm_met,
                "cold_ratio_max": TARGET_COLD_RATIO,
                "cold_model": COLD_TARGET_MODEL,
                "cold_met": cold_met,
            },
            "plan": asdict(plan),
            "cold": cold_figures,
            "warm": warm_figures,
            "environment": {
                "isolation": isolation,
                "device": device_name(),
                "spin_us": None if spin_seconds() is None else round(spin_seconds() * 1e6),
                "cpu_spin_cap_us": round(host_module.CPU_SPIN_CAP_SECONDS * 1e6),
                "host_huge_page_weights": host_module.HUGE_PAGE_WEIGHTS,
                "python": platform.python_version(),
                "torch": torch.__version__,
                "cpus": os.cpu_count(),
                "threads": THREADS,
                "load_average_before": load_before,
                "load_average_after": os.getloadavg(),
            },
        }
        if args.profile:
            figures["profile"] = profile_warm(
                loaded[WARM_CASES[0].model], artifacts, plan.calls[WARM_CASES[0].key]
            )
            figures["profile"]["pipe_ms"] = profile_pipe(
                artifacts[COLD_TARGET_MODEL],
                loaded[COLD_TARGET_MODEL].host,
                max(3, plan.cold_rounds),
            )
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
    finally:
        hosts.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
