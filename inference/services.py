"""Predictions: admit, record, queue, wait, cancel, finish and purge."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.exceptions import Conflict, Forbidden
from accounts.tenancy import Access
from billing.services import spend_authorize, usage_record_create
from inference import limits, realtime, tensors
from inference.models import Prediction
from inference.runtime.spec import Signature
from marketplace import selectors
from marketplace.models import Alias, Model, ModelVersion

RUNNABLE = (ModelVersion.Status.READY, ModelVersion.Status.DEPRECATED)


def request_hash(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def version_for(model: Model, ref: str | None) -> ModelVersion:
    """The version ``ref`` names; without one, the ``production`` alias, else the newest ready
    version."""
    if ref:
        version = selectors.version_resolve(model, ref)
    else:
        alias = (
            Alias.objects.select_related("version").filter(model=model, name="production").first()
        )
        version = (
            alias.version
            if alias is not None
            else model.versions.filter(status__in=RUNNABLE).order_by("-number").first()
        )
        if version is None:
            raise Conflict(f"{model.ref} has no ready version yet.")
    if version.status not in RUNNABLE:
        detail = f": {version.failure_reason}" if version.failure_reason else ""
        raise Conflict(f"Version {version.number} of {model.ref} is {version.status}{detail}.")
    return version


def resolve_runnable(access: Access, *, model_ref: str, version_ref: str | None):
    owner, _, name = model_ref.partition("/")
    model = selectors.model_for_access(access, owner=owner, name=name, perm="run")
    if access.key is not None and not access.key.allows_model(model.ref):
        raise Forbidden(
            f"This API key may not run {model.ref}; its allowed models are "
            f"{', '.join(access.key.allowed_models)}."
        )
    return model, version_for(model, version_ref)


def admit(access: Access) -> dict[str, str]:
    """Rate limit and backpressure, before anything is recorded."""
    bucket = access.key.prefix if access.key else f"user:{access.user.pk}"
    headers = limits.rate_limit(bucket, settings.RATE_LIMIT_PER_MINUTE)
    limits.check_queue(settings.INFERENCE_QUEUE)
    return headers


def prediction_create(
    *,
    access: Access,
    model: Model,
    version: ModelVersion,
    arrays: dict,
    source: str = Prediction.Source.API,
    webhook_url: str = "",
    webhook_events: list[str] | None = None,
    idempotency_key: str = "",
    body_hash: str = "",
) -> tuple[Prediction, bool]:
    """Record a queued prediction and send it to the workers after commit. With an
    idempotency key, a retry within 24 h returns the first prediction (``created`` False)
    and a different body under the same key is 409. Paid work the consumer cannot pay for is
    refused with 402 before anything is recorded."""
    if idempotency_key:
        existing = _by_idempotency_key(access, idempotency_key, body_hash)
        if existing is not None:
            return existing, False
    batch = tensors.check(Signature.from_json(version.signature), arrays)
    spend_authorize(consumer=access.tenant, model=model, api_key=access.key)
    try:
        with transaction.atomic():
            prediction = Prediction.objects.create(
                tenant=access.tenant,
                api_key=access.key,
                created_by=access.user,
                model=model,
                version=version,
                source=source,
                input_data=tensors.encode(arrays),
                batch_size=batch,
                webhook_url=webhook_url,
                webhook_events=webhook_events or [],
                idempotency_key=idempotency_key,
                request_hash=body_hash,
            )
            transaction.on_commit(lambda: enqueue(prediction))
    except IntegrityError:
        if not idempotency_key:
            raise
        # The same key raced in from a concurrent retry: answer with the winner.
        existing = _by_idempotency_key(access, idempotency_key, body_hash)
        if existing is None:
            raise
        return existing, False
    return prediction, True


def _by_idempotency_key(access: Access, key: str, body_hash: str) -> Prediction | None:
    return by_idempotency_key(Prediction, tenant=access.tenant, key=key, body_hash=body_hash)


def by_idempotency_key(model_class, *, tenant, key: str, body_hash: str):
    """The ``model_class`` row (a prediction or a compression job) a POST with this
    Idempotency-Key made within 24 h; 409 when the key came with another body."""
    since = timezone.now() - settings.IDEMPOTENCY_TTL
    # A key older than a day is free again, whether or not the purge has run yet.
    model_class.objects.filter(tenant=tenant, idempotency_key=key, created_at__lt=since).update(
        idempotency_key=""
    )
    existing = model_class.objects.filter(
        tenant=tenant, idempotency_key=key, created_at__gte=since
    ).first()
    if existing is not None and existing.request_hash != body_hash:
        raise Conflict("This Idempotency-Key was used with a different request body.")
    return existing


def enqueue(prediction: Prediction) -> None:
    from celery import current_app

    current_app.send_task(
        "workers.run_prediction", args=[prediction.public_id], queue=settings.INFERENCE_QUEUE
    )


def prediction_wait(prediction: Prediction, timeout: float) -> Prediction:
    def done() -> bool:
        status = Prediction.objects.values_list("status", flat=True).get(pk=prediction.pk)
        return status in Prediction.TERMINAL

    realtime.wait_done(prediction.public_id, timeout, done)
    # Only the fields the worker writes: the cached model and version stay loaded.
    prediction.refresh_from_db(
        fields=[
            "status",
            "output_data",
            "error",
            "error_kind",
            "compute_ms",
            "batched_with",
            "started_at",
            "completed_at",
        ]
    )
    return prediction


def prediction_cancel(prediction: Prediction) -> Prediction:
    """Cancel a prediction that has not finished; it is never billed."""
    Prediction.objects.filter(
        pk=prediction.pk, status__in=[Prediction.Status.QUEUED, Prediction.Status.RUNNING]
    ).update(status=Prediction.Status.CANCELED, completed_at=timezone.now(), input_data=None)
    prediction.refresh_from_db(fields=["status", "completed_at", "input_data"])
    if prediction.status == Prediction.Status.CANCELED:
        transaction.on_commit(lambda: _announce(prediction))
    return prediction


# --- the worker's side ----------------------------------------------------------------------


def prediction_claim(prediction: Prediction) -> bool:
    """Mark a prediction running; False when it already finished or was cancelled (a
    redelivered task then does nothing)."""
    from celery import current_app
    from django.db.models import F

    claimed = Prediction.objects.filter(
        pk=prediction.pk, status__in=[Prediction.Status.QUEUED, Prediction.Status.RUNNING]
    ).update(
        status=Prediction.Status.RUNNING, started_at=timezone.now(), attempts=F("attempts") + 1
    )
    if claimed and prediction.webhook_url and "start" in prediction.webhook_events:
        current_app.send_task(
            "inference.deliver_webhook", args=[prediction.public_id, "start"], queue="default"
        )
    return bool(claimed)


def prediction_succeed(
    prediction: Prediction, *, output: bytes, compute_ms: float, batched_with: int = 1
) -> bool:
    """Write the result and its usage record in one transaction, exactly once."""
    with transaction.atomic():
        done = Prediction.objects.filter(pk=prediction.pk, status=Prediction.Status.RUNNING).update(
            status=Prediction.Status.SUCCEEDED,
            output_data=output,
            compute_ms=compute_ms,
            batched_with=batched_with,
            completed_at=timezone.now(),
        )
        if done:
            usage_record_create(
                kind="prediction",
                source_id=prediction.public_id,
                consumer=prediction.tenant,
                model=prediction.model,
                api_key=prediction.api_key,
                compute_seconds=Decimal(str(compute_ms)) / 1000,
            )
            transaction.on_commit(lambda: _announce(prediction))
    return bool(done)


def prediction_fail(prediction: Prediction, *, error: str, kind: str) -> bool:
    """Failed predictions are not billed."""
    with transaction.atomic():
        done = Prediction.objects.filter(pk=prediction.pk, status=Prediction.Status.RUNNING).update(
            status=Prediction.Status.FAILED,
            error=error[:5000],
            error_kind=kind,
            completed_at=timezone.now(),
        )
        if done:
            transaction.on_commit(lambda: _announce(prediction))
    return bool(done)


def _announce(prediction: Prediction) -> None:
    realtime.publish_done(prediction.public_id)
    if prediction.webhook_url:
        from celery import current_app

        current_app.send_task(
            "inference.deliver_webhook", args=[prediction.public_id, "completed"], queue="default"
        )


def predictions_purge() -> int:
    """Drop inputs and outputs past their retention; the metadata billing and audit need
    stays."""
    cutoff = timezone.now() - settings.PREDICTION_DATA_TTL
    purged = (
        Prediction.objects.filter(created_at__lt=cutoff, data_purged_at__isnull=True)
        .filter(status__in=Prediction.TERMINAL)
        .update(input_data=None, output_data=None, data_purged_at=timezone.now())
    )
    Prediction.objects.filter(created_at__lt=timezone.now() - settings.IDEMPOTENCY_TTL).exclude(
        idempotency_key=""
    ).update(idempotency_key="")
    return purged
