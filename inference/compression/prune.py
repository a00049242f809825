"""Pruning: unstructured global magnitude pruning with a compact storage form, and structured
channel pruning that removes channels and neurons so the model really gets smaller and faster.

Unstructured pruning only zeroes weights, and a dense state dict of zeros is as large as
before; :func:`save_compact` stores each sparse tensor as a packed bitmask (1 bit per element)
plus its nonzero values, and :func:`load_compact` rebuilds the dense state dict.
"""

from __future__ import annotations

import copy
import io
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from inference.compression import NotApplicable
from inference.runtime import architectures
from inference.runtime.architectures import MLP, SmallCNN

PRUNABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value}.")


def _prunable(module: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in module.modules() if type(m) in PRUNABLE]


def global_magnitude(module: nn.Module, sparsity: float) -> nn.Module:
    """A copy whose Linear and Conv weights, taken together, have the ``sparsity`` fraction with
    the smallest magnitudes set to zero (permanently: no masks or hooks remain)."""
    _check_fraction("sparsity", sparsity)
    model = copy.deepcopy(module)
    targets = _prunable(model)
    if not targets:
        raise NotApplicable("Magnitude pruning applies to Linear and Conv layers; none found.")
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
    for layer, name in targets:
        prune.remove(layer, name)
    return model


def sparsity(module: nn.Module) -> float:
    """The fraction of zeros across the weights of the Linear and Conv layers."""
    weights = [m.weight for m, _ in _prunable(module)]
    total = sum(w.numel() for w in weights)
    if not total:
        return 0.0
    return sum(int((w == 0).sum()) for w in weights) / total


def save_compact(module: nn.Module) -> bytes:
    """The state dict serialized with every tensor that is at least half zeros stored as a
    bitmask plus nonzero values; :func:`load_compact` reads it back."""
    dense: dict[str, torch.Tensor] = {}
    sparse: dict[str, dict[str, Any]] = {}
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu()
        if (
            tensor.is_floating_point()
            and tensor.numel() >= 64
            and (tensor == 0).float().mean() >= 0.5
        ):
            flat = tensor.reshape(-1)
            mask = flat != 0
            padded = torch.cat([mask, mask.new_zeros(-mask.numel() % 8)]).view(-1, 8)
            packed = (padded.to(torch.uint8) * _BITS).sum(dim=1, dtype=torch.uint8)
            sparse[name] = {
                "shape": list(tensor.shape),
                "mask": packed,
                "values": flat[mask].clone(),
            }
        else:
            dense[name] = tensor.clone()
    buffer = io.BytesIO()
    torch.save({"format": "bitmask-v1", "dense": dense, "sparse": sparse}, buffer)
    return buffer.getvalue()


def load_compact(data: bytes) -> dict[str, torch.Tensor]:
    """The dense state dict from :func:`save_compact`'s bytes, ready for ``load_state_dict``."""
    saved = torch.load(io.BytesIO(data), weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != "bitmask-v1":
        raise ValueError("Not a compact pruned state dict.")
    state = dict(saved["dense"])
    for name, entry in saved["sparse"].items():
        numel = math.prod(entry["shape"])
        mask = ((entry["mask"][:, None] & _BITS) != 0).reshape(-1)[:numel]
        values = entry["values"]
        flat = torch.zeros(numel, dtype=values.dtype)
        flat[mask] = values
        state[name] = flat.reshape(entry["shape"])
    return state


@dataclass
class Pruned:
    """A structurally pruned model and the built-in architecture config that rebuilds it."""

    module: nn.Module
    architecture: str
    config: dict[str, Any]


def _keep(weight: torch.Tensor, amount: float, norm: int) -> torch.Tensor:
    """Sorted indices of the output channels (rows) with the largest ``norm`` to keep."""
    scores = weight.detach().reshape(weight.shape[0], -1).norm(p=norm, dim=1)
    count = max(1, round(weight.shape[0] * (1.0 - amount)))
    return scores.topk(count).indices.sort().values


def channel_prune(
    module: nn.Module,
    amount: float,
    *,
    norm: int = 1,
    config: dict[str, Any] | None = None,
) -> Pruned:
    """Remove the ``amount`` fraction of channels (SmallCNN convolutions and hidden layer) or
    hidden neurons (MLP) with the smallest L1/L2 filter norm, and rewire the layers that read
    them. ``config`` is the parent's architecture config; the result's config updates it."""
    _check_fraction("amount", amount)
    if norm not in (1, 2):
        raise ValueError(f"norm must be 1 or 2, got {norm}.")
    if type(module) is SmallCNN:
        return _prune_cnn(module, amount, norm, dict(config or {}))
    if type(module) is MLP:
        return _prune_mlp(module, amount, norm, dict(config or {}))
    raise NotApplicable(
        f"Structured channel pruning supports the built-in SmallCNN and MLP, not "
        f"{type(module).__name__} (residual and attention layers cannot be rewired safely)."
    )


@torch.no_grad()
def _prune_cnn(model: SmallCNN, amount: float, norm: int, config: dict[str, Any]) -> Pruned:
    keep1 = _keep(model.conv1.weight, amount, norm)
    keep2 = _keep(model.conv2.weight, amount, norm)
    keep3 = _keep(model.fc1.weight, amount, norm)
    spatial = model.fc1.in_features // model.conv2.out_channels  # flatten is channel-major
    config.update(
        in_channels=model.conv1.in_channels,
        image_size=config.get("image_size", 4 * math.isqrt(spatial)),
        classes=model.fc2.out_features,
        channels=[len(keep1), len(keep2)],
        hidden=len(keep3),
    )
    pruned = architectures.build("small_cnn", config)  # a config may name the input
    pruned.conv1.weight.copy_(model.conv1.weight[keep1])
    pruned.conv1.bias.copy_(model.conv1.bias[keep1])
    pruned.conv2.weight.copy_(model.conv2.weight[keep2][:, keep1])
    pruned.conv2.bias.copy_(model.conv2.bias[keep2])
    columns = (keep2[:, None] * spatial + torch.arange(spatial)).reshape(-1)
    pruned.fc1.weight.copy_(model.fc1.weight[keep3][:, columns])
    pruned.fc1.bias.copy_(model.fc1.bias[keep3])
    pruned.fc2.weight.copy_(model.fc2.weight[:, keep3])
    pruned.fc2.bias.copy_(model.fc2.bias)
    return Pruned(pruned.train(model.training), "small_cnn", config)


@torch.no_grad()
def _prune_mlp(model: MLP, amount: float, norm: int, config: dict[str, Any]) -> Pruned:
    linears = [m for m in model.net if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        raise NotApplicable("This MLP has no hidden layer to prune.")
    keeps = [_keep(layer.weight, amount, norm) for layer in linears[:-1]]
    dropout = next((m.p for m in model.net if isinstance(m, nn.Dropout)), 0.0)
    config.update(
        in_features=linears[0].in_features,
        hidden=[len(k) for k in keeps],
        classes=linears[-1].out_features,
        dropout=dropout,
    )
    pruned = architectures.build("mlp", config)
    rows: list[torch.Tensor | None] = [*keeps, None]
    columns: list[torch.Tensor | None] = [None, *keeps]
    new_linears = [m for m in pruned.net if isinstance(m, nn.Linear)]
    for old, new, row, column in zip(linears, new_linears, rows, columns, strict=True):
        weight, bias = old.weight, old.bias
        if row is not None:
            weight, bias = weight[row], bias[row]
        if column is not None:
            weight = weight[:, column]
        new.weight.copy_(weight)
        new.bias.copy_(bias)
    return Pruned(pruned.train(model.training), "mlp", config)
