"""The one place requests are sent: authentication, retries with backoff, idempotency keys and
the mapping of error responses to exceptions."""

from __future__ import annotations

import email.utils
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from modelmarket import __version__
from modelmarket.errors import ApiError, ConnectionFailed, error_class

# 429 and 503 are refusals before any work is done: always safe to send again. 502 and 504
# come from a proxy that may have passed the request on, so they are retried only when a
# repeat cannot do anything twice (see ``_may_repeat``).
RETRY_ALWAYS = frozenset({429, 503})
RETRY_IF_REPEATABLE = frozenset({502, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class Transport:
    """A thin layer over ``httpx.Client``. Thread-safe (uploads send chunks in parallel)."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_retry_after: float = 120.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        headers = {"User-Agent": f"modelmarket-client/{__version__}", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url.rstrip("/")
        self.has_key = bool(api_key)
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.retries_done = 0  # across the client's life: what a test or a log may report
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        repeatable: bool = False,
        timeout: float | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send a request and return the 2xx response, or raise the matching ``ApiError``.

        Every POST carries an ``Idempotency-Key`` (a fresh one unless given), kept the same
        across retries. A POST is sent again after it may have reached the server (its answer
        lost, or a 502/504) only when ``repeatable``: the endpoint honours the key, or a
        repeat is harmless. Refusals before any work (429, 503, no connection) are always
        retried. With ``stream`` the body of a 2xx is left unread: the caller reads and
        closes it (``stream()`` does both).
        """
        method = method.upper()
        may_repeat = method in IDEMPOTENT_METHODS or repeatable
        headers = dict(headers or {})
        if method == "POST":
            headers["Idempotency-Key"] = idempotency_key or uuid.uuid4().hex
        extra = {} if timeout is None else {"timeout": httpx.Timeout(timeout, connect=10.0)}
        attempt = 0
        while True:
            try:
                built = self._http.build_request(
                    method,
                    path,
                    json=json,
                    content=content,
                    params=params,
                    headers=headers,
                    **extra,
                )
                response = self._http.send(built, stream=stream)
            except httpx.TransportError as exc:
                sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if attempt >= self.max_retries or (sent and not may_repeat):
                    message = _describe_transport_error(self.base_url, exc)
                    if sent and not may_repeat:
                        message += (
                            " The request may have reached the server: check before "
                            "sending it again."
                        )
                    raise ConnectionFailed(message) from None
                self._pause(attempt, None)
                attempt += 1
                continue
            if response.is_success:
                return response
            retryable = response.status_code in RETRY_ALWAYS or (
                response.status_code in RETRY_IF_REPEATABLE and may_repeat
            )
            if retryable and attempt < self.max_retries:
                retry_after = _retry_after(response.headers.get("Retry-After"))
                if retry_after is None or retry_after <= self.max_retry_after:
                    response.close()
                    self._pause(attempt, retry_after)
                    attempt += 1
                    continue
            if stream:  # an error's body is the API's detail: read it, then let go
                response.read()
                response.close()
            raise api_error(response)

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """``request`` for a body too large to hold in memory: the 2xx response, its body
        to read in pieces (``iter_bytes``), closed on leaving the block."""
        response = self.request(method, path, stream=True, **kwargs)
        try:
            yield response
        finally:
            response.close()

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:  # a proxy's or a sign-in page's HTML, with a 2xx
            raise not_json(response) from None

    def paginate(self, path: str, params: dict[str, Any] | None = None) -> Iterator[dict]:
        """Every item of a paginated list, following ``next`` links (cursor or page number);
        a plain list is yielded as it is."""
        body = self.json("GET", path, params=params)
        while True:
            if body is None:  # a 2xx with no body: nothing (more) to list
                return
            if isinstance(body, list):
                yield from body
                return
            yield from body.get("results", [])
            next_url = body.get("next")
            if not next_url:
                return
            body = self.json("GET", _same_origin(next_url, self.base_url))

    def _pause(self, attempt: int, retry_after: float | None) -> None:
        if retry_after is not None:
            delay = retry_after
        else:
            delay = min(self.max_backoff, self.backoff * 2**attempt)
            delay *= 0.5 + random.random() / 2  # noqa: S311 - jitter, not security
        self.retries_done += 1
        self._sleep(max(0.0, delay))


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds, from either of its forms (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _same_origin(url: str, base_url: str) -> str:
    """A ``next`` link as a path under the base URL: the server may know itself by another
    host name than the one we reach it by (behind a proxy), and the key must go to the
    server we were given, never to a host a response names."""
    if url.startswith(base_url + "/"):
        return url[len(base_url) :]
    parsed = httpx.URL(url)
    if not parsed.is_absolute_url:
        return url
    return parsed.raw_path.decode("ascii")


def _describe_transport_error(base_url: str, exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"{base_url} did not answer in time ({type(exc).__name__}). Try again later."
    reason = str(exc) or type(exc).__name__
    return f"Could not reach {base_url}: {reason}. Check MM_BASE_URL and your network."


def not_json(response: httpx.Response) -> ApiError:
    """A success that is not JSON: what came back instead, so a person can tell a proxy's or a
    sign-in page from the API."""
    kind = response.headers.get("Content-Type") or "no content type"
    start = response.content[:80].decode("utf-8", "replace")
    return ApiError(
        response.status_code,
        f"The server answered {response.status_code} with {kind}, not JSON, starting "
        f"{start!r}. Check that MM_BASE_URL points at the API, not at a proxy or sign-in page.",
        code="not_json",
        headers=dict(response.headers),
    )


def api_error(response: httpx.Response) -> ApiError:
    """The exception for an error response: the API's ``detail`` when it sent one (every
    endpoint does), or a description of what came back instead (a proxy's error page)."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        detail = str(body["detail"])
        code = str(body.get("code", "error"))
        errors = body.get("errors") if isinstance(body.get("errors"), dict) else None
    else:
        text = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
        detail = f"The server answered {status} {response.reason_phrase}" + (
            f": {text}" if text else "."
        )
        code = "http_error"
        errors = None
        body = None
    return error_class(status)(
        status, detail, code=code, errors=errors, body=body, headers=dict(response.headers)
    )
