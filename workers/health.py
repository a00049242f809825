"""Liveness and readiness for load balancers and orchestrators.

``/healthz`` answers as long as the web process runs. ``/readyz`` checks what a request
needs: the database, Redis, the artifact store and at least one worker answering a ping.

Anyone may call ``/readyz``, and a check takes up to ``READYZ_WORKER_TIMEOUT`` when no worker
answers, pinging every worker through the broker. So a web process runs one check at a time
and answers from the last one for ``READYZ_REUSE_SECONDS``; while a check runs, callers get
the previous answer at once (the first callers of a process wait for the first check). The
answer says how old it is (``age_s``).
"""

from __future__ import annotations

import threading
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


_checking = threading.Lock()
_last: tuple[float, dict, bool] | None = None  # (monotonic time, checks, ready)


@never_cache
def readyz(request):
    global _last
    last = _last
    # One check at a time: those who find one running take the last answer, if any.
    if _stale(last) and _checking.acquire(blocking=last is None):
        try:
            last = _last  # the check the wait was for may have just finished
            if _stale(last):
                _last = last = (time.monotonic(), *_check())
        finally:
            _checking.release()
    checked_at, results, ready = last
    body = {"ready": ready, "checks": results, "age_s": round(time.monotonic() - checked_at, 3)}
    return JsonResponse(body, status=200 if ready else 503)


def _stale(last) -> bool:
    return last is None or time.monotonic() - last[0] >= settings.READYZ_REUSE_SECONDS


def _check() -> tuple[dict, bool]:
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
    return results, ready
