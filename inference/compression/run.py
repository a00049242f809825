"""One compression job, as the model host runs it: apply the method to the parent, store the
result as a version file, load that file back and measure it against the parent.

What is measured is the stored file, loaded the way a prediction will load it, on the same
process and thread count as the parent: artifact bytes, parameters, median latency at batch 1
and 32, and fidelity on held-out inputs generated from the signature (a seed the distillation
never trains on).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from inference.compression import NotApplicable, artifacts, prune, quantize
from inference.compression import evaluate as ev
from inference.compression.distill import distill
from inference.runtime import architectures

# progress(phase, percent, loss)
Progress = Callable[[str, float, float | None], None]
HOLDOUT_SEED = 20_240_917
HOLDOUT_SAMPLES = 512


@dataclass
class Result:
    data: bytes
    format: str
    architecture: str
    config: dict[str, Any]
    report: dict[str, Any]


def holdout_inputs(dims: list[int], samples: int = HOLDOUT_SAMPLES) -> torch.Tensor:
    generator = torch.Generator().manual_seed(HOLDOUT_SEED)
    return torch.randn((samples, *dims), generator=generator)


def compress(
    parent: nn.Module,
    *,
    parent_size: int,
    method: str,
    params: dict[str, Any],
    architecture: str,
    config: dict[str, Any],
    input_dims: list[int],
    format: str = "safetensors",
    input_name: str = "input",
    data: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    progress: Progress | None = None,
    repeats: int = 20,
) -> Result:
    """Compress ``parent`` (a loaded module on the CPU, in eval mode) with checked ``params``
    (see ``inference.compression.params``) and report on the stored result.

    With the publisher's ``data`` (and optional ``labels``), fidelity is measured on it (at
    most 1,024 rows); distillation holds out a seeded fifth for that and trains on the rest.
    Without data, both use inputs generated from the signature."""
    notify = progress or (lambda phase, percent, loss: None)
    train_x, train_y, inputs = None, None, holdout_inputs(input_dims)
    if data is not None:
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(HOLDOUT_SEED))
        cut = min(1024, len(data) // 5 if method == "distill" else len(data))
        inputs, rest = data[order[:cut]].float(), order[cut:]
        train_x = data[rest].float()
        train_y = labels[rest].long() if labels is not None else None
    notify("compress", 5.0, None)
    started = time.perf_counter()
    details: dict[str, Any] = {}
    child_arch, child_config, storage = architecture, dict(config), None
    child_format, blob = "safetensors", None
    if method == "quantize" and format == "pt2":
        example = inputs[:2].clone()  # a view would store all of its base in the archive
        blob = artifacts.export_cast(parent, params["scheme"], input_name, example)
        child, child_format = None, "pt2"
    elif method == "quantize":
        scheme = params["scheme"]
        if scheme == "dynamic_int8":
            child = quantize.dynamic_int8(parent)
        elif scheme == "weight_only_int8":
            child = quantize.weight_only_int8(parent)
        else:
            child = quantize.cast(parent, scheme)
        storage = scheme
    elif method == "prune" and params["kind"] == "structured":
        pruned = prune.channel_prune(parent, params["amount"], norm=params["norm"], config=config)
        child, child_config = pruned.module, pruned.config
    elif method == "prune":
        child = prune.global_magnitude(parent, params["amount"])
        details["sparsity"] = prune.sparsity(child)
        storage = "sparse"
    elif method == "distill":
        student_spec = params["student"]
        child_arch, child_config = student_spec["architecture"], dict(student_spec["config"])
        student = architectures.build(child_arch, child_config)

        def on_epoch(phase: str, percent: float, loss: float | None) -> None:
            notify("distill" if phase != "teacher" else "teacher", 5 + percent * 0.75, loss)

        generated = train_x is None
        distilled = distill(
            parent,
            student,
            inputs=train_x,
            labels=train_y,
            hard_weight=params.get("hard_weight", 0.0) if train_y is not None else 0.0,
            input_shape=tuple(input_dims) if generated else None,
            generator=params["generator"],
            samples=params["samples"],
            temperature=params["temperature"],
            epochs=params["epochs"],
            lr=params["lr"],
            batch_size=params["batch_size"],
            patience=params["patience"],
            holdout=params["holdout"],
            seed=params["seed"],
            progress=on_epoch,
        )
        child = distilled.student
        details.update(
            epochs_run=distilled.epochs_run,
            best_epoch=distilled.best_epoch,
            holdout_agreement=distilled.holdout_agreement,
            history=distilled.history,
        )
    else:
        raise NotApplicable(f"Unknown method '{method}'.")
    if storage is not None:
        child_config = {**child_config, artifacts.KEY: storage}
    if child_format == "safetensors" and input_name != architectures.input_name(child_config):
        # A student of a teacher whose input is not called "input" keeps the teacher's name:
        # promoted, the version must take the requests its callers already send.
        child_config = {**child_config, architectures.INPUT_NAME: input_name}
    if child_format == "safetensors":
        blob = artifacts.encode(child, storage)
    compress_seconds = time.perf_counter() - started
    notify("measure", 82.0, None)
    # What predictions will run: the stored file, loaded back.
    if child_format == "pt2":
        stored = artifacts.load_export(blob)
    else:
        stored = artifacts.decode(blob, child_arch, child_config)
    parent_figures = _figures(parent, parent_size, inputs, repeats)
    notify("measure", 90.0, None)
    child_figures = _figures(stored, len(blob), inputs, repeats)
    fidelity = ev.fidelity(parent, stored, inputs)
    report = {
        "method": method,
        "params": params,
        "parent": parent_figures,
        "child": child_figures,
        "size_ratio": parent_figures["size_bytes"] / child_figures["size_bytes"],
        "parameter_ratio": parent_figures["parameters"] / max(1, child_figures["parameters"]),
        "speedup_b1": parent_figures["latency_b1_ms"] / child_figures["latency_b1_ms"],
        "speedup_b32": parent_figures["latency_b32_ms"] / child_figures["latency_b32_ms"],
        "fidelity": {
            "agreement": fidelity.agreement,
            "mean_abs_error": fidelity.mean_abs_error,
            "max_abs_error": fidelity.max_abs_error,
            "cosine": fidelity.cosine,
            "samples": len(inputs),
            "inputs": "generated" if data is None else "uploaded",
        },
        "compress_seconds": compress_seconds,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        **({"details": details} if details else {}),
    }
    non_finite = [k for k, v in report["fidelity"].items() if isinstance(v, float)]
    non_finite = [k for k in non_finite if not math.isfinite(report["fidelity"][k])]
    if non_finite:
        # The worker stores them as null; say why (a float16 cast overflows past 65504).
        report["warnings"] = [
            f"The outputs include infinities or NaN, so {', '.join(non_finite)} cannot be "
            "measured (null): the compressed model's values likely overflow its precision "
            "(float16 holds at most 65504)."
        ]
    notify("done", 100.0, None)
    return Result(blob, child_format, child_arch, child_config, report)


def _figures(module: nn.Module, size: int, inputs: torch.Tensor, repeats: int) -> dict:
    batch32 = inputs[:32]
    return {
        "size_bytes": size,
        "parameters": ev.parameter_count(module),
        "latency_b1_ms": ev.latency(module, inputs[:1], repeats=repeats) * 1000,
        "latency_b32_ms": ev.latency(module, batch32, repeats=repeats) * 1000,
    }
