"""Every failure the client raises, each with a message a person can act on and the exit code
the command line returns for it."""

from __future__ import annotations

from typing import Any

# Exit codes of the command line, one per kind of failure (documented in docs/client.md).
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_NOT_FOUND = 4
EXIT_REJECTED = 5
EXIT_UNAVAILABLE = 6
EXIT_FAILED = 7
EXIT_TIMEOUT = 8


class ModelmarketError(Exception):
    """Base class of every error the client raises."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, Any]:
        return {"detail": self.message, "code": type(self).__name__}


class UsageError(ModelmarketError):
    """Something to fix on this side before calling the API: a missing key, an unreadable
    file, an input that is not an array."""

    exit_code = EXIT_USAGE


class ApiError(ModelmarketError):
    """The API answered with an error. ``detail`` is the API's own explanation."""

    exit_code = EXIT_ERROR

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: str = "error",
        errors: dict | None = None,
        body: dict | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code
        self.errors = errors or {}
        self.body = body or {}
        self.headers = headers or {}

    def __str__(self) -> str:
        return f"{self.detail} (HTTP {self.status}, {self.code})"

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "code": self.code, "detail": self.detail, **self._extra()}

    def _extra(self) -> dict[str, Any]:
        return {"errors": self.errors} if self.errors else {}


class AuthenticationError(ApiError):
    """401: no key, or a key that is wrong, revoked or expired."""

    exit_code = EXIT_AUTH


class PermissionDenied(ApiError):
    """403: the key lacks a scope, or the role lacks a right."""

    exit_code = EXIT_AUTH


class NotFound(ApiError):
    """404 (missing, or another organisation's and private: the API does not tell which)."""

    exit_code = EXIT_NOT_FOUND


class Gone(ApiError):
    """410: a yanked version."""

    exit_code = EXIT_NOT_FOUND


class InvalidRequest(ApiError):
    """400: the request does not fit (``errors`` names the fields)."""

    exit_code = EXIT_REJECTED


class PaymentRequired(ApiError):
    exit_code = EXIT_REJECTED


class Conflict(ApiError):
    exit_code = EXIT_REJECTED


class PayloadTooLarge(ApiError):
    exit_code = EXIT_REJECTED


class UnsupportedFormat(ApiError):
    exit_code = EXIT_REJECTED


class RateLimited(ApiError):
    """429, still after the retries."""

    exit_code = EXIT_UNAVAILABLE


class ServiceUnavailable(ApiError):
    """503 or another 5xx, still after the retries."""

    exit_code = EXIT_UNAVAILABLE


class ConnectionFailed(ModelmarketError):
    """The server could not be reached (still after the retries)."""

    exit_code = EXIT_UNAVAILABLE


class ChecksumMismatch(ModelmarketError):
    """The server stored bytes whose SHA-256 is not the local file's, or a download's bytes
    are not the version's."""

    exit_code = EXIT_FAILED


class ValidationFailed(ModelmarketError):
    """The uploaded version failed validation; the message is the server's reason."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, version: Any = None):
        super().__init__(message)
        self.version = version


class PredictionFailed(ModelmarketError):
    """The prediction ran and failed (the model raised, or ran out of time or memory)."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, prediction: Any = None):
        super().__init__(message)
        self.prediction = prediction


class CompressionFailed(ModelmarketError):
    """The compression job failed (the reason is the server's) or was cancelled."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, job: Any = None):
        super().__init__(message)
        self.job = job


class WaitTimeout(ModelmarketError):
    """Waiting for a version, prediction or job ran out of time; it may still finish."""

    exit_code = EXIT_TIMEOUT


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    402: PaymentRequired,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: PayloadTooLarge,
    415: UnsupportedFormat,
    422: InvalidRequest,
    429: RateLimited,
}


def error_class(status: int) -> type[ApiError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return ServiceUnavailable
    return InvalidRequest if 400 <= status < 500 else ApiError
