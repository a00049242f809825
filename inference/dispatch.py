"""How a recorded prediction reaches a worker.

The fast path is a Redis list per queue (``mm:direct:<queue>``) that each worker consuming
that queue pops with ``BLMOVE`` into an in-flight list of its own (``workers/direct.py``):
one Redis command on each side, instead of a Celery message, its kombu envelope, its
prefetch and acknowledgement. A worker on the fast path keeps a heartbeat in the sorted set
``mm:direct:<queue>:consumers`` (score: when it is presumed dead); when one stops beating,
another moves its in-flight ids back to the queue, so a crash mid-prediction means the
prediction runs again (at least once; the conditional writes bill it once).

The Celery task ``workers.run_prediction`` stays the durable path: the web uses it whenever
no live worker is on the fast path for the queue (an older worker, a worker started without
it), and it is what an operator's retry sends.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from django.db import DatabaseError

from inference import realtime

HEARTBEAT_SECONDS = 2.0
PRESUMED_DEAD_AFTER = 10.0
_ALIVE_CACHE_SECONDS = 1.0


def queue_key(queue: str) -> str:
    return f"mm:direct:{queue}"


def consumers_key(queue: str) -> str:
    return f"mm:direct:{queue}:consumers"


def inflight_key(queue: str, consumer: str) -> str:
    return f"mm:direct:{queue}:inflight:{consumer}"


_alive: dict[str, tuple[float, bool]] = {}
_alive_lock = threading.Lock()


def fast_path_live(queue: str) -> bool:
    """Whether a worker on the fast path is alive for ``queue`` (asked of Redis at most once
    a second per process)."""
    now = time.monotonic()
    cached = _alive.get(queue)
    if cached is not None and now - cached[0] < _ALIVE_CACHE_SECONDS:
        return cached[1]
    live = bool(
        realtime.client().zrangebyscore(consumers_key(queue), time.time(), "+inf", start=0, num=1)
    )
    with _alive_lock:
        _alive[queue] = (now, live)
    return live


def forget_liveness() -> None:
    with _alive_lock:
        _alive.clear()


def send(queue: str, prediction_id: str) -> bool:
    """Push ``prediction_id`` on the fast path if a worker is there to take it; False when
    the caller should send the Celery task instead."""
    if not fast_path_live(queue):
        return False
    realtime.client().lpush(queue_key(queue), prediction_id)
    return True


def queue_depths(client, queues: list[str]) -> dict[str, tuple[int, int]]:
    """Per queue: how many wait (Celery's list and the fast path's together) and how many
    fast-path workers have taken and not finished. The queue-full check (``limits.admit``)
    counts the fast path's list; the metrics and the operators' page read only Celery's, and
    showed 0 while predictions were refused as "queue full"."""
    with client.pipeline() as pipe:
        for queue in queues:
            pipe.llen(queue)
            pipe.llen(queue_key(queue))
            pipe.zrange(consumers_key(queue), 0, -1)
        found = pipe.execute()
    consumers = {
        queue: [c.decode() if isinstance(c, bytes) else c for c in found[i * 3 + 2]]
        for i, queue in enumerate(queues)
    }
    with client.pipeline() as pipe:
        for queue in queues:
            for consumer in consumers[queue]:
                pipe.llen(inflight_key(queue, consumer))
        inflight = iter(pipe.execute())
    return {
        queue: (found[i * 3] + found[i * 3 + 1], sum(next(inflight) for _ in consumers[queue]))
        for i, queue in enumerate(queues)
    }


def queue_names() -> list[str]:
    """The Celery queues workers listen on (``config.celery``)."""
    from config.celery import app

    return [queue.name for queue in app.conf.task_queues]


def all_queue_depths(timeout: float) -> dict[str, tuple[int, int]]:
    """``queue_depths`` of every queue, read with a Redis connection of its own that gives up
    after ``timeout`` seconds (the metrics scrape and the operators' page). Raises Redis's
    errors."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=timeout)
    return queue_depths(client, queue_names())


def send_or_undo(send: Callable[[], None], undo: Callable[[], object]) -> None:
    """``send`` recorded work to the workers; where that fails (Redis or the broker down),
    ``undo`` the record, which nothing would ever run, before the error goes on to the caller
    (a 503). If the database fails too, the record stays for the beat's sweeps to send."""
    try:
        send()
    except BaseException:
        with contextlib.suppress(DatabaseError):
            undo()
        raise
