"""A short-lived, per-process cache of verified API key rows.

An ORM lookup costs about a millisecond per request on a small machine, twenty times the
budget for authentication, so each process keeps the rows it has recently loaded for
``API_KEY_CACHE_SECONDS`` (10 s by default; 0 disables it). The secret is still checked with
HMAC, and expiry, IP allowlist and tenant status are still checked, on every request.

Changes made through ``accounts.services`` drop the affected entries at once in the process
that made them; other processes see a revocation or suspension within the TTL. See
docs/decisions/0004-api-key-cache.md.
"""

from __future__ import annotations

import threading
import time

from django.conf import settings

from accounts.models import ApiKey

MAX_ENTRIES = 10_000

_lock = threading.Lock()
_entries: dict[str, tuple[float, ApiKey]] = {}


def get(prefix: str) -> ApiKey | None:
    entry = _entries.get(prefix)
    if entry is None:
        return None
    loaded_at, key = entry
    if time.monotonic() - loaded_at >= settings.API_KEY_CACHE_SECONDS:
        return None
    return key


def put(key: ApiKey) -> None:
    if settings.API_KEY_CACHE_SECONDS <= 0:
        return
    with _lock:
        if len(_entries) >= MAX_ENTRIES:
            # Only keys that verified are cached, so this is reached by real traffic alone;
            # dropping the oldest half keeps the cost of a sweep rare.
            for prefix, _ in sorted(_entries.items(), key=lambda item: item[1][0])[
                : MAX_ENTRIES // 2
            ]:
                _entries.pop(prefix, None)
        _entries[key.prefix] = (time.monotonic(), key)


def forget(prefix: str) -> None:
    _entries.pop(prefix, None)


def forget_tenant(tenant_id: int) -> None:
    with _lock:
        for prefix in [p for p, (_, key) in _entries.items() if key.tenant_id == tenant_id]:
            _entries.pop(prefix, None)


def clear() -> None:
    _entries.clear()
