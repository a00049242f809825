"""Predictions: admit, record, queue, wait, cancel, finish and purge."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Avg, BooleanField, Count, Q
from django.db.models.expressions import RawSQL
from django.utils import timezone

from accounts.exceptions import Conflict, Gone, ServiceError
from accounts.models import ALL_SCOPES, Scope, Tenant
from accounts.tenancy import Access
from billing.services import alerts_after_admission, spend_authorize, usage_record_create
from config import sql, tasks
from config.logs import current_request_id
from inference import catalog, dispatch, limits, realtime, tensors
from inference.models import CompressionJob, Prediction, WebhookSigningKey
from inference.runtime.spec import Signature
from marketplace import selectors
from marketplace.models import Alias, Model, ModelVersion

logger = logging.getLogger(__name__)

RUNNABLE = (ModelVersion.Status.READY, ModelVersion.Status.DEPRECATED)


def request_hash(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def version_for(model: Model, ref: str | None, *, access: Access | None) -> ModelVersion:
    """The version ``ref`` names; without one, the ``production`` alias, else the newest ready
    version. To another organisation than the publisher (``access``), a version that is not
    published does not exist: its state and failure reason are the publisher's."""
    if ref:
        version = selectors.version_resolve(model, ref, access=access)
    else:
        alias = (
            Alias.objects.select_related("version").filter(model=model, name="production").first()
        )
        version = (
            alias.version
            if alias is not None
            else model.versions.filter(ModelVersion.runnable()).order_by("-number").first()
        )
        if version is None or selectors.version_hidden(version, model, access):
            raise Conflict(f"{model.ref} has no ready version yet.")
    if version.past_sunset:
        alternative = selectors.alias_instead(model)
        hint = f" Use the alias '{alternative}' instead." if alternative else ""
        raise Gone(
            f"Version {version.number} of {model.ref} reached its sunset on "
            f"{version.sunset_at:%Y-%m-%d %H:%M} UTC: {version.status_reason or 'deprecated'}."
            f"{hint}",
            use_alias=alternative,
        )
    if version.status not in RUNNABLE:
        detail = f": {version.failure_reason}" if version.failure_reason else ""
        raise Conflict(f"Version {version.number} of {model.ref} is {version.status}{detail}.")
    return version


def run_refusal(*, tenant: Tenant, model: Model, version: ModelVersion) -> str | None:
    """Why ``tenant`` could not run ``version`` of ``model`` now (what a new request for it
    would be refused for, asked as the API asks it: a suspended organisation, a yanked or
    retired version, a model taken down, access revoked), or None."""
    if tenant.status != Tenant.Status.ACTIVE:
        return f"the organisation {tenant.slug} is suspended"
    access = Access(tenant=tenant, scopes=ALL_SCOPES)
    try:
        selectors.model_for_access(access, owner=model.tenant.slug, name=model.name, perm="run")
        version_for(model, str(version.number), access=access)
    except ServiceError as exc:
        return f"{tenant.slug} may not run {model.ref} version {version.number}: {exc.message}"
    return None


def resolve_runnable(access: Access, *, model_ref: str, version_ref: str | None):
    """The model ``access`` may run and the version ``version_ref`` names, from the
    per-process cache when it resolved the same way moments ago (inference/catalog.py)."""
    # The allowlist is the key's own, so it is checked before the per-tenant cache.
    selectors.refuse_unless_key_allows(access, model_ref)
    key = (access.tenant.pk, access.has_scope(Scope.INFERENCE), model_ref, version_ref or "")

    def load() -> catalog.Runnable:
        owner, _, name = model_ref.partition("/")
        model = selectors.model_for_access(access, owner=owner, name=name, perm="run")
        return catalog.Runnable(model, version_for(model, version_ref, access=access))

    runnable = catalog.cached(key, load)
    return runnable.model, runnable.version


def signature(version: ModelVersion) -> Signature:
    """The version's parsed signature, kept on the (cached) instance."""
    parsed = getattr(version, "_parsed_signature", None)
    if parsed is None:
        parsed = version._parsed_signature = Signature.from_json(version.signature)
    return parsed


def admit(access: Access, model: Model, version: ModelVersion) -> dict[str, str]:
    """Rate limit, the version's breaker and backpressure, before anything is recorded."""
    bucket = access.key.prefix if access.key else f"user:{access.user.pk}"
    queue = settings.INFERENCE_QUEUE
    return limits.admit(
        bucket,
        settings.RATE_LIMIT_PER_MINUTE,
        dispatch.queue_key(queue) if dispatch.fast_path_live(queue) else queue,
        version_pk=version.pk,
        version_name=f"{model.ref} version {version.number}",
    )


