"""Request ids and the log format.

Every web request gets an id: the caller's ``X-Request-ID`` when it is a plausible one, else a
new one; the response carries it back. Tasks enqueued while handling the request carry it in
their message headers, so a worker's log lines (and the model host output it logs) name the
request that caused them. ``MM_LOG_FORMAT=json`` writes one JSON object per line; the default
is plain text for people.

This module imports nothing of ours.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import uuid
from datetime import UTC, datetime

HEADER = "X-Request-ID"
_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    return _current.get()


def bind_request_id(value: str | None) -> contextvars.Token:
    return _current.set(value)


def unbind_request_id(token: contextvars.Token) -> None:
    _current.reset(token)


def new_request_id() -> str:
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Takes ``X-Request-ID`` from the caller (or makes one) and answers with it. Put first,
    so everything after it logs with the id."""

    def __init__(self, get_response):
        self.get_response = get_response
        connect_request_signals()

    def __call__(self, request):
        given = request.META.get("HTTP_X_REQUEST_ID", "")
        request_id = given if _VALID.match(given) else new_request_id()
        request.request_id = request_id
        # Kept until the response is closed (``request_finished``), so Django's own request
        # log ("Not Found: ...", written after the middleware returns) names the id too.
        bind_request_id(request_id)
        response = self.get_response(request)
        response[HEADER] = request_id
        return response


def _request_finished(**_) -> None:
    _current.set(None)


def connect_request_signals() -> None:
    from django.core.signals import request_finished

    request_finished.connect(_request_finished, weak=False, dispatch_uid="mm-request-id")


class RequestIdFilter(logging.Filter):
    """Puts ``request_id`` on every record ("-" outside a request or task)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = current_request_id() or "-"
        return True


# Attributes every LogRecord has; anything else on a record was passed with ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, the ``extra``
    fields, and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or current_request_id(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def logging_config(*, fmt: str, level: str) -> dict:
    """The ``LOGGING`` setting: plain text (``fmt="plain"``) or JSON lines (``"json"``)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "config.logs.RequestIdFilter"}},
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"},
            "json": {"()": "config.logs.JsonFormatter"},
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "json" if fmt == "json" else "plain",
                "filters": ["request_id"],
            }
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {"django.db.backends": {"level": "WARNING"}},
    }


# --- Celery: the id travels in the task's headers -----------------------------------------------


def connect_celery_signals() -> None:
    from celery.signals import before_task_publish, task_postrun, task_prerun

    before_task_publish.connect(_publish, weak=False)
    task_prerun.connect(_prerun, weak=False)
    task_postrun.connect(_postrun, weak=False)


def _publish(headers: dict | None = None, **_) -> None:
    request_id = current_request_id()
    if headers is not None and request_id and "request_id" not in headers:
        headers["request_id"] = request_id


_task_tokens: dict[str, contextvars.Token] = {}


def _prerun(task_id: str = "", task=None, **_) -> None:
    request_id = getattr(task.request, "request_id", None) if task is not None else None
    if request_id and not _VALID.match(str(request_id)):
        request_id = None
    if request_id is None and task is not None and task.request.is_eager:
        request_id = current_request_id()  # an eager task runs inside the caller's request
    _task_tokens[task_id] = bind_request_id(request_id)


def _postrun(task_id: str = "", **_) -> None:
    token = _task_tokens.pop(task_id, None)
    if token is not None:
        # ValueError: set in another context (an eager task runs in the caller's).
        with contextlib.suppress(ValueError):
            unbind_request_id(token)
