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

import io
import math
import mmap
import threading

from django.conf import settings

from accounts.models import Tenant
from config import sql
from marketplace.models import Artifact, TenantKey

from . import keys, store
from .stream import (
    MAX_CHUNK_SIZE,
    TAG_SIZE,
    SegmentCipher,
    VaultIntegrityError,
    decrypt_to_bytes,
    read_header,
)

# Smallest vault chunk we choose to align with upload pieces: below it the per-chunk tag and
# call overhead grows, so pieces of odd sizes use their own size as the vault chunk size.
_MIN_ALIGNED_CHUNK = 64 * 1024


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


def header_chunk_size(header: bytes) -> int:
    """The vault chunk size a session's header fixed (the setting may have changed since)."""
    return read_header(io.BytesIO(bytes(header))).chunk_size


def session_header(*, tenant: Tenant, piece_size: int) -> tuple[TenantKey, str, bytes]:
    """The tenant key, artifact id and vault header for a new upload session."""
    key = keys.active_key(tenant)
    artifact_id = Artifact._meta.get_field("public_id").get_default()
    header = SegmentCipher.new_header(key_id=key.public_id, chunk_size=vault_chunk_size(piece_size))
    return key, artifact_id, header


def _cipher(*, key: TenantKey, header: bytes, artifact_id: str) -> SegmentCipher:
    return SegmentCipher(header=bytes(header), data_key=keys.data_key(key), artifact_id=artifact_id)


class BufferPool:
    """Large buffers shared by a process's threads: one is taken per use and given back
    after, so the process holds about one per use at once (not one per thread that ever
    needed one, and none kept by glibc's per-thread malloc arenas), and a fresh multi-MiB
    buffer, which is mapped and faulted in every time and costs about as much as AES-GCM,
    is rarely needed. Page-aligned (the store writes sealed pieces with direct I/O)."""

    def __init__(self, keep: int) -> None:
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()
        self._keep = keep  # idle buffers kept for the next pieces

    def take(self, size: int) -> mmap.mmap:
        with self._lock:
            for i, buffer in enumerate(self._free):  # smallest first: the smallest that fits
                if len(buffer) >= size:
                    return self._free.pop(i)
        # Private: a child forked later would not share the pieces sealed here after it.
        return mmap.mmap(-1, max(size, 1), flags=mmap.MAP_PRIVATE)

    def give_back(self, buffer: mmap.mmap) -> None:
        with self._lock:
            self._free.append(buffer)
            self._free.sort(key=len)
            if len(self._free) > self._keep:
                # The smallest goes: an upload's small last piece must not, once kept, leave
                # every full-sized piece after it to map a fresh buffer.
                self._free.pop(0)


_pool = BufferPool(keep=4)


