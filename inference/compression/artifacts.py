"""Compressed built-in models stored as safetensors, so a compressed version is an ordinary
``safetensors`` version: no pickles, loadable by the same adapter as any upload.

The version's architecture config names the storage under ``"compression"``:

- absent: a plain state dict (structured pruning and distillation change the config instead);
- ``dynamic_int8``: each dynamically quantized Linear as its int8 weight, scale(s) and zero
  point(s) (``<layer>.weight.int8`` / ``.scale`` / ``.zero_point`` / ``.axis``), rebuilt with
  ``quantize_dynamic`` and the stored weights;
- ``weight_only_int8``: the state dict of :class:`~inference.compression.quantize.Int8WeightLinear`;
- ``fp16`` / ``bf16``: half-precision weights, wrapped so inputs and outputs stay float32 and the
  signature does not change;
- ``sparse``: tensors at least half zeros as a packed bitmask plus their nonzero values
  (``<name>.__mask__`` / ``.__values__`` / ``.__shape__``), so pruning really shrinks the file.
"""

from __future__ import annotations

import inspect
import io
import math
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from inference.compression import quantize
from inference.runtime import architectures

KEY = "compression"
STORAGES = ("dynamic_int8", "weight_only_int8", "fp16", "bf16", "sparse")
_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


class Float32Boundary(nn.Module):
    """Runs a half-precision module on float32 inputs and returns float32 outputs."""

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, x: torch.Tensor):
        cast = x.to(self.dtype) if x.is_floating_point() else x
        return _float32(self.module(cast))


def _float32(out):
    """Outputs in their structure (a dict keeps its names), each floating tensor float32."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return {name: _float32(value) for name, value in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(_float32(value) for value in out)
    return out


def export_cast(module: nn.Module, precision: str, input_name: str, example: torch.Tensor) -> bytes:
    """A ``torch.export`` archive of ``module`` (a loaded graph) cast to ``precision`` behind a
    float32 boundary, with its one input still called ``input_name`` and a dynamic batch.
    Raises :class:`~inference.compression.NotApplicable` when the graph does not allow it."""
    from inference.compression import NotApplicable

    dtype = quantize.CASTS[precision]
    boundary = Float32Boundary(quantize.cast(module, precision), dtype)

    def forward(self, *args):
        return Float32Boundary.forward(self, args[0])

    # torch.export names the archive's input after forward's parameter: keep the parent's.
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    forward.__signature__ = inspect.Signature(
        [inspect.Parameter("self", positional), inspect.Parameter(input_name, positional)]
    )
    boundary.__class__ = type("Float32Boundary", (Float32Boundary,), {"forward": forward})
    try:
        # DYNAMIC, not a Dim of our own: the batch keeps the range the parent's graph allows
        # (a publisher's Dim("batch", max=1024) refused an unbounded one, and every cast).
        program = torch.export.export(
            boundary.eval(), (example,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},)
        )
        program.module()(example)  # a graph that exports but does not run in half is refused
    except Exception as exc:  # noqa: BLE001 - whatever the graph's operators refuse
        raise NotApplicable(
            f"This graph does not allow a {precision} cast: {type(exc).__name__}: {str(exc)[:300]}"
        ) from None
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def load_export(data: bytes) -> nn.Module:
    """The module of a ``torch.export`` archive that ``export_cast`` made (it takes float32)."""
    module = torch.export.load(io.BytesIO(data)).module()
    module.input_dtype = torch.float32
    return module


def split_config(config: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The built-in architecture's own config, and the storage named under ``compression``."""
    config = dict(config or {})
    storage = config.pop(KEY, None)
    if isinstance(storage, dict):
        storage = storage.get("storage")
    if storage is not None and storage not in STORAGES:
        raise ValueError(f"Unknown compressed storage '{storage}'; known: {', '.join(STORAGES)}.")
    return config, storage


def encode(module: nn.Module, storage: str | None) -> bytes:
    """The safetensors bytes of ``module`` (a built-in architecture, compressed by
    ``storage``; None for a plain state dict)."""
    if storage is None or storage == "weight_only_int8":
        return save_tensors(_contiguous(module.state_dict()))
    if storage in ("fp16", "bf16"):
        inner = module.module if isinstance(module, Float32Boundary) else module
        return save_tensors(_contiguous(inner.state_dict()))
    if storage == "sparse":
        return save_tensors(_sparse(module.state_dict()))
    if storage == "dynamic_int8":
        return save_tensors(_dynamic_int8(module))
    raise ValueError(f"Unknown compressed storage '{storage}'.")


