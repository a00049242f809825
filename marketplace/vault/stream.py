"""Streaming authenticated encryption for model artifacts.

The format is the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015) as used by
Tink's AES-GCM-HKDF streaming AEAD and by age: a short header, then the plaintext split into
fixed-size chunks, each sealed with AES-256-GCM under a per-artifact key.  The byte layout and
the reasoning behind every field are documented in ``docs/artifact-format.md``; keep the two
in sync.

Memory use is bounded by the chunk size in both directions, whatever the artifact size.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"MMVAULT"
FORMAT_VERSION = 1
DEFAULT_CHUNK_SIZE = 1024 * 1024
# The decryptor allocates a buffer of one chunk before reading, and the chunk size comes from
# the (not yet authenticated) header, so cap it to keep a forged header from forcing a huge
# allocation.
MAX_CHUNK_SIZE = 64 * 1024 * 1024
MAX_KEY_ID_BYTES = 1024
# The chunk counter is a u32 in the nonce; a 2**32nd chunk would reuse nonce values.
MAX_CHUNKS = 2**32

DATA_KEY_SIZE = 32
SALT_SIZE = 32
NONCE_PREFIX_SIZE = 7
TAG_SIZE = 16
HKDF_INFO_PREFIX = b"modelmarket artifact v1"

# magic | version u8 | key id length u16 ; key id ; salt | nonce prefix | chunk size u32
_FIXED_PREFIX = struct.Struct(f">{len(MAGIC)}sBH")
_FIXED_SUFFIX = struct.Struct(f">{SALT_SIZE}s{NONCE_PREFIX_SIZE}sI")

KeyResolver = Callable[[str], bytes]
"""Maps the key id stored in a header to the 32-byte data key."""


@runtime_checkable
class ByteReader(Protocol):
    """Anything with ``read(n)``: files, ``io.BytesIO``, Django ``File``, boto3 bodies."""

    def read(self, size: int, /) -> bytes: ...


class ByteWriter(Protocol):
    def write(self, data: bytes, /) -> object: ...


class VaultError(Exception):
    """Base class for every error raised by ``marketplace.vault``."""


class VaultIntegrityError(VaultError):
    """Ciphertext (or a wrapped key) is malformed, tampered with, truncated or mismatched.

    Raised for bad magic, an unsupported version, any modified, reordered, duplicated, missing
    or extra byte, a wrong key, or a ciphertext presented under another artifact id.  The
    message says what was detected; callers should treat all cases alike and never use any
    plaintext already received from the same stream.
    """


@dataclass(frozen=True)
class StreamHeader:
    """A parsed artifact header. ``raw`` is the exact serialized bytes, bound into every chunk."""

    version: int
    key_id: str
    salt: bytes
    nonce_prefix: bytes
    chunk_size: int
    raw: bytes


@dataclass(frozen=True)
class EncryptResult:
    """Facts about an encrypted artifact, computed while streaming."""

    plaintext_size: int
    plaintext_sha256: str
    """Hex SHA-256 of the plaintext, for content addressing and user-facing checksums."""
    ciphertext_size: int


def _check_chunk_size(chunk_size: int) -> None:
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE}, got {chunk_size}")


def _check_data_key(data_key: bytes) -> None:
    if len(data_key) != DATA_KEY_SIZE:
        raise ValueError(f"data key must be {DATA_KEY_SIZE} bytes, got {len(data_key)}")


def _artifact_id_bytes(artifact_id: str) -> bytes:
    if not artifact_id:
        raise ValueError("artifact_id must not be empty")
    return artifact_id.encode("utf-8")


def _serialize_header(key_id: str, salt: bytes, nonce_prefix: bytes, chunk_size: int) -> bytes:
    key_id_bytes = key_id.encode("utf-8")
    if not 1 <= len(key_id_bytes) <= MAX_KEY_ID_BYTES:
        raise ValueError(f"key_id must be 1 to {MAX_KEY_ID_BYTES} bytes of UTF-8")
    return (
        _FIXED_PREFIX.pack(MAGIC, FORMAT_VERSION, len(key_id_bytes))
        + key_id_bytes
        + _FIXED_SUFFIX.pack(salt, nonce_prefix, chunk_size)
    )


def _artifact_aead(data_key: bytes, salt: bytes, artifact_id: bytes) -> AESGCM:
    # A fresh key per artifact keeps every key far below AES-GCM's usage limits and makes a
    # ciphertext undecryptable under any other artifact id, even with the same data key.
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=salt,
        info=HKDF_INFO_PREFIX + artifact_id,
    )
    return AESGCM(hkdf.derive(data_key))


def _associated_data(header: bytes, artifact_id: bytes) -> bytes:
    # The digest has a fixed length, so the artifact id after it is unambiguous.
    return hashlib.sha256(header).digest() + artifact_id


def _nonce(prefix: bytes, counter: int, final: bool) -> bytes:
    return prefix + struct.pack(">IB", counter, 1 if final else 0)


class Encryptor:
    """Incremental encryptor for plaintext arriving in pieces of any size.

    The ciphertext file is exactly ``header() + update(p1) + update(p2) + ... + finalize()``;
    the caller must write ``header()`` first.  A chunk is only sealed once more plaintext
    proves it is not the last one, so up to one chunk of plaintext stays buffered.
    """

    def __init__(
        self,
        *,
        data_key: bytes,
        artifact_id: str,
        key_id: str,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        _check_data_key(data_key)
        _check_chunk_size(chunk_size)
        artifact = _artifact_id_bytes(artifact_id)
        salt = os.urandom(SALT_SIZE)
        self._nonce_prefix = os.urandom(NONCE_PREFIX_SIZE)
        self._header = _serialize_header(key_id, salt, self._nonce_prefix, chunk_size)
        self._aead = _artifact_aead(data_key, salt, artifact)
        self._ad = _associated_data(self._header, artifact)
        self._chunk_size = chunk_size
        # Plaintext not yet sealed is ``_buffer[:_filled]``. The buffer grows to one chunk and
        # is then reused: clearing and re-growing it every chunk made glibc return the memory
        # and fault it in again each time, which cost more than the cipher.
        self._buffer = bytearray()
        self._filled = 0
        self._counter = 0
        self._finalized = False
        self._sha256 = hashlib.sha256()
        self._plaintext_size = 0

    def header(self) -> bytes:
        """The serialized header; write it before any ciphertext."""
        return self._header

    @property
    def plaintext_size(self) -> int:
        return self._plaintext_size

    @property
    def plaintext_sha256(self) -> str:
        """Hex SHA-256 of all plaintext passed to ``update`` so far."""
        return self._sha256.hexdigest()

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """Consume plaintext and return the ciphertext of every chunk now known to be non-final.

        Whatever is kept for later is copied, so the caller may reuse ``data``'s buffer.
        """
        self._check_open()
        view = memoryview(data).cast("B")
        self._sha256.update(view)
        self._plaintext_size += len(view)
        chunk_size = self._chunk_size
        out: list[bytes] = []
        # Strictly greater: a chunk that exactly fills the buffer may still be the final one.
        while self._filled + len(view) > chunk_size:
            if self._filled:
                take = chunk_size - self._filled
                # Slice assignment copies in place, growing the buffer only the first time.
                self._buffer[self._filled : chunk_size] = view[:take]
                self._filled = 0
                out.append(self._seal(self._buffer, final=False))
            else:
                # Seal straight from the caller's data to avoid copying large pieces.
                take = chunk_size
                out.append(self._seal(view[:take], final=False))
            view = view[take:]
        self._buffer[self._filled : self._filled + len(view)] = view
        self._filled += len(view)
        # join() returns a single piece as is, so the usual one-chunk case copies nothing.
        return b"".join(out)

    def finalize(self) -> bytes:
        """Seal the buffered plaintext (possibly empty) as the final chunk."""
        self._check_open()
        self._finalized = True
        out = self._seal(memoryview(self._buffer)[: self._filled], final=True)
        self._buffer = bytearray()  # callers keep the encryptor for its size and digest
        self._filled = 0
        return out

    def _check_open(self) -> None:
        if self._finalized:
            raise RuntimeError("Encryptor is already finalized")

    def _seal(self, plaintext: bytes | bytearray | memoryview, *, final: bool) -> bytes:
        if self._counter >= MAX_CHUNKS:
            raise ValueError(
                f"artifact exceeds {MAX_CHUNKS} chunks of {self._chunk_size} bytes; "
                "use a larger chunk size"
            )
        nonce = _nonce(self._nonce_prefix, self._counter, final)
        self._counter += 1
        return self._aead.encrypt(nonce, plaintext, self._ad)


def encrypt_stream(
    src: ByteReader | Iterable[bytes],
    dst: ByteWriter,
    *,
    data_key: bytes,
    artifact_id: str,
    key_id: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> EncryptResult:
    """Encrypt ``src`` (a readable binary file or an iterable of byte strings) into ``dst``.

    ``key_id`` is stored in the clear in the header so that the reader can find the data key;
    ``artifact_id`` is not stored and must be supplied again to decrypt.
    """
    enc = Encryptor(
        data_key=data_key, artifact_id=artifact_id, key_id=key_id, chunk_size=chunk_size
    )
    pieces = _read_pieces(src, chunk_size) if isinstance(src, ByteReader) else src
    # Count what we hand over rather than trusting write()'s return value, which some
    # file-like sinks (hash wrappers, storage adapters) return as None.
    written = 0

    def emit(data: bytes) -> None:
        nonlocal written
        dst.write(data)
        written += len(data)

    emit(enc.header())
    for piece in pieces:
        emit(enc.update(piece))
    emit(enc.finalize())
    return EncryptResult(
        plaintext_size=enc.plaintext_size,
        plaintext_sha256=enc.plaintext_sha256,
        ciphertext_size=written,
    )


def _read_exact(src: ByteReader, size: int) -> bytes:
    """Read ``size`` bytes, fewer only at end of stream (``read`` may return short counts)."""
    data = src.read(size)
    if len(data) == size or not data:
        return data
    parts = [data]
    remaining = size - len(data)
    while remaining:
        more = src.read(remaining)
        if not more:
            break
        parts.append(more)
        remaining -= len(more)
    return b"".join(parts)


def _read_pieces(src: ByteReader, size: int) -> Iterator[bytes | memoryview]:
    """Successive pieces of ``src``, each at most ``size`` bytes, until it is exhausted.

    Readers with ``readinto`` fill one reused buffer, so each piece is only valid until the
    next is requested (``Encryptor.update`` copies what it keeps); a fresh ``bytes`` per read
    would be allocated and freed every chunk.
    """
    readinto = getattr(src, "readinto", None)
    if readinto is None:
        read = src.read
        yield from iter(lambda: read(size), b"")
        return
    view = memoryview(bytearray(size))
    while n := readinto(view):
        yield view[:n]
    if n is None:  # a non-blocking source with nothing ready: stopping would truncate
        raise BlockingIOError("encrypt_stream needs a blocking source")


def read_header(src: ByteReader) -> StreamHeader:
    """Read and parse the header, leaving ``src`` positioned at the first chunk.

    The header is only authenticated once the first chunk decrypts, so treat the returned
    values (notably ``key_id``) as untrusted until then.
    """
    prefix = _read_exact(src, _FIXED_PREFIX.size)
    if len(prefix) < _FIXED_PREFIX.size:
        raise VaultIntegrityError("stream truncated inside the header")
    magic, version, key_id_len = _FIXED_PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise VaultIntegrityError("not a Modelmarket vault artifact (bad magic bytes)")
    if version != FORMAT_VERSION:
        raise VaultIntegrityError(f"unsupported artifact format version {version}")
    if not 1 <= key_id_len <= MAX_KEY_ID_BYTES:
        raise VaultIntegrityError(f"invalid key id length {key_id_len} in header")
    rest = _read_exact(src, key_id_len + _FIXED_SUFFIX.size)
    if len(rest) < key_id_len + _FIXED_SUFFIX.size:
        raise VaultIntegrityError("stream truncated inside the header")
    try:
        key_id = rest[:key_id_len].decode("utf-8")
    except UnicodeDecodeError:
        raise VaultIntegrityError("key id in header is not valid UTF-8") from None
    salt, nonce_prefix, chunk_size = _FIXED_SUFFIX.unpack(rest[key_id_len:])
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise VaultIntegrityError(f"invalid chunk size {chunk_size} in header")
    return StreamHeader(
        version=version,
        key_id=key_id,
        salt=salt,
        nonce_prefix=nonce_prefix,
        chunk_size=chunk_size,
        raw=prefix + rest,
    )


def decrypt_stream(
    src: ByteReader,
    *,
    data_key: bytes | KeyResolver,
    artifact_id: str,
    header: StreamHeader | None = None,
) -> Iterator[bytes]:
    """Decrypt an artifact, yielding each plaintext chunk as soon as it is authenticated.

    ``data_key`` is either the 32-byte key or a callable mapping the header's key id to it
    (exceptions from the callable propagate unchanged).  Pass ``header`` if ``read_header``
    already consumed it from ``src``.  The header is parsed and the key resolved before this
    function returns, so those errors surface before any iteration.

    Each yielded chunk is authentic, but the stream as a whole is only known to be complete
    when the iterator is exhausted without error: truncation, reordering or trailing bytes
    raise ``VaultIntegrityError`` *after* earlier chunks were yielded.  Callers that must not
    act on partial plaintext (loading a model, writing a final file) must use
    ``decrypt_to_bytes`` or write to a sink they discard on error.
    """
    header, aead, ad = _open(src, data_key, artifact_id, header)
    return _decrypt_chunks(src, aead, ad, header)


def _open(
    src: ByteReader, data_key: bytes | KeyResolver, artifact_id: str, header: StreamHeader | None
) -> tuple[StreamHeader, AESGCM, bytes]:
    if header is None:
        header = read_header(src)
    key = data_key(header.key_id) if callable(data_key) else data_key
    _check_data_key(key)
    artifact = _artifact_id_bytes(artifact_id)
    aead = _artifact_aead(key, header.salt, artifact)
    return header, aead, _associated_data(header.raw, artifact)


def _decrypt_chunks(
    src: ByteReader, aead: AESGCM, ad: bytes, header: StreamHeader
) -> Iterator[bytes]:
    for counter, final, sealed in _sealed_chunks(src, header.chunk_size):
        try:
            # A fresh bytes object per chunk: consumers may keep chunks (``list(...)``), so
            # the plaintext cannot live in a reused buffer the way the ciphertext does.
            plaintext = aead.decrypt(_nonce(header.nonce_prefix, counter, final), sealed, ad)
        except InvalidTag:
            raise _chunk_failed(counter) from None
        yield plaintext


def _sealed_chunks(src: ByteReader, chunk_size: int) -> Iterator[tuple[int, bool, memoryview]]:
    """Yield ``(counter, final, sealed chunk)`` for every chunk of ``src``.

    All chunks are read into one buffer allocated up front, so each memoryview is only valid
    until the next item is requested: decrypt it first.  (Allocating a chunk per read, and
    copying it to carry the look-ahead byte, made glibc trim and re-fault its heap every chunk,
    which cost several times the cipher.)
    """
    sealed_size = chunk_size + TAG_SIZE
    # Read one byte past a full chunk: whether more data follows decides which final flag the
    # chunk must carry.  Truncating at a chunk boundary or appending bytes therefore changes
    # the flag we try, and authentication fails.  The look-ahead byte is then moved to the
    # front of the buffer as the first byte of the next chunk.
    buffer = bytearray(sealed_size + 1)
    view = memoryview(buffer)
    readinto = getattr(src, "readinto", None)
    filled = 0
    counter = 0
    while True:
        while filled < len(buffer):  # ``read``/``readinto`` may return short counts
            if readinto is not None:
                got = readinto(view[filled:])
            else:
                data = src.read(len(buffer) - filled)
                got = len(data)
                view[filled : filled + got] = data
            if not got:
                break
            filled += got
        final = filled <= sealed_size
        if filled < TAG_SIZE:
            raise VaultIntegrityError(
                f"stream truncated: chunk {counter} is incomplete or missing "
                "(no final chunk was found)"
            )
        if counter >= MAX_CHUNKS:
            raise VaultIntegrityError(f"stream has more than {MAX_CHUNKS} chunks")
        yield counter, final, view[: min(filled, sealed_size)]
        if final:
            return
        counter += 1
        buffer[0] = buffer[sealed_size]
        filled = 1


def _chunk_failed(counter: int) -> VaultIntegrityError:
    return VaultIntegrityError(
        f"chunk {counter} failed authentication: the artifact was modified, truncated, "
        "reordered or extended, or the key or artifact id is wrong"
    )


def decrypt_to_bytes(
    src: ByteReader,
    *,
    data_key: bytes | KeyResolver,
    artifact_id: str,
    header: StreamHeader | None = None,
) -> bytearray:
    """Decrypt a whole artifact into memory, returning nothing unless all of it is authentic.

    Use this where plaintext is handed to something that cannot be un-done (e.g. a model
    loader): the final chunk is verified before any byte is returned.  Arguments are as for
    ``decrypt_stream``.

    The result is a ``bytearray`` (it compares equal to ``bytes`` and works wherever a buffer
    is accepted) so that the plaintext exists once: when ``src`` can tell its size, chunks are
    decrypted straight into a buffer of the final size; otherwise the buffer grows as they
    arrive.  ``bytes(...)`` of it would briefly need twice the memory.
    """
    header, aead, ad = _open(src, data_key, artifact_id, header)
    expected = _plaintext_size_hint(src, header.chunk_size)
    decrypt_into = getattr(aead, "decrypt_into", None)  # not in older ``cryptography``
    out = bytearray()
    filled = 0
    for counter, final, sealed in _sealed_chunks(src, header.chunk_size):
        nonce = _nonce(header.nonce_prefix, counter, final)
        size = len(sealed) - TAG_SIZE
        try:
            if filled + size > len(out):  # no size hint, or too small a one: grow
                del out[filled:]
                out += aead.decrypt(nonce, sealed, ad)
            elif decrypt_into is not None:
                # On failure this leaves unauthenticated plaintext in ``out``, which is then
                # dropped with the exception, never returned.
                decrypt_into(nonce, sealed, ad, memoryview(out)[filled : filled + size])
            else:
                out[filled : filled + size] = aead.decrypt(nonce, sealed, ad)
        except InvalidTag:
            raise _chunk_failed(counter) from None
        filled += size
        if counter == 0 and expected is not None and expected > filled:
            # Reserve the whole plaintext only now, so that a wrong key or a foreign or forged
            # file fails before that much memory is committed. The hint is not trusted: a
            # wrong one costs growing or trimming the buffer, never a wrong result.
            reserved = bytearray(expected)
            reserved[:filled] = out
            out = reserved
    del out[filled:]
    return out


def _plaintext_size_hint(src: ByteReader, chunk_size: int) -> int | None:
    """The plaintext size implied by the bytes left in a seekable ``src``, else ``None``."""
    try:
        if not src.seekable():  # type: ignore[attr-defined]
            return None
        position = src.tell()  # type: ignore[attr-defined]
        end = src.seek(0, os.SEEK_END)  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None
    src.seek(position)  # type: ignore[attr-defined]  # must not fail silently: we read on
    remaining = end - position
    chunks = max(1, -(-remaining // (chunk_size + TAG_SIZE)))
    return max(0, remaining - chunks * TAG_SIZE)


class SegmentCipher:
    """Seals and opens runs of chunks of one artifact at any position, in any order.

    This is the same format as ``Encryptor`` writes, taken apart for resumable uploads: the
    header (and so the key and nonces) is fixed when the upload starts, each uploaded piece is
    sealed as the chunks it will be in the finished artifact (counter = its position), and the
    artifact is then ``header`` followed by the sealed runs in order, with no re-encryption.

    The caller must never seal two different plaintexts at the same counter (that would reuse
    a GCM nonce); sealing the same plaintext again yields the same bytes and is harmless.
    """

    def __init__(self, *, header: bytes, data_key: bytes, artifact_id: str) -> None:
        _check_data_key(data_key)
        source = io.BytesIO(header)
        parsed = read_header(source)
        if source.tell() != len(header):
            raise VaultIntegrityError("trailing bytes after the header")
        artifact = _artifact_id_bytes(artifact_id)
        self.header = parsed
        self.chunk_size = parsed.chunk_size
        self._aead = _artifact_aead(data_key, parsed.salt, artifact)
        self._ad = _associated_data(parsed.raw, artifact)
        self._encrypt_into = getattr(self._aead, "encrypt_into", None)
        self._decrypt_into = getattr(self._aead, "decrypt_into", None)

    @staticmethod
    def new_header(*, key_id: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> bytes:
        """A fresh header (random salt and nonce prefix) for a new artifact."""
        _check_chunk_size(chunk_size)
        return _serialize_header(
            key_id, os.urandom(SALT_SIZE), os.urandom(NONCE_PREFIX_SIZE), chunk_size
        )

    def sealed_size(self, plaintext_size: int) -> int:
        """Bytes of a run of chunks holding ``plaintext_size`` bytes (at least one chunk)."""
        return plaintext_size + TAG_SIZE * max(1, -(-plaintext_size // self.chunk_size))

    def _runs(self, size: int, first: int, final: bool) -> Iterator[tuple[int, int, bytes]]:
        """``(start, end, nonce)`` of each chunk in a run of ``size`` plaintext bytes."""
        cs = self.chunk_size
        count = max(1, -(-size // cs))
        if not final and size % cs:
            raise ValueError("only the final run may end with a partial chunk")
        if first < 0 or first + count > MAX_CHUNKS:
            raise ValueError(f"chunk counter out of range (at most {MAX_CHUNKS} chunks)")
        prefix = self.header.nonce_prefix
        for j in range(count):
            yield (
                j * cs,
                min(size, (j + 1) * cs),
                _nonce(prefix, first + j, final and j == count - 1),
            )

    def seal_into(self, plaintext, out, *, first: int, final: bool) -> int:
        """Seal ``plaintext`` as chunks ``first, first + 1, ...`` into ``out`` (at least
        ``sealed_size`` bytes); the last is sealed as the artifact's final chunk if ``final``.
        Returns the bytes written."""
        src = memoryview(plaintext).cast("B")
        dst = memoryview(out).cast("B")
        pos = 0
        for start, end, nonce in self._runs(len(src), first, final):
            size = end - start + TAG_SIZE
            if self._encrypt_into is not None:
                self._encrypt_into(nonce, src[start:end], self._ad, dst[pos : pos + size])
            else:
                dst[pos : pos + size] = self._aead.encrypt(nonce, src[start:end], self._ad)
            pos += size
        return pos

    def open_into(self, sealed, out, *, first: int, final: bool) -> int:
        """Open a run sealed by ``seal_into`` into ``out``; returns the plaintext size.
        ``VaultIntegrityError`` if any chunk fails (``out`` then holds garbage: discard it)."""
        src = memoryview(sealed).cast("B")
        dst = memoryview(out).cast("B")
        cs = self.chunk_size
        full, rest = divmod(len(src), cs + TAG_SIZE)
        if rest and rest < TAG_SIZE or not final and rest or not (full or rest):
            raise VaultIntegrityError("a run of sealed chunks has an impossible length")
        size = len(src) - TAG_SIZE * (full + (1 if rest else 0))
        pos = 0
        for start, end, nonce in self._runs(size, first, final):
            sealed_end = pos + end - start + TAG_SIZE
            try:
                if self._decrypt_into is not None:
                    self._decrypt_into(nonce, src[pos:sealed_end], self._ad, dst[start:end])
                else:
                    dst[start:end] = self._aead.decrypt(nonce, src[pos:sealed_end], self._ad)
            except InvalidTag:
                raise _chunk_failed(int.from_bytes(nonce[7:11], "big")) from None
            pos = sealed_end
        return size
