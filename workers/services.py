"""What the worker does with a record: validate a version in a fresh model host."""

from __future__ import annotations

import logging
import os

from django.conf import settings

from marketplace.models import ModelVersion
from marketplace.services import version_record_validation
from marketplace.vault.store import artifact_read
from workers.host import HostFailure, ModelFailure, ModelHost
from workers.pool import HOSTS

logger = logging.getLogger(__name__)

HOST_FAILURE_REASONS = {
    "timeout": "The model did not finish loading and running its example within {timeout:.0f} s.",
    "memory": "The model used more memory than a model host allows ({detail}).",
    "crash": "The model crashed its host process ({detail}).",
}


def worker_device() -> str:
    """``cuda`` on a GPU worker (started with ``MM_WORKER_DEVICE=cuda`` and
    ``CUDA_VISIBLE_DEVICES``), else ``cpu``. The worker itself never initialises CUDA."""
    return "cuda" if os.environ.get("MM_WORKER_DEVICE", "cpu").startswith("cuda") else "cpu"


def version_key(version: ModelVersion) -> str:
    return f"{version.public_id}:{version.artifact.sha256[:16]}"


def load_into(host: ModelHost, version: ModelVersion, *, purpose: str, **refs) -> None:
    """Decrypt the version in memory and hand its bytes to ``host`` (and nothing else)."""
    data = artifact_read(artifact=version.artifact, purpose=purpose, **refs)
    header = {
        "op": "load",
        "format": version.format,
        "architecture": version.architecture,
        "config": version.architecture_config,
        "device": host.device,
        "signature": version.signature,
    }
    host.request(header, data, timeout=settings.MODEL_LOAD_TIMEOUT)
    host.loaded_bytes = len(data)


def version_validate(*, version_id: int) -> ModelVersion | None:
    """Load the version in a fresh model host, run its example input and record the
    signature, parameter count and latency: ``ready``, or ``failed`` with a reason."""
    version = (
        ModelVersion.objects.select_related("artifact", "model__tenant")
        .filter(pk=version_id)
        .first()
    )
    if version is None or version.status != ModelVersion.Status.VALIDATING:
        return version  # already validated (a redelivered task): nothing to do
    device = worker_device()
    host = HOSTS.idle(device).take()
    try:
        load_into(host, version, purpose="validate")
        result, _ = host.request(
            {"op": "validate", "example": version.example_input},
            timeout=settings.MODEL_LOAD_TIMEOUT,
        )
    except ModelFailure as exc:
        host.kill()
        return version_record_validation(version=version, ok=False, reason=str(exc))
    except HostFailure as exc:
        reason = HOST_FAILURE_REASONS.get(exc.kind, "{detail}").format(
            timeout=settings.MODEL_LOAD_TIMEOUT, detail=str(exc)
        )
        return version_record_validation(version=version, ok=False, reason=reason)
    version = version_record_validation(
        version=version,
        ok=True,
        signature=result["signature"],
        parameter_count=result["parameter_count"],
        latency_ms=result["latency_ms"],
    )
    HOSTS.loaded(device).put(version_key(version), host)  # warm for the first predictions
    return version
