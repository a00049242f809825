"""Prometheus metrics: what every process counts, and how they are read.

The web serves ``/metrics`` (a staff session, or ``Authorization: Bearer $MM_METRICS_TOKEN``
for a scraper). Each Celery worker serves its own registry on ``MM_WORKER_METRICS_PORT``
(bound to ``MM_WORKER_METRICS_ADDR``, 127.0.0.1 unless set): workers may run on other
machines, so they are scraped one by one rather than through the web. Several gunicorn
processes on one machine share their counts through prometheus-client's multiprocess mode
when ``PROMETHEUS_MULTIPROC_DIR`` is set (see docs/deploy.md).

This module imports nothing of ours, so any app may count here.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

HTTP_REQUESTS = Counter(
    "mm_http_requests",
    "HTTP requests answered, by route name, method and status.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "mm_http_request_duration_seconds",
    "Time to answer an HTTP request, by route name and method.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
PREDICTIONS = Counter(
    "mm_predictions",
    "Predictions finished by a worker, by model (the first MM_METRICS_MODEL_LABELS, then "
    '"other") and outcome.',
    ["model", "status"],
)
PREDICTION_LATENCY = Histogram(
    "mm_prediction_duration_seconds",
    "From a prediction's creation to its result, by model (as mm_predictions).",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "mm_batch_size",
    "Predictions merged into one forward pass.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
MODEL_CACHE = Counter(
    "mm_model_cache_lookups",
    "Lookups of a loaded model host: hit (already loaded) or miss (loaded now).",
    ["result"],
)
HOST_RESTARTS = Counter(
    "mm_model_host_restarts",
    "Model hosts killed for failing (crash, timeout, memory, health check) and replaced.",
    ["reason"],
)
BILLING_FAILURES = Counter(
    "mm_billing_failures",
    "Calls to the payment provider that failed, by kind.",
    ["kind"],
)
TASKS = Counter(
    "mm_celery_tasks", "Celery tasks finished in this worker, by name and state.", ["task", "state"]
)


class QueueDepthCollector:
    """``mm_queue_depth{queue}``: messages waiting in each Celery queue, read from Redis when
    scraped. A Redis outage leaves the metric out rather than failing the scrape."""

    def collect(self):
        from inference import dispatch

        waiting = GaugeMetricFamily(
            "mm_queue_depth",
            "Work waiting in each queue (Celery's and the predictions' fast path).",
            labels=["queue"],
        )
        taken = GaugeMetricFamily(
            "mm_queue_inflight",
            "Predictions fast-path workers have taken from each queue and not finished.",
            labels=["queue"],
        )
        try:
            depths = dispatch.all_queue_depths(timeout=1)
        except Exception:  # noqa: BLE001 - a scrape must not fail on Redis
            logger.warning("queue depth unavailable", exc_info=True)
            return
        for name, (depth, inflight) in depths.items():
            waiting.add_metric([name], depth)
            taken.add_metric([name], inflight)
        yield waiting
        yield taken


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition() -> bytes:
    """The text a scrape of this process (or, in multiprocess mode, of all processes sharing
    the directory) answers, with the queue depths."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry) + generate_latest(_queues)


_queues = CollectorRegistry(auto_describe=False)
_queues.register(QueueDepthCollector())


# --- the web side -----------------------------------------------------------------------------


def metrics_view(request):
    """``/metrics`` for Prometheus: a session the admin site would let in (staff, with the
    second factor when ``MM_ADMIN_REQUIRE_2FA`` asks for one), or the bearer token of
    ``MM_METRICS_TOKEN``. Anyone else gets 404, as if there were nothing here."""
    from django.conf import settings
    from django.contrib import admin
    from django.http import Http404, HttpResponse

    token = settings.METRICS_TOKEN
    given = request.META.get("HTTP_AUTHORIZATION", "")
    by_token = bool(token) and hmac.compare_digest(given.encode(), f"Bearer {token}".encode())
    if not (by_token or admin.site.has_permission(request)):
        raise Http404
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)


# Anyone can send any method name; each new one would be a new series per route.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str | None) -> str:
    return method if method in METHODS else "other"


_model_labels: set[str] = set()
_model_labels_lock = threading.Lock()


def model_label(ref: str) -> str:
    """The ``model`` label of a per-model metric: the model's ``owner/name`` for the first
    ``MM_METRICS_MODEL_LABELS`` models this process counts, "other" after that. Tenants create
    models at will; without the bound each one would add series to every scrape forever."""
    from django.conf import settings

    if ref in _model_labels:
        return ref
    with _model_labels_lock:
        if len(_model_labels) < settings.METRICS_MODEL_LABELS:
            _model_labels.add(ref)
            return ref
    return "other"


class MetricsMiddleware:
    """Counts every request by its route's name (never the raw path: ids in paths would make
    a new series per object), its method (the standard ones, the rest as "other") and status."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = (match.view_name or match.route) if match is not None else "unmatched"
        method = method_label(request.method)
        HTTP_REQUESTS.labels(route, method, str(response.status_code)).inc()
        HTTP_LATENCY.labels(route, method).observe(time.perf_counter() - started)
        return response


# --- the worker side --------------------------------------------------------------------------


def worker_exporter_start() -> int | None:
    """Serve this worker's metrics on ``MM_WORKER_METRICS_PORT``; returns the port, or None
    when unset."""
    from django.conf import settings
    from prometheus_client import start_http_server

    port = settings.WORKER_METRICS_PORT
    if not port:
        return None
    start_http_server(port, addr=settings.WORKER_METRICS_ADDR, registry=_WorkerRegistry())
    logger.info("worker metrics on %s:%s", settings.WORKER_METRICS_ADDR, port)
    return port


def connect_celery_signals() -> None:
    from celery.signals import task_postrun, worker_init

    worker_init.connect(lambda **_: worker_exporter_start(), weak=False)
    task_postrun.connect(_task_done, weak=False)


def _task_done(task=None, state: str | None = None, **_) -> None:
    TASKS.labels(getattr(task, "name", "unknown"), state or "UNKNOWN").inc()


class _WorkerRegistry:
    """The process's registry plus queue depths, for ``start_http_server``."""

    def collect(self):
        yield from REGISTRY.collect()
        yield from _queues.collect()
