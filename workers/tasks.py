"""Celery entry points of the worker process. Tasks take ids and JSON values, load their
record and call one service."""

from __future__ import annotations

import gc
import os
import socket

from celery import shared_task
from celery.signals import worker_ready, worker_shutting_down


@shared_task(name="workers.ping", queue="default", soft_time_limit=10, time_limit=15)
def ping(echo: str = "") -> dict:
    """Answers with where it ran and the request id it carried: used by readiness checks and
    the end-to-end tests."""
    from django.db import connection

    from config.logs import current_request_id

    with connection.cursor() as cursor:  # proves the worker reaches the database too
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {
        "echo": echo,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "request_id": current_request_id(),
    }


@shared_task(
    bind=True,
    name="workers.validate_version",
    ignore_result=True,
    queue="cpu",
    acks_late=True,
    soft_time_limit=600,
    time_limit=660,
    max_retries=3,
)
def validate_version(self, version_id: str) -> str | None:
    """Validate an uploaded version in a sandboxed model host (idempotent). A worker that
    cannot start a host retries in 10, 30 and 90 s, then fails the version saying why."""
    from workers.services import HostUnavailable, version_validate

    try:
        version = version_validate(
            version_id=version_id, last_attempt=self.request.retries >= self.max_retries
        )
    except HostUnavailable as exc:
        raise self.retry(countdown=10 * 3**self.request.retries, exc=exc) from exc
    return version.status if version else None


@shared_task(
    name="workers.run_prediction",
    ignore_result=True,
    queue="cpu",
    acks_late=True,
    soft_time_limit=300,
    time_limit=330,
)
def run_prediction(prediction_id: str) -> str | None:
    """Run one prediction (batched with concurrent ones for the same version)."""
    from workers.services import prediction_run

    return prediction_run(prediction_id=prediction_id)


@worker_ready.connect
def prestart_model_hosts(**_) -> None:
    """Start the idle model hosts as soon as the worker is up, so the first prediction after
    a deploy does not wait for an interpreter and torch to start."""
    from workers.pool import HOSTS
    from workers.services import worker_device

    HOSTS.idle(worker_device()).refill()


@worker_ready.connect
def start_direct_predictions(sender=None, **_) -> None:
    """A worker that consumes the inference queue also takes predictions from its fast path
    (``inference/dispatch.py``); the Celery task above remains for everything else."""
    from django.conf import settings

    from workers import direct

    queues = set(sender.app.amqp.queues.consume_from) if sender is not None else set()
    if settings.INFERENCE_DIRECT and settings.INFERENCE_QUEUE in queues:
        direct.start(settings.INFERENCE_QUEUE)


@worker_ready.connect
def freeze_loaded_objects(**_) -> None:
    """Take what the worker has loaded (Django, Celery, the prediction path, numpy: about
    146,000 objects) out of the cyclic collector's full passes. Each walked them all, about
    70 ms on our reference VM, during which every prediction in the process stood still.
    Connected last, after the handlers above have imported what they run."""
    import workers.services  # noqa: F401 - what each task imports on first use

    gc.freeze()


@worker_shutting_down.connect
def stop_direct_predictions(**_) -> None:
    from workers import direct

    direct.stop_all()


@shared_task(
    name="workers.run_compression",
    ignore_result=True,
    queue="cpu",
    acks_late=True,
    soft_time_limit=3600,
    time_limit=3660,
)
def run_compression(job_id: str) -> str | None:
    """Run one compression job in a fresh model host (idempotent: a redelivery finds it
    claimed). The host's own deadline, ``MM_COMPRESSION_TIMEOUT``, is the tighter limit."""
    from workers.services import compression_run

    return compression_run(job_id=job_id)
