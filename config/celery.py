"""The Celery application. Workers: ``celery -A config worker -Q default,cpu`` (CPU) or
``-Q gpu`` with ``CUDA_VISIBLE_DEVICES`` set (one worker per GPU)."""

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("modelmarket")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue("default"), Queue("cpu"), Queue("gpu"))
app.autodiscover_tasks()

# Request ids travel in task headers; each worker counts its tasks and serves its metrics.
from config import logs, metrics  # noqa: E402
from workers import heartbeat  # noqa: E402

logs.connect_celery_signals()
metrics.connect_celery_signals()
heartbeat.connect_celery_signals()
