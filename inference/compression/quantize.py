"""Quantization and half-precision casts of eager modules.

Dynamic int8 uses ``torch.ao.quantization.quantize_dynamic``. That API still works in torch 2.13
but is deprecated in favour of torchao (PyPI), which is not installed here; its deprecation
warnings are silenced around the call. Weight-only int8 is plain torch: int8 weights with a
float scale per output channel, dequantized in ``forward``, so it needs no quantized kernels.
Every function works on a copy and leaves the module it is given as it was.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from inference.compression import NotApplicable

DYNAMIC_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.LSTM, nn.GRU)
CASTS: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16}


def count_layers(module: nn.Module, types: tuple[type[nn.Module], ...]) -> int:
    """How many submodules (the module itself included) are exactly one of ``types``."""
    return sum(1 for m in module.modules() if type(m) in types)


def count_quantized(module: nn.Module) -> int:
    """How many layers of ``module`` hold int8 weights (dynamic or weight-only)."""
    from torch.ao.nn.quantized import dynamic

    kinds = (dynamic.Linear, dynamic.LSTM, dynamic.GRU, Int8WeightLinear)
    return sum(1 for m in module.modules() if isinstance(m, kinds))


def dynamic_int8(module: nn.Module) -> nn.Module:
    """Linear, LSTM and GRU layers with int8 weights; activations are quantized on the fly.

    Runs on CPU (fbgemm/x86 kernels). Raises :class:`NotApplicable` when there is no such layer.
    """
    found = count_layers(module, DYNAMIC_TYPES)
    if not found:
        raise NotApplicable(
            "Dynamic int8 quantization applies to Linear, LSTM and GRU layers; this model has none."
        )
    model = copy.deepcopy(module).cpu().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import quantize_dynamic

        quantized = quantize_dynamic(model, set(DYNAMIC_TYPES), dtype=torch.qint8)
    if count_quantized(quantized) != found:
        raise NotApplicable(
            f"Only {count_quantized(quantized)} of {found} layers could be quantized."
        )
    return quantized


class Int8WeightLinear(nn.Module):
    """A Linear layer storing int8 weights and one float32 scale per output channel
    (symmetric, per-channel); the weight is dequantized to the input's dtype in ``forward``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer(
            "weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8)
        )
        self.register_buffer("scale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8WeightLinear:
        weight = linear.weight.detach().float()
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None)
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        layer.weight_int8.copy_(
            torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        )
        layer.scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        return layer.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_int8.to(x.dtype) * self.scale.to(x.dtype)[:, None]
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return nn.functional.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def weight_only_int8(module: nn.Module) -> nn.Module:
    """Every Linear layer replaced by an :class:`Int8WeightLinear`: about 4x smaller weights,
    same compute. Raises :class:`NotApplicable` when there is no Linear layer."""
    if not count_layers(module, (nn.Linear,)):
        raise NotApplicable("Weight-only int8 applies to Linear layers; this model has none.")
    if type(module) is nn.Linear:
        return Int8WeightLinear.from_linear(module)
    model = copy.deepcopy(module).eval()
    _swap_linears(model)
    return model


def _swap_linears(parent: nn.Module) -> None:
    for name, child in parent.named_children():
        if type(child) is nn.Linear:
            setattr(parent, name, Int8WeightLinear.from_linear(child))
        else:
            _swap_linears(child)


def cast(module: nn.Module, precision: str) -> nn.Module:
    """A copy with floating parameters and buffers in ``precision`` ("fp16" or "bf16").
    Inputs must be cast the same way (``evaluate`` does so)."""
    dtype = CASTS.get(precision)
    if dtype is None:
        raise ValueError(f"Unknown precision '{precision}'; choose one of {', '.join(CASTS)}.")
    tensors = [*module.parameters(), *module.buffers()]
    if not any(t.is_floating_point() and t.dtype != dtype for t in tensors):
        raise NotApplicable(f"This model has no floating-point weights to cast to {precision}.")
    return copy.deepcopy(module).to(dtype).eval()
