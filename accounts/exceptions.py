"""Errors a service raises for the caller to fix, with the HTTP status the API answers.

Every app's services raise these (or Django's ValidationError / PermissionDenied); the API's
exception handler turns them into ``{"detail": ..., "code": ...}`` responses.
"""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 400
    code = "invalid"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, **extra):
        super().__init__(message)
        self.message = message
        self.extra = extra
        self.headers = headers or {}


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"


class PaymentRequired(ServiceError):
    status_code = 402
    code = "payment_required"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class Gone(ServiceError):
    status_code = 410
    code = "gone"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "too_large"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    code = "unsupported_format"


class TakenDown(ServiceError):
    """451: an operator took the listing down; the reason is in the message."""

    status_code = 451
    code = "taken_down"
