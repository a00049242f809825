"""Key-encryption keys (KEKs) that wrap per-tenant data keys.

Envelope encryption: artifacts are encrypted under 32-byte data keys (see ``stream``), and
only the data keys' wrapped form is stored next to the data.  ``KekBackend`` is the seam
for a future KMS-backed implementation; ``KeyRing`` keeps the KEKs locally, loaded from an
environment value in production or from a generated key file in development.
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


class KeyUnavailableError(VaultError):
    """The KEK a wrapped key names is not in the key ring (retired or misconfigured)."""


@dataclass(frozen=True)
class WrappedKey:
    """A data key encrypted under the KEK ``kek_id``; store both fields together."""

    kek_id: str
    blob: bytes


class KekBackend(ABC):
    """Wraps and unwraps data keys.  Implement ``wrap``/``unwrap``; a KMS backend would also
    override ``generate_data_key`` and ``rewrap`` with the service's native calls."""

    @abstractmethod
    def wrap(self, data_key: bytes) -> WrappedKey:
        """Encrypt ``data_key`` under the current primary KEK."""

    @abstractmethod
    def unwrap(self, kek_id: str, blob: bytes) -> bytes:
        """Recover a data key.

        Raises ``KeyUnavailableError`` for an unknown KEK and ``VaultIntegrityError`` for a
        blob that does not authenticate under it.
        """

    def rewrap(self, kek_id: str, blob: bytes) -> WrappedKey:
        """Re-encrypt a wrapped key under the current primary KEK (for KEK rotation)."""
        return self.wrap(self.unwrap(kek_id, blob))

    def generate_data_key(self) -> tuple[bytes, WrappedKey]:
        """Return a fresh random data key and its wrapped form."""
        data_key = os.urandom(DATA_KEY_SIZE)
        return data_key, self.wrap(data_key)


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

    def wrap(self, data_key: bytes) -> WrappedKey:
        if len(data_key) != DATA_KEY_SIZE:
            raise ValueError(f"data key must be {DATA_KEY_SIZE} bytes, got {len(data_key)}")
        nonce = os.urandom(WRAP_NONCE_SIZE)
        sealed = self._aeads[self._primary_id].encrypt(nonce, data_key, _wrap_ad(self._primary_id))
        return WrappedKey(kek_id=self._primary_id, blob=nonce + sealed)

    def unwrap(self, kek_id: str, blob: bytes) -> bytes:
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
            return aead.decrypt(blob[:WRAP_NONCE_SIZE], blob[WRAP_NONCE_SIZE:], _wrap_ad(kek_id))
        except InvalidTag:
            raise VaultIntegrityError(
                f"wrapped key failed authentication under KEK {kek_id!r} (tampered or mismatched)"
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


def _wrap_ad(kek_id: str) -> bytes:
    # Binding the id stops a blob from being relabelled as belonging to another KEK.
    return _WRAP_AD_PREFIX + kek_id.encode("utf-8")


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
