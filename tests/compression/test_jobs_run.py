"""Compression jobs run by the worker's service in real sandboxed model hosts (no Celery):
a hostile or hanging model fails its job with a reason and the next job on the same worker
succeeds; a torch.export graph takes a half-precision cast."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from accounts import services as accounts
from inference import compression_services as jobs
from tests.compression.conftest import queued, ready_version, signature
from workers.pool import HOSTS
from workers.services import compression_run

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _hosts(settings):
    settings.MODEL_HOST_MEMORY_LIMIT = 1024**3
    settings.MODEL_HOST_ADDRESS_SPACE = 8 * 1024**3
    settings.MODEL_HOST_PRESTART = 0
    settings.COMPRESSION_TIMEOUT = 6
    yield
    HOSTS.close()


class Hog(nn.Module):
    """Grabs 3 GiB as soon as it sees an input."""

    def forward(self, x):
        big = torch.ones(768 * 1024 * 1024)
        total = x.sum()
        for _ in range(1000):
            total = total + big.sum()
        return x + total


class Forever(nn.Module):
    def forward(self, x):
        i = 0
        while i >= 0:
            i += 1
        return x


def scripted(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def test_hostile_and_hanging_models_fail_their_jobs_and_the_worker_keeps_serving(tenant):
    from safetensors.torch import save

    from inference.runtime.architectures import MLP

    hog = ready_version(tenant, "hog", scripted(Hog()), sig=signature([4], 4), format="torchscript")
    loop = ready_version(
        tenant, "loop", scripted(Forever()), sig=signature([4], 4), format="torchscript"
    )
    small = ready_version(
        tenant,
        "small",
        save(MLP(16, [32], 4).state_dict()),
        sig=signature([16], 4),
        architecture="mlp",
        config={"in_features": 16, "hidden": [32], "classes": 4},
    )
    hostile = queued(tenant, hog, "distill", {"student": {"architecture": "mlp"}, "epochs": 1})
    hanging = queued(tenant, loop, "distill", {"student": {"architecture": "mlp"}, "epochs": 1})
    after = queued(tenant, small, "quantize", {"scheme": "weight_only_int8"})

    assert compression_run(job_id=hostile.public_id) == "failed"
    assert compression_run(job_id=hanging.public_id) == "failed"
    assert compression_run(job_id=after.public_id) == "succeeded"

    for job in (hostile, hanging, after):
        job.refresh_from_db()
    assert hostile.status == "failed" and "memory" in hostile.error
    assert hanging.error == "The job did not finish within its time limit of 6 s."
    assert hostile.result_version is None and not hostile.model.versions.filter(number=2)
    assert after.status == "succeeded"
    assert after.result_version.architecture_config["compression"] == "weight_only_int8"
    assert after.report["child"]["size_bytes"] < after.report["parent"]["size_bytes"]
    assert compression_run(job_id=after.public_id) is None  # a redelivery does nothing


def test_a_version_yanked_while_its_job_ran_gets_no_child_and_the_file_made_is_deleted(
    tenant, monkeypatch
):
    from safetensors.torch import save

    from inference.runtime.architectures import MLP
    from marketplace import services as registry
    from marketplace.models import Artifact

    config = {"in_features": 4, "hidden": [8], "classes": 3}
    parent = ready_version(
        tenant,
        "mlp",
        save(MLP(**config).state_dict()),
        sig=signature([4], 3),
        architecture="mlp",
        config=config,
    )
    job = queued(tenant, parent, "quantize", {"scheme": "dynamic_int8"})
    finish = jobs.job_succeed

    def yanked_first(*args, **kwargs):
        # The publisher yanks the version just as the worker stores the job's result.
        registry.version_yank(version=parent, reason="leaked PII", actor=accounts.SYSTEM)
        return finish(*args, **kwargs)

    monkeypatch.setattr(jobs, "job_succeed", yanked_first)

    outcome = compression_run(job_id=job.public_id)

    job.refresh_from_db()
    assert outcome == "failed"
    assert job.error.startswith("Version 1 was yanked while the job ran; no version was made")
    assert list(parent.model.versions.values_list("number", flat=True)) == [1]
    assert list(Artifact.objects.all()) == [parent.artifact]  # the quantized file is gone


def test_an_export_archive_takes_a_half_precision_cast_and_keeps_its_signature(tenant):
    from inference.runtime import formats
    from marketplace.vault.store import artifact_read

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 10))

        def forward(self, features):
            return self.body(features)

    torch.manual_seed(0)
    program = torch.export.export(
        Net().eval(),
        (torch.randn(2, 64),),
        dynamic_shapes={"features": {0: torch.export.Dim("batch")}},
    )
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    sig = signature([64])
    sig["inputs"][0]["name"] = "features"
    graph = ready_version(tenant, "graph", buffer.getvalue(), sig=sig, format="pt2")
    job = queued(tenant, graph, "quantize", {"scheme": "fp16"})

    outcome = compression_run(job_id=job.public_id)

    job.refresh_from_db()
    assert outcome == "succeeded", job.error
    child = job.result_version
    assert (child.format, child.parent, child.operation) == ("pt2", graph, "quantize")
    assert job.report["size_ratio"] > 1.5
    assert job.report["fidelity"]["cosine"] > 0.999
    loaded = formats.load(
        bytes(artifact_read(artifact=child.artifact, purpose="validate")),
        format="pt2",
        device="cpu",
    )
    assert loaded.input_names == ["features"] and loaded.input_shapes == {"features": [-1, 64]}


def test_a_half_precision_cast_that_overflows_leaves_a_readable_report_saying_so(
    tenant, api, settings
):
    from safetensors.torch import save

    from inference.runtime.architectures import MLP

    settings.COMPRESSION_TIMEOUT = 120
    config = {"in_features": 4, "hidden": [8], "classes": 3}
    torch.manual_seed(0)
    mlp = MLP(**config)
    with torch.no_grad():
        mlp.net[-1].weight.mul_(1e6)  # outputs beyond float16's range (65504)
    version = ready_version(
        tenant,
        "wide",
        save(mlp.state_dict()),
        sig=signature([4], 3),
        architecture="mlp",
        config=config,
    )
    job = queued(tenant, version, "quantize", {"scheme": "fp16"})

    assert compression_run(job_id=job.public_id) == "succeeded"

    response = api.get(f"/api/v1/compression-jobs/{job.public_id}")
    assert response.status_code == 200
    report = response.json()["report"]
    assert report["fidelity"]["max_abs_error"] is None
    assert "infinities or NaN" in report["warnings"][0]
    assert "65504" in report["warnings"][0]
