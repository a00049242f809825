"""Each worker says every few seconds, in a Redis key that expires, what it is: its device,
queues, the models its hosts have loaded, their memory and its own. The admin console lists
the keys; a worker that stops beating drops off the list within three intervals."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

logger = logging.getLogger(__name__)

PREFIX = "mm:worker:"


def _redis():
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)


def snapshot(*, name: str, queues: list[str]) -> dict:
    """What this worker process is and holds, now."""
    import psutil

    from workers.pool import HOSTS
    from workers.services import worker_device

    device = worker_device()
    loaded = HOSTS.loaded(device)
    hosts = loaded.hosts()
    return {
        "name": name,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "device": device,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "queues": sorted(queues),
        "loaded_models": loaded.keys(),
        "model_bytes": loaded.used(),
        "hosts_rss": sum(host.rss() for host in hosts),
        "worker_rss": psutil.Process().memory_info().rss,
        "at": time.time(),
    }


def beat(*, name: str, queues: list[str]) -> None:
    from django.conf import settings

    interval = settings.WORKER_HEARTBEAT_SECONDS
    payload = json.dumps(snapshot(name=name, queues=queues))
    _redis().set(PREFIX + name, payload, ex=max(1, int(interval * 3)))


def start(*, name: str, queues: list[str]) -> threading.Thread:
    from django.conf import settings

    def loop() -> None:
        while True:
            try:
                beat(name=name, queues=queues)
            except Exception:  # noqa: BLE001 - a missed beat must never stop the worker
                logger.warning("worker heartbeat failed", exc_info=True)
            time.sleep(settings.WORKER_HEARTBEAT_SECONDS)

    thread = threading.Thread(target=loop, daemon=True, name="worker-heartbeat")
    thread.start()
    return thread


def workers_seen() -> list[dict]:
    """Live workers' last heartbeats, by name, with ``age`` in seconds."""
    client = _redis()
    keys = sorted(client.scan_iter(match=PREFIX + "*", count=500))
    now = time.time()
    seen = []
    for raw in client.mget(keys) if keys else []:
        if raw is None:
            continue  # expired between the scan and the read
        entry = json.loads(raw)
        entry["age"] = max(0.0, now - entry.get("at", now))
        seen.append(entry)
    return seen


def connect_celery_signals() -> None:
    from celery.signals import worker_ready

    def on_ready(sender=None, **_) -> None:
        queues = list(sender.app.amqp.queues.consume_from) if sender is not None else []
        start(name=getattr(sender, "hostname", None) or socket.gethostname(), queues=queues)

    worker_ready.connect(on_ready, weak=False)
