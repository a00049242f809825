"""Compression jobs: create (owner only, parameters checked), claim, report progress, finish
with a new version and its usage record, fail, cancel, and promote the result to an alias."""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from accounts.exceptions import Conflict, NotFound, ServiceError
from accounts.services import Actor, audit_record, tenant_locked
from accounts.tenancy import Access
from billing.services import alerts_after_admission, compute_authorize, usage_record_create
from config import tasks
from inference import dispatch
from inference.compression import NotApplicable
from inference.compression import params as checks
from inference.models import CompressionJob
from inference.services import by_idempotency_key, waiting_on
from marketplace import services as registry
from marketplace.models import Alias, Artifact, Model, ModelVersion

logger = logging.getLogger(__name__)

COMPRESSIBLE = (ModelVersion.Status.READY, ModelVersion.Status.DEPRECATED)
ACTIVE = (CompressionJob.Status.QUEUED, CompressionJob.Status.RUNNING)


class TooManyJobs(ServiceError):
    status_code = 429
    code = "too_many_jobs"


class Unprocessable(ServiceError):
    """The request is well formed but the method cannot apply to this version."""

    status_code = 422
    code = "not_applicable"


def job_create(
    *,
    access: Access,
    model: Model,
    version: ModelVersion,
    method: str,
    params: dict[str, Any] | None,
    actor: Actor,
    data: dict[str, Any] | None = None,
    idempotency_key: str = "",
    body_hash: str = "",
) -> tuple[CompressionJob, bool]:
    """Queue a job on a version of a model the caller's tenant owns, returning it and
    whether it was created. Distilling or compressing someone else's model is a way to copy
    it, so no grant allows it: the caller resolves ``model`` with the owner-only ``change``
    permission, and this checks again. With an idempotency key, a retry within 24 h returns
    the first job (never a second, billed one) and a different body under the key is 409.

    ``data`` (``{"inputs": ..., "labels": [...]}``) is the publisher's own examples:
    distillation trains on them and fidelity is measured on a held-out part."""
    if model.tenant_id != access.tenant.pk or version.model_id != model.pk:
        raise NotFound(f"No model {model.ref}.")
    if idempotency_key:
        existing = _by_idempotency_key(access, idempotency_key, body_hash)
        if existing is not None:
            return existing, False
    if version.status not in COMPRESSIBLE:
        raise Conflict(
            f"Version {version.number} is {version.status}; only a ready version can be compressed."
        )
    if version.past_sunset:  # retired: it runs nothing any more, compression included
        raise Conflict(
            f"Version {version.number} reached its sunset on {version.sunset_at:%Y-%m-%d %H:%M} "
            "UTC; only a ready version can be compressed."
        )
    encoded = _job_data(data, version) if data is not None else None
    try:
        checked = checks.check(
            method,
            params,
            format=version.format,
            architecture=version.architecture,
            config=version.architecture_config,
            signature=version.signature,
            has_labels=bool(data and "labels" in data),
        )
    except checks.BadParams as exc:
        raise ValidationError({"params": [str(exc)]}) from None
    except NotApplicable as exc:
        raise Unprocessable(str(exc)) from None
    try:
        with alerts_after_admission(), transaction.atomic():
            _refuse_past_active_limit(access)
            # Billed per compute-second: 402 if unpayable, counting what its running jobs cost
            # so far. After the checks: a request that could never run is the caller's to fix
            # first (400). Under the tenant's row lock taken above, so jobs started at once
            # each count the others.
            compute_authorize(
                consumer=access.tenant,
                api_key=access.key,
                running_seconds=lambda key: _running_seconds(access, key),
            )
            job = CompressionJob.objects.create(
                tenant=access.tenant,
                model=model,
                version=version,
                method=method,
                params=checked,
                data=encoded,
                queue=settings.COMPRESSION_QUEUE,
                api_key=access.key,
                created_by=access.user,
                idempotency_key=idempotency_key,
                request_hash=body_hash,
            )
            audit_record(
                action="compression.create",
                actor=actor,
                tenant=access.tenant,
                target=job,
                data={"model": model.ref, "version": version.number, "method": method},
            )
            transaction.on_commit(lambda: _enqueue_or_fail(job))
    except IntegrityError:
        # The same key raced in from a concurrent retry: answer with the winner.
        existing = (
            _by_idempotency_key(access, idempotency_key, body_hash) if idempotency_key else None
        )
        if existing is None:
            raise
        return existing, False
    return job, True


