"""One error shape for the whole API:
``{"detail": "<what to fix>", "code": "...", "errors": {...}}``."""

from __future__ import annotations

import errno
import logging

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import OperationalError as DatabaseOperationalError
from django.http import JsonResponse, UnreadablePostError
from django.views import defaults
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MasterDownError as RedisMasterDownError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import ReadOnlyError as RedisReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import TryAgainError as RedisTryAgainError
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from accounts.exceptions import PayloadTooLarge, ServiceError

logger = logging.getLogger(__name__)

# Failures of what a request depends on rather than of the request: Redis unreachable, full
# (maxmemory), a read-only replica after a failover or a master down, the broker refusing a
# task, the database unreachable or locked past its busy timeout.
UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    RedisOutOfMemoryError,
    RedisReadOnlyError,
    RedisMasterDownError,
    RedisTryAgainError,
    KombuOperationalError,
    DatabaseOperationalError,
)
RETRY_AFTER_SECONDS = "5"
# What the artifact store (a disk, a mount) answers when it cannot take a write: full, over
# its quota, read-only, or not ours to write. The caller's request was fine: a 503 to retry
# (it was a 500), said to the operators in the log.
STORAGE_REFUSALS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
)


def _flatten(errors, path: str = "") -> list[str]:
    if isinstance(errors, dict):
        out = []
        for field, value in errors.items():
            name = field if field != "non_field_errors" else ""
            out += _flatten(value, f"{path}.{name}" if path and name else (name or path))
        return out
    if isinstance(errors, list):
        return [m for item in errors for m in _flatten(item, path)]
    return [f"{path}: {errors}" if path else str(errors)]


def exception_handler(exc, context):
    if isinstance(exc, RequestDataTooBig):
        # DRF reads a JSON body through request.body, which keeps Django's limit: the
        # client's mistake, not a suspicious operation for Django's bare 400 page and log.
        exc = PayloadTooLarge(
            f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes; "
            "send a smaller one."
        )
    if isinstance(exc, ServiceError):
        body = {"detail": exc.message, "code": exc.code, **exc.extra}
        return Response(body, status=exc.status_code, headers=exc.headers)
    if isinstance(exc, UNAVAILABLE):
        # Redis (limits, queue) or the database down or locked: the caller may retry, and
        # nothing was half-written (each write is one transaction).
        logger.warning("API request refused with 503: %s: %s", type(exc).__name__, exc)
        set_rollback()
        return Response(
            {"detail": "The service is briefly unavailable; retry shortly.", "code": "unavailable"},
            status=503,
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    if isinstance(exc, OSError) and exc.errno in STORAGE_REFUSALS:
        logger.error("API request refused with 503: storage: %s", exc, exc_info=exc)
        set_rollback()
        return Response(
            {
                "detail": "The model store cannot take writes right now; retry shortly.",
                "code": "unavailable",
            },
            status=503,
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    if isinstance(exc, UnreadablePostError):
        # The client reset or timed out mid-body: its failure, not ours (and likely unread).
        logger.info("API request body unreadable: %s", exc)
        exc = exceptions.ParseError(
            "The request body broke off before its Content-Length; send the request again."
        )
    elif isinstance(exc, RecursionError):
        # json.loads recurses once per level: a body nested thousands deep is bad input.
        exc = exceptions.ParseError("The JSON body is nested too deeply.")
    elif isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        )
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        messages = _flatten(exc.detail)
        response.data = {
            "detail": "Invalid request: " + "; ".join(messages),
            "code": "invalid",
            "errors": exc.detail
            if isinstance(exc.detail, dict)
            else {"non_field_errors": exc.detail},
        }
    elif isinstance(response.data, dict) and "detail" in response.data:
        detail = response.data["detail"]
        response.data = {"detail": str(detail), "code": getattr(detail, "code", "error")}
    return response


def page_not_found(request, exception):
    """``handler404``: a URL no route matches. Under /api/ in the API's shape (a client
    parsing our JSON got Django's HTML page); elsewhere Django's page."""
    if request.path.startswith("/api/"):
        return JsonResponse(
            {"detail": f"No such endpoint: {request.path}. See /api/docs/.", "code": "not_found"},
            status=404,
        )
    return defaults.page_not_found(request, exception)


def server_error(request):
    """``handler500``: an error we did not foresee (logged with its traceback by Django).
    Under /api/ in the API's shape, saying nothing of the cause; elsewhere Django's page."""
    if request.path.startswith("/api/"):
        return JsonResponse(
            {
                "detail": "Something went wrong on our side; it is logged. Retry, or tell us "
                "the time of the request.",
                "code": "server_error",
            },
            status=500,
        )
    return defaults.server_error(request)
