"""The workers' CUDA path: model hosts on the GPU (under bubblewrap where it is installed, as
in production, and as plain children) and a GPU worker that validates and serves a version
through the API on the ``gpu`` queue.

These need a CUDA device. CI has none and skips the module; they run on a GPU machine with
``bench/device_check.sh``, which also runs ``bench/runtime.py --device cuda``."""

from __future__ import annotations

import subprocess
import time

import pytest
import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from inference.runtime import architectures, codec
from tests.inference.conftest import export, scripted
from workers import sandbox
from workers.host import ModelFailure, ModelHost

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]

FEATURES, CLASSES = 4, 3
MLP = {"in_features": FEATURES, "hidden": [16], "classes": CLASSES}


class WithConstant(nn.Module):
    """Makes a tensor in ``forward``: torch.export records it with ``device="cpu"``, so moving
    only the module's parameters to the GPU would fail at the first call."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(FEATURES, CLASSES)

    def forward(self, x):
        return self.fc(x) + torch.arange(3, dtype=torch.float32)  # 3: CLASSES


class Greedy(nn.Module):
    """Asks the GPU for 4 TiB when its input is large, else doubles it."""

    def forward(self, x):
        if bool(x.sum() > 1e6):
            return x + torch.empty([1 << 40], device=x.device).sum()
        return x * 2


def builtin_mlp() -> tuple[nn.Module, bytes]:
    torch.manual_seed(0)
    module = architectures.build("mlp", MLP).eval()
    return module, save_safetensors(module.state_dict())


def model_file(fmt: str) -> tuple[nn.Module, dict, bytes]:
    """The reference module (on the CPU), the load header's fields and the file's bytes."""
    if fmt == "pt2":
        module = WithConstant().eval()
        return module, {"format": "pt2"}, export(module)
    if fmt == "torchscript":
        # TorchScript runs its own interpreter: a tensor made in forward without a device
        # stays on the CPU whatever the map_location, so this one has only parameters.
        torch.manual_seed(0)
        module = nn.Linear(FEATURES, CLASSES).eval()
        return module, {"format": "torchscript"}, scripted(module)
    module, data = builtin_mlp()
    return module, {"format": "safetensors", "architecture": "mlp", "config": MLP}, data


@pytest.fixture(params=["bubblewrap", "plain child"])
def isolation(request, monkeypatch) -> str:
    if request.param == "bubblewrap" and sandbox.bubblewrap() is None:
        pytest.skip("bubblewrap is not installed here")
    if request.param == "plain child":
        monkeypatch.setattr(sandbox, "bubblewrap", lambda: None)
    return request.param


def cuda_host(require_sandbox: bool) -> ModelHost:
    # As workers.pool.new_host on a GPU worker: no address-space limit.
    limits = sandbox.Limits(memory_bytes=None, cpu_seconds=600, threads=1)
    host = ModelHost(
        device="cuda", limits=limits, rss_limit=8 * 1024**3, require_sandbox=require_sandbox
    )
    return host.start(timeout=180)


@pytest.mark.parametrize("fmt", ["pt2", "torchscript", "safetensors"])
def test_a_cuda_host_loads_validates_and_predicts_on_the_gpu(isolation, fmt):
    reference, fields, data = model_file(fmt)
    host = cuda_host(require_sandbox=isolation == "bubblewrap")
    try:
        loaded, _ = host.request(
            {"op": "load", "device": "cuda", "signature": None, **fields}, data, timeout=180
        )
        weights = sum(p.numel() * p.element_size() for p in reference.parameters())
        assert loaded["device"] == "cuda" and loaded["device_bytes"] >= weights, loaded

        example = {"x" if fmt == "pt2" else "input": {"shape": [1, FEATURES]}}
        validated, _ = host.request({"op": "validate", "example": example}, timeout=180)
        name = validated["signature"]["inputs"][0]["name"]
        assert validated["latency_ms"] > 0

        x = torch.randn(5, FEATURES)
        reply, body = host.request({"op": "predict"}, codec.encode({name: x}), timeout=60)
        output = next(iter(codec.decode(body).values()))
        with torch.inference_mode():
            expected = reference(x)
        assert output.device.type == "cpu" and torch.allclose(output, expected, atol=1e-5)
        assert reply["compute_ms"] > 0
    finally:
        host.kill()


def test_a_cuda_host_fails_a_request_that_exhausts_gpu_memory_and_keeps_serving(isolation):
    host = cuda_host(require_sandbox=isolation == "bubblewrap")
    try:
        host.request(
            {"op": "load", "format": "torchscript", "device": "cuda", "signature": None},
            scripted(Greedy()),
            timeout=180,
        )
        host.request({"op": "validate", "example": {"x": {"shape": [1, FEATURES]}}}, timeout=180)
        with pytest.raises(ModelFailure, match="out of memory"):
            host.request(
                {"op": "predict"}, codec.encode({"x": torch.full((1, FEATURES), 1e7)}), timeout=60
            )
        _, body = host.request(
            {"op": "predict"}, codec.encode({"x": torch.ones(2, FEATURES)}), timeout=60
        )
        assert torch.equal(codec.decode(body)["output"], torch.full((2, FEATURES), 2.0))
    finally:
        host.kill()


# --- a GPU worker through the API -----------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_worker(django_db_setup, django_db_blocker):
    """A Celery worker started as on a GPU machine: ``-Q gpu``, ``MM_WORKER_DEVICE=cuda``."""
    from config.celery import app
    from tests.conftest import start_worker, worker_env

    env = {**worker_env(django_db_blocker), "MM_WORKER_DEVICE": "cuda"}
    proc = start_worker("gpu", f"gpu-{time.monotonic_ns()}@%h", env)
    try:
        app.send_task("workers.ping", args=["ready"], queue="gpu").get(timeout=120)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_for(predicate, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, "timed out waiting for the GPU worker"
        time.sleep(0.25)
    return found


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_gpu_worker_validates_and_serves_a_version_through_the_api(gpu_worker, settings, api):
    from billing.models import UsageRecord
    from workers.heartbeat import workers_seen

    settings.VALIDATION_QUEUE = settings.INFERENCE_QUEUE = "gpu"
    from tests.marketplace.conftest import upload_version

    data = export(WithConstant())
    assert api.post("/api/v1/models", {"name": "gpu-clf"}, format="json").status_code == 201
    assert upload_version(api, "acme/gpu-clf", data, "pt2", "clf.pt2").status_code == 201

    def validated():
        body = api.get("/api/v1/models/acme/gpu-clf/versions/1").json()
        return body if body["status"] != "validating" else None

    version = _wait_for(validated)
    assert version["status"] == "ready", version["failure_reason"]

    x = [[0.5, -1.0, 2.0, 0.25], [1.0, 1.0, 1.0, 1.0]]
    response = api.post(
        "/api/v1/predictions",
        {"model": "acme/gpu-clf", "input": {"x": x}},
        format="json",
        HTTP_PREFER="wait=60",
    )
    body = response.json()
    assert response.status_code == 201 and body["status"] == "succeeded", body
    with torch.inference_mode():
        expected = WithConstant()(torch.tensor(x))
    assert torch.allclose(torch.tensor(body["output"]["output"]), expected, atol=1e-5)
    assert UsageRecord.objects.filter(source_id=body["id"]).count() == 1

    # A worker on the GPU (this module's, or the suite's second worker where it serves the gpu
    # queue too) says it holds this version's host; the CPU worker holds none.
    def gpu_workers_with_a_model():
        seen = [w for w in workers_seen() if w["loaded_models"]]
        return seen if seen else None

    holders = _wait_for(gpu_workers_with_a_model, timeout=30)
    assert all(w["device"] == "cuda" and "gpu" in w["queues"] for w in holders), holders