def _refuse_past_active_limit(access: Access) -> None:
    """429 when the tenant already has ``MM_COMPRESSION_MAX_ACTIVE`` jobs queued or running,
    so one organisation cannot fill every worker. Run inside the transaction that creates the
    job, with the tenant's row locked (PostgreSQL; SQLite's write transactions are already one
    at a time), so concurrent requests cannot all pass the count."""
    limit = settings.COMPRESSION_MAX_ACTIVE
    tenant_locked(access.tenant)
    active = CompressionJob.objects.filter(tenant=access.tenant, status__in=ACTIVE).count()
    if active >= limit:
        raise TooManyJobs(
            f"{access.tenant.name} already has {active} compression jobs queued or running, "
            f"the most at once ({limit}); wait for one to finish or cancel one, then start "
            "this one again."
        )


def _running_seconds(access: Access, key=None) -> Decimal:
    """How long the tenant's running jobs (``key``'s alone when given) have run so far, in
    compute-seconds."""
    now = timezone.now()
    running = CompressionJob.objects.filter(
        tenant=access.tenant, status=CompressionJob.Status.RUNNING, started_at__isnull=False
    )
    if key is not None:
        running = running.filter(api_key=key)
    started = running.values_list("started_at", flat=True)
    return sum((Decimal(str(round((now - at).total_seconds(), 6))) for at in started), Decimal(0))


def job_replay(access: Access, key: str, body_hash: str) -> CompressionJob | None:
    """The job a request with this Idempotency-Key made (409 with another body), or None."""
    return _by_idempotency_key(access, key, body_hash)


def _by_idempotency_key(access: Access, key: str, body_hash: str) -> CompressionJob | None:
    return by_idempotency_key(CompressionJob, tenant=access.tenant, key=key, body_hash=body_hash)


def _job_data(data: Any, version: ModelVersion) -> bytes:
    """The publisher's inputs (and labels) as safetensors, checked against the signature."""
    import numpy as np

    from inference import tensors
    from inference.runtime.spec import InputError, Signature

    if not isinstance(data, dict) or "inputs" not in data or set(data) - {"inputs", "labels"}:
        raise ValidationError({"data": ['data is {"inputs": [...], "labels": [...]}.']})
    signature = Signature.from_json(version.signature)
    if len(signature.inputs) != 1:
        raise Unprocessable("Data for a compression job needs a model with exactly one input.")
    try:
        (inputs,) = tensors.from_json(data["inputs"], signature).values()
    except InputError as exc:
        raise ValidationError({"data": [str(exc)]}) from None
    if inputs.dtype != np.float32 or len(inputs) < 32:
        raise ValidationError({"data": ["Give at least 32 rows of FP32 inputs."]})
    if not np.isfinite(inputs).all():
        # One NaN (a null) made a version whose weights were all NaN, ready and billed.
        rows = sorted({int(i) for i in np.argwhere(~np.isfinite(inputs))[:, 0]})
        raise ValidationError(
            {"data": [f"inputs must be finite numbers; rows {rows[:10]} hold NaN or infinity."]}
        )
    arrays = {"inputs": inputs}
    if "labels" in data:
        output = signature.outputs[0].shape if signature.outputs else []
        classes = output[1] if len(output) == 2 else 0
        given = data["labels"]
        # Integers only: 2.9 and true were cut to 2 and 1 without a word.
        whole = isinstance(given, list) and all(
            isinstance(label, int) and not isinstance(label, bool) for label in given
        )
        try:
            labels = np.asarray(given if whole else [], dtype=np.int64)
        except OverflowError:
            labels = np.zeros(0, dtype=np.int64)
        if labels.shape != (len(inputs),) or labels.min() < 0 or labels.max() >= classes:
            raise ValidationError(
                {"data": [f"labels are {len(inputs)} class indices from 0 to {classes - 1}."]}
            )
        arrays["labels"] = labels
    return tensors.encode(arrays)


def enqueue(job: CompressionJob) -> None:
    tasks.send("workers.run_compression", job.public_id, queue=job.queue)


