"""Liveness and readiness for load balancers and orchestrators.

``/healthz`` answers as long as the web process runs. ``/readyz`` checks what a request
needs: the database, Redis, the artifact store and at least one worker answering a ping.
"""

from __future__ import annotations

import time

import redis
from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _redis() -> None:
    redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1).ping()


def _storage() -> None:
    from marketplace.vault.store import artifact_storage

    artifact_storage().exists("readyz-probe")


def _worker() -> None:
    from config.celery import app

    # limit=1: answered by the first worker to reply. Without it every probe waited out the
    # whole timeout collecting replies, holding a web thread for a second per call.
    if not app.control.ping(timeout=settings.READYZ_WORKER_TIMEOUT, limit=1):
        raise RuntimeError("no worker answered a ping")


CHECKS = {"database": _database, "redis": _redis, "storage": _storage, "worker": _worker}


@never_cache
def healthz(request):
    return JsonResponse({"status": "ok"})


@never_cache
def readyz(request):
    results, ready = {}, True
    for name, check in CHECKS.items():
        started = time.monotonic()
        try:
            check()
        except Exception as exc:  # noqa: BLE001 - any failure makes the instance not ready
            # Details only in development: a public endpoint should not map our network.
            detail = f"{type(exc).__name__}: {exc}" if settings.DEBUG else type(exc).__name__
            results[name] = {"ok": False, "error": detail[:300]}
            ready = False
        else:
            results[name] = {"ok": True, "ms": round((time.monotonic() - started) * 1000, 1)}
    return JsonResponse({"ready": ready, "checks": results}, status=200 if ready else 503)