# The partial index's own condition, as SQL with its values written in: SQLite uses a partial
# index only for a query whose WHERE holds that same condition, and a bound "status IN (?, ?)"
# is not (the admission check then read every prediction of the consumer: 34-52 ms at
# 10,000). The values are our constants, not input.
# Its statuses are read from the index itself (inference.models, "prediction_in_flight"), so
# the two cannot drift apart and leave SQLite reading every row again.
_IN_FLIGHT_STATUSES = dict(
    next(i for i in Prediction._meta.indexes if i.name == "prediction_in_flight").condition.children
)["status__in"]
assert set(_IN_FLIGHT_STATUSES) == set(Prediction.UNFINISHED)  # what admission counts
_IN_FLIGHT = RawSQL(  # noqa: S611 - no input in it: the table's name and our status words
    f'"{Prediction._meta.db_table}"."status" IN ('
    + ", ".join(f"'{status}'" for status in _IN_FLIGHT_STATUSES)
    + ")",
    [],
    output_field=BooleanField(),
)


def _unfinished(consumer):
    """The consumer's predictions admitted and not finished (a partial index covers them)."""
    return Prediction.objects.filter(tenant=consumer).filter(_IN_FLIGHT)


def pending_spend(*, consumer, api_key=None, currency: str | None = None) -> Decimal:
    """About what the consumer's queued and running predictions will cost once billed (of
    ``api_key``'s alone, in ``currency`` alone, when given): per model, the calls beyond the
    month's free ones left, each at its listing's price per call plus its price per second
    for the version's measured latency. Its own models cost it nothing."""
    from billing.selectors import free_calls_used, period_of

    rows = _unfinished(consumer).exclude(model__tenant=consumer)
    if api_key is not None:
        rows = rows.filter(api_key=api_key)
    if currency is not None:
        rows = rows.filter(model__listing__currency=currency)
    groups = rows.values(
        "model",
        "model__listing__price_per_call",
        "model__listing__price_per_second",
        "model__listing__free_calls_per_month",
    ).annotate(calls=Count("pk"), latency_ms=Avg("version__latency_ms"))
    period = period_of()
    total = Decimal(0)
    for group in groups:
        per_call = group["model__listing__price_per_call"] or Decimal(0)
        per_second = group["model__listing__price_per_second"] or Decimal(0)
        if not (per_call or per_second):
            continue
        calls, free = group["calls"], group["model__listing__free_calls_per_month"] or 0
        if free:
            used = free_calls_used(
                consumer=consumer, model=group["model"], period=period, at_most=free
            )
            calls = max(0, calls - max(0, free - used))
        seconds = Decimal(str(group["latency_ms"] or 0)) / 1000
        total += calls * (per_call + per_second * seconds)
    return total


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
    wait: bool = False,
) -> tuple[Prediction, bool]:
    """Record a queued prediction and send it to the workers after commit. With an
    idempotency key, a retry within 24 h returns the first prediction (``created`` False)
    and a different body under the same key is 409. Paid work the consumer cannot pay for is
    refused with 402 before anything is recorded. With ``wait``, the request registers for the
    result before the prediction is queued (see ``prediction_wait``)."""
    if idempotency_key:
        existing = _by_idempotency_key(access, idempotency_key, body_hash)
        if existing is not None:
            return existing, False
    batch = tensors.check(signature(version), arrays)
    # Started (up to 1 s, once per process) before the write transaction, not inside it.
    shared = realtime.listener() if wait else None
    prediction = None
    try:
        with alerts_after_admission(), transaction.atomic():
            # In the transaction that records it: paid work is admitted one at a time per
            # consumer (``accounts.services.tenant_locked``), each counting the one before.
            terms = spend_authorize(
                consumer=access.tenant,
                model=model,
                api_key=access.key,
                pending=lambda key, currency: pending_spend(
                    consumer=access.tenant, api_key=key, currency=currency
                ),
                in_flight=lambda: _unfinished(access.tenant).filter(model=model).count(),
            )
            prediction = Prediction(
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
                request_id=current_request_id() or "",
            )
            for field, value in admitted_fields(terms).items():
                setattr(prediction, field, value)
            sql.insert(prediction)
            if shared is not None:
                prediction._waiter = realtime.expect(prediction.public_id, shared)
            transaction.on_commit(lambda: _enqueue_or_withdraw(prediction))
    except IntegrityError:
        _forget_waiter(prediction)
        if not idempotency_key:
            raise
        # The same key raced in from a concurrent retry: answer with the winner.
        existing = _by_idempotency_key(access, idempotency_key, body_hash)
        if existing is None:
            raise
        return existing, False
    except BaseException:
        _forget_waiter(prediction)
        raise
    return prediction, True


