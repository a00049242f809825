"""Secrets the platform must read back to use them (a tenant's webhook signing key), sealed
under the key-encryption key as tenant data keys are: the database holds only the wrapped
form, bound to its row and purpose. Other apps keep a ``SealedSecret`` and call these; the
key material never leaves the vault's modules except as the value asked for."""

from __future__ import annotations

import os

from accounts.models import Tenant
from marketplace.models import SealedSecret

from .keys import kek_backend

SECRET_SIZE = 32


def secret_seal(tenant: Tenant, purpose: str) -> SealedSecret:
    """A new sealed secret of ``tenant`` for ``purpose``: 32 random bytes."""
    sealed = SealedSecret(tenant=tenant, purpose=purpose)
    wrapped = kek_backend().wrap(os.urandom(SECRET_SIZE), context=sealed.wrap_context)
    sealed.kek_id, sealed.wrapped = wrapped.kek_id, wrapped.blob
    sealed.save()
    return sealed


def secret_reveal(sealed: SealedSecret) -> bytes:
    """The secret's value. Raises ``KeyUnavailableError`` when its KEK is gone and
    ``VaultIntegrityError`` when the stored form was tampered with or moved."""
    return kek_backend().unwrap(sealed.kek_id, bytes(sealed.wrapped), context=sealed.wrap_context)
