"""A short-lived, per-process cache of what a prediction request resolves before it is
recorded: the model a tenant may run, the version a reference names (with its parsed
signature) and the model's listing (for the 402 check).

Resolving them costs five queries and guardian's permission check, about 40 % of the web's
CPU per prediction on a small machine, for answers that change a few times a day. Entries live
``MM_INFERENCE_CACHE_SECONDS`` (5 s by default; 0 turns the cache off). Only successful
resolutions are cached: a 404, 403, 409, 410 or 451 is worked out afresh every time. The
worker keeps each prediction's model and version here too, under its own keys
(``workers.services.prediction_run``).

Any save or delete of a model, version, alias, listing, entitlement, object permission or
tenant, and any audit event (every change to grants, prices and listings writes one, including
those made with ``update()``), clears the whole cache in the process that made the change, at
once and again after its commit, and after the commit bumps a generation counter in Redis.
Every lookup reads that counter (one GET) and a process that sees it move drops its entries, so
a revoked share or entitlement, or a take-down, holds from the next request in every process.
When Redis cannot answer, nothing cached is trusted. Billing is not affected: the price in
force is read in the worker's transaction that writes the usage record.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from inference import realtime
from marketplace.models import Model, ModelVersion

MAX_ENTRIES = 10_000
GENERATION_KEY = "mm:catalog:generation"


@dataclass(frozen=True)
class Runnable:
    """A model and the version a reference resolved to. The model comes with its tenant (and
    its listing where the web resolved it: ``model_for_access``); the worker's entries carry
    the version's artifact instead (``workers.services._runnable``)."""

    model: Model
    version: ModelVersion


_lock = threading.Lock()
_entries: dict[tuple, tuple[float, Runnable]] = {}


def get(key: tuple) -> Runnable | None:
    if settings.INFERENCE_CACHE_SECONDS <= 0 or not _in_step():
        return None
    entry = _entries.get(key)
    if entry is None:
        return None
    loaded_at, runnable = entry
    if time.monotonic() - loaded_at >= settings.INFERENCE_CACHE_SECONDS:
        return None
    return runnable


def cached(key: tuple, load: Callable[[], Runnable]) -> Runnable:
    """``key``'s entry, or what ``load()`` resolves, kept for the next lookup (a load that
    raises keeps nothing)."""
    runnable = get(key)
    if runnable is None:
        loaded_at = time.monotonic()
        runnable = load()
        put(key, runnable, loaded_at)
    return runnable


def put(key: tuple, runnable: Runnable, loaded_at: float) -> None:
    """Keep ``runnable``, resolved from what the database held at ``loaded_at``; dropped if
    the cache was cleared since (a change raced with the lookup)."""
    if settings.INFERENCE_CACHE_SECONDS <= 0:
        return
    with _lock:
        if loaded_at < _cleared_at[0]:
            return
        if len(_entries) >= MAX_ENTRIES:
            _entries.clear()
        _entries[key] = (loaded_at, runnable)


_cleared_at = [0.0]
_generation: list[bytes | None] = [None]  # the counter as this process last saw it


def _in_step() -> bool:
    """Drop this process's entries if any process changed something since it last looked;
    False when Redis cannot say (then the caller resolves afresh)."""
    try:
        generation = realtime.client().get(GENERATION_KEY) or b"0"
    except redis.RedisError:
        return False
    if generation != _generation[0]:
        with _lock:
            _cleared_at[0] = time.monotonic()
            _entries.clear()
            _generation[0] = generation
        # Django keeps content types' ids for the life of the process, and guardian's checks
        # (a worker asks whether a consumer may still run what it queued) query by them: a
        # database whose rows were recreated under the process (restored from a backup; the
        # test suite's flush between tests) gives them new ids, and every check said no.
        ContentType.objects.clear_cache()
    return True


def _bump() -> None:
    clear()
    # Redis down: other processes keep their entries for at most the TTL; the change is saved.
    with contextlib.suppress(redis.RedisError):
        realtime.client().incr(GENERATION_KEY)


def clear(**_) -> None:
    with _lock:
        _cleared_at[0] = time.monotonic()
        _entries.clear()


def _changed(**_) -> None:
    clear()
    # A lookup between now and the commit still reads the old rows: clear again after it, and
    # tell the other processes (only then: before the commit they would re-read the old rows).
    transaction.on_commit(_bump)


def connect() -> None:
    """Called once at import: clear on any change that can alter a resolution."""
    from accounts.models import AuditEvent, Tenant
    from marketplace.models import (
        Alias,
        Entitlement,
        Listing,
        ModelGroupObjectPermission,
    )

    for sender in (
        Model,
        ModelVersion,
        Alias,
        Listing,
        Entitlement,
        ModelGroupObjectPermission,
        Tenant,
        AuditEvent,
    ):
        post_save.connect(_changed, sender=sender, dispatch_uid=f"inference.catalog.{sender}")
        post_delete.connect(_changed, sender=sender, dispatch_uid=f"inference.catalog.d.{sender}")


connect()
