"""Key-encryption keys (KEKs) that wrap per-tenant data keys.

Envelope encryption: artifacts are encrypted under 32-byte data keys (see ``stream``), and
only the data keys' wrapped form is stored next to the data.  ``KekBackend`` is the seam
between the two implementations: ``KeyRing`` keeps the KEKs locally, loaded from an
environment value or from a generated key file in development; ``kms.KmsBackend`` leaves them
in AWS KMS.

Every wrapped key is bound to a *context* string naming the row it belongs to (for example
``"tenant:42:key:tk_1a2b"``), as AWS KMS binds ciphertexts to an encryption context.  The
same context must be given to unwrap, so a wrapped key copied onto another tenant's row does
not unwrap there.  Build it only from values that never change for the row.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import secrets
import stat
import struct
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .stream import DATA_KEY_SIZE, VaultError, VaultIntegrityError

logger = logging.getLogger("marketplace.vault")

KEK_SIZE = 32
WRAP_NONCE_SIZE = 12
WRAPPED_BLOB_SIZE = WRAP_NONCE_SIZE + DATA_KEY_SIZE + 16
# Ids appear in "id:key,id:key" environment values, in JSON and in database rows.
KEK_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
KEY_FILE_FORMAT = "modelmarket-keyring"
KEY_FILE_VERSION = 1
_ENV_FORMAT_HINT = "expected 'kek-id:BASE64KEY[,kek-id:BASE64KEY...]' with the primary first"
# Domain separation: a KEK only ever wraps data keys, but the label keeps these ciphertexts
# distinct from any other AES-GCM use of the same key in future.
_WRAP_AD_PREFIX = b"modelmarket data key v1\x00"
# Lengths of the KEK id and of the context, so that no two (id, context) pairs share an AD.
_WRAP_AD_LENGTHS = struct.Struct(">HI")


class KeyUnavailableError(VaultError):
    """The KEK a wrapped key names cannot be used now: not in the key ring (retired or
    misconfigured), or a KMS key that does not exist, is disabled or is pending deletion."""


@dataclass(frozen=True)
class WrappedKey:
    """A data key encrypted under the KEK ``kek_id``; store both fields together."""

    kek_id: str
    blob: bytes


class KekBackend(ABC):
    """Wraps and unwraps data keys, each bound to a context string.

    Implement ``primary_id``, ``wrap``, ``unwrap`` and ``can_unwrap``; a service-backed
    implementation also overrides ``generate_data_key`` and ``rewrap`` with native calls.
    ``context`` must be the same non-empty string for every call about one wrapped key.
    """

    @property
    @abstractmethod
    def primary_id(self) -> str:
        """The KEK id new wraps are made under; a stored ``kek_id`` that differs from it
        marks a key still to be rewrapped during rotation."""

    @abstractmethod
    def wrap(self, data_key: bytes, *, context: str) -> WrappedKey:
        """Encrypt ``data_key`` under the primary KEK, bound to ``context``."""

    @abstractmethod
    def unwrap(self, kek_id: str, blob: bytes, *, context: str) -> bytes:
        """Recover a data key.

        Raises ``KeyUnavailableError`` if the KEK cannot be used, and ``VaultIntegrityError``
        if the blob does not authenticate under it with this context (tampered, relabelled,
        or wrapped for another context).
        """

    @abstractmethod
    def can_unwrap(self, kek_id: str) -> bool:
        """Whether keys wrapped under ``kek_id`` can be unwrapped now."""

    def rewrap(self, kek_id: str, blob: bytes, *, context: str) -> WrappedKey:
        """Re-encrypt a wrapped key under the primary KEK with the same context (rotation)."""
        return self.wrap(self.unwrap(kek_id, blob, context=context), context=context)

    def generate_data_key(self, *, context: str) -> tuple[bytes, WrappedKey]:
        """Return a fresh random data key and its wrapped form."""
        check_context(context)
        data_key = os.urandom(DATA_KEY_SIZE)
        return data_key, self.wrap(data_key, context=context)


def check_context(context: str) -> None:
    """Reject contexts that would bind nothing; shared by every backend."""
    if not isinstance(context, str) or not context:
        raise ValueError(f"context must be a non-empty string, got {context!r}")


def _check_kek_id(kek_id: str) -> None:
    if not KEK_ID_PATTERN.fullmatch(kek_id):
        raise ValueError(
            f"invalid KEK id {kek_id!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def new_kek_id() -> str:
    """A unique, sortable-by-date KEK id such as ``kek-20261128-1a2b3c4d``."""
    return f"kek-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(4)}"


class KeyRing(KekBackend):
    """Local KEKs by id.  New wraps use the primary; every KEK present can still unwrap, so
    a KEK is retired by removing it once ``rewrap`` has moved all keys off it."""

    def __init__(self, keks: Mapping[str, bytes], primary_id: str) -> None:
        if primary_id not in keks:
            raise ValueError(f"primary KEK id {primary_id!r} is not among the keys")
        for kek_id, kek in keks.items():
            _check_kek_id(kek_id)
            if len(kek) != KEK_SIZE:
                raise ValueError(f"KEK {kek_id!r} must be {KEK_SIZE} bytes, got {len(kek)}")
        self._aeads = {kek_id: AESGCM(kek) for kek_id, kek in keks.items()}
        self._primary_id = primary_id

    def __repr__(self) -> str:
        # Never include key material: reprs end up in logs and error pages.
        return f"KeyRing(primary={self._primary_id!r}, kek_ids={list(self._aeads)!r})"

    @property
    def primary_id(self) -> str:
        return self._primary_id

    @property
    def kek_ids(self) -> tuple[str, ...]:
        return tuple(self._aeads)

    def can_unwrap(self, kek_id: str) -> bool:
        return kek_id in self._aeads

    def wrap(self, data_key: bytes, *, context: str) -> WrappedKey:
        if len(data_key) != DATA_KEY_SIZE:
            raise ValueError(f"data key must be {DATA_KEY_SIZE} bytes, got {len(data_key)}")
        nonce = os.urandom(WRAP_NONCE_SIZE)
        sealed = self._aeads[self._primary_id].encrypt(
            nonce, data_key, _wrap_ad(self._primary_id, context)
        )
        return WrappedKey(kek_id=self._primary_id, blob=nonce + sealed)

    def unwrap(self, kek_id: str, blob: bytes, *, context: str) -> bytes:
        check_context(context)
        aead = self._aeads.get(kek_id)
        if aead is None:
            raise KeyUnavailableError(
                f"KEK {kek_id!r} is not in the key ring (known: {', '.join(self._aeads)})"
            )
        if len(blob) != WRAPPED_BLOB_SIZE:
            raise VaultIntegrityError(
                f"wrapped key must be {WRAPPED_BLOB_SIZE} bytes, got {len(blob)}"
            )
        try:
            return aead.decrypt(
                blob[:WRAP_NONCE_SIZE], blob[WRAP_NONCE_SIZE:], _wrap_ad(kek_id, context)
            )
        except InvalidTag:
            raise VaultIntegrityError(
                f"wrapped key failed authentication under KEK {kek_id!r} with context "
                f"{context!r}: it was wrapped for another context (e.g. copied from another "
                "row) or under another KEK id, or it was tampered with"
            ) from None

    @classmethod
    def from_env_value(cls, value: str) -> KeyRing:
        """Parse ``"kek-2026-11:BASE64KEY,kek-2025-01:BASE64KEY"``; the first entry is primary.

        Error messages identify entries by position and id, never by key material.
        """
        if not value.strip():
            raise ValueError(f"key ring value is empty; {_ENV_FORMAT_HINT}")
        keks: dict[str, bytes] = {}
        for position, entry in enumerate(value.split(","), start=1):
            kek_id, sep, encoded = entry.strip().partition(":")
            if not sep:
                raise ValueError(f"key ring entry {position} has no ':'; {_ENV_FORMAT_HINT}")
            try:
                _check_kek_id(kek_id)
            except ValueError as exc:
                raise ValueError(f"key ring entry {position}: {exc}") from None
            if kek_id in keks:
                raise ValueError(f"key ring entry {position}: duplicate KEK id {kek_id!r}")
            keks[kek_id] = _decode_kek(encoded, f"key ring entry {position} ({kek_id!r})")
        return cls(keks, primary_id=next(iter(keks)))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, create_if_missing: bool = False) -> KeyRing:
        """Load a JSON key file, optionally creating one with a fresh KEK (development only).

        Creation is atomic and race-free across processes: the file is written privately
        (mode 0600) under a temporary name and then hard-linked into place, so concurrent
        starters all end up with the same key and no reader sees a partial file.
        """
        path = Path(path)
        if create_if_missing and not path.exists() and _create_key_file(path):
            logger.warning(
                "Created a development key file at %s. Artifacts encrypted with it are lost "
                "if it is deleted; configure KEKs explicitly in production.",
                path,
            )
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            logger.warning("Key file %s is accessible to other users (mode %o)", path, mode & 0o777)
        return cls._from_document(_read_document(path), path)

    @classmethod
    def _from_document(cls, doc: Any, path: Path) -> KeyRing:
        where = f"key file {path}"
        if not isinstance(doc, dict) or doc.get("format") != KEY_FILE_FORMAT:
            raise ValueError(f"{where} is not a {KEY_FILE_FORMAT} file")
        if doc.get("version") != KEY_FILE_VERSION:
            raise ValueError(f"{where} has unsupported version {doc.get('version')!r}")
        keys, primary = doc.get("keys"), doc.get("primary")
        if not isinstance(keys, dict) or not keys or not isinstance(primary, str):
            raise ValueError(f"{where} needs a non-empty 'keys' object and a 'primary' id")
        keks = {
            kek_id: _decode_kek(encoded, f"{where}, KEK {kek_id!r}")
            for kek_id, encoded in keys.items()
        }
        return cls(keks, primary_id=primary)


def add_primary_kek_to_file(path: str | os.PathLike[str], kek_id: str | None = None) -> str:
    """Add a fresh KEK to an existing key file and make it the primary; return its id.

    Existing KEKs stay so that keys wrapped under them still unwrap; rewrap those keys, then
    remove the old KEK from the file to retire it.  The file is replaced atomically.
    """
    path = Path(path)
    doc = _read_document(path)
    KeyRing._from_document(doc, path)  # refuse to rewrite a file we could not load
    kek_id = kek_id or new_kek_id()
    _check_kek_id(kek_id)
    if kek_id in doc["keys"]:
        raise ValueError(f"KEK id {kek_id!r} already exists in key file {path}")
    doc["keys"][kek_id] = _encode_kek(os.urandom(KEK_SIZE))
    doc["primary"] = kek_id
    tmp = _write_private_temp(path, doc)
    os.replace(tmp, path)
    return kek_id


def remove_kek_from_file(path: str | os.PathLike[str], kek_id: str) -> None:
    """Retire a KEK: remove it from the key file. Keys still wrapped under it become
    unreadable, so callers check that none is (``manage.py rotate_kek --retire``)."""
    path = Path(path)
    doc = _read_document(path)
    KeyRing._from_document(doc, path)
    if kek_id not in doc["keys"]:
        raise ValueError(f"KEK id {kek_id!r} is not in key file {path}")
    if doc["primary"] == kek_id:
        raise ValueError(f"KEK {kek_id!r} is the primary; add a new primary before retiring it")
    del doc["keys"][kek_id]
    tmp = _write_private_temp(path, doc)
    os.replace(tmp, path)


def _wrap_ad(kek_id: str, context: str) -> bytes:
    # Binding the id stops a blob from being relabelled as belonging to another KEK; binding
    # the context stops it from being moved to another row.
    check_context(context)
    kek_id_bytes, context_bytes = kek_id.encode("utf-8"), context.encode("utf-8")
    return (
        _WRAP_AD_PREFIX
        + _WRAP_AD_LENGTHS.pack(len(kek_id_bytes), len(context_bytes))
        + kek_id_bytes
        + context_bytes
    )


def _encode_kek(kek: bytes) -> str:
    return base64.b64encode(kek).decode("ascii")


def _decode_kek(encoded: Any, where: str) -> bytes:
    if not isinstance(encoded, str):
        raise ValueError(f"{where}: key must be a base64 string")
    try:
        kek = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}: key is not valid base64") from None
    if len(kek) != KEK_SIZE:
        raise ValueError(f"{where}: key must decode to {KEK_SIZE} bytes, got {len(kek)}")
    return kek


def _read_document(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"key file {path} is not valid JSON: {exc.msg}") from None


def _write_private_temp(path: Path, doc: dict[str, Any]) -> Path:
    """Write ``doc`` to a new 0600 file beside ``path`` and return its name."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _create_key_file(path: Path) -> bool:
    """Create a key file with one fresh KEK; False if another process created it first."""
    kek_id = new_kek_id()
    doc = {
        "format": KEY_FILE_FORMAT,
        "version": KEY_FILE_VERSION,
        "primary": kek_id,
        "keys": {kek_id: _encode_kek(os.urandom(KEK_SIZE))},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_private_temp(path, doc)
    try:
        # link() fails if the target exists, unlike rename(); first writer wins.
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True
