"""Can a CUDA model host start here, and in which confinement? For a GPU machine's first look
(``bench/device_check.sh`` runs it before the GPU tests).

Tries, in order: bubblewrap with the default GPU binds (``workers.sandbox.GPU_BINDS``),
bubblewrap with all of ``/sys``, and a plain child (no bubblewrap). Each starts a host on
``cuda``, loads a small built-in MLP and compares one prediction with the CPU. Prints one line
per try; the last line is ``default binds``, ``binds: PATHS`` (the first bubblewrap setting
that worked, for ``MM_HOST_GPU_BINDS``) or ``no bubblewrap setting worked``.

    python bench/gpu_probe.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from safetensors.torch import save  # noqa: E402

from inference.runtime import architectures, codec  # noqa: E402
from workers import sandbox  # noqa: E402
from workers.host import HostFailure, ModelFailure, ModelHost  # noqa: E402

CONFIG = {"in_features": 8, "hidden": [32], "classes": 4}
TRIES = [
    ("bubblewrap, default binds", True, None),
    ("bubblewrap, all of /sys", True, "/proc/driver/nvidia:/proc/driver/nvidia-uvm:/sys"),
    ("plain child", False, None),
]


def attempt() -> str:
    torch.manual_seed(0)
    module = architectures.build("mlp", CONFIG).eval()
    limits = sandbox.Limits(memory_bytes=None, cpu_seconds=300, threads=1)
    host = ModelHost(device="cuda", limits=limits, rss_limit=8 * 1024**3, require_sandbox=False)
    started = time.perf_counter()
    try:
        host.start(timeout=120)
        header = {
            "op": "load",
            "format": "safetensors",
            "architecture": "mlp",
            "config": CONFIG,
            "device": "cuda",
            "signature": None,
        }
        loaded, _ = host.request(header, save(module.state_dict()), timeout=120)
        host.request({"op": "validate", "example": None}, timeout=120)
        x = torch.randn(3, 8)
        _, body = host.request({"op": "predict"}, codec.encode({"input": x}), timeout=60)
        same = torch.allclose(codec.decode(body)["output"], module(x), atol=1e-5)
        return (
            f"ok in {time.perf_counter() - started:.1f} s, device {loaded['device']}, "
            f"{loaded['device_bytes']:,} bytes on it, output {'matches' if same else 'DIFFERS'}"
        )
    finally:
        host.kill()


def main() -> None:
    print(f"bwrap: {sandbox.bubblewrap()}; torch {torch.__version__}; cuda {torch.version.cuda}")
    real_bubblewrap = sandbox.bubblewrap
    verdict = "no bubblewrap setting worked"
    for label, use_bubblewrap, binds in TRIES:
        if use_bubblewrap and real_bubblewrap() is None:
            print(f"{label}: skipped, bubblewrap is not installed")
            continue
        sandbox.bubblewrap = real_bubblewrap if use_bubblewrap else (lambda: None)
        if binds is None:
            os.environ.pop("MM_HOST_GPU_BINDS", None)
        else:
            os.environ["MM_HOST_GPU_BINDS"] = binds
        try:
            outcome = attempt()
        except (HostFailure, ModelFailure) as exc:
            print(f"{label}: FAILED: {str(exc)[-600:]}")
            continue
        print(f"{label}: {outcome}")
        if use_bubblewrap and verdict.startswith("no "):
            verdict = "default binds" if binds is None else f"binds: {binds}"
    sandbox.bubblewrap = real_bubblewrap
    print(verdict)


if __name__ == "__main__":
    main()
