"""Tensors on the wire between the worker and the model host: safetensors bytes."""

from __future__ import annotations

import torch
from safetensors.torch import load as _load
from safetensors.torch import save as _save

from inference.runtime import wire

_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def encode(tensors: dict[str, torch.Tensor]) -> bytes:
    try:  # a model's outputs under inference_mode, on the CPU: viewed as they are
        return _viewed(tensors)
    except (KeyError, TypeError, RuntimeError):  # bf16, on a GPU, needing grad, ...
        pass
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    if all(t.dtype in _DTYPES for t in tensors.values()):
        return _viewed(tensors)
    return _save(tensors)  # bf16 and other types numpy cannot view


def _viewed(tensors: dict[str, torch.Tensor]) -> bytes:
    return wire.encode(
        (name, _DTYPES[t.dtype], t.shape, wire.raw(t.numpy())) for name, t in tensors.items()
    )


_TORCH_OF = {name: dtype for dtype, name in _DTYPES.items()}
_layouts = wire.Layouts(viewable=_TORCH_OF)


def decode(data: bytes) -> dict[str, torch.Tensor]:
    return decode_with_layout(data)[0]


def decode_with_layout(data: bytes) -> tuple[dict[str, torch.Tensor], tuple[wire.Slot, ...]]:
    """Tensors of their own (copied out of ``data``), in the order they were encoded, and
    where each lay (the same tuple for every payload of the same header: a key for what the
    caller learnt from the first). A header seen before skips the JSON (``wire.Layouts``);
    any other is read and checked by ``safetensors``."""
    if not data:
        return {}, ()
    slots = _layouts.known(data)
    if slots is None:
        tensors = _load(bytes(data))
        slots = _layouts.learn(data)
        return {name: tensors[name] for name, *_ in slots}, slots
    view = memoryview(data)
    tensors = {
        name: torch.frombuffer(bytearray(view[start:end]), dtype=_TORCH_OF[dtype]).view(shape)
        if end > start
        else torch.empty(shape, dtype=_TORCH_OF[dtype])
        for name, dtype, shape, start, end in slots
    }
    return tensors, slots
