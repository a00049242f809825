"""What the worker does with a record: validate a version in a fresh model host, run
predictions, run compression jobs."""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from concurrent.futures import Future

from django.conf import settings
from django.utils import timezone

from accounts.models import Tenant
from config import sql
from config.logs import bind_request_id, current_request_id, unbind_request_id
from config.metrics import PREDICTION_LATENCY, PREDICTIONS, model_label
from marketplace.models import ModelVersion
from marketplace.services import (
    version_claim_validation,
    version_record_validation,
    version_release_validation,
)
from marketplace.vault.store import artifact_read
from workers.groupcommit import WRITES
from workers.host import HUGE_PAGE_WEIGHTS, HostFailure, ModelFailure, ModelHost
from workers.pool import HOSTS

logger = logging.getLogger(__name__)

HOST_FAILURE_REASONS = {
    "timeout": "The model did not finish loading and running its example within {timeout:.0f} s.",
    "memory": "The model used more memory than a model host allows ({detail}).",
    "crash": "The model crashed its host process ({detail}).",
}


HOST_START_REASON = (
    "Validation could not start a model host ({detail}). That is on our side, not a verdict on "
    "the file: upload it again, and tell support if it happens again."
)


class HostUnavailable(Exception):
    """No model host could be started: the platform failed, not the version."""


def worker_device() -> str:
    """``cuda`` on a GPU worker (started with ``MM_WORKER_DEVICE=cuda`` and
    ``CUDA_VISIBLE_DEVICES``), else ``cpu``. The worker itself never initialises CUDA."""
    return "cuda" if os.environ.get("MM_WORKER_DEVICE", "cpu").startswith("cuda") else "cpu"


def version_key(version: ModelVersion) -> str:
    return f"{version.public_id}:{version.artifact.sha256[:16]}"


def prediction_host_key(version: ModelVersion, tenant_id) -> str:
    """The loaded host that runs ``version`` for one consumer organisation (see _batcher):
    the version's own, shared by all, when validation found the model stateless."""
    if version.stateless:
        return version_key(version)
    return f"{version_key(version)}@{tenant_id}"


def load_into(host: ModelHost, version: ModelVersion, *, purpose: str, **refs) -> dict:
    """Decrypt the version in memory and hand its bytes to ``host`` (and nothing else); the
    host's answer (``stateless``, ``parameter_count``, ...)."""
    data = artifact_read(artifact=version.artifact, purpose=purpose, **refs)
    header = {
        "op": "load",
        "format": version.format,
        "architecture": version.architecture,
        "config": version.architecture_config,
        "device": host.device,
        "signature": version.signature,
        "max_output_bytes": settings.MAX_OUTPUT_BYTES,
        "huge_pages": HUGE_PAGE_WEIGHTS,
    }
    reply, _ = host.request(header, data, timeout=settings.MODEL_LOAD_TIMEOUT)
    host.loaded_bytes = len(data)
    host.huge_page_bytes = reply.get("huge_page_bytes", 0)
    return reply


def validation_claim_seconds() -> float:
    """How long a worker holds a version it validates: starting a host (up to 120 s), then
    the load and the example run (``MODEL_LOAD_TIMEOUT`` each), and a minute to spare. Well
    under the broker's visibility timeout, so a task redelivered from a dead worker finds the
    claim run out."""
    return 120 + 2 * settings.MODEL_LOAD_TIMEOUT + 60


def version_validate(*, version_id: str, last_attempt: bool = True) -> ModelVersion | None:
    """Load the version in a fresh model host, run its example input and record the
    signature, parameter count and latency: ``ready``, or ``failed`` with a reason. When no
    host starts, raises ``HostUnavailable`` for the task to retry, or on its ``last_attempt``
    fails the version with a reason that says so (it never stays ``validating``).

    The version is claimed first (a conditional update): a second delivery of the task, or a
    second caller, returns it still ``validating`` without decrypting anything while another
    worker holds it."""
    version = (
        ModelVersion.objects.select_related("artifact", "model__tenant")
        .filter(public_id=version_id)
        .first()
    )
    if version is None or version.status != ModelVersion.Status.VALIDATING:
        return version  # already validated (a redelivered task): nothing to do
    if not version_claim_validation(version=version, seconds=validation_claim_seconds()):
        version.refresh_from_db()
        return version  # validated meanwhile, or another worker is at it
    try:
        return _validate_claimed(version, last_attempt=last_attempt)
    except BaseException:
        version_release_validation(version=version)  # a retry may claim it at once
        raise