def prediction_replay(
    access: Access, *, model_ref: str, key: str, body_hash: str
) -> Prediction | None:
    """The prediction a request with this Idempotency-Key made (409 with another body), or
    None. Looked up before the request is resolved and admitted: a retry runs nothing, so
    neither the rate limit nor a version yanked since the first answer applies to it (a 410
    telling the client to use another version would have it pay twice)."""
    selectors.refuse_unless_key_allows(access, model_ref)  # the key's own limit still holds
    return _by_idempotency_key(access, key, body_hash)


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
    """To a worker: on the fast path when one is there, else as a Celery task."""
    if dispatch.send(settings.INFERENCE_QUEUE, prediction.public_id):
        return
    tasks.send("workers.run_prediction", prediction.public_id, queue=settings.INFERENCE_QUEUE)


def _enqueue_or_withdraw(prediction: Prediction) -> None:
    """``enqueue``, or, when that fails (Redis down), take the prediction back before the
    error reaches the caller as a 503: nothing will run it, and left queued it counted against
    the spend cap, the key's budget and the free calls for good, and a retry under its
    Idempotency-Key was answered with it, queued, every time. (If the database fails too, the
    beat's sweep sends it later: ``predictions_resend_queued``.)"""
    unrun = Prediction.objects.filter(
        pk=prediction.pk, status=Prediction.Status.QUEUED, started_at__isnull=True
    )
    dispatch.send_or_undo(lambda: enqueue(prediction), unrun.delete)


def _forget_waiter(prediction: Prediction | None) -> None:
    waiter = getattr(prediction, "_waiter", None)
    if waiter is not None:
        waiter.listener.forget(waiter)
        prediction._waiter = None


WORKER_FIELDS = [
    "status",
    "output_data",
    "error",
    "error_kind",
    "compute_ms",
    "batched_with",
    "started_at",
    "completed_at",
]


def prediction_wait(prediction: Prediction, timeout: float) -> Prediction:
    """Hold the request until the prediction finishes or ``timeout`` passes, woken by push.
    A prediction this request queued with ``wait`` usually comes back with its result (no
    database read); any other is read back once it is done."""

    def done() -> bool:
        status = Prediction.objects.values_list("status", flat=True).get(pk=prediction.pk)
        return status in Prediction.TERMINAL

    waiter = getattr(prediction, "_waiter", None)
    if waiter is not None:
        prediction._waiter = None
        result = realtime.wait_result(waiter, timeout, done)
        if isinstance(result, tuple):
            _apply_result(prediction, *result)
            return prediction
    else:
        realtime.wait_done(prediction.public_id, timeout, done)
    # Only the fields the worker writes: the cached model and version stay loaded.
    prediction.refresh_from_db(fields=WORKER_FIELDS)
    return prediction


def _apply_result(prediction: Prediction, header: dict, output: bytes) -> None:
    for name in ("status", "error", "error_kind", "compute_ms", "batched_with"):
        setattr(prediction, name, header[name])
    for name in ("started_at", "completed_at"):
        value = header[name]
        setattr(prediction, name, datetime.fromisoformat(value) if value else None)
    prediction.output_data = output if header["status"] == Prediction.Status.SUCCEEDED else None
    if "cost" in header:
        prediction.known_cost = header["cost"]


def _result_header(prediction: Prediction) -> dict:
    """What the worker wrote, as ``_apply_result`` reads it."""
    header = {
        "status": prediction.status,
        "error": prediction.error,
        "error_kind": prediction.error_kind,
        "compute_ms": prediction.compute_ms,
        "batched_with": prediction.batched_with,
        "started_at": prediction.started_at.isoformat() if prediction.started_at else None,
        "completed_at": prediction.completed_at.isoformat() if prediction.completed_at else None,
    }
    if getattr(prediction, "known_cost", None) is not None:
        header["cost"] = prediction.known_cost
    return header


def prediction_cancel(prediction: Prediction) -> Prediction:
    """Cancel a prediction that has not finished; it is never billed. One that finished
    first comes back as it finished, with its result (a caller that holds an older copy, such
    as a request whose wait ran out, answers with it)."""
    cancelled = Prediction.objects.filter(
        pk=prediction.pk, status__in=Prediction.UNFINISHED
    ).update(status=Prediction.Status.CANCELED, completed_at=timezone.now(), input_data=None)
    moved = ["status", "completed_at"] if cancelled else WORKER_FIELDS
    prediction.refresh_from_db(fields=[*moved, "input_data"])
    if cancelled:  # only the call that cancelled it: once per prediction
        transaction.on_commit(lambda: _announce(prediction))
    return prediction


