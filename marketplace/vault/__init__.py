"""Encryption at rest for model artifacts: streaming AEAD files and key-encryption keys.

Plain Python on top of ``cryptography``; nothing here imports Django.
"""

from .keyring import (
    KekBackend,
    KeyRing,
    KeyUnavailableError,
    WrappedKey,
    add_primary_kek_to_file,
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
    "decrypt_stream",
    "decrypt_to_bytes",
    "encrypt_stream",
    "read_header",
]