def decode(data: bytes, architecture: str, config: dict[str, Any]) -> nn.Module:
    """The module ``encode`` stored, in eval mode on the CPU. Raises ``ValueError`` when the
    tensors do not fit the architecture."""
    arch_config, storage = split_config(config)
    model = architectures.build(architecture, arch_config).eval()
    state = load_tensors(data)
    if storage is None:
        _load_strict(model, state)
        return model
    if storage == "sparse":
        _load_strict(model, _dense(state))
        return model
    if storage == "weight_only_int8":
        model = quantize.weight_only_int8(model)
        _load_strict(model, state)
        return model
    if storage in ("fp16", "bf16"):
        dtype = quantize.CASTS[storage]
        model = model.to(dtype)
        _load_strict(model, state)
        return Float32Boundary(model, dtype).eval()
    return _load_dynamic_int8(model, state)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory or are not contiguous.
    return {name: t.detach().cpu().contiguous().clone() for name, t in state.items()}


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"The tensors do not fit the architecture: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}."
        )


# --- sparse ---------------------------------------------------------------------------------


def _sparse(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        tensor = tensor.detach().cpu()
        if (
            tensor.is_floating_point()
            and tensor.numel() >= 64
            and (tensor == 0).float().mean() >= 0.5
        ):
            flat = tensor.reshape(-1)
            mask = flat != 0
            padded = torch.cat([mask, mask.new_zeros(-mask.numel() % 8)]).view(-1, 8)
            out[f"{name}.__mask__"] = (padded.to(torch.uint8) * _BITS).sum(1, dtype=torch.uint8)
            out[f"{name}.__values__"] = flat[mask].clone()
            out[f"{name}.__shape__"] = torch.tensor(list(tensor.shape), dtype=torch.int64)
        else:
            out[name] = tensor.contiguous().clone()
    return out


def _dense(stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {
        n: t for n, t in stored.items() if not n.endswith(("__mask__", "__values__", "__shape__"))
    }
    for name in [n[: -len(".__shape__")] for n in stored if n.endswith(".__shape__")]:
        shape = stored[f"{name}.__shape__"].tolist()
        numel = math.prod(shape)
        mask = ((stored[f"{name}.__mask__"][:, None] & _BITS) != 0).reshape(-1)[:numel]
        values = stored[f"{name}.__values__"]
        flat = torch.zeros(numel, dtype=values.dtype)
        flat[mask] = values
        state[name] = flat.reshape(shape)
    return state


# --- dynamic int8 ---------------------------------------------------------------------------


def _dynamic_linears(module: nn.Module) -> dict[str, nn.Module]:
    from torch.ao.nn.quantized import dynamic

    found = {}
    for name, m in module.named_modules():
        if isinstance(m, dynamic.LSTM | dynamic.GRU):
            raise ValueError("Storing quantized recurrent layers is not supported yet.")
        if isinstance(m, dynamic.Linear):
            found[name] = m
    return found


def _dynamic_int8(module: nn.Module) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, layer in _dynamic_linears(module).items():
        weight, bias = layer._weight_bias()
        out[f"{name}.weight.int8"] = weight.int_repr().contiguous()
        if weight.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            out[f"{name}.weight.scale"] = torch.tensor([weight.q_scale()], dtype=torch.float64)
            out[f"{name}.weight.zero_point"] = torch.tensor([weight.q_zero_point()])
        else:
            out[f"{name}.weight.scale"] = weight.q_per_channel_scales().double().contiguous()
            out[f"{name}.weight.zero_point"] = weight.q_per_channel_zero_points().contiguous()
            out[f"{name}.weight.axis"] = torch.tensor([weight.q_per_channel_axis()])
        if bias is not None:
            out[f"{name}.bias"] = bias.detach().contiguous().clone()
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        out[name] = tensor.detach().cpu().contiguous().clone()
    return out


@torch.no_grad()
def _load_dynamic_int8(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    quantized = quantize.dynamic_int8(model)
    used = set()
    for name, layer in _dynamic_linears(quantized).items():
        keys = [f"{name}.weight.{k}" for k in ("int8", "scale", "zero_point")]
        if any(k not in state for k in keys):
            raise ValueError(f"The tensors lack the int8 weights of layer '{name}'.")
        int8, scale, zero_point = (state[k] for k in keys)
        if f"{name}.weight.axis" in state:
            axis = int(state[f"{name}.weight.axis"][0])
            weight = torch._make_per_channel_quantized_tensor(int8, scale, zero_point, axis)
            used.add(f"{name}.weight.axis")
        else:
            weight = torch._make_per_tensor_quantized_tensor(
                int8, float(scale[0]), int(zero_point[0])
            )
        layer.set_weight_bias(weight, state.get(f"{name}.bias"))
        used.update([*keys, f"{name}.bias"])
    targets = dict([*quantized.named_parameters(), *quantized.named_buffers()])
    rest = {n: t for n, t in state.items() if n not in used}
    missing, unexpected = set(targets) - set(rest), set(rest) - set(targets)
    if missing or unexpected:
        raise ValueError(
            f"The tensors do not fit the architecture: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}."
        )
    for name, tensor in rest.items():
        targets[name].copy_(tensor)
    return quantized.eval()