def _validate_claimed(version: ModelVersion, *, last_attempt: bool) -> ModelVersion:
    device = worker_device()
    try:
        host = HOSTS.idle(device).take()
    except HostFailure as exc:
        if not last_attempt:
            raise HostUnavailable(str(exc)) from exc
        reason = HOST_START_REASON.format(detail=str(exc)[:300])
        return version_record_validation(version=version, ok=False, reason=reason)
    try:
        loaded = load_into(host, version, purpose="validate")
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
        stateless=bool(loaded.get("stateless")),
    )
    HOSTS.loaded(device).put(version_key(version), host)  # warm for the first predictions
    return version


# --- predictions ----------------------------------------------------------------------------

_batchers: dict[str, object] = {}
_batchers_lock = threading.Lock()


def _batcher(version: ModelVersion):
    from inference import limits
    from inference.runtime.spec import Signature
    from workers.batching import Breaker, VersionBatcher

    device = worker_device()
    key = version_key(version)

    def host(tenant) -> ModelHost:
        # One host per consumer organisation unless validation found the model stateless: a
        # model that keeps state from call to call (a buffer its forward writes) must not hand
        # one organisation's input to the next caller, the publisher included. The host
        # validation warmed, which has run only the publisher's example, serves the first
        # organisation to call.
        own = prediction_host_key(version, tenant)
        if own != key:
            HOSTS.loaded(device).adopt(key, own)
        return HOSTS.get_or_load(device, own, lambda h: load_into(h, version, purpose="predict"))

    with _batchers_lock:
        batcher = _batchers.get(key)
        if batcher is None:
            signature = Signature.from_json(version.signature)
            batcher = _batchers[key] = VersionBatcher(
                host=host,
                drop_host=lambda tenant: HOSTS.loaded(device).drop(
                    prediction_host_key(version, tenant)
                ),
                batchable=signature.batch_dynamic,
                outputs=signature.outputs,
                max_batch=settings.BATCH_MAX_SIZE,
                max_delay=settings.BATCH_MAX_DELAY_MS / 1000,
                timeout=settings.MODEL_REQUEST_TIMEOUT,
                max_output_bytes=settings.MAX_OUTPUT_BYTES,
                breaker=Breaker(
                    trip_after=settings.BREAKER_FAILURES,
                    cooldown=settings.BREAKER_SECONDS,
                    on_trip=lambda reason, seconds: limits.breaker_trip(
                        version.pk, reason, seconds
                    ),
                ),
            )
    return batcher


# What prediction_run answers when it left a prediction for later (see below).
DEFERRED = "deferred"
# Threads of this process waiting on each version's batcher.
_waiting: collections.Counter[str] = collections.Counter()
_waiting_lock = threading.Lock()


