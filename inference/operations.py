"""What an operator does to predictions and compression jobs from the admin console: retry a
failed one, cancel a stuck one. Each action writes an audit row in the same transaction."""

from __future__ import annotations

from django.db import transaction

from accounts.exceptions import Conflict, PaymentRequired
from accounts.services import Actor, audit_record
from billing.services import spend_authorize
from inference import compression_services, services
from inference.models import CompressionJob, Prediction
from marketplace.models import ModelVersion


@transaction.atomic
def prediction_retry(*, prediction: Prediction, actor: Actor) -> Prediction:
    """Queue a failed prediction again (while its input is still kept). It is billed only if
    it now succeeds, like any other, and is admitted as a new request is: refused where its
    consumer could not pay for it now (spend cap, key budget, grace period), at the price in
    force now."""
    terms = _spend_checked(prediction)
    retried = Prediction.objects.filter(
        pk=prediction.pk, status=Prediction.Status.FAILED, input_data__isnull=False
    ).update(
        status=Prediction.Status.QUEUED,
        error="",
        error_kind="",
        started_at=None,
        completed_at=None,
        **services.admitted_fields(terms),
    )
    if not retried:
        raise Conflict(
            f"{prediction.public_id} is {prediction.status}; only a failed prediction whose "
            "input is still kept can be retried."
        )
    prediction.refresh_from_db()
    # Refusing rolls the update back. What a new request for it would be refused for, a retry
    # is too: it would run (and bill) a yanked version, a taken-down model, a model whose
    # access was revoked, for a suspended organisation.
    problem = _not_runnable(prediction)
    if problem:
        raise Conflict(f"{prediction.public_id} cannot be retried: {problem}.")
    audit_record(
        action="prediction.retry",
        actor=actor,
        tenant=prediction.tenant,
        target=prediction,
        data={"model": prediction.model.ref, "by": "operator"},
    )
    transaction.on_commit(lambda: services.enqueue(prediction))
    return prediction


def _spend_checked(prediction: Prediction):
    """The listing terms a retry is admitted at; a Conflict saying why where the consumer's
    spend cap, key budget or billing state would refuse a new request for it (an operator's
    retry billed past the cap where the API answered 402)."""
    try:
        return spend_authorize(
            consumer=prediction.tenant,
            model=prediction.model,
            api_key=prediction.api_key,
            pending=lambda key, currency: services.pending_spend(
                consumer=prediction.tenant, api_key=key, currency=currency
            ),
        )
    except PaymentRequired as exc:
        raise Conflict(f"{prediction.public_id} cannot be retried: {exc.message}") from None


def _not_runnable(prediction: Prediction) -> str | None:
    """Why the prediction's consumer could not run its version now (what a new request would
    be refused for, asked as the API asks it), or None."""
    # Locked as version_yank locks it: a yank cannot land between this check and the commit.
    version = ModelVersion.objects.select_for_update().get(pk=prediction.version_id)
    return services.run_refusal(tenant=prediction.tenant, model=prediction.model, version=version)


@transaction.atomic
def prediction_cancel(*, prediction: Prediction, actor: Actor) -> Prediction:
    prediction = services.prediction_cancel(prediction)
    if prediction.status != Prediction.Status.CANCELED:
        raise Conflict(f"{prediction.public_id} already {prediction.status}.")
    audit_record(
        action="prediction.cancel",
        actor=actor,
        tenant=prediction.tenant,
        target=prediction,
        data={"model": prediction.model.ref, "by": "operator"},
    )
    return prediction


@transaction.atomic
def job_retry(*, job: CompressionJob, actor: Actor) -> CompressionJob:
    """Queue a failed compression job again, from the start, with its attempts counted
    afresh (a job failed for losing its worker three times could not be claimed otherwise).
    A job whose version was yanked cannot be retried: nothing may be made from it."""
    retried = CompressionJob.objects.filter(pk=job.pk, status=CompressionJob.Status.FAILED).update(
        status=CompressionJob.Status.QUEUED,
        error="",
        phase="",
        percent=0,
        eta_seconds=None,
        loss=None,
        started_at=None,
        completed_at=None,
        heartbeat_at=None,
        attempts=0,
    )
    if not retried:
        raise Conflict(f"{job.public_id} is {job.status}; only a failed job can be retried.")
    # Refusing here rolls the update back. The version's row is locked as version_yank locks
    # it; a yank after this commits is caught when the worker claims the job.
    parent = ModelVersion.objects.select_for_update().get(pk=job.version_id)
    if parent.status not in compression_services.COMPRESSIBLE:
        raise Conflict(
            f"{job.public_id} cannot be retried: version {parent.number} of {job.model.ref} is "
            f"{parent.status}, and only a ready or deprecated version can be compressed."
        )
    job.refresh_from_db()
    audit_record(
        action="compression.retry",
        actor=actor,
        tenant=job.tenant,
        target=job,
        data={"model": job.model.ref, "by": "operator"},
    )
    transaction.on_commit(lambda: compression_services.enqueue(job))
    return job


def job_cancel(*, job: CompressionJob, actor: Actor) -> CompressionJob:
    # Conflict when it already finished
    return compression_services.job_cancel(job, actor=actor, by="operator")
