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
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    if all(t.dtype in _DTYPES for t in tensors.values()):
        return wire.encode(
            (name, _DTYPES[t.dtype], list(t.shape), wire.raw(t.numpy()))
            for name, t in tensors.items()
        )
    return _save(tensors)  # bf16 and other types numpy cannot view


def decode(data: bytes) -> dict[str, torch.Tensor]:
    return _load(bytes(data)) if data else {}
