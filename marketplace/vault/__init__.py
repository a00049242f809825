"""Encryption at rest for model artifacts: streaming AEAD files and key-encryption keys.

Plain Python on top of ``cryptography`` in ``stream``, ``keyring`` and ``kms``; the Django
side (tenant keys, the artifact store) is ``keys`` and ``store``, imported explicitly. The AWS
KMS backend,
``marketplace.vault.kms.KmsBackend``, is not re-exported here because it needs ``boto3``;
import it from its module where KMS is configured.
"""

from .keyring import (
    KekBackend,
    KeyRing,
    KeyUnavailableError,
    WrappedKey,
    add_primary_kek_to_file,
    remove_kek_from_file,
)
from .stream import (
    DEFAULT_CHUNK_SIZE,
    ByteReader,
    ByteWriter,
    Encryptor,
    EncryptResult,
    KeyResolver,
    StreamHeader,
    VaultError,
    VaultIntegrityError,
    decrypt_stream,
    decrypt_to_bytes,
    encrypt_stream,
    read_header,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "ByteReader",
    "ByteWriter",
    "EncryptResult",
    "Encryptor",
    "KekBackend",
    "KeyResolver",
    "KeyRing",
    "KeyUnavailableError",
    "StreamHeader",
    "VaultError",
    "VaultIntegrityError",
    "WrappedKey",
    "add_primary_kek_to_file",
    "remove_kek_from_file",
    "decrypt_stream",
    "decrypt_to_bytes",
    "encrypt_stream",
    "read_header",
]
