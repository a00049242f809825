"""Tensors on the wire between the worker and the model host: safetensors bytes."""

from __future__ import annotations

import torch
from safetensors.torch import load as _load
from safetensors.torch import save as _save


def encode(tensors: dict[str, torch.Tensor]) -> bytes:
    return _save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def decode(data: bytes) -> dict[str, torch.Tensor]:
    return _load(data) if data else {}