def _enqueue_or_fail(job: CompressionJob) -> None:
    """``enqueue``, or, when that fails (the broker down), fail the job before the error
    reaches the caller as a 503: nothing will run it, and left queued it took one of the
    organisation's active jobs for good (three such, and every new job was a 429). Its
    Idempotency-Key is freed for the retry. (If the database fails too, the beat's sweep sends
    it later: ``jobs_requeue_lost``.)"""
    unrun = CompressionJob.objects.filter(
        pk=job.pk, status=CompressionJob.Status.QUEUED, started_at__isnull=True
    )
    dispatch.send_or_undo(
        lambda: enqueue(job),
        lambda: unrun.update(
            status=CompressionJob.Status.FAILED,
            error="The job could not be sent to a worker; it was not run or billed. Send it again.",
            idempotency_key="",
            completed_at=timezone.now(),
        ),
    )


@transaction.atomic
def job_cancel(job: CompressionJob, *, actor: Actor, by: str = "member") -> CompressionJob:
    """Cancel a queued or running job: a running one's model host is killed within about a
    second. A cancelled job is not billed and leaves no version. Cancelling it again changes
    nothing; the cancellation is audited once."""
    cancelled = CompressionJob.objects.filter(pk=job.pk, status__in=ACTIVE).update(
        status=CompressionJob.Status.CANCELLED, completed_at=timezone.now(), eta_seconds=None
    )
    job.refresh_from_db()
    if job.status != CompressionJob.Status.CANCELLED:
        raise Conflict(f"The job already {job.status}.")
    if cancelled:
        audit_record(
            action="compression.cancel",
            actor=actor,
            tenant=job.tenant,
            target=job,
            data={"model": job.model.ref, "by": by, "at": timezone.now().isoformat()},
        )
    return job


# --- the worker's side ----------------------------------------------------------------------


JOB_MAX_ATTEMPTS = 3


def job_claim(job: CompressionJob) -> bool:
    """Mark a job running; False when it was cancelled, has finished or is running in a live
    worker (a redelivered task then does nothing). A running job whose heartbeat stopped is
    claimed again, up to three attempts in all; after that it fails with the reason."""
    now = timezone.now()
    running = CompressionJob.Status.RUNNING
    lost = jobs_lost_q()
    jobs = CompressionJob.objects.filter(pk=job.pk)
    claimable = jobs.filter(Q(status=CompressionJob.Status.QUEUED) | lost)
    claimed = (
        claimable.filter(attempts__lt=JOB_MAX_ATTEMPTS, version__status__in=COMPRESSIBLE)
        .exclude(version__status=ModelVersion.Status.DEPRECATED, version__sunset_at__lte=now)
        .update(
            status=running,
            started_at=now,
            heartbeat_at=now,
            phase="starting",
            # A new attempt starts over: the lost one's progress showed until this reported.
            percent=0,
            eta_seconds=None,
            loss=None,
            attempts=F("attempts") + 1,
        )
    )
    if claimed:
        # The attempt is this claim's fence: what a worker it was taken from (silent past the
        # lost limit, then back) sends afterwards changes nothing (``_ours``).
        job.refresh_from_db(fields=["status", "attempts", "started_at", "heartbeat_at"])
        job.claimed_attempt = job.attempts  # kept when the row is read again
    else:
        # A parent yanked, or past its sunset, while the job waited: nothing may be made from
        # it (and nothing billed).
        parent = ModelVersion.objects.filter(pk=job.version_id).first()
        if parent is not None and (parent.status not in COMPRESSIBLE or parent.past_sunset):
            claimable.update(
                status=CompressionJob.Status.FAILED,
                error=_parent_gone(parent, while_="was queued"),
                eta_seconds=None,
                completed_at=now,
            )
        jobs.filter(lost, attempts__gte=JOB_MAX_ATTEMPTS).update(
            status=CompressionJob.Status.FAILED,
            error=f"The worker running this job was lost {JOB_MAX_ATTEMPTS} times; start it again.",
            completed_at=now,
        )
    return bool(claimed)


