"""Admission control before any work is queued: per-key rate limits and queue backpressure,
both in Redis. A key's rejections are also counted for model-extraction flags
(``inference.abuse``)."""

from __future__ import annotations

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


def admit(bucket: str, limit: int, queue: str, window: int = 60) -> dict[str, str]:
    """The rate limit, then backpressure, in one Redis round trip.

    A fixed-window counter allows at most ``limit`` requests per ``window`` seconds per
    bucket; over it, ``TooManyRequests``. Then new work is refused (``ServiceBusy``) while
    ``queue`` is deeper than ``MM_MAX_QUEUE_DEPTH``; such a request still counted against the
    limit. Returns the RateLimit headers."""
    now = int(time.time())
    window_start = now - now % window
    key = f"mm:rl:{bucket}:{window_start}"
    pipe = realtime.client().pipeline()
    pipe.incr(key)
    pipe.expire(key, window + 1)
    pipe.llen(queue)
    count, _, depth = pipe.execute()
    reset = window_start + window - now
    headers = {
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
    if depth >= settings.MAX_QUEUE_DEPTH:
        raise ServiceBusy(
            f"The inference queue is full ({depth} waiting); retry shortly.",
            headers={"Retry-After": "1"},
        )
    return headers
