"""A ``KekBackend`` whose key-encryption key stays in AWS KMS.

Data keys are generated, wrapped, unwrapped and rewrapped by KMS itself; the key material of
the KEK never leaves the service.  The context string is sent as the encryption context
``{"mm": context}``, which KMS binds to the ciphertext and logs in CloudTrail in the clear.

The stored ``kek_id`` is the key ARN that KMS reports for each ciphertext, so rows can be
compared with ``primary_id`` (also an ARN) to find those still to be rewrapped.  KMS's own
automatic key rotation keeps the ARN and needs no rewrap; ``rewrap`` is for moving keys to a
different KMS key.

Needs ``boto3``.  The IAM principal needs ``kms:GenerateDataKey``, ``kms:Encrypt``,
``kms:Decrypt``, ``kms:ReEncryptFrom``/``kms:ReEncryptTo`` and ``kms:DescribeKey``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.exceptions import ClientError

from .keyring import KekBackend, KeyUnavailableError, WrappedKey, check_context
from .stream import DATA_KEY_SIZE, VaultIntegrityError

CONTEXT_KEY = "mm"
"""Name of the single encryption-context entry that carries the context string."""

# KMS refuses the ciphertext itself: tampered, wrapped under another context, or (for
# IncorrectKeyException) presented under a key id other than the one that encrypted it.
_INTEGRITY_CODES = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})
# The key cannot be used now: unknown, disabled, pending deletion or otherwise not enabled.
_UNAVAILABLE_CODES = frozenset(
    {"NotFoundException", "DisabledException", "KMSInvalidStateException"}
)


class KmsBackend(KekBackend):
    """Wraps data keys under the KMS key ``key_id`` (a key id, key ARN, alias or alias ARN).

    Any KMS key the credentials may use can unwrap, so retiring a key means rewrapping every
    row onto the new primary before disabling the old key.  Without ``region_name`` the
    region comes from a key or alias ARN, else from the usual AWS configuration.
    """

    def __init__(
        self,
        key_id: str,
        *,
        client: Any | None = None,
        region_name: str | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        if not key_id:
            raise ValueError("key_id must name a KMS key")
        self._key_id = key_id
        self._client = client
        self._client_lock = threading.Lock()
        self._region_name = region_name or _arn_region(key_id)
        self._endpoint_url = endpoint_url
        self._primary_arn = key_id if _is_key_arn(key_id) else None

    def __repr__(self) -> str:
        return f"KmsBackend(key_id={self._key_id!r})"

    @property
    def client(self) -> Any:
        """The boto3 KMS client, created on first use."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    # A session per backend: boto3's shared default session is not thread-safe.
                    self._client = boto3.session.Session().client(
                        "kms", region_name=self._region_name, endpoint_url=self._endpoint_url
                    )
        return self._client

    @property
    def primary_id(self) -> str:
        """The ARN of the configured key, resolved with DescribeKey on first use when the
        key was given as an id or alias (stored ``kek_id`` values are always ARNs)."""
        if self._primary_arn is None:
            with _kms_errors(repr(self._key_id)):
                metadata = self.client.describe_key(KeyId=self._key_id)["KeyMetadata"]
            self._primary_arn = metadata["Arn"]
        return self._primary_arn

    def can_unwrap(self, kek_id: str) -> bool:
        """True if ``kek_id`` is the ARN of a KMS key that exists and is enabled."""
        if not _is_key_arn(kek_id):
            # Not a KMS ciphertext at all, e.g. a row still wrapped by the local KeyRing.
            return False
        try:
            metadata = self.client.describe_key(KeyId=kek_id)["KeyMetadata"]
        except ClientError as exc:
            if _error_code(exc) == "NotFoundException":
                return False
            raise
        return metadata.get("KeyState") == "Enabled"

    def generate_data_key(self, *, context: str) -> tuple[bytes, WrappedKey]:
        check_context(context)
        with _kms_errors(repr(self._key_id)):
            response = self.client.generate_data_key(
                KeyId=self._key_id, KeySpec="AES_256", EncryptionContext=_context(context)
            )
        wrapped = WrappedKey(kek_id=response["KeyId"], blob=response["CiphertextBlob"])
        return response["Plaintext"], wrapped

    def wrap(self, data_key: bytes, *, context: str) -> WrappedKey:
        if len(data_key) != DATA_KEY_SIZE:
            raise ValueError(f"data key must be {DATA_KEY_SIZE} bytes, got {len(data_key)}")
        check_context(context)
        with _kms_errors(repr(self._key_id)):
            response = self.client.encrypt(
                KeyId=self._key_id, Plaintext=data_key, EncryptionContext=_context(context)
            )
        return WrappedKey(kek_id=response["KeyId"], blob=response["CiphertextBlob"])

    def unwrap(self, kek_id: str, blob: bytes, *, context: str) -> bytes:
        check_context(context)
        with _kms_errors(repr(kek_id), context):
            response = self.client.decrypt(
                CiphertextBlob=blob, KeyId=kek_id, EncryptionContext=_context(context)
            )
        data_key: bytes = response["Plaintext"]
        if len(data_key) != DATA_KEY_SIZE:
            # Something else encrypted under this key and context, not one of our data keys.
            raise VaultIntegrityError(
                f"KMS key {kek_id!r} decrypted {len(data_key)} bytes, not a "
                f"{DATA_KEY_SIZE}-byte data key"
            )
        return data_key

    def rewrap(self, kek_id: str, blob: bytes, *, context: str) -> WrappedKey:
        check_context(context)
        with _kms_errors(f"{kek_id!r} or destination {self._key_id!r}", context):
            response = self.client.re_encrypt(
                CiphertextBlob=blob,
                SourceKeyId=kek_id,
                SourceEncryptionContext=_context(context),
                DestinationKeyId=self._key_id,
                DestinationEncryptionContext=_context(context),
            )
        return WrappedKey(kek_id=response["KeyId"], blob=response["CiphertextBlob"])


def _context(context: str) -> dict[str, str]:
    return {CONTEXT_KEY: context}


def _arn_region(value: str) -> str | None:
    parts = value.split(":", 5)
    if len(parts) == 6 and parts[0] == "arn" and parts[2] == "kms" and parts[3]:
        return parts[3]
    return None


def _is_key_arn(value: str) -> bool:
    # arn:<partition>:kms:<region>:<account>:key/<key id>; aliases are deliberately excluded.
    parts = value.split(":", 5)
    return (
        len(parts) == 6
        and parts[0] == "arn"
        and parts[2] == "kms"
        and parts[5].startswith("key/")
        and len(parts[5]) > len("key/")
    )


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def _kms_errors(keys: str, context: str | None = None) -> Iterator[None]:
    """Translate the KMS errors callers act on into vault errors; let the rest propagate
    (throttling, access denied, network), since retrying or alerting differs for them.

    ``keys`` names the KMS key(s) involved, for the message.
    """
    try:
        yield
    except ClientError as exc:
        code = _error_code(exc)
        detail = f"{code}: {exc.response.get('Error', {}).get('Message') or 'no message'}"
        if code in _INTEGRITY_CODES:
            raise VaultIntegrityError(
                f"KMS rejected the wrapped key under KMS key {keys} with context {context!r}: "
                "it was wrapped for another context (e.g. copied from another row) or under "
                f"another key, or it was tampered with ({detail})"
            ) from exc
        if code in _UNAVAILABLE_CODES:
            raise KeyUnavailableError(
                f"KMS key {keys} is unavailable: missing, disabled or pending deletion ({detail})"
            ) from exc
        raise