def _ours(job: CompressionJob) -> QuerySet[CompressionJob]:
    """The job, while it is running under the claim ``job`` holds (``job_claim`` notes it): a
    worker whose job was claimed again by another (its heartbeat had stopped) can no longer
    record progress, fail it or finish it, and learns from its next heartbeat that it is no
    longer running it."""
    running = CompressionJob.objects.filter(pk=job.pk, status=CompressionJob.Status.RUNNING)
    claimed = getattr(job, "claimed_attempt", None)
    return running if claimed is None else running.filter(attempts=claimed)


def _parent_gone(parent: ModelVersion, *, while_: str) -> str:
    what = "past its sunset" if parent.past_sunset else parent.status
    return (
        f"Version {parent.number} was {what} while the job {while_}; no version was "
        "made and the job is not billed. Compress a ready version instead."
    )


def jobs_lost_q() -> Q:
    """Running jobs whose heartbeat stopped (their worker is gone), and queued ones as old. A
    running job's worker touches its heartbeat about every second; one silent for
    ``MM_COMPRESSION_JOB_LOST_SECONDS`` (2 min) was lost with its worker (killed, or the
    machine gone)."""
    silent_since = timezone.now() - timedelta(seconds=settings.COMPRESSION_JOB_LOST_SECONDS)
    running = Q(status=CompressionJob.Status.RUNNING) & (
        Q(heartbeat_at__lt=silent_since) | Q(heartbeat_at__isnull=True, started_at__lt=silent_since)
    )
    # And queued ones that long: their task was lost on the way (a claim that failed drops
    # it), and nothing else would send it again.
    return running | Q(status=CompressionJob.Status.QUEUED, created_at__lt=silent_since)


def jobs_requeue_lost() -> int:
    """Send the task again for every job whose worker is gone. The broker redelivers a dead
    worker's task only after its visibility timeout, and a redelivery that came while the job
    still looked alive was dropped by ``job_claim``: without this sweep (a beat task every
    two minutes) such a job would stay ``running`` for good. The task claims the job as usual,
    so a job that turns out alive is left alone and a lost one counts an attempt."""
    candidates = list(
        CompressionJob.objects.filter(jobs_lost_q()).only("public_id", "queue", "status")
    )
    # A queued one only while nothing waits on its queue: in a backlog it may be waiting its
    # turn, and each sweep would add another task for it. (One look per queue.)
    queued = CompressionJob.Status.QUEUED
    queues = {job.queue for job in candidates if job.status == queued}
    backlog = {queue for queue in queues if waiting_on(queue)}
    lost = [job for job in candidates if job.status != queued or job.queue not in backlog]
    for job in lost:
        enqueue(job)
    if lost:
        logger.warning("re-sent %d compression job(s) whose worker was lost", len(lost))
    return len(lost)


def job_heartbeat(job: CompressionJob) -> bool:
    """Touch a running job's heartbeat; False once it is no longer running (cancelled, or
    claimed again by another worker)."""
    return bool(_ours(job).update(heartbeat_at=timezone.now()))


def job_progress(
    job: CompressionJob,
    *,
    phase: str,
    percent: float,
    loss: float | None = None,
    eta_seconds: float | None = None,
) -> bool:
    """Record progress; False once the job is no longer running (cancelled, or claimed again)."""
    return bool(
        _ours(job).update(
            phase=phase[:32],
            percent=percent,
            loss=loss,
            eta_seconds=eta_seconds,
            heartbeat_at=timezone.now(),
        )
    )


