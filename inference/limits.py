"""Admission control before any work is queued: per-key rate limits, versions paused by the
worker's breaker, and queue backpressure, all in Redis. A key's rejections are also counted
for model-extraction flags (``inference.abuse``)."""

from __future__ import annotations

import math
import time

from django.conf import settings

from accounts.exceptions import ServiceError
from inference import abuse, realtime


class TooManyRequests(ServiceError):
    status_code = 429
    code = "rate_limited"


class ServiceBusy(ServiceError):
    status_code = 503
    code = "busy"


class ModelPaused(ServiceError):
    status_code = 503
    code = "model_paused"


def breaker_key(version_pk: int) -> str:
    return f"mm:breaker:{version_pk}"


def breaker_trip(version_pk: int, reason: str, seconds: float) -> None:
    """The worker's breaker opened for the version: new requests for it are refused for
    ``seconds`` (``admit``), saying ``reason``."""
    realtime.client().set(breaker_key(version_pk), reason[:1000], ex=max(1, math.ceil(seconds)))


def breaker_state(version_pk: int) -> tuple[str, int] | None:
    """Why and for how many more seconds the worker's breaker pauses the version; None when
    it does not."""
    pipe = realtime.client().pipeline()
    pipe.get(breaker_key(version_pk))
    pipe.ttl(breaker_key(version_pk))
    reason, seconds = pipe.execute()
    if reason is None:
        return None
    return reason.decode(errors="replace"), max(1, seconds)


def admit(
    bucket: str,
    limit: int,
    queue: str,
    window: int = 60,
    *,
    version_pk: int | None = None,
    version_name: str = "this version",
) -> dict[str, str]:
    """The rate limit, the version's breaker, then backpressure, in one Redis round trip.

    A fixed-window counter allows at most ``limit`` requests per ``window`` seconds per
    bucket; over it, ``TooManyRequests``. A version the worker's breaker paused (its model
    host kept failing) is refused (``ModelPaused``) until the pause ends. Then new work is
    refused (``ServiceBusy``) while ``queue`` is deeper than ``MM_MAX_QUEUE_DEPTH``; such
    requests still counted against the limit. Returns the RateLimit headers."""
    now = int(time.time())
    window_start = now - now % window
    key = f"mm:rl:{bucket}:{window_start}"
    pipe = realtime.client().pipeline()
    pipe.incr(key)
    pipe.expire(key, window + 1)
    pipe.llen(queue)
    if version_pk is not None:
        pipe.get(breaker_key(version_pk))
        pipe.ttl(breaker_key(version_pk))
    count, _, depth, *breaker = pipe.execute()
    reset = window_start + window - now
    headers = {  # inference.api.predictions.RATE_LIMIT_HEADERS documents them
        "RateLimit-Limit": str(limit),
        "RateLimit-Remaining": str(max(0, limit - count)),
        "RateLimit-Reset": str(reset),
        "RateLimit-Policy": f"{limit};w={window}",
    }
    if count > limit:
        abuse.rejection_note(bucket, now)
        raise TooManyRequests(
            f"Rate limit of {limit} requests per {window} s reached for this API key; "
            f"retry in {reset} s.",
            headers={**headers, "Retry-After": str(reset)},
        )
    if breaker and breaker[0] is not None:
        seconds = str(max(1, breaker[1]))
        raise ModelPaused(
            f"{version_name} is paused for {seconds} s: "
            f"{breaker[0].decode(errors='replace')} Retry after that, or call another version.",
            headers={**headers, "Retry-After": seconds},
        )
    if depth >= settings.MAX_QUEUE_DEPTH:
        raise ServiceBusy(
            f"The inference queue is full ({depth} waiting); retry shortly.",
            headers={"Retry-After": "1"},
        )
    return headers
