"""Push notifications of finished predictions over Redis pub/sub, so a waiting request is
woken the moment its result is written instead of polling the database."""

from __future__ import annotations

import time
from functools import lru_cache

import redis
from django.conf import settings


@lru_cache(maxsize=1)
def client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, health_check_interval=30)


def _channel(prediction_id: str) -> str:
    return f"mm:prediction:{prediction_id}"


def publish_done(prediction_id: str) -> None:
    client().publish(_channel(prediction_id), b"done")


def wait_done(prediction_id: str, timeout: float, is_done) -> bool:
    """Block until the prediction is finished or ``timeout`` passes. ``is_done()`` is checked
    once after subscribing, which closes the race with a result written just before."""
    pubsub = client().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(_channel(prediction_id))
    try:
        if is_done():
            return True
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if pubsub.get_message(timeout=remaining) is not None:
                return True
        return False
    finally:
        pubsub.close()
