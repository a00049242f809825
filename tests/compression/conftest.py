"""Real models for compression jobs: a linear-heavy MLP trained on a synthetic classification
task (ten Gaussian blobs in 256 dimensions), the built-in small CNN, and versions of them as
validation leaves them (ready, signature recorded, weights encrypted in the store)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save as save_tensors
from torch import nn

from accounts import services as accounts
from accounts.tenancy import Access
from inference import compression_services as jobs
from inference.models import CompressionJob
from marketplace import services as registry
from marketplace.models import Model, ModelVersion
from marketplace.vault.store import artifact_create

FEATURES, CLASSES = 256, 10
MLP_CONFIG = {"in_features": FEATURES, "hidden": [1024, 1024], "classes": CLASSES}
CNN_CONFIG = {"in_channels": 1, "image_size": 28, "classes": CLASSES}


def blobs(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten Gaussian blobs in 256 dimensions; the centres are the same for every seed."""
    centres = torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(0)) * 0.3
    rng = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (count,), generator=rng)
    return centres[labels] + torch.randn(count, FEATURES, generator=rng), labels


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Module:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = torch.Generator().manual_seed(1)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=rng).split(64):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def signature(dims: list[int], classes: int = CLASSES) -> dict:
    return {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, *dims]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, classes]}],
    }


def ready_version(
    tenant,
    name: str,
    data: bytes,
    *,
    sig: dict,
    format: str = "safetensors",
    architecture: str = "",
    config: dict | None = None,
) -> ModelVersion:
    """Version 1 of a new model ``name``, as validation leaves it."""
    model = registry.model_create(tenant=tenant, name=name, actor=accounts.SYSTEM)
    Model.objects.filter(pk=model.pk).update(next_version=2)
    return ModelVersion.objects.create(
        model=model,
        number=1,
        format=format,
        architecture=architecture,
        architecture_config=config or {},
        status=ModelVersion.Status.READY,
        signature=sig,
        artifact=artifact_create(tenant=tenant, chunks=[data]),
    )


@pytest.fixture(scope="session")
def trained_mlp() -> nn.Module:
    from inference.runtime.architectures import MLP

    torch.manual_seed(0)
    x, y = blobs(1500, seed=1)
    return train(MLP(**MLP_CONFIG), x, y, epochs=2)


@pytest.fixture
def mlp_version(tenant, trained_mlp) -> ModelVersion:
    return ready_version(
        tenant,
        "mlp",
        save_tensors(trained_mlp.state_dict()),
        sig=signature([FEATURES]),
        architecture="mlp",
        config=MLP_CONFIG,
    )


@pytest.fixture
def cnn_version(tenant) -> ModelVersion:
    from inference.runtime.architectures import SmallCNN

    torch.manual_seed(0)
    return ready_version(
        tenant,
        "cnn",
        save_tensors(SmallCNN(**CNN_CONFIG).state_dict()),
        sig=signature([1, 28, 28]),
        architecture="small_cnn",
        config=CNN_CONFIG,
    )


def as_json(x: torch.Tensor) -> list:
    """Rows as JSON numbers, rounded to keep the request small."""
    return [[round(v, 4) for v in row] for row in x.tolist()]


def queued(tenant, version, method: str, params: dict) -> CompressionJob:
    """A compression job of ``version``, queued through the service as the API queues it."""
    access = Access(tenant=tenant, scopes=frozenset({"models:write"}))
    job, _created = jobs.job_create(
        access=access,
        model=version.model,
        version=version,
        method=method,
        params=params,
        actor=accounts.SYSTEM,
    )
    return job
