"""What a compression job gains and costs, and the job's overhead over the same technique
applied directly with torch in this process.

Same run, same models: a linear-heavy MLP (256 -> 1024 -> 1024 -> 10, trained here on ten
Gaussian blobs) and the built-in small CNN. For each method:

- job: decrypt the parent (the vault's format, in memory), start a model host (sandbox,
  interpreter, ``import torch``), send it a ``compress`` request as ``workers.services.
  compression_run`` does (load, apply, store as the version file, load that back, measure it
  against the parent on held-out data), and encrypt the result. The wall time is split into the
  host start, which a worker pays ahead with pre-started hosts, and the rest.
- in-process baseline: the same technique called directly (``quantize.dynamic_int8(model)``,
  ``prune.channel_prune(...)``, ``distill(...)``) on the same module and data, measured with
  ``evaluate.compare`` (``torch.save`` of the state dict for the size) on the same inputs and
  thread count.

The table shows, per method, the size ratio, the latency ratio (parent over child) at batch 1
and 32 and the top-1 agreement, as the job reported them and as measured in-process, and the
wall times.

    python bench/compression.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script, the project is not on the path

import torch  # noqa: E402
from safetensors.torch import save as save_tensors  # noqa: E402
from torch import nn  # noqa: E402

from inference.compression import evaluate as ev  # noqa: E402
from inference.compression import params as checks  # noqa: E402
from inference.compression import prune, quantize  # noqa: E402
from inference.compression.distill import distill  # noqa: E402
from inference.runtime import architectures, codec  # noqa: E402
from marketplace.vault.stream import decrypt_to_bytes, encrypt_stream  # noqa: E402
from workers import sandbox  # noqa: E402
from workers.host import ModelHost  # noqa: E402

THREADS = 1  # settings.MODEL_HOST_THREADS
HOST_LIMITS = sandbox.Limits(memory_bytes=16 * 1024**3, cpu_seconds=3600, threads=THREADS)
FEATURES, CLASSES = 256, 10
MLP_CONFIG = {"in_features": FEATURES, "hidden": [1024, 1024], "classes": CLASSES}
CNN_CONFIG = {"in_channels": 1, "image_size": 28, "classes": CLASSES}


@dataclass(frozen=True)
class Case:
    key: str
    model: str  # "mlp" or "cnn"
    method: str
    params: dict[str, Any]


CASES = [
    Case("int8_dynamic", "mlp", "quantize", {"scheme": "dynamic_int8"}),
    Case("int8_weight_only", "mlp", "quantize", {"scheme": "weight_only_int8"}),
    Case("fp16", "mlp", "quantize", {"scheme": "fp16"}),
    Case("prune_structured_50", "cnn", "prune", {"kind": "structured", "amount": 0.5}),
    Case("prune_unstructured_80", "mlp", "prune", {"kind": "unstructured", "amount": 0.8}),
    Case(
        "distill_mlp_128",
        "mlp",
        "distill",
        {
            "student": {"architecture": "mlp", "config": {"hidden": [128]}},
            "epochs": 8,
            "lr": 2e-3,
            "batch_size": 128,
            "hard_weight": 0.2,
        },
    ),
]
QUICK_SKIP = {"fp16"}


def progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def blobs(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(0)) * 0.3
    rng = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (count,), generator=rng)
    return centres[labels] + torch.randn(count, FEATURES, generator=rng), labels


def trained_mlp() -> nn.Module:
    torch.manual_seed(0)
    model = architectures.build("mlp", MLP_CONFIG)
    x, y = blobs(1500, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = torch.Generator().manual_seed(1)
    for _ in range(2):
        for batch in torch.randperm(len(x), generator=rng).split(64):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def signature(dims: list[int]) -> dict:
    return {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, *dims]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, CLASSES]}],
    }


def encrypt(data: bytes, key: bytes) -> bytes:
    out = io.BytesIO()
    encrypt_stream([data], out, data_key=key, artifact_id="art_bench", key_id="bench-key")
    return out.getvalue()


# --- the two ways ---------------------------------------------------------------------------


def run_job(case: Case, parent: dict, data: tuple | None, repeats: int) -> dict:
    """A compression job as the worker runs it, in a fresh sandboxed host."""
    key = parent["key"]
    started = time.perf_counter()
    plaintext = decrypt_to_bytes(
        io.BytesIO(parent["ciphertext"]), data_key=key, artifact_id="art_bench"
    )
    extra = b""
    if data is not None:
        arrays = {"inputs": data[0]} if data[1] is None else {"inputs": data[0], "labels": data[1]}
        extra = codec.encode(arrays)
    host_started = time.perf_counter()
    host = ModelHost(limits=HOST_LIMITS, rss_limit=4 * 1024**3).start()
    host_start_s = time.perf_counter() - host_started
    try:
        reply, body = host.request(
            {
                "op": "compress",
                "method": case.method,
                "params": parent["checked"][case.key],
                "format": "safetensors",
                "architecture": parent["architecture"],
                "config": parent["config"],
                "signature": parent["signature"],
                "data_bytes": len(extra),
                "repeats": repeats,
            },
            bytes(plaintext) + extra,
            timeout=600,
        )
    finally:
        host.kill()
    encrypt(body, key)
    wall = time.perf_counter() - started
    report = reply["report"]
    return {
        "wall_s": wall,
        "host_start_s": host_start_s,
        "without_host_start_s": wall - host_start_s,
        "size_ratio": report["size_ratio"],
        "speedup_b1": report["speedup_b1"],
        "speedup_b32": report["speedup_b32"],
        "agreement": report["fidelity"]["agreement"],
        "cosine": report["fidelity"]["cosine"],
        "parameter_ratio": report["parameter_ratio"],
    }


def run_in_process(case: Case, module: nn.Module, data: tuple | None, repeats: int) -> dict:
    """The same technique called directly with torch in this process."""
    params = case.params
    started = time.perf_counter()
    if case.method == "quantize" and params["scheme"] in quantize.CASTS:
        child = quantize.cast(module, params["scheme"])
    elif case.method == "quantize":
        scheme = params["scheme"]
        child = (quantize.dynamic_int8 if scheme == "dynamic_int8" else quantize.weight_only_int8)(
            module
        )
    elif case.method == "prune" and params["kind"] == "structured":
        child = prune.channel_prune(module, params["amount"], config=CNN_CONFIG).module.eval()
    elif case.method == "prune":
        child = prune.global_magnitude(module, params["amount"])
    else:
        x, y = data
        cut = len(x) // 5
        child = distill(
            module,
            architectures.build("mlp", {**MLP_CONFIG, "hidden": [128]}),
            inputs=x[cut:],
            labels=y[cut:],
            hard_weight=params["hard_weight"],
            epochs=params["epochs"],
            lr=params["lr"],
            batch_size=params["batch_size"],
        ).student
    technique_s = time.perf_counter() - started
    inputs = data[0] if data is not None else torch.randn(512, 1, 28, 28)
    if case.method == "distill":
        inputs = data[0][: len(data[0]) // 5]
    report = ev.compare(module, child, inputs[:1024], repeats=repeats)
    figures = report.as_dict()
    if case.method == "prune" and params["kind"] == "unstructured":
        # torch.save of a dense state dict does not shrink; the compact form does.
        figures["size_ratio"] = ev.serialized_size(module) / len(prune.save_compact(child))
    return {
        "wall_s": time.perf_counter() - started,
        "technique_s": technique_s,
        "size_ratio": figures["size_ratio"],
        "speedup_b1": figures["speedup_b1"],
        "speedup_b32": figures["speedup_b32"],
        "agreement": figures["fidelity"]["agreement"],
    }


# --- report ---------------------------------------------------------------------------------


def table(results: dict[str, dict]) -> None:
    head = (
        f"{'method':<22} {'size x':>13} {'speed b1':>13} {'speed b32':>13} "
        f"{'agreement':>15} {'job wall s':>17} {'in-proc s':>10}"
    )
    print("\n" + head)
    print(" " * 22 + "   job | torch" * 3 + "     job | torch" + "  start + rest" + " " * 5)
    print("-" * len(head))
    for key, r in results.items():
        job, base = r["job"], r["in_process"]

        def pair(name: str, job=job, base=base) -> str:
            return f"{job[name]:>6.2f} |{base[name]:>6.2f}"

        agreement = (
            f"{job['agreement']:>7.4f} |{base['agreement']:>6.4f}"
            if job["agreement"] is not None
            else f"{'—':>7} |{'—':>6}"
        )
        print(
            f"{key:<22} {pair('size_ratio')} {pair('speedup_b1')} {pair('speedup_b32')} "
            f"{agreement} {job['host_start_s']:>7.2f} + {job['without_host_start_s']:>6.2f} "
            f"{base['wall_s']:>10.2f}"
        )
    print(
        "\nsize x: parent bytes over child bytes (job: the stored safetensors version files; "
        "torch: torch.save\nof the state dicts, the compact form for unstructured pruning). "
        "speed: parent latency over child\nlatency (median, one thread). job wall: host start "
        "(paid ahead by pre-started hosts) + decrypt,\ncompress, store, measure and encrypt. "
        "in-proc: the technique and evaluate.compare in this process."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases and repeats, < 1 min")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    args = parser.parse_args()
    repeats = 10 if args.quick else 30
    torch.set_num_threads(THREADS)
    isolation = "bubblewrap" if sandbox.bubblewrap() else "no bubblewrap: limits + seccomp only"

    mlp = trained_mlp()
    torch.manual_seed(0)
    cnn = architectures.build("small_cnn", CNN_CONFIG).eval()
    key = os.urandom(32)
    parents = {
        "mlp": {"module": mlp, "architecture": "mlp", "config": MLP_CONFIG, "dims": [FEATURES]},
        "cnn": {
            "module": cnn,
            "architecture": "small_cnn",
            "config": CNN_CONFIG,
            "dims": [1, 28, 28],
        },
    }
    for parent in parents.values():
        parent.update(
            key=key,
            signature=signature(parent["dims"]),
            ciphertext=encrypt(save_tensors(parent["module"].state_dict()), key),
            checked={},
        )
    progress("trained the MLP, encrypted both parents")
    held_out = blobs(1000, seed=2)[0]
    distill_data = blobs(1500, seed=3)
    results: dict[str, dict] = {}
    for case in CASES:
        if args.quick and case.key in QUICK_SKIP:
            continue
        parent = parents[case.model]
        parent["checked"][case.key] = checks.check(
            case.method,
            case.params,
            format="safetensors",
            architecture=parent["architecture"],
            config=parent["config"],
            signature=parent["signature"],
            has_labels=case.method == "distill",
        )
        if case.method == "distill":
            data = distill_data
        elif case.model == "mlp":
            data = (held_out, None)
        else:
            data = None
        job = run_job(case, parent, data, repeats)
        base = run_in_process(case, parent["module"], data, repeats)
        results[case.key] = {"job": job, "in_process": base, "params": case.params}
        progress(f"{case.key}: job {job['wall_s']:.2f} s, in-process {base['wall_s']:.2f} s")

    print(
        f"\nCompression jobs: {isolation}; torch {torch.__version__}; {os.cpu_count()} CPUs; "
        f"{THREADS} thread; load average {os.getloadavg()[0]:.1f}"
    )
    table(results)
    if args.json:
        figures = {
            "results": results,
            "environment": {
                "isolation": isolation,
                "python": platform.python_version(),
                "torch": torch.__version__,
                "cpus": os.cpu_count(),
                "threads": THREADS,
                "quick": args.quick,
                "repeats": repeats,
            },
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