def job_succeed(
    job: CompressionJob,
    *,
    artifact: Artifact,
    format: str,
    architecture: str,
    architecture_config: dict[str, Any],
    report: dict[str, Any],
    compute_seconds: float,
    actor: Actor,
) -> ModelVersion | None:
    """Create the new version (lineage: parent, method, parameters; on no alias, queued for
    validation), complete the job and bill its compute time, all in one transaction. None
    when nothing was made or billed: the job stopped running meanwhile (cancelled), or its
    parent was yanked while it ran (the job then fails saying so). On None the caller deletes
    ``artifact``, which no version holds."""
    with transaction.atomic():
        locked = _ours(job).select_for_update().first()
        if locked is None:
            job.refresh_from_db()
            return None
        # Locked as version_yank locks it, so a yank cannot land between this check and the
        # new version.
        parent = ModelVersion.objects.select_for_update().get(pk=job.version_id)
        if parent.status not in COMPRESSIBLE or parent.past_sunset:
            CompressionJob.objects.filter(pk=job.pk).update(
                status=CompressionJob.Status.FAILED,
                error=_parent_gone(parent, while_="ran"),
                eta_seconds=None,
                completed_at=timezone.now(),
            )
            job.refresh_from_db()
            return None
        version = registry.version_derive(
            parent=parent,
            artifact=artifact,
            format=format,
            architecture=architecture,
            architecture_config=architecture_config,
            operation=job.method,
            operation_params=job.params,
            actor=actor,
            label=f"{job.method} of v{job.version.number}",
        )
        CompressionJob.objects.filter(pk=job.pk).update(
            status=CompressionJob.Status.SUCCEEDED,
            phase="done",
            percent=100.0,
            eta_seconds=0,
            result_version=version,
            report=report,
            compute_seconds=compute_seconds,
            completed_at=timezone.now(),
        )
        usage_record_create(
            kind="compression",
            source_id=job.public_id,
            consumer=job.model.tenant,
            model=job.model,
            api_key_id=job.api_key_id,
            compute_seconds=Decimal(str(round(compute_seconds, 6))),
        )
    job.refresh_from_db()
    return version


def job_fail(job: CompressionJob, *, error: str) -> bool:
    """A failed job is not billed; the reason says what happened."""
    failed = _ours(job).update(
        status=CompressionJob.Status.FAILED,
        error=error[:5000],
        eta_seconds=None,
        completed_at=timezone.now(),
    )
    job.refresh_from_db()
    return bool(failed)


# --- promotion ------------------------------------------------------------------------------


def _signature_change(before: dict | None, after: dict | None) -> str:
    """What a caller of ``before`` would find changed in ``after`` (names, dtypes, and shapes
    past the batch dimension of inputs and outputs); empty when nothing is."""

    def parts(signature: dict | None, side: str) -> list[str]:
        return [
            f"{t['name']} {t['datatype']}{list(t['shape'])[1:]}"
            for t in (signature or {}).get(side, [])
        ]

    if not before or not after:
        return ""
    for side in ("inputs", "outputs"):
        old, new = parts(before, side), parts(after, side)
        if old != new:
            return f"{side} {', '.join(old)} became {', '.join(new)}"
    return ""


def job_promote(
    *,
    job: CompressionJob,
    alias: str,
    access: Access,
    actor: Actor,
    min_agreement: float | None = None,
    min_cosine: float | None = None,
    max_mean_abs_error: float | None = None,
) -> Alias:
    """Point ``alias`` at the job's version only when its measured fidelity meets every
    threshold the publisher sets (at least one); otherwise 409 with the figures."""
    if job.status != CompressionJob.Status.SUCCEEDED or job.result_version is None:
        raise Conflict(f"The job is {job.status}; only a succeeded job's version can be promoted.")
    thresholds = {
        "agreement": min_agreement,
        "cosine": min_cosine,
        "mean_abs_error": max_mean_abs_error,
    }
    if all(v is None for v in thresholds.values()):
        raise ValidationError(
            "Set a fidelity threshold: min_agreement, min_cosine or max_mean_abs_error."
        )
    fidelity = (job.report or {}).get("fidelity", {})
    missed = []
    for name, threshold in thresholds.items():
        if threshold is None:
            continue
        value = fidelity.get(name)
        ok = value is not None and (
            value <= threshold if name == "mean_abs_error" else value >= threshold
        )
        if not ok:
            bound = "at most" if name == "mean_abs_error" else "at least"
            missed.append(f"{name} is {value} (needs {bound} {threshold})")
    if missed:
        raise Conflict(
            "The compressed version does not meet the fidelity threshold: " + "; ".join(missed),
            fidelity=fidelity,
        )
    current = Alias.objects.filter(model=job.model, name=alias).select_related("version").first()
    if current is not None:
        change = _signature_change(current.version.signature, job.result_version.signature)
        if change:
            # Fidelity is measured on the same tensors; the requests callers send must fit too.
            raise Conflict(
                f"v{job.result_version.number} does not take the requests v"
                f"{current.version.number} ({alias}) takes: {change}. Moved, {alias} would "
                "refuse its callers' requests; point another alias at it."
            )
    return registry.alias_set(
        model=job.model, name=alias, version=job.result_version, access=access, actor=actor
    )