# --- the worker's side ----------------------------------------------------------------------


def prediction_claim(prediction: Prediction) -> bool:
    """Mark a prediction running; False when it already finished or was cancelled (a
    redelivered task then does nothing)."""
    now = timezone.now()
    claimed = sql.update(
        Prediction,
        prediction.pk,
        where={"status": Prediction.UNFINISHED},
        values={"status": Prediction.Status.RUNNING, "started_at": now},
        increment=["attempts"],
    )
    if claimed:
        prediction.status, prediction.started_at = Prediction.Status.RUNNING, now
    if claimed and prediction.webhook_url and "start" in prediction.webhook_events:
        transaction.on_commit(
            lambda: tasks.send("inference.deliver_webhook", prediction.public_id, "start"),
            robust=True,  # the start is delivered or not; the claim stands either way
        )
    return bool(claimed)


def prediction_succeed(
    prediction: Prediction, *, output: bytes, compute_ms: float, batched_with: int = 1
) -> bool:
    """Write the result and its usage record in one transaction, exactly once (no savepoint
    inside a caller's: an error rolls back the caller's work with it)."""
    now = timezone.now()
    with transaction.atomic(savepoint=False):
        done = sql.update(
            Prediction,
            prediction.pk,
            where={"status": Prediction.Status.RUNNING},
            values={
                "status": Prediction.Status.SUCCEEDED,
                "output_data": output,
                "compute_ms": compute_ms,
                "batched_with": batched_with,
                "completed_at": now,
            },
        )
        if done:
            record = usage_record_create(
                kind="prediction",
                source_id=prediction.public_id,
                consumer=prediction.tenant,
                model=prediction.model,
                api_key_id=prediction.api_key_id,
                compute_seconds=Decimal(str(compute_ms)) / 1000,
                admitted=admitted_terms(prediction),
            )
            prediction.status = Prediction.Status.SUCCEEDED
            prediction.compute_ms, prediction.batched_with = compute_ms, batched_with
            prediction.completed_at = now
            prediction.known_cost = {
                "amount": str(record.amount),
                "currency": record.currency,
                "free": record.free,
            }
            transaction.on_commit(lambda: _announce(prediction, output))
    return bool(done)


def admitted_fields(listing) -> dict[str, Any]:
    """The prediction's record of the listing terms it is admitted at (what
    ``spend_authorize`` returned; None: free to it): it is billed at no more."""
    return {
        "admitted_price_per_call": listing.price_per_call if listing else None,
        "admitted_price_per_second": listing.price_per_second if listing else None,
        "admitted_currency": listing.currency if listing else "",
    }


def admitted_terms(prediction: Prediction) -> tuple[Decimal, Decimal, str] | None:
    """Price per call, per second and currency the prediction was admitted at, if recorded."""
    if not prediction.admitted_currency:
        return None
    return (
        prediction.admitted_price_per_call,
        prediction.admitted_price_per_second,
        prediction.admitted_currency,
    )


def prediction_fail(prediction: Prediction, *, error: str, kind: str) -> bool:
    """Failed predictions are not billed."""
    now = timezone.now()
    with transaction.atomic(savepoint=False):
        done = Prediction.objects.filter(pk=prediction.pk, status=Prediction.Status.RUNNING).update(
            status=Prediction.Status.FAILED, error=error[:5000], error_kind=kind, completed_at=now
        )
        if done:
            prediction.status, prediction.completed_at = Prediction.Status.FAILED, now
            prediction.error, prediction.error_kind = error[:5000], kind
            transaction.on_commit(lambda: _announce(prediction, b""))
    return bool(done)


def predictions_resend_queued() -> int:
    """Send again the predictions still queued ``MM_PREDICTION_STUCK_SECONDS`` after they were
    made: their hand-off was lost (a worker whose claim failed, the database locked or
    restarting, dropped what it had taken), and no worker would ever see them. Only while
    nothing waits on the queue: then nothing still queued is only waiting its turn. A worker
    runs a prediction once however many times it is sent (the claim is conditional). How
    many were sent."""
    queue = settings.INFERENCE_QUEUE
    if waiting_on(queue):
        # A backlog may hold them yet (a slow model's queue can take longer than this to
        # drain): sent again now, each would count twice against the queue's depth, which
        # refuses new work (503) past MM_MAX_QUEUE_DEPTH. Once nothing waits, what is still
        # queued was lost.
        return 0
    cutoff = timezone.now() - timedelta(seconds=settings.PREDICTION_STUCK_SECONDS)
    waiting = Prediction.objects.filter(status=Prediction.Status.QUEUED, created_at__lt=cutoff)
    resent = 0
    for prediction in waiting.only("public_id").order_by("pk")[:1000]:
        enqueue(prediction)
        resent += 1
    if resent:
        logger.warning(
            "sent again %d predictions queued for over %.0f s",
            resent,
            settings.PREDICTION_STUCK_SECONDS,
        )
    return resent


