"""Built-in architectures, configurable by size. They serve safetensors uploads (a state dict
plus one of these and its config) and are the students for distillation."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(
        self,
        in_features: int = 16,
        hidden: list[int] | None = None,
        classes: int = 10,
        dropout: float = 0.0,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden if hidden is not None else [64, 64]:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two conv layers and two linear layers, as in the classic MNIST/CIFAR classifier."""

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        classes: int = 10,
        channels: tuple[int, int] | list[int] = (16, 32),
        hidden: int = 128,
    ):
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        reduced = image_size // 4
        self.fc1 = nn.Linear(c2 * reduced * reduced, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc2(torch.relu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class ResNet(nn.Module):
    """A small residual CNN: a stem, ``blocks`` residual blocks per stage, global pooling."""

    def __init__(
        self,
        in_channels: int = 3,
        classes: int = 10,
        width: int = 32,
        stages: int = 2,
        blocks: int = 2,
        image_size: int | list[int] = 32,  # [height, width] or one side; global pooling takes any
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        channels = width
        for stage in range(stages):
            if stage:
                layers += [
                    nn.Conv2d(channels, channels * 2, 3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(channels * 2),
                    nn.ReLU(),
                ]
                channels *= 2
            layers += [_Block(channels) for _ in range(blocks)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class TransformerClassifier(nn.Module):
    """A transformer encoder over a sequence of feature vectors, mean-pooled, classified."""

    def __init__(
        self,
        features: int = 16,
        seq_len: int = 32,
        d_model: int = 64,
        heads: int = 4,
        layers: int = 2,
        classes: int = 10,
        dim_feedforward: int = 128,
    ):
        super().__init__()
        self.proj = nn.Linear(features, d_model)
        self.position = nn.Parameter(torch.zeros(1, seq_len, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x) + self.position[:, : x.shape[1]]
        return self.head(self.encoder(x).mean(dim=1))


# A config may name the model's one input (``"input"`` unless it does): a version distilled
# from a model whose input is called ``x`` keeps that name, so its callers' requests still fit.
INPUT_NAME = "input_name"
INPUT_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")


def input_name(config: dict[str, Any]) -> str:
    return config.get(INPUT_NAME, "input")


def _sides(size: int | list[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (size[0], size[1])


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[..., nn.Module]
    example_shape: Callable[[dict[str, Any]], tuple[int, ...]]
    description: str


ARCHITECTURES: dict[str, Architecture] = {
    "mlp": Architecture(
        "mlp",
        MLP,
        lambda c: (1, c.get("in_features", 16)),
        "Multi-layer perceptron: in_features, hidden (list), classes, dropout",
    ),
    "small_cnn": Architecture(
        "small_cnn",
        SmallCNN,
        lambda c: (1, c.get("in_channels", 1), c.get("image_size", 28), c.get("image_size", 28)),
        "Two conv + two linear layers: in_channels, image_size, classes, channels, hidden",
    ),
    "resnet": Architecture(
        "resnet",
        ResNet,
        lambda c: (1, c.get("in_channels", 3), *_sides(c.get("image_size", 32))),
        "Residual CNN: in_channels, classes, width, stages, blocks, image_size (what it is "
        "validated at: one side or [height, width])",
    ),
    "transformer": Architecture(
        "transformer",
        TransformerClassifier,
        lambda c: (1, c.get("seq_len", 32), c.get("features", 16)),
        "Transformer encoder classifier: features, seq_len, d_model, heads, layers, classes",
    ),
}


def build(name: str, config: dict[str, Any]) -> nn.Module:
    """An untrained instance of a built-in architecture; unknown names and settings are
    refused with the valid ones listed."""
    arch = ARCHITECTURES.get(name)
    if arch is None:
        raise ValueError(
            f"Unknown architecture '{name}'; built-in ones are {', '.join(sorted(ARCHITECTURES))}."
        )
    config = dict(config)
    input_name = config.pop(INPUT_NAME, "input")
    if not isinstance(input_name, str) or not INPUT_NAME_RE.fullmatch(input_name):
        raise ValueError(
            f"Bad config for {name}: {INPUT_NAME} must be a name of letters, digits, '_', '.' "
            "or '-' (at most 64), starting with a letter or '_'."
        )
    try:
        return arch.build(**config)
    except TypeError as exc:
        raise ValueError(f"Bad config for {name} ({arch.description}): {exc}") from None
