"""Tenant data keys and the key-encryption-key backend configured in settings.

With ``store`` and ``sealed``, the only Django modules that see key material. Nothing outside
the vault imports it.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Tenant
from marketplace.models import SealedSecret, TenantKey

from .keyring import KekBackend, KeyRing, KeyUnavailableError

logger = logging.getLogger("marketplace.vault")


def kek_backend() -> KekBackend:
    """The KEK backend from settings: AWS KMS, a ring from the environment, or a key file.

    A key file is read again once it changes: ``rotate_kek`` rewrites it under running web
    processes and workers, which kept the ring they had read. After ``--new`` they could not
    unwrap the data keys it had re-wrapped (every upload and model load a 500 until a
    restart), and after ``--retire`` they would have wrapped new keys under a KEK gone from
    the file."""
    return _backend(_key_file_stamp())


def kek_backend_forget() -> None:
    """Read the backend again at its next use."""
    _backend.cache_clear()


def _key_file_stamp() -> tuple[int, int, int] | None:
    if settings.KMS_KEY_ID or settings.KEK_RING:
        return None
    try:
        found = os.stat(settings.KEK_FILE)
    except OSError:
        return None  # created (or refused) by the read that follows
    return found.st_ino, found.st_mtime_ns, found.st_size


@lru_cache(maxsize=1)
def _backend(_file_stamp: tuple[int, int, int] | None) -> KekBackend:
    if settings.KMS_KEY_ID:
        from .kms import KmsBackend

        return KmsBackend(settings.KMS_KEY_ID, endpoint_url=settings.KMS_ENDPOINT_URL)
    if settings.KEK_RING:
        return KeyRing.from_env_value(settings.KEK_RING)
    return KeyRing.from_file(settings.KEK_FILE, create_if_missing=settings.KEK_FILE_CREATE)


def tenant_key_create(tenant: Tenant) -> TenantKey:
    key = TenantKey(tenant=tenant, status=TenantKey.Status.ACTIVE)
    _data_key, wrapped = kek_backend().generate_data_key(context=key.wrap_context)
    key.kek_id, key.wrapped = wrapped.kek_id, wrapped.blob
    try:
        with transaction.atomic():
            key.save()
    except IntegrityError:
        # Another process created the tenant's first key at the same moment; use theirs.
        return TenantKey.objects.get(tenant=tenant, status=TenantKey.Status.ACTIVE)
    return key


def active_key(tenant: Tenant) -> TenantKey:
    """The key new artifacts of ``tenant`` are encrypted under, created on first use."""
    key = TenantKey.objects.filter(tenant=tenant, status=TenantKey.Status.ACTIVE).first()
    return key or tenant_key_create(tenant)


def data_key(key: TenantKey) -> bytes:
    if key.wrapped is None:
        raise KeyUnavailableError(
            f"The data key {key.public_id} was destroyed; its artifacts cannot be decrypted."
        )
    return kek_backend().unwrap(key.kek_id, bytes(key.wrapped), context=key.wrap_context)


def kek_rotate() -> int:
    """Re-wrap every live tenant key and sealed secret under the backend's primary KEK;
    artifacts are not touched. Returns how many were re-wrapped."""
    backend = kek_backend()
    moved = 0
    live = TenantKey.objects.exclude(status=TenantKey.Status.DESTROYED)
    for model, rows in ((TenantKey, live), (SealedSecret, SealedSecret.objects.all())):
        for row in rows.exclude(kek_id=backend.primary_id).iterator():
            wrapped = backend.rewrap(row.kek_id, bytes(row.wrapped), context=row.wrap_context)
            # Conditional: a concurrent rotation or destruction wins, never a stale write.
            moved += model.objects.filter(pk=row.pk, kek_id=row.kek_id, wrapped=row.wrapped).update(
                kek_id=wrapped.kek_id, wrapped=wrapped.blob
            )
    return moved


def kek_ids_in_use() -> dict[str, int]:
    """How many live tenant keys and sealed secrets each KEK id still wraps: a KEK may be
    retired at 0."""
    counts: dict[str, int] = {}
    live = TenantKey.objects.exclude(status=TenantKey.Status.DESTROYED)
    for rows in (live, SealedSecret.objects.all()):
        for kek_id in rows.values_list("kek_id", flat=True):
            counts[kek_id] = counts.get(kek_id, 0) + 1
    return counts


def key_destroy(key: TenantKey) -> None:
    """Crypto-shred: wipe the wrapped key so nothing encrypted under it can be read again."""
    TenantKey.objects.filter(pk=key.pk).update(
        wrapped=None, status=TenantKey.Status.DESTROYED, destroyed_at=timezone.now()
    )