class PieceSealer:
    """Seals one upload piece as chunks ``first_chunk, ...`` of the session's artifact while
    it arrives, into a reused buffer (header + sealed chunks, the part blob's bytes).

    Nothing is stored here: sealing into memory commits to nothing, since a nonce is only
    burnt once a ciphertext made with it is stored (``part_store``), and a request that
    breaks off leaves only this buffer, which the next piece overwrites."""

    def __init__(
        self,
        *,
        key: TenantKey,
        header: bytes,
        artifact_id: str,
        first_chunk: int,
        final: bool,
        size: int,
    ) -> None:
        self._cipher = _cipher(key=key, header=header, artifact_id=artifact_id)
        self._cs = self._cipher.chunk_size
        self._final = final
        self.size = size
        head = len(header)
        sealed_size = head + self._cipher.sealed_size(size)
        stage_size = min(self._cs, size) or 1
        # One buffer: the sealed piece, then the staging area (for the odd-sized pieces a
        # read leaves, and for opening the chunks again to hash them).
        self._buffer = _pool.take(sealed_size + stage_size)
        whole = memoryview(self._buffer)
        self._sealed = whole[:sealed_size]
        self._stage = whole[sealed_size : sealed_size + stage_size]
        self._sealed[:head] = header
        self._out = head  # where the next sealed chunk goes
        self._staged = 0
        self._done = 0  # plaintext bytes sealed
        self._first = self._counter = first_chunk

    def update(self, piece) -> None:
        view = memoryview(piece).cast("B")
        while view:
            want = min(self._cs, self.size - self._done)
            if not want:
                raise ValueError("more plaintext than the piece holds")
            if not self._staged and len(view) >= want:  # a whole chunk: seal it in place
                self._seal(view[:want])
                view = view[want:]
                continue
            take = min(want - self._staged, len(view))
            self._stage[self._staged : self._staged + take] = view[:take]
            self._staged += take
            view = view[take:]
            if self._staged == want:
                self._staged = 0
                self._seal(self._stage[:want])

    def _seal(self, chunk: memoryview) -> None:
        final = self._final and self._done + len(chunk) == self.size
        end = self._out + len(chunk) + TAG_SIZE
        self._cipher.seal_into(
            chunk, self._sealed[self._out : end], first=self._counter, final=final
        )
        self._out, self._done, self._counter = end, self._done + len(chunk), self._counter + 1

    @property
    def complete(self) -> bool:
        return self._done == self.size and self._out == len(self._sealed)

    def blob(self) -> memoryview:
        """The part blob's bytes, once ``complete``."""
        if not self.complete:
            raise ValueError("the piece is incomplete")
        return self._sealed

    def close(self) -> None:
        """Give the buffer back for the next piece; the sealer is unusable after it."""
        buffer, self._buffer = self._buffer, None
        if buffer is not None:
            self._sealed = self._stage = None  # type: ignore[assignment]
            _pool.give_back(buffer)

    def hash_into(self, sha256) -> None:
        """Feed the piece's plaintext to ``sha256`` again, opening the sealed chunks one at a
        time into the staging buffer (AES-GCM opens several times faster than SHA-256
        hashes, and nothing piece-sized is allocated)."""
        count = max(1, -(-self.size // self._cs))
        pos = len(self._cipher.header.raw)
        for j in range(count):
            plain = min(self._cs, self.size - j * self._cs)
            end = pos + plain + TAG_SIZE
            final = self._final and j == count - 1
            self._cipher.open_into(
                self._sealed[pos:end], self._stage, first=self._first + j, final=final
            )
            sha256.update(self._stage[:plain])
            pos = end

    def plaintext(self) -> bytearray:
        """The piece's plaintext again (for storing it as a vault file of its own)."""
        head = len(self._cipher.header.raw)
        out = bytearray(self.size)
        self._cipher.open_into(self.blob()[head:], out, first=self._first, final=self._final)
        return out


def part_store(
    *, tenant: Tenant, key: TenantKey, artifact_id: str, sealer: PieceSealer
) -> Artifact:
    """Store a sealed piece as a part blob and its row. The caller has claimed the piece's
    position: no other bytes were ever stored sealed there."""
    part = Artifact(tenant=tenant, key=key, size=sealer.size, sha256="")
    # Beside the finished artifact's header blob, which takes this blob over as it is.
    part.storage_name, part.ciphertext_size = store.blob_write(
        f"{artifact_id}/{key.public_id}.part-{part.public_id}", [sealer.blob()]
    )
    try:
        sql.insert(part)
    except BaseException:
        store.artifact_storage().delete(part.storage_name)
        raise
    return part


def part_holds(part: Artifact, sealer: PieceSealer) -> bool:
    """Whether a stored part blob is byte for byte what ``sealer`` sealed (same position, same
    plaintext: AES-GCM under the same key and nonce gives the same bytes)."""
    blob = sealer.blob()
    return (
        part.ciphertext_size == len(blob)
        and store.blob_read(part.storage_name, len(blob) + 1) == blob
    )


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
    span: tuple[int, int] | None = None,
) -> bytearray:
    """A part's plaintext, authenticated; with ``span`` (start, end), only those bytes of it,
    for which only the vault chunks holding them are read and opened. Bounded by the piece
    size."""
    if not sealed_in_place:
        with store.artifact_storage().open(part.storage_name, "rb") as fh:
            out = decrypt_to_bytes(fh, data_key=store._resolver(part), artifact_id=part.public_id)
        return out if span is None else out[span[0] : span[1]]
    if span is not None and span != (0, part.size):
        return _part_open_span(part, header, artifact_id, first_chunk, final, span)
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


def _part_open_span(
    part: Artifact,
    header: bytes,
    artifact_id: str,
    first_chunk: int,
    final: bool,
    span: tuple[int, int],
) -> bytearray:
    start, end = span
    if not 0 <= start < end <= part.size:
        raise ValueError(f"span {span} is not within the part's {part.size} bytes")
    cipher = _cipher(key=part.key, header=header, artifact_id=artifact_id)
    cs = cipher.chunk_size
    count = max(1, -(-part.size // cs))
    a, b = start // cs, -(-end // cs)  # the vault chunks that hold the span
    head = len(header)
    offset = head + a * (cs + TAG_SIZE)
    length = min(b * cs, part.size) - a * cs + (b - a) * TAG_SIZE
    sealed = store.blob_read(part.storage_name, length, offset)
    # The blob ends where its record says (one byte read at its end and one past it), as the
    # whole read checks: a part cut short or grown fails here, not when the version is read.
    ends = store.blob_read(part.storage_name, 2, part.ciphertext_size - 1)
    if (
        len(sealed) != length
        or len(ends) != 1
        or head + part.size + count * TAG_SIZE != part.ciphertext_size
    ):
        raise VaultIntegrityError(f"Upload part {part.public_id} is not the one stored.")
    out = bytearray(min(b * cs, part.size) - a * cs)
    cipher.open_into(sealed, out, first=first_chunk + a, final=final and b == count)
    return out[start - a * cs : end - a * cs]


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
