"""The operators' console for running work: predictions and compression jobs with their
errors, and retry and cancel actions (audited). Tensors and training data never show."""

from __future__ import annotations

from django.contrib import admin, messages

from accounts.admin import OperatorActions, ReadOnlyAdmin, act_on_each, operator_actor
from accounts.api.errors import UNAVAILABLE
from inference import operations
from inference.models import AbuseFlag, CompressionJob, Prediction


def _each(request, queryset, act, done: str) -> None:
    unsent = []

    def attempt(obj) -> None:
        try:
            act(obj)
        except UNAVAILABLE as exc:
            # The change committed; handing the work to the queue (after the commit) failed:
            # Redis or the broker is down. The beat's sweeps send queued work that no worker
            # took (``predictions_resend_queued``, ``jobs_requeue_lost``). It was a 500 page.
            unsent.append((obj.public_id, type(exc).__name__))

    act_on_each(request, queryset, attempt, f"{done} {{n}}.")
    if unsent:
        ids = ", ".join(public_id for public_id, _ in unsent)
        messages.warning(
            request,
            f"The queue could not be reached ({unsent[0][1]}: is Redis up?), so {ids} "
            "wait(s) queued: the beat sends queued work again once the queue answers.",
        )


@admin.register(Prediction)
class PredictionAdmin(OperatorActions, ReadOnlyAdmin):
    list_display = [
        "public_id",
        "tenant",
        "model",
        "status",
        "error_kind",
        "source",
        "batch_size",
        "attempts",
        "created_at",
        "completed_at",
    ]
    list_filter = ["status", "error_kind", "source"]
    # Ids and names, not the error text (a scan of every row's message), and no count of the
    # whole table or month drill-down (each a pass over every row): at 20,000 predictions the
    # page took 343 ms, and a search 501 ms.
    search_fields = ["=public_id", "tenant__slug", "model__name"]
    show_full_result_count = False
    list_select_related = ["tenant", "model__tenant"]
    exclude = ["input_data", "output_data", "request_hash"]
    actions = ["retry", "cancel"]

    def get_queryset(self, request):
        # Never shown, and each can be megabytes: a changelist page holds 100 rows.
        return super().get_queryset(request).defer("input_data", "output_data")

    @admin.action(description="Retry the selected failed predictions", permissions=["operate"])
    def retry(self, request, queryset):
        operator = operator_actor(request)
        _each(
            request,
            queryset.select_related("tenant", "model__tenant"),
            lambda p: operations.prediction_retry(prediction=p, actor=operator),
            "Queued again:",
        )

    @admin.action(
        description="Cancel the selected queued or running predictions", permissions=["operate"]
    )
    def cancel(self, request, queryset):
        operator = operator_actor(request)
        _each(
            request,
            queryset.select_related("tenant", "model__tenant"),
            lambda p: operations.prediction_cancel(prediction=p, actor=operator),
            "Cancelled:",
        )


@admin.register(CompressionJob)
class CompressionJobAdmin(OperatorActions, ReadOnlyAdmin):
    list_display = [
        "public_id",
        "tenant",
        "model",
        "method",
        "status",
        "phase",
        "percent",
        "queue",
        "created_at",
        "completed_at",
    ]
    list_filter = ["status", "method", "queue"]
    search_fields = ["public_id", "tenant__slug", "model__name", "error"]
    date_hierarchy = "created_at"
    list_select_related = ["tenant", "model__tenant"]
    exclude = ["data"]
    actions = ["retry", "cancel"]

    @admin.action(description="Retry the selected failed jobs", permissions=["operate"])
    def retry(self, request, queryset):
        operator = operator_actor(request)
        _each(
            request,
            queryset.select_related("tenant", "model__tenant"),
            lambda j: operations.job_retry(job=j, actor=operator),
            "Queued again:",
        )

    @admin.action(description="Cancel the selected queued or running jobs", permissions=["operate"])
    def cancel(self, request, queryset):
        operator = operator_actor(request)
        _each(
            request,
            queryset.select_related("tenant", "model__tenant"),
            lambda j: operations.job_cancel(job=j, actor=operator),
            "Cancelled:",
        )


@admin.register(AbuseFlag)
class AbuseFlagAdmin(ReadOnlyAdmin):
    """Keys flagged for possible model extraction (publishers see their own in the API)."""

    list_display = [
        "public_id",
        "tenant",
        "model",
        "consumer",
        "key_prefix",
        "reason",
        "rejected",
        "predictions",
        "distinct_inputs",
        "first_seen",
        "last_seen",
    ]
    list_filter = ["reason"]
    search_fields = ["public_id", "tenant__slug", "consumer__slug", "key_prefix", "model__name"]
    date_hierarchy = "first_seen"
    list_select_related = ["tenant", "consumer", "model__tenant"]
