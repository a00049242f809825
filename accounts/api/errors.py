"""One error shape for the whole API:
``{"detail": "<what to fix>", "code": "...", "errors": {...}}``."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from accounts.exceptions import ServiceError


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
    if isinstance(exc, ServiceError):
        body = {"detail": exc.message, "code": exc.code, **exc.extra}
        return Response(body, status=exc.status_code, headers=exc.headers)
    if isinstance(exc, RecursionError):
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
