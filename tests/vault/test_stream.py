import hashlib
import io
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from marketplace.vault import stream
from marketplace.vault.stream import (
    DEFAULT_CHUNK_SIZE,
    TAG_SIZE,
    Encryptor,
    VaultIntegrityError,
    decrypt_stream,
    decrypt_to_bytes,
    encrypt_stream,
    read_header,
)

CHUNK = 4096
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
ARTIFACT = "artifact-0001"
KEY_ID = "tenant-7/dk-1"
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5]
REPO_ROOT = Path(__file__).resolve().parents[2]


def plaintext(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def encrypt(
    data: bytes, *, key: bytes = KEY, artifact_id: str = ARTIFACT, chunk_size: int = CHUNK
) -> bytes:
    out = io.BytesIO()
    encrypt_stream(
        io.BytesIO(data),
        out,
        data_key=key,
        artifact_id=artifact_id,
        key_id=KEY_ID,
        chunk_size=chunk_size,
    )
    return out.getvalue()


def decrypt(blob: bytes, *, key: bytes = KEY, artifact_id: str = ARTIFACT) -> bytes:
    return decrypt_to_bytes(io.BytesIO(blob), data_key=key, artifact_id=artifact_id)


def split(blob: bytes) -> tuple[bytes, list[bytes]]:
    """Split a ciphertext into its header and sealed chunks."""
    src = io.BytesIO(blob)
    header = read_header(src)
    body = src.read()
    sealed = header.chunk_size + TAG_SIZE
    return header.raw, [body[i : i + sealed] for i in range(0, len(body), sealed)]


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_preserves_plaintext(size: int) -> None:
    data = plaintext(size)
    assert decrypt(encrypt(data)) == data


@pytest.mark.parametrize("size", SIZES)
def test_only_the_last_chunk_is_short_and_empty_files_have_one_empty_chunk(size: int) -> None:
    _, chunks = split(encrypt(plaintext(size)))
    expected_count = max(1, -(-size // CHUNK))
    assert len(chunks) == expected_count
    assert all(len(c) == CHUNK + TAG_SIZE for c in chunks[:-1])
    assert len(chunks[-1]) == size - CHUNK * (expected_count - 1) + TAG_SIZE


def test_round_trip_with_default_chunk_size() -> None:
    data = plaintext(2 * DEFAULT_CHUNK_SIZE + 3)
    blob = encrypt(data, chunk_size=DEFAULT_CHUNK_SIZE)
    assert read_header(io.BytesIO(blob)).chunk_size == DEFAULT_CHUNK_SIZE
    assert decrypt(blob) == data


def test_encrypt_result_reports_sizes_and_plaintext_sha256() -> None:
    data = plaintext(3 * CHUNK + 5)
    out = io.BytesIO()
    result = encrypt_stream(
        io.BytesIO(data), out, data_key=KEY, artifact_id=ARTIFACT, key_id=KEY_ID, chunk_size=CHUNK
    )
    assert result.plaintext_size == len(data)
    assert result.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    assert result.ciphertext_size == len(out.getvalue())


def test_encrypt_stream_accepts_an_iterable_of_pieces() -> None:
    data = plaintext(3 * CHUNK + 5)
    out = io.BytesIO()
    pieces = [data[:10], b"", data[10:5000], data[5000:]]
    encrypt_stream(pieces, out, data_key=KEY, artifact_id=ARTIFACT, key_id=KEY_ID, chunk_size=CHUNK)
    assert decrypt(out.getvalue()) == data


def test_same_plaintext_encrypts_differently_each_time() -> None:
    data = plaintext(100)
    assert encrypt(data) != encrypt(data)


def test_encryptor_fed_random_sized_pieces_buffers_at_most_one_chunk() -> None:
    rng = random.Random(42)
    data = plaintext(20 * CHUNK + 123)
    enc = Encryptor(data_key=KEY, artifact_id=ARTIFACT, key_id=KEY_ID, chunk_size=CHUNK)
    parts = [enc.header()]
    fed = 0
    while fed < len(data):
        piece = data[fed : fed + rng.choice([0, 1, 7, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK])]
        fed += len(piece)
        parts.append(enc.update(piece))
        emitted = sum(len(p) for p in parts[1:])
        assert emitted % (CHUNK + TAG_SIZE) == 0
        # Everything except the last (possibly full) chunk has been sealed and returned.
        assert emitted // (CHUNK + TAG_SIZE) == max(0, (fed - 1) // CHUNK)
    parts.append(enc.finalize())
    assert enc.plaintext_size == len(data)
    assert enc.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    assert decrypt(b"".join(parts)) == data


def test_encryptor_cannot_be_used_after_finalize() -> None:
    enc = Encryptor(data_key=KEY, artifact_id=ARTIFACT, key_id=KEY_ID, chunk_size=CHUNK)
    enc.finalize()
    with pytest.raises(RuntimeError):
        enc.update(b"more")
    with pytest.raises(RuntimeError):
        enc.finalize()


def test_read_header_exposes_key_id_and_leaves_stream_at_first_chunk() -> None:
    data = plaintext(CHUNK + 1)
    src = io.BytesIO(encrypt(data))
    header = read_header(src)
    assert (header.key_id, header.chunk_size, header.version) == (KEY_ID, CHUNK, 1)
    assert b"".join(decrypt_stream(src, data_key=KEY, artifact_id=ARTIFACT, header=header)) == data


def test_key_resolver_is_called_with_the_header_key_id() -> None:
    data = plaintext(10)
    seen: list[str] = []

    def resolve(key_id: str) -> bytes:
        seen.append(key_id)
        return KEY

    assert (
        decrypt_to_bytes(io.BytesIO(encrypt(data)), data_key=resolve, artifact_id=ARTIFACT) == data
    )
    assert seen == [KEY_ID]


def test_decrypt_copes_with_sources_that_return_short_reads() -> None:
    class Trickle:
        def __init__(self, data: bytes) -> None:
            self._src = io.BytesIO(data)

        def read(self, size: int, /) -> bytes:
            return self._src.read(min(size, 7))

    data = plaintext(3 * CHUNK + 5)
    assert decrypt_to_bytes(Trickle(encrypt(data)), data_key=KEY, artifact_id=ARTIFACT) == data


# --- tampering -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [100, 96])
def test_every_single_bit_flip_is_rejected(size: int) -> None:
    blob = encrypt(plaintext(size), chunk_size=32)
    for index in range(len(blob)):
        for bit in range(8):
            tampered = bytearray(blob)
            tampered[index] ^= 1 << bit
            with pytest.raises(VaultIntegrityError):
                decrypt(bytes(tampered))


@pytest.mark.parametrize("size", [100, 96, 0])
def test_every_truncation_is_rejected(size: int) -> None:
    blob = encrypt(plaintext(size), chunk_size=32)
    for length in range(len(blob)):
        with pytest.raises(VaultIntegrityError):
            decrypt(blob[:length])


def test_stream_truncated_at_a_chunk_boundary_is_rejected() -> None:
    header, chunks = split(encrypt(plaintext(3 * CHUNK)))
    with pytest.raises(VaultIntegrityError, match="chunk 1 failed authentication"):
        decrypt(header + b"".join(chunks[:2]))


def test_stream_truncated_inside_a_chunk_is_rejected() -> None:
    blob = encrypt(plaintext(3 * CHUNK + 5))
    with pytest.raises(VaultIntegrityError):
        decrypt(blob[:-100])


def test_stream_with_header_but_no_chunks_is_rejected() -> None:
    header, _ = split(encrypt(b""))
    with pytest.raises(VaultIntegrityError, match="no final chunk"):
        decrypt(header)


def test_stream_truncated_inside_the_header_is_rejected() -> None:
    header, _ = split(encrypt(b"x"))
    with pytest.raises(VaultIntegrityError, match="truncated inside the header"):
        decrypt(header[:-1])


def test_reordered_chunks_are_rejected() -> None:
    header, chunks = split(encrypt(plaintext(3 * CHUNK + 5)))
    chunks[0], chunks[1] = chunks[1], chunks[0]
    with pytest.raises(VaultIntegrityError, match="chunk 0"):
        decrypt(header + b"".join(chunks))


def test_duplicated_chunk_is_rejected() -> None:
    header, chunks = split(encrypt(plaintext(3 * CHUNK + 5)))
    with pytest.raises(VaultIntegrityError, match="chunk 1"):
        decrypt(header + b"".join([chunks[0], chunks[0], *chunks[1:]]))


def test_dropped_middle_chunk_is_rejected() -> None:
    header, chunks = split(encrypt(plaintext(3 * CHUNK + 5)))
    with pytest.raises(VaultIntegrityError, match="chunk 1"):
        decrypt(header + b"".join([chunks[0], *chunks[2:]]))


@pytest.mark.parametrize("size", [3 * CHUNK + 5, 3 * CHUNK, 0])
@pytest.mark.parametrize("extra", [b"\x00", b"x" * (CHUNK + TAG_SIZE)], ids=["byte", "chunk"])
def test_bytes_after_the_final_chunk_are_rejected(size: int, extra: bytes) -> None:
    blob = encrypt(plaintext(size))
    with pytest.raises(VaultIntegrityError):
        decrypt(blob + extra)


def test_final_chunk_appended_twice_is_rejected() -> None:
    header, chunks = split(encrypt(plaintext(3 * CHUNK)))
    with pytest.raises(VaultIntegrityError):
        decrypt(header + b"".join([*chunks, chunks[-1]]))


def test_wrong_data_key_is_rejected() -> None:
    with pytest.raises(VaultIntegrityError, match="chunk 0 failed authentication"):
        decrypt(encrypt(plaintext(100)), key=OTHER_KEY)


def test_ciphertext_moved_to_another_artifact_is_rejected() -> None:
    blob = encrypt(plaintext(100), artifact_id="artifact-A")
    with pytest.raises(VaultIntegrityError):
        decrypt(blob, artifact_id="artifact-B")


def test_header_from_another_encryption_is_rejected() -> None:
    data = plaintext(3 * CHUNK + 5)
    header_a, _ = split(encrypt(data))
    _, chunks_b = split(encrypt(data))
    with pytest.raises(VaultIntegrityError):
        decrypt(header_a + b"".join(chunks_b))


def test_bad_magic_is_rejected() -> None:
    blob = encrypt(b"model")
    with pytest.raises(VaultIntegrityError, match="bad magic"):
        decrypt(b"NOTVLT" + blob[6:])


def test_unsupported_version_is_rejected() -> None:
    blob = bytearray(encrypt(b"model"))
    blob[len(stream.MAGIC)] = 2
    with pytest.raises(VaultIntegrityError, match="unsupported artifact format version 2"):
        decrypt(bytes(blob))


def test_header_errors_surface_before_iteration_starts() -> None:
    with pytest.raises(VaultIntegrityError, match="bad magic"):
        decrypt_stream(io.BytesIO(b"garbage" * 20), data_key=KEY, artifact_id=ARTIFACT)


def test_iterator_yields_verified_chunks_before_detecting_truncation() -> None:
    data = plaintext(3 * CHUNK + 5)
    header, chunks = split(encrypt(data))
    it = decrypt_stream(
        io.BytesIO(header + b"".join(chunks[:-1])), data_key=KEY, artifact_id=ARTIFACT
    )
    assert next(it) == data[:CHUNK]
    with pytest.raises(VaultIntegrityError):
        list(it)


def test_decrypt_to_bytes_returns_nothing_when_the_end_is_missing() -> None:
    header, chunks = split(encrypt(plaintext(3 * CHUNK + 5)))
    result = None
    with pytest.raises(VaultIntegrityError):
        result = decrypt(header + b"".join(chunks[:-1]))
    assert result is None


# --- limits and arguments ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data_key": b"short"},
        {"chunk_size": 0},
        {"chunk_size": stream.MAX_CHUNK_SIZE + 1},
        {"artifact_id": ""},
        {"key_id": ""},
    ],
)
def test_invalid_encryption_arguments_raise_value_error(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"data_key": KEY, "artifact_id": ARTIFACT, "key_id": KEY_ID}
    with pytest.raises(ValueError):
        Encryptor(**{**args, **kwargs})  # type: ignore[arg-type]


def test_chunk_count_limit_is_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    blob = encrypt(plaintext(3 * 32), chunk_size=32)
    monkeypatch.setattr(stream, "MAX_CHUNKS", 2)
    with pytest.raises(ValueError, match="exceeds 2 chunks"):
        encrypt(plaintext(3 * 32), chunk_size=32)
    with pytest.raises(VaultIntegrityError, match="more than 2 chunks"):
        decrypt(blob)


_MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    from marketplace.vault.stream import Encryptor, decrypt_stream

    TOTAL = 256 * 1024 * 1024
    BLOCK = bytes(range(256)) * 4096
    KEY = bytes(32)

    def max_rss_mib():
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (1024 * 1024 if sys.platform == "darwin" else 1024)

    def ciphertext():
        enc = Encryptor(data_key=KEY, artifact_id="big", key_id="k")
        yield enc.header()
        for _ in range(TOTAL // len(BLOCK)):
            yield enc.update(BLOCK)
        yield enc.finalize()

    class IterReader:
        def __init__(self, pieces):
            self._pieces = pieces
            self._buf = memoryview(b"")

        def read(self, size):
            while not self._buf:
                piece = next(self._pieces, None)
                if piece is None:
                    return b""
                self._buf = memoryview(piece)
            out, self._buf = bytes(self._buf[:size]), self._buf[size:]
            return out

    baseline = max_rss_mib()
    total = 0
    for chunk in decrypt_stream(IterReader(ciphertext()), data_key=KEY, artifact_id="big"):
        total += len(chunk)
    print(json.dumps({"total": total, "growth_mib": max_rss_mib() - baseline}))
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="uses the resource module")
def test_peak_memory_stays_bounded_for_a_256_mib_artifact() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(proc.stdout)
    assert report["total"] == 256 * 1024 * 1024
    assert report["growth_mib"] < 64, report
