"""The operations page of the admin console (``/admin/operations/``): queue depths, live
workers from their heartbeats, running and failed work, and money per period."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib import admin
from django.contrib.auth.decorators import permission_required
from django.db.models import BooleanField, Count, ExpressionWrapper, Q
from django.shortcuts import render
from django.utils import timezone

from billing.selectors import period_of, platform_money, top_consumers
from inference.compression_services import jobs_lost_q
from inference.models import CompressionJob, Prediction
from inference.services import predictions_stuck_q
from marketplace.models import ModelVersion
from workers import heartbeat


def queue_depths() -> dict[str, tuple[int, int] | None]:
    """Per queue, the work waiting and the predictions workers have in hand
    (``inference.dispatch.queue_depths``); None where Redis did not answer."""
    import redis

    from inference import dispatch

    try:
        return dispatch.all_queue_depths(timeout=2)
    except redis.RedisError:
        return dict.fromkeys(dispatch.queue_names())


def _workers() -> list[dict]:
    try:
        seen = heartbeat.workers_seen()
    except Exception:  # noqa: BLE001 - the page still shows everything else
        return []
    ids = {key.split(":")[0] for worker in seen for key in worker["loaded_models"]}
    refs = {
        version.public_id: f"{version.model.ref} v{version.number}"
        for version in ModelVersion.objects.select_related("model__tenant").filter(
            public_id__in=ids
        )
    }
    for worker in seen:
        worker["models"] = [refs.get(key.split(":")[0], key) for key in worker["loaded_models"]]
        worker["memory_mib"] = round((worker["worker_rss"] + worker["hosts_rss"]) / 2**20)
    return seen


def _with_ages(rows, lost: Q) -> list:
    """Unfinished predictions or jobs with how long they have waited or run, and whether the
    beat's sweeps will take them as lost (``lost``: the sweep's own condition, read in the same
    query; the page had a copy of its own, which missed a job that never sent a heartbeat).
    The page showed counts alone, and a lost job's row looked as a live one's."""
    now = timezone.now()
    rows = list(rows.annotate(lost=ExpressionWrapper(lost, output_field=BooleanField())))
    for row in rows:
        row.age = (now - (row.started_at or row.created_at)).total_seconds()
        beat = getattr(row, "heartbeat_at", None)
        row.silent = (now - beat).total_seconds() if beat else None
    return rows


def _counts(model, since) -> dict[str, int]:
    rows = model.objects.filter(created_at__gte=since).values("status").annotate(n=Count("pk"))
    return {row["status"]: row["n"] for row in rows}


# The page shows platform revenue, top consumers and every tenant's failed work: only to staff
# who may already see those rows in the changelists (superusers hold every permission).
OPERATIONS_PERMISSIONS = (
    "billing.view_usagerecord",
    "inference.view_prediction",
    "inference.view_compressionjob",
)


@permission_required(OPERATIONS_PERMISSIONS, raise_exception=True)
def operations(request):
    since = timezone.now() - timedelta(days=1)
    period = period_of()
    context = {
        **admin.site.each_context(request),
        "title": "Operations",
        "queues": queue_depths(),
        "workers": _workers(),
        "predictions": _counts(Prediction, since),
        "jobs": _counts(CompressionJob, since),
        "running_jobs": _with_ages(
            CompressionJob.objects.select_related("model__tenant")
            .filter(status=CompressionJob.Status.RUNNING)
            .order_by("started_at")[:20],
            jobs_lost_q(),
        ),
        "unfinished_predictions": _with_ages(
            Prediction.objects.select_related("model__tenant", "tenant")
            .defer("input_data", "output_data")
            .filter(status__in=Prediction.UNFINISHED)
            .order_by("created_at")[:20],
            predictions_stuck_q(),
        ),
        "stuck_after": settings.PREDICTION_STUCK_SECONDS,
        "lost_after": settings.COMPRESSION_JOB_LOST_SECONDS,
        "failed_predictions": Prediction.objects.select_related("model__tenant", "tenant")
        .defer("input_data", "output_data")
        .filter(status=Prediction.Status.FAILED, created_at__gte=since)
        .order_by("-created_at")[:20],
        "failed_jobs": CompressionJob.objects.select_related("model__tenant")
        .filter(status=CompressionJob.Status.FAILED, created_at__gte=since)
        .order_by("-created_at")[:20],
        "money": platform_money(),
        "top_consumers": top_consumers(period=period),
        "period": period,
    }
    return render(request, "admin/operations.html", context)
