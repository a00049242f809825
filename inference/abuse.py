"""Model extraction: an API key that floods another organisation's model with distinct inputs
until the rate limit stops it is flagged for the publisher, once per key, model and window.

The rate limiter (``inference.limits``) counts each key's rejections per window in Redis. When
the count reaches the threshold, and again at each multiple of it, the key is looked at with
``extraction_check`` (a count of distinct inputs per model: the costly part), at most once per
``EXTRACTION_RECHECK_SECONDS`` (60) per key, so a flood cannot turn its rejections into
database load; at the multiples in between, a flag already raised only has its rejection
count and last-seen time brought up to date (one indexed UPDATE).
A flag only informs the publisher: the key is limited exactly as before, and a publisher's
own keys calling its own models are never flagged.

Knobs (Django settings, defaults here): ``EXTRACTION_WINDOW_SECONDS`` (3600), the window a
flag covers; ``EXTRACTION_FLAG_REJECTIONS`` (20), rejections in a window before a key is
looked at; ``EXTRACTION_MIN_CALLS`` (10), accepted calls to one model in the window before it
can be flagged; ``EXTRACTION_DISTINCT_SHARE`` (0.9), the share of those calls whose inputs
must differ (a client retrying the same input in a loop is not copying the model);
``EXTRACTION_RECHECK_SECONDS`` (60), how often one key is looked at again.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count
from django.utils import timezone

from accounts.models import ApiKey
from inference import realtime
from inference.models import AbuseFlag, Prediction


def window_seconds() -> int:
    return int(settings.EXTRACTION_WINDOW_SECONDS)


def rejections_threshold() -> int:
    return int(settings.EXTRACTION_FLAG_REJECTIONS)


def rejection_note(bucket: str, now: float) -> None:
    """Count one rate-limit rejection of ``bucket`` (a key's prefix; sessions are not
    counted) and look at the key when the count reaches a multiple of the threshold."""
    if bucket.startswith("user:"):
        return
    window = window_seconds()
    start = int(now) - int(now) % window
    key = f"mm:abuse:rej:{bucket}:{start}"
    redis = realtime.client()
    pipe = redis.pipeline()
    pipe.incr(key)
    pipe.expire(key, window + 60)
    count, _ = pipe.execute()
    threshold = rejections_threshold()
    if count < threshold or count % threshold:
        return
    window_start = datetime.fromtimestamp(start, tz=UTC)
    recheck = int(settings.EXTRACTION_RECHECK_SECONDS)
    looked_at = f"mm:abuse:look:{bucket}:{start}"
    if recheck <= 0 or redis.set(looked_at, 1, nx=True, ex=recheck):
        extraction_check(key_prefix=bucket, window_start=window_start, rejected=count)
    else:
        AbuseFlag.objects.filter(key_prefix=bucket, window_start=window_start).update(
            rejected=count, last_seen=timezone.now()
        )


def extraction_check(*, key_prefix: str, window_start: datetime, rejected: int) -> list[AbuseFlag]:
    """Flag (or bring up to date) each model of another organisation that the key called
    with mostly distinct inputs in the window. Returns the flags it touched."""
    key = ApiKey.objects.select_related("tenant").filter(prefix=key_prefix).first()
    if key is None:
        return []
    calls = (
        Prediction.objects.filter(api_key=key, created_at__gte=window_start)
        .exclude(model__tenant=key.tenant)  # a publisher's own keys on its own models
        .values("model", "model__tenant")
        .annotate(n=Count("id"))
        .filter(n__gte=int(settings.EXTRACTION_MIN_CALLS))
    )
    share = float(settings.EXTRACTION_DISTINCT_SHARE)
    flags = []
    for row in calls:
        distinct = (
            Prediction.objects.filter(
                api_key=key, model_id=row["model"], created_at__gte=window_start
            )
            .values("input_data")
            .distinct()
            .count()
        )
        if distinct < share * row["n"]:
            continue
        flags.append(
            _flag_upsert(
                key=key,
                model_id=row["model"],
                publisher_id=row["model__tenant"],
                window_start=window_start,
                rejected=rejected,
                predictions=row["n"],
                distinct=distinct,
            )
        )
    return flags


def _flag_upsert(
    *,
    key: ApiKey,
    model_id: int,
    publisher_id: int,
    window_start: datetime,
    rejected: int,
    predictions: int,
    distinct: int,
) -> AbuseFlag:
    figures = {
        "rejected": rejected,
        "predictions": predictions,
        "distinct_inputs": distinct,
        "last_seen": timezone.now(),
    }
    lookup = {"key_prefix": key.prefix, "model_id": model_id, "window_start": window_start}
    try:
        with transaction.atomic():
            flag, created = AbuseFlag.objects.get_or_create(
                **lookup,
                defaults={
                    **figures,
                    "tenant_id": publisher_id,
                    "consumer_id": key.tenant_id,
                    "api_key": key,
                },
            )
    except IntegrityError:  # a concurrent rejection made it first
        flag, created = AbuseFlag.objects.get(**lookup), False
    if not created:
        AbuseFlag.objects.filter(pk=flag.pk).update(**figures)
        flag.refresh_from_db()
    return flag