def waiting_on(queue: str) -> int:
    """How many messages wait to be taken on ``queue`` (``dispatch.queue_depths``: its
    fast-path list and its Celery list)."""
    return dispatch.queue_depths(realtime.client(), [queue])[queue][0]


def predictions_stuck_q() -> Q:
    """Predictions running ``MM_PREDICTION_STUCK_SECONDS`` after they started: the beat's
    sweep fails them (and the operations page marks them so)."""
    cutoff = timezone.now() - timedelta(seconds=settings.PREDICTION_STUCK_SECONDS)
    return Q(status=Prediction.Status.RUNNING, started_at__lt=cutoff)


def predictions_fail_stuck() -> int:
    """Fail, unbilled, the predictions still running ``MM_PREDICTION_STUCK_SECONDS`` after
    they started: their worker is stuck, or was lost where nothing sends them again. Whoever
    waits is told, as for any failure; a worker that finishes one after all finds it failed
    and bills nothing. How many were failed."""
    stuck = Prediction.objects.filter(predictions_stuck_q())
    error = (
        f"The prediction did not finish within {settings.PREDICTION_STUCK_SECONDS:.0f} s of "
        "starting (the worker running it was lost); it was not billed. Send it again."
    )
    failed = 0
    for prediction in stuck.defer("input_data", "output_data").order_by("pk")[:1000]:
        failed += prediction_fail(prediction, error=error, kind="internal")
    if failed:
        logger.warning("failed %d predictions stuck in running", failed)
    return failed


def _announce(prediction: Prediction, output: bytes | None = None) -> None:
    """Wake whoever waits for ``prediction``; the worker sends its result along (``output``),
    a cancellation only says it is done. Then its webhook, if it has one. Run after commit:
    neither can undo what was recorded, so a failure of one (Redis down) is logged and does
    not stop the other; a webhook not sent now goes with the beat's sweep
    (``webhooks_resend_missed``). Raised, the publish had kept the webhook from being sent
    at all, and the worker logged the recorded and billed result as a failed write."""
    try:
        if output is None:
            realtime.publish_done(prediction.public_id)
        else:
            realtime.publish_result(prediction.public_id, _result_header(prediction), output)
    except Exception:  # noqa: BLE001 - waiters fall back to the database
        logger.warning("announcing %s failed", prediction.public_id, exc_info=True)
    if prediction.webhook_url:
        try:
            tasks.send("inference.deliver_webhook", prediction.public_id, "completed")
        except Exception:  # noqa: BLE001 - the sweep sends it
            logger.warning("sending %s's webhook failed", prediction.public_id, exc_info=True)


def tenant_data_erase(*, tenant, **_) -> None:
    """What inference holds of an organisation being deleted whose billing rows stay
    (``marketplace.vault.store.tenant_erasing``): its predictions' inputs, outputs and
    webhook addresses, its compression jobs' training data, and its webhook signing keys."""
    Prediction.objects.filter(tenant=tenant).update(
        input_data=None, output_data=None, data_purged_at=timezone.now(), webhook_url=""
    )
    CompressionJob.objects.filter(tenant=tenant).exclude(data=None).update(data=None)
    WebhookSigningKey.objects.filter(tenant=tenant).delete()


def predictions_purge() -> int:
    """Drop inputs and outputs past their retention, and the data publishers sent with
    compression jobs that ended as long ago; the metadata billing and audit need stays."""
    cutoff = timezone.now() - settings.PREDICTION_DATA_TTL
    purged = (
        Prediction.objects.filter(created_at__lt=cutoff, data_purged_at__isnull=True)
        .filter(status__in=Prediction.TERMINAL)
        .update(input_data=None, output_data=None, data_purged_at=timezone.now())
    )
    CompressionJob.objects.filter(
        status__in=CompressionJob.TERMINAL, completed_at__lt=cutoff
    ).exclude(data=None).update(data=None)
    Prediction.objects.filter(created_at__lt=timezone.now() - settings.IDEMPOTENCY_TTL).exclude(
        idempotency_key=""
    ).update(idempotency_key="")
    return purged
