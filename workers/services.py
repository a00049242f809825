"""What the worker does with a record: validate a version in a fresh model host."""

from __future__ import annotations

import logging
import os
import threading

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


def version_validate(*, version_id: str) -> ModelVersion | None:
    """Load the version in a fresh model host, run its example input and record the
    signature, parameter count and latency: ``ready``, or ``failed`` with a reason."""
    version = (
        ModelVersion.objects.select_related("artifact", "model__tenant")
        .filter(public_id=version_id)
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


# --- predictions ----------------------------------------------------------------------------

_batchers: dict[str, object] = {}
_batchers_lock = threading.Lock()


def _batcher(version: ModelVersion):
    from inference.runtime.spec import Signature
    from workers.batching import VersionBatcher

    device = worker_device()
    key = version_key(version)

    def host():
        return HOSTS.get_or_load(
            device,
            key,
            lambda h: load_into(h, version, purpose="predict"),
        )

    with _batchers_lock:
        batcher = _batchers.get(key)
        if batcher is None:
            batcher = _batchers[key] = VersionBatcher(
                host=host,
                drop_host=lambda: HOSTS.loaded(device).drop(key),
                batchable=Signature.from_json(version.signature).batch_dynamic,
                max_batch=settings.BATCH_MAX_SIZE,
                max_delay=settings.BATCH_MAX_DELAY_MS / 1000,
                timeout=settings.MODEL_REQUEST_TIMEOUT,
            )
    return batcher


def prediction_run(*, prediction_id: str) -> str | None:
    """Run a queued prediction through its version's batcher and record the outcome."""
    from inference import services as inference
    from inference import tensors
    from inference.models import Prediction

    prediction = (
        Prediction.objects.select_related("version__artifact", "model__tenant", "tenant", "api_key")
        .filter(public_id=prediction_id)
        .first()
    )
    if prediction is None or not inference.prediction_claim(prediction):
        return None  # cancelled, finished, or a redelivery of finished work
    arrays = tensors.decode(prediction.input_data)
    batcher = _batcher(prediction.version)
    future = batcher.submit(arrays, prediction.batch_size)
    try:
        outputs, compute_ms, shared = future.result(timeout=settings.MODEL_REQUEST_TIMEOUT * 2 + 30)
    except ModelFailure as exc:
        kind = "input" if exc.kind == "input" else "model"
        message = str(exc) if kind == "input" else f"The model raised an error: {exc}"
        inference.prediction_fail(prediction, error=message, kind=kind)
        return "failed"
    except HostFailure as exc:
        inference.prediction_fail(prediction, error=f"The model host failed: {exc}", kind=exc.kind)
        return "failed"
    except Exception as exc:  # noqa: BLE001 - never leave a claimed prediction running
        logger.exception("prediction %s failed", prediction.public_id)
        inference.prediction_fail(
            prediction,
            error=f"Internal error while running the model ({type(exc).__name__}).",
            kind="internal",
        )
        return "failed"
    inference.prediction_succeed(
        prediction, output=tensors.encode(outputs), compute_ms=compute_ms, batched_with=shared
    )
    return "succeeded"