def _stalled_and_crowded(version: ModelVersion) -> bool:
    """Whether the version's model seems to hang (``VersionBatcher.stalled``) while a quarter
    of the fast path's threads already wait on it."""
    key = version_key(version)
    batcher = _batchers.get(key)
    share = max(1, settings.INFERENCE_DIRECT_THREADS // 4)
    return batcher is not None and _waiting[key] >= share and batcher.stalled()


def prediction_run(*, prediction_id: str, defer_when_stalled: bool = False) -> str | None:
    """Run a queued prediction through its version's batcher and record the outcome.

    ``defer_when_stalled`` (the fast path, whose threads each wait on one prediction): when
    the version's model seems to hang and a quarter of the threads already wait on it, answer
    ``DEFERRED`` without touching the prediction, for the caller to queue it again. Otherwise
    a model that hangs took every thread, one deadline after another, and other
    organisations' predictions waited behind it."""
    from inference.models import Prediction

    # Two hand-written reads (config/sql.py): the ORM's join of the two took 378 µs of CPU.
    prediction = sql.get(Prediction, where={"public_id": prediction_id})
    if prediction is None:
        return None
    tenant = sql.get(Tenant, where={"id": prediction.tenant_id})
    if tenant is None:  # deleted since (and the prediction with it): nothing to run
        return None
    prediction.tenant = tenant
    # Its lines in the log carry the id of the request that made it, however it came here
    # (the fast path carries the prediction's id alone; a Celery task its own header).
    token = bind_request_id(prediction.request_id or current_request_id() or prediction.public_id)
    try:
        return _run_bound(prediction, defer_when_stalled)
    finally:
        unbind_request_id(token)


def _run_bound(prediction, defer_when_stalled: bool) -> str | None:
    try:
        runnable = _runnable(prediction)
    except Refused as exc:
        return _refused(prediction, str(exc))
    prediction.model, prediction.version = runnable.model, runnable.version
    if defer_when_stalled and _stalled_and_crowded(prediction.version):
        return DEFERRED
    key = version_key(prediction.version)
    with _waiting_lock:
        _waiting[key] += 1
    try:
        return _run_runnable(prediction)
    finally:
        with _waiting_lock:
            _waiting[key] -= 1
            if _waiting[key] <= 0:
                del _waiting[key]


def _run_runnable(prediction) -> str | None:
    from inference import services as inference

    # The forward pass starts before the claim is written, and runs while it is: the claim's
    # transaction took about a millisecond of the request's time, in series. Nothing is
    # written or billed for the run until the claim holds (the result is written only over a
    # running prediction); a prediction cancelled or finished meanwhile costs one forward
    # pass whose outputs are dropped.
    future = _submit(prediction)
    if not WRITES.run(lambda: inference.prediction_claim(prediction)):
        return None  # cancelled, finished, or a redelivery of finished work
    outcome = _prediction_outcome(prediction, future)
    _count_prediction(prediction, outcome)
    return outcome


class Refused(Exception):
    """What a new request for the prediction would now be refused for."""


def _runnable(prediction):
    """The prediction's model (with its tenant) and version (with its artifact), from the
    per-process cache the web's requests use (``inference/catalog.py``): the join of four
    tables, and the decoding of the version's JSON columns, cost more than half of the
    worker's reads per prediction. Billing does not depend on it: the price is read in the
    transaction that writes the usage record.

    Raises ``Refused`` where the consumer could not run the version now: a prediction that
    waited in a backlog while its version was yanked, its model taken down or its access
    revoked ran, and was billed. The verdict is cached with the version, per consumer, and
    each of those changes (audited, so the catalog's generation moves) clears it in every
    process: the next prediction asks again."""
    from inference import catalog
    from inference import services as inference

    def load() -> catalog.Runnable:
        version = ModelVersion.objects.select_related("artifact", "model__tenant").get(
            pk=prediction.version_id
        )
        refusal = inference.run_refusal(
            tenant=prediction.tenant, model=version.model, version=version
        )
        if refusal is not None:
            raise Refused(refusal)
        return catalog.Runnable(version.model, version)  # a prediction's version is its model's

    return catalog.cached(("worker", prediction.version_id, prediction.tenant_id), load)


def _refused(prediction, reason: str) -> str | None:
    """Fail a prediction its consumer may no longer run, unbilled, without running it."""
    from inference import services as inference

    if not WRITES.run(lambda: inference.prediction_claim(prediction)):
        return None  # cancelled, finished, or a redelivery of finished work
    error = f"Not run: {reason}"
    WRITES.run(lambda: inference.prediction_fail(prediction, error=error, kind="refused"))
    _count_prediction(prediction, "failed")  # mm_predictions_total missed these
    return "failed"


def _count_prediction(prediction, outcome: str) -> None:
    model = model_label(prediction.model.ref)
    PREDICTIONS.labels(model, outcome).inc()
    if outcome == "succeeded":
        latency = (timezone.now() - prediction.created_at).total_seconds()
        PREDICTION_LATENCY.labels(model).observe(latency)


def _submit(prediction) -> Future:
    """The prediction's job in its version's batcher; what fails on the way is the future's
    exception, for the claimed prediction to fail with."""
    from inference import tensors

    try:
        arrays = tensors.decode(prediction.input_data)
        batcher = _batcher(prediction.version)
        return batcher.submit(
            arrays, prediction.batch_size, tenant=prediction.tenant_id, log_id=prediction.public_id
        )
    except Exception as exc:  # noqa: BLE001 - reported through the future, after the claim
        failed: Future = Future()
        failed.set_exception(exc)
        return failed


def _prediction_outcome(prediction, future: Future) -> str:
    from inference import services as inference
    from inference import tensors

    try:
        outputs, compute_ms, shared = future.result(timeout=settings.MODEL_REQUEST_TIMEOUT * 2 + 30)
    except TimeoutError:
        # Still waiting behind earlier calls that hung (each up to its deadline): failed as a
        # timeout, not as our error, and dropped from the version's queue if not started.
        future.cancel()
        error = (
            "The model did not answer in time: calls before this one kept it busy past their "
            "deadlines. Send it again later."
        )
        WRITES.run(lambda: inference.prediction_fail(prediction, error=error, kind="timeout"))
        return "failed"
    except ModelFailure as exc:
        # "output": what the model answered does not fit its signature (said in full).
        kind = "input" if exc.kind == "input" else "model"
        message = (
            str(exc) if exc.kind in ("input", "output") else f"The model raised an error: {exc}"
        )
        WRITES.run(lambda: inference.prediction_fail(prediction, error=message, kind=kind))
        return "failed"
    except HostFailure as exc:
        error = str(exc) if exc.kind == "unavailable" else f"The model host failed: {exc}"
        kind = exc.kind
        WRITES.run(lambda: inference.prediction_fail(prediction, error=error, kind=kind))
        return "failed"
    except Exception as exc:  # noqa: BLE001 - never leave a claimed prediction running
        logger.exception("prediction %s failed", prediction.public_id)
        error = f"Internal error while running the model ({type(exc).__name__})."
        WRITES.run(lambda: inference.prediction_fail(prediction, error=error, kind="internal"))
        return "failed"
    output = tensors.encode(outputs)
    try:
        WRITES.run(
            lambda: inference.prediction_succeed(
                prediction, output=output, compute_ms=compute_ms, batched_with=shared
            )
        )
    except Exception as exc:  # noqa: BLE001 - never leave a claimed prediction running
        # The result and its usage record could not be written (the database refused them):
        # nothing is billed, and the prediction fails instead of staying "running" with
        # nobody left to finish it. If the result was written after all, it stands.
        logger.exception("recording the result of prediction %s failed", prediction.public_id)
        error = (
            f"Internal error while recording the result ({type(exc).__name__}); it was not "
            "billed. Send the request again."
        )
        if WRITES.run(lambda: inference.prediction_fail(prediction, error=error, kind="internal")):
            return "failed"
        # Already finished: written after all, or cancelled meanwhile. Count what it is.
        prediction.refresh_from_db(fields=["status"])
        return prediction.status
    return "succeeded"


# --- compression jobs -----------------------------------------------------------------------

COMPRESSION_FAILURE_REASONS = {
    "timeout": "The job did not finish within its time limit of {timeout:.0f} s.",
    "memory": "The model used more memory than a model host allows ({detail}).",
    "crash": "The model crashed its host process ({detail}).",
}


class _Throttle:
    """True at most once per ``interval`` seconds (and on the first call)."""

    def __init__(self, interval: float):
        self.interval, self.last = interval, float("-inf")

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.interval:
            return False
        self.last = now
        return True


def compression_run(*, job_id: str) -> str | None:
    """Run a queued compression job in a fresh model host: hand it the parent's decrypted
    bytes, relay its progress, store the new version's file encrypted, and complete the job
    with its report and usage record. A cancelled job's host is killed; a crash, hang or
    hostile model fails the job with the reason, and this worker keeps serving."""
    from accounts.services import Actor
    from inference import compression_services as jobs
    from inference.models import CompressionJob
    from marketplace.vault.store import artifact_create, artifact_delete

    job = (
        CompressionJob.objects.select_related(
            "version__artifact", "version__model__tenant", "model__tenant", "created_by"
        )
        .filter(public_id=job_id)
        .first()
    )
    if job is None or not jobs.job_claim(job):
        return None  # cancelled, or a redelivery of a claimed job
    actor = Actor(user=job.created_by)
    version = job.version
    progress_due, cancel_due = _Throttle(0.5), _Throttle(1.0)

    def on_progress(frame: dict) -> None:
        percent = float(frame.get("percent") or 0)
        elapsed = float(frame.get("elapsed") or 0)
        eta = elapsed * (100 - percent) / percent if 5 < percent < 100 else None
        if progress_due() or frame.get("phase") in ("measure", "done"):
            jobs.job_progress(
                job,
                phase=frame.get("phase", ""),
                percent=percent,
                loss=frame.get("loss"),
                eta_seconds=eta,
            )

    def cancelled() -> bool:
        return cancel_due() and not jobs.job_heartbeat(job)

    host = None
    started = time.monotonic()
    try:
        data = artifact_read(
            artifact=version.artifact, purpose="compress", actor=actor, job_id=job.public_id
        )
        host = HOSTS.idle("cpu").take()  # the quantized kernels run on the CPU
        header = {
            "op": "compress",
            "method": job.method,
            "params": job.params,
            "format": version.format,
            "architecture": version.architecture,
            "config": version.architecture_config,
            "signature": version.signature,
            "data_bytes": len(job.data or b""),
        }
        if job.data:
            data = bytes(data) + bytes(job.data)
        started = time.monotonic()
        reply, body = host.request(
            header,
            data,
            timeout=settings.COMPRESSION_TIMEOUT,
            on_progress=on_progress,
            interrupt=cancelled,
            max_payload=settings.MAX_ARTIFACT_BYTES,  # the new version: no larger than uploads
        )
        del data
        compute_seconds = time.monotonic() - started
    except ModelFailure as exc:
        reason = str(exc) if exc.kind == "input" else f"The model raised an error: {exc}"
        jobs.job_fail(job, error=reason)
        return "failed"
    except HostFailure as exc:
        if exc.kind == "cancelled":
            return "cancelled"
        reason = COMPRESSION_FAILURE_REASONS.get(exc.kind, "{detail}").format(
            timeout=settings.COMPRESSION_TIMEOUT, detail=str(exc)
        )
        jobs.job_fail(job, error=reason)
        return "failed"
    except Exception as exc:  # noqa: BLE001 - never leave a claimed job running
        logger.exception("compression job %s failed", job.public_id)
        jobs.job_fail(job, error=f"Internal error while compressing ({type(exc).__name__}).")
        return "failed"
    finally:
        if host is not None:
            host.kill()  # it ran the parent and the child: never reused for another model
    artifact = None
    try:
        artifact = artifact_create(tenant=job.model.tenant, chunks=[bytes(body)])
        result = jobs.job_succeed(
            job,
            artifact=artifact,
            format=reply["format"],
            architecture=reply["architecture"],
            architecture_config=reply["config"],
            report={**reply["report"], "job_seconds": compute_seconds},
            compute_seconds=compute_seconds,
            actor=actor,
        )
    except Exception as exc:  # noqa: BLE001 - never leave a claimed job running
        logger.exception("storing the result of compression job %s failed", job.public_id)
        if artifact is not None:
            artifact_delete(artifact)
        jobs.job_fail(job, error=f"Internal error while storing the result ({type(exc).__name__}).")
        return "failed"
    if result is None:
        # Cancelled while its file was being stored, or failed because its parent was yanked
        # meanwhile: no version holds the file.
        artifact_delete(artifact)
        return job.status
    return "succeeded"
