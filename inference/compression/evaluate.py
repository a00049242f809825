"""What a compression report measures: serialized size, parameter count, latency at batch 1
and 32, and fidelity of a compressed module against its parent on held-out inputs.

Latency is the median of repeated timed calls in this process; thread count is the caller's
choice (``torch.set_num_threads(1)`` for comparable figures). Inputs are cast to a module's
floating dtype (for fp16/bf16 casts) and outputs compared in float32.
"""

from __future__ import annotations

import io
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from inference.compression import NotApplicable
from inference.compression.quantize import Int8WeightLinear


def serialized_size(module: nn.Module) -> int:
    """Bytes of ``torch.save(module.state_dict())``."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def parameter_count(module: nn.Module) -> int:
    """Weights and biases, counting int8-quantized layers (whose weights are not parameters)
    as the float layers they replace."""
    from torch.ao.nn.quantized import dynamic

    count = 0
    for m in module.modules():
        count += sum(p.numel() for p in m.parameters(recurse=False))
        if isinstance(m, dynamic.Linear):
            bias = m.bias()
            count += m.weight().numel() + (bias.numel() if bias is not None else 0)
        elif isinstance(m, Int8WeightLinear):
            count += m.weight_int8.numel()
    return count


def input_dtype(module: nn.Module) -> torch.dtype:
    """The dtype inputs should have: the module's own ``input_dtype`` if it declares one (a
    half-precision graph behind a float32 boundary), else that of its first floating
    parameter, or float32 (quantized modules take float32)."""
    declared = getattr(module, "input_dtype", None)
    if isinstance(declared, torch.dtype):
        return declared
    # A torch.export graph records what its input takes: an fp16 cast exported behind its
    # float32 boundary keeps half weights but asserts a float32 input.
    graph = getattr(module, "graph", None)
    for node in graph.nodes if isinstance(graph, torch.fx.Graph) else ():
        value = node.meta.get("val") if node.op == "placeholder" else None
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.dtype
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def one_output(out):
    """The tensor a model answered, also where it is a dict or sequence of one (a model
    returning ``{"logits": ...}``): its dtype cast or distillation failed on the dict."""
    if isinstance(out, dict) and len(out) == 1:
        return next(iter(out.values()))
    if isinstance(out, (tuple, list)) and len(out) == 1:
        return out[0]
    return out


@torch.inference_mode()
def run(module: nn.Module, inputs: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """Outputs of ``module`` (put in eval mode by the caller), in chunks, as float32."""
    dtype = input_dtype(module)
    cast = inputs.to(dtype) if inputs.is_floating_point() else inputs
    outputs = []
    for chunk in cast.split(batch_size):
        out = one_output(module(chunk))
        if not isinstance(out, torch.Tensor) or out.ndim < 1 or len(out) != len(chunk):
            # Said here: compression then failed on it with an IndexError.
            rows = len(out) if isinstance(out, torch.Tensor) and out.ndim else 0
            got = f"{rows} row{'' if rows == 1 else 's'}" if rows else "no rows"
            raise NotApplicable(
                f"The model answered {got} for a batch of {len(chunk)}; compression needs one "
                "output row per input row."
            )
        outputs.append(out.float())
    return torch.cat(outputs)


@torch.inference_mode()
def latency(module: nn.Module, batch: torch.Tensor, *, repeats: int = 25, warmup: int = 3) -> float:
    """Median seconds of one forward pass on ``batch``."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1.")
    x = batch.to(input_dtype(module)) if batch.is_floating_point() else batch
    for _ in range(warmup):
        module(x)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        module(x)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


@dataclass
class Fidelity:
    agreement: float | None  # top-1 agreement; None when the outputs are not class scores
    mean_abs_error: float
    max_abs_error: float
    cosine: float  # mean over samples of the cosine similarity of flattened outputs


def fidelity(parent: nn.Module, child: nn.Module, inputs: torch.Tensor) -> Fidelity:
    """How closely ``child`` reproduces ``parent`` on ``inputs`` (held out from any training)."""
    expected, actual = run(parent, inputs), run(child, inputs)
    if expected.shape != actual.shape:
        raise ValueError(f"Output shapes differ: {tuple(expected.shape)} vs {tuple(actual.shape)}.")
    error = (expected - actual).abs()
    agreement = None
    if expected.ndim == 2 and expected.shape[1] > 1:
        # A row with a NaN or an infinity on either side agrees with nothing: argmax takes a
        # NaN for the largest score, so a child answering all NaN agreed 100%.
        finite = torch.isfinite(expected).all(1) & torch.isfinite(actual).all(1)
        same = (expected.argmax(1) == actual.argmax(1)) & finite
        agreement = float(same.float().mean())
    cosine = nn.functional.cosine_similarity(
        expected.reshape(len(expected), -1), actual.reshape(len(actual), -1), dim=1
    )
    return Fidelity(agreement, float(error.mean()), float(error.max()), float(cosine.mean()))


@dataclass
class Measurement:
    size_bytes: int
    parameters: int
    latency_b1_s: float
    latency_b32_s: float


def measure(module: nn.Module, inputs: torch.Tensor, *, repeats: int = 25) -> Measurement:
    """Size, parameters and latency at batch 1 and 32 (the first rows of ``inputs``, repeated
    when there are fewer than 32)."""
    batch32 = inputs[:32].repeat(-(-32 // min(32, len(inputs))), *[1] * (inputs.ndim - 1))[:32]
    return Measurement(
        serialized_size(module),
        parameter_count(module),
        latency(module, inputs[:1], repeats=repeats),
        latency(module, batch32, repeats=repeats),
    )


@dataclass
class Report:
    parent: Measurement
    child: Measurement
    fidelity: Fidelity

    @property
    def size_ratio(self) -> float:
        """Parent size over child size: 4.0 means four times smaller."""
        return self.parent.size_bytes / self.child.size_bytes

    @property
    def speedup_b32(self) -> float:
        return self.parent.latency_b32_s / self.child.latency_b32_s

    def as_dict(self) -> dict:
        data = asdict(self)
        data["size_ratio"] = self.size_ratio
        data["speedup_b1"] = self.parent.latency_b1_s / self.child.latency_b1_s
        data["speedup_b32"] = self.speedup_b32
        return data


def compare(
    parent: nn.Module, child: nn.Module, inputs: torch.Tensor, *, repeats: int = 25
) -> Report:
    """The side-by-side figures of a compression job's report."""
    return Report(
        measure(parent, inputs, repeats=repeats),
        measure(child, inputs, repeats=repeats),
        fidelity(parent, child, inputs),
    )
