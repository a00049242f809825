"""Encryption of resumable uploads: each uploaded piece is sealed where it will sit.

An upload session fixes its artifact's id, tenant key and vault header when it starts. Each
uploaded piece is then sealed as the chunks it will be in the finished artifact (the STREAM
counter is its position, the last chunk of the last piece carries the final flag) and stored
as its own blob: the header followed by those sealed chunks. Completing the upload writes the
header and the pieces' sealed chunks one after the other, which is a vault v1 file like any
other, without decrypting or re-encrypting anything (``docs/artifact-format.md``).

A GCM nonce must never seal two different plaintexts, so a position is sealed under the
session's header only the first time it is claimed; a piece sent again with other bytes is
stored as a standalone vault file instead (``LAYOUT_FILE``), and completion then re-encrypts
the whole artifact, as every upload did before.
"""

from __future__ import annotations

import math
import threading

from django.conf import settings

from accounts.models import Tenant
from marketplace.models import Artifact, TenantKey

from . import keys, store
from .stream import MAX_CHUNK_SIZE, SegmentCipher, VaultIntegrityError, decrypt_to_bytes

# Smallest vault chunk we choose to align with upload pieces: below it the per-chunk tag and
# call overhead grows, so pieces of odd sizes use their own size as the vault chunk size.
_MIN_ALIGNED_CHUNK = 64 * 1024
_buffers = threading.local()


def vault_chunk_size(piece_size: int) -> int:
    """The vault chunk size for an upload of ``piece_size``-byte pieces: the configured one
    when it divides the piece size, otherwise a divisor of the piece size (every piece but the
    last must be a whole number of vault chunks)."""
    configured = settings.ARTIFACT_CHUNK_SIZE
    if piece_size % configured == 0:
        return configured
    common = math.gcd(piece_size, configured)
    if common >= _MIN_ALIGNED_CHUNK or piece_size > MAX_CHUNK_SIZE:
        return common
    return piece_size


def session_header(*, tenant: Tenant, piece_size: int) -> tuple[TenantKey, str, bytes]:
    """The tenant key, artifact id and vault header for a new upload session."""
    key = keys.active_key(tenant)
    artifact_id = Artifact._meta.get_field("public_id").get_default()
    header = SegmentCipher.new_header(key_id=key.public_id, chunk_size=vault_chunk_size(piece_size))
    return key, artifact_id, header


def _cipher(*, key: TenantKey, header: bytes, artifact_id: str) -> SegmentCipher:
    return SegmentCipher(header=bytes(header), data_key=keys.data_key(key), artifact_id=artifact_id)


def _buffer(name: str, size: int) -> memoryview:
    """A per-thread buffer reused across requests: a fresh multi-MiB buffer per piece is
    mapped and faulted in every time, which costs about as much as AES-GCM."""
    buffer = getattr(_buffers, name, None)
    if buffer is None or len(buffer) < size:
        buffer = bytearray(size)
        setattr(_buffers, name, buffer)
    return memoryview(buffer)[:size]


def plaintext_buffer(size: int) -> memoryview:
    """A reusable buffer for one piece's plaintext (valid until this thread's next piece)."""
    return _buffer("plaintext", size)


def part_seal(
    *,
    tenant: Tenant,
    key: TenantKey,
    header: bytes,
    artifact_id: str,
    first_chunk: int,
    final: bool,
    plaintext: memoryview,
) -> Artifact:
    """Seal one piece as chunks ``first_chunk, ...`` of the session's artifact and store it
    (header + sealed chunks) as a part. The caller guarantees this position was never sealed
    with other bytes under this header."""
    cipher = _cipher(key=key, header=header, artifact_id=artifact_id)
    head = len(header)
    sealed = _buffer("sealed", head + cipher.sealed_size(len(plaintext)))
    sealed[:head] = header
    cipher.seal_into(plaintext, sealed[head:], first=first_chunk, final=final)
    part = Artifact(tenant=tenant, key=key, size=len(plaintext), sha256="")
    # Beside the finished artifact's header blob, which takes this blob over as it is.
    part.storage_name, part.ciphertext_size = store.blob_write(
        f"{artifact_id}/{key.public_id}.part-{part.public_id}", [sealed]
    )
    try:
        part.save()
    except BaseException:
        store.artifact_storage().delete(part.storage_name)
        raise
    return part


def part_create_standalone(*, tenant: Tenant, plaintext: memoryview) -> Artifact:
    """Store one piece as a vault file of its own (its own header and key): for a position
    already sealed with other bytes, and for sessions started before parts were sealed in
    place."""
    return store.artifact_create(tenant=tenant, chunks=[plaintext])


def part_open(
    *,
    part: Artifact,
    sealed_in_place: bool,
    header: bytes,
    artifact_id: str,
    first_chunk: int,
    final: bool,
) -> bytearray:
    """A part's plaintext, authenticated. Bounded by the piece size."""
    if not sealed_in_place:
        with store.artifact_storage().open(part.storage_name, "rb") as fh:
            return decrypt_to_bytes(fh, data_key=store._resolver(part), artifact_id=part.public_id)
    blob = store.blob_read(part.storage_name, part.ciphertext_size + 1)
    head = len(header)
    if blob[:head] != bytes(header) or len(blob) != part.ciphertext_size:
        raise VaultIntegrityError(f"Upload part {part.public_id} is not the one stored.")
    cipher = _cipher(key=part.key, header=header, artifact_id=artifact_id)
    out = bytearray(part.size)
    size = cipher.open_into(memoryview(blob)[head:], out, first=first_chunk, final=final)
    if size != part.size:
        raise VaultIntegrityError(f"Upload part {part.public_id} has the wrong size.")
    return out


def artifact_take_over(
    *,
    tenant: Tenant,
    key: TenantKey,
    header: bytes,
    artifact_id: str,
    parts: list[Artifact],
    sha256: str,
) -> Artifact:
    """The finished artifact, made of a header blob and the parts' sealed chunks where they
    are (``Artifact.chunk_blobs``): nothing is copied. ``sha256`` is the plaintext's, checked
    by the caller. Writes the header blob and returns the row unsaved: the caller saves it
    and deletes the parts' rows (not their blobs) in the transaction that creates the
    version, so the parts belong to the session or to the artifact, never to both."""
    head = bytes(header)
    for part in parts:
        if store.blob_read(part.storage_name, len(head)) != head:
            raise VaultIntegrityError(f"Upload part {part.public_id} is not the one stored.")
    name = header_blob_name(artifact_id, key)
    try:
        name, _size = store.blob_write(name, [head])
    except FileExistsError:  # left by an earlier attempt: the same bytes, or not ours
        if store.blob_read(name, len(head) + 1) != head:
            raise VaultIntegrityError(f"Blob {name} is in the way of the upload.") from None
    return Artifact(
        public_id=artifact_id,
        tenant=tenant,
        key=key,
        sha256=sha256,
        size=sum(part.size for part in parts),
        storage_name=name,
        ciphertext_size=len(head) + sum(part.ciphertext_size - len(head) for part in parts),
        chunk_blobs=[
            [part.storage_name, len(head), part.ciphertext_size - len(head)] for part in parts
        ],
    )


def header_blob_name(artifact_id: str, key: TenantKey) -> str:
    return store._blob_name(artifact_id, key.public_id)


def header_blob_discard(*, artifact_id: str, key: TenantKey) -> None:
    """Delete the header blob an abandoned upload's failed completion may have left."""
    if not Artifact.objects.filter(public_id=artifact_id).exists():
        store.artifact_storage().delete(header_blob_name(artifact_id, key))
