from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from accounts import services as accounts
from marketplace import services as registry
from marketplace.models import ModelVersion
from marketplace.vault.store import artifact_create


class Classifier(nn.Module):
    def __init__(self, features: int = 4, classes: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(features, classes)

    def forward(self, x):
        return self.fc(x)


class Slow(nn.Module):
    """Spends about a second per call, so tests can catch predictions queued or running."""

    def forward(self, x):
        i = 0
        while i < 3_000_000:
            i += 1
        return x * 2


class Raises(nn.Module):
    def forward(self, x):
        if bool(x.sum() > 1000):
            raise RuntimeError("input out of range")
        return x


def export(module: nn.Module, features: int = 4) -> bytes:
    program = torch.export.export(
        module.eval(),
        (torch.randn(2, features),),
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
    )
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def scripted(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def signature(features: int, outputs: int) -> dict:
    return {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, features]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, outputs]}],
    }


def ready_version(tenant, name: str, data: bytes, fmt: str, sig: dict) -> ModelVersion:
    """A version as validation leaves it: ready, with its signature recorded."""
    model = registry.model_create(tenant=tenant, name=name, actor=accounts.SYSTEM)
    return ModelVersion.objects.create(
        model=model,
        number=1,
        format=fmt,
        status=ModelVersion.Status.READY,
        signature=sig,
        artifact=artifact_create(tenant=tenant, chunks=[data]),
    )


def listed_classifier(tenant, *subscribers, price_per_call: str = "0") -> ModelVersion:
    """``tenant``'s classifier ``clf``, ready to run and listed publicly at ``price_per_call``
    (nothing per second), with each of ``subscribers`` subscribed."""
    from marketplace.listings import listing_publish, listing_subscribe

    version = ready_version(tenant, "clf", export(Classifier()), "pt2", signature(4, 3))
    listing = listing_publish(
        model=version.model,
        actor=accounts.SYSTEM,
        visibility="public",
        title="Classifier",
        price_per_call=price_per_call,
        price_per_second="0",
    )
    for subscriber in subscribers:
        listing_subscribe(listing=listing, tenant=subscriber, actor=accounts.SYSTEM)
    return version


@pytest.fixture
def classifier(tenant) -> ModelVersion:
    return ready_version(tenant, "clf", export(Classifier()), "pt2", signature(4, 3))


@pytest.fixture
def slow(tenant) -> ModelVersion:
    return ready_version(tenant, "slow", scripted(Slow()), "torchscript", signature(4, 4))


@pytest.fixture
def raising(tenant) -> ModelVersion:
    return ready_version(tenant, "raises", scripted(Raises()), "torchscript", signature(4, 4))
