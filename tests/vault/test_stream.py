import hashlib
import io
import json
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Callable
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


class ReadOnly:
    """A source with nothing but ``read`` (no ``readinto``, no size), returning short reads."""

    def __init__(self, data: bytes, *, most: int = 7) -> None:
        self._src = io.BytesIO(data)
        self._most = most

    def read(self, size: int, /) -> bytes:
        return self._src.read(min(size, self._most))


class ShortReadinto(io.RawIOBase):
    """A raw file whose ``readinto`` fills at most a few bytes per call, like a pipe."""

    def __init__(self, data: bytes) -> None:
        self._src = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview, /) -> int:
        return self._src.readinto(memoryview(buffer)[:7])


def decrypt_streaming(blob: bytes) -> bytes:
    return b"".join(decrypt_stream(io.BytesIO(blob), data_key=KEY, artifact_id=ARTIFACT))


def decrypt_read_only(blob: bytes) -> bytes:
    return decrypt_to_bytes(ReadOnly(blob), data_key=KEY, artifact_id=ARTIFACT)


# decrypt_to_bytes fills a buffer sized from a seekable source, or grows one from any other;
# decrypt_stream yields chunk by chunk. Each must accept and reject exactly the same streams.
Decryptor = Callable[[bytes], bytes]
DECRYPTORS: list[Decryptor] = [decrypt, decrypt_read_only, decrypt_streaming]


def split(blob: bytes) -> tuple[bytes, list[bytes]]:
    """Split a ciphertext into its header and sealed chunks."""
    src = io.BytesIO(blob)
    header = read_header(src)
    body = src.read()
    sealed = header.chunk_size + TAG_SIZE
    return header.raw, [body[i : i + sealed] for i in range(0, len(body), sealed)]


@pytest.mark.parametrize("decrypt_with", DECRYPTORS)
@pytest.mark.parametrize("size", SIZES)
def test_round_trip_preserves_plaintext(size: int, decrypt_with: Decryptor) -> None:
    data = plaintext(size)
    assert decrypt_with(encrypt(data)) == data


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


# Written by the first release of this module (before its buffers were reworked for speed),
# so the format, not just a round trip through the current code, stays readable.
KNOWN_ANSWER_PLAINTEXT = b"Modelmarket vault v1 known-answer vector."
KNOWN_ANSWER_CIPHERTEXT = bytes.fromhex(
    "4d4d5641554c5401000d74656e616e742d372f646b2d31e523b7ea4aa6a204078d8fce59f5a21adcdef8dc"
    "b9881a1e2adf175cf963557e3025065de2c0dd000000103e2600af388f9d115bba5f8c7740652c26488358"
    "13f4b815451c18c8f9582deda0169fb03b43985af833f3618aac8872db14e8ba469315c2955c3ae97c2b1b"
    "8594b2a4bad35f2d961a82e43aafabdb4fc3458b2da0fa17221c"
)


@pytest.mark.parametrize("decrypt_with", DECRYPTORS)
def test_artifacts_written_by_earlier_releases_still_decrypt(decrypt_with: Decryptor) -> None:
    assert read_header(io.BytesIO(KNOWN_ANSWER_CIPHERTEXT)).chunk_size == 16
    assert decrypt_with(KNOWN_ANSWER_CIPHERTEXT) == KNOWN_ANSWER_PLAINTEXT


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


@pytest.mark.parametrize("reader", [ReadOnly, ShortReadinto])
def test_decrypt_copes_with_sources_that_return_short_reads(reader: type) -> None:
    data = plaintext(3 * CHUNK + 5)
    blob = encrypt(data)
    assert decrypt_to_bytes(reader(blob), data_key=KEY, artifact_id=ARTIFACT) == data
    assert b"".join(decrypt_stream(reader(blob), data_key=KEY, artifact_id=ARTIFACT)) == data


@pytest.mark.parametrize("reader", [ReadOnly, ShortReadinto])
def test_encrypt_copes_with_sources_that_return_short_reads(reader: type) -> None:
    data = plaintext(3 * CHUNK + 5)
    out = io.BytesIO()
    encrypt_stream(
        reader(data), out, data_key=KEY, artifact_id=ARTIFACT, key_id=KEY_ID, chunk_size=CHUNK
    )
    assert decrypt(out.getvalue()) == data


def test_decrypt_stream_chunks_stay_intact_when_the_caller_keeps_them() -> None:
    data = plaintext(3 * CHUNK + 5)
    chunks = list(decrypt_stream(io.BytesIO(encrypt(data)), data_key=KEY, artifact_id=ARTIFACT))
    assert chunks == [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


def test_encryptor_keeps_its_own_copy_so_callers_may_reuse_their_buffer() -> None:
    data = plaintext(5 * CHUNK + 5)
    enc = Encryptor(data_key=KEY, artifact_id=ARTIFACT, key_id=KEY_ID, chunk_size=CHUNK)
    parts = [enc.header()]
    scratch = bytearray(CHUNK // 2 + 1)
    for start in range(0, len(data), len(scratch)):
        piece = data[start : start + len(scratch)]
        scratch[: len(piece)] = piece
        parts.append(enc.update(memoryview(scratch)[: len(piece)]))
        scratch[:] = bytes(len(scratch))  # what the caller does next must not leak in
    parts.append(enc.finalize())
    assert decrypt(b"".join(parts)) == data


def test_decrypt_to_bytes_continues_after_read_header_on_a_seekable_source() -> None:
    data = plaintext(3 * CHUNK + 5)
    src = io.BytesIO(b"prefix" + encrypt(data))
    src.seek(len(b"prefix"))
    header = read_header(src)
    result = decrypt_to_bytes(src, data_key=KEY, artifact_id=ARTIFACT, header=header)
    assert result == data
    assert len(result) == len(data)


def test_decrypt_to_bytes_works_without_decrypt_into(monkeypatch: pytest.MonkeyPatch) -> None:
    """Releases of ``cryptography`` before ``AESGCM.decrypt_into`` existed get a copy."""

    class OnlyDecrypt:
        def __init__(self, aead: object) -> None:
            self.decrypt = aead.decrypt  # type: ignore[attr-defined]

    data = plaintext(3 * CHUNK + 5)
    blob = encrypt(data)
    real = stream._artifact_aead
    monkeypatch.setattr(stream, "_artifact_aead", lambda *args: OnlyDecrypt(real(*args)))
    assert decrypt(blob) == data


# --- tampering -----------------------------------------------------------------------------


@pytest.mark.parametrize("decrypt_with", DECRYPTORS)
@pytest.mark.parametrize("size", [100, 96])
def test_every_single_bit_flip_is_rejected(size: int, decrypt_with: Decryptor) -> None:
    blob = encrypt(plaintext(size), chunk_size=32)
    for index in range(len(blob)):
        for bit in range(8):
            tampered = bytearray(blob)
            tampered[index] ^= 1 << bit
            with pytest.raises(VaultIntegrityError):
                decrypt_with(bytes(tampered))


@pytest.mark.parametrize("decrypt_with", DECRYPTORS)
@pytest.mark.parametrize("size", [100, 96, 0])
def test_every_truncation_is_rejected(size: int, decrypt_with: Decryptor) -> None:
    blob = encrypt(plaintext(size), chunk_size=32)
    for length in range(len(blob)):
        with pytest.raises(VaultIntegrityError):
            decrypt_with(blob[:length])


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


@pytest.mark.parametrize("decrypt_with", DECRYPTORS)
@pytest.mark.parametrize("size", [3 * CHUNK + 5, 3 * CHUNK, 0])
@pytest.mark.parametrize("extra", [b"\x00", b"x" * (CHUNK + TAG_SIZE)], ids=["byte", "chunk"])
def test_bytes_after_the_final_chunk_are_rejected(
    size: int, extra: bytes, decrypt_with: Decryptor
) -> None:
    blob = encrypt(plaintext(size))
    with pytest.raises(VaultIntegrityError):
        decrypt_with(blob + extra)


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


# Peak resident memory, in MiB. Linux carries a parent's ru_maxrss into a child across fork
# and exec, so a probe started from a large pytest process would report pytest's peak and see
# no growth at all; VmHWM is the same high-water mark, fresh after exec.
_PEAK_RSS = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path

    def max_rss_mib():
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    """
)

_MEMORY_PROBE = _PEAK_RSS + textwrap.dedent(
    """
    import json
    from marketplace.vault.stream import Encryptor, decrypt_stream

    TOTAL = 256 * 1024 * 1024
    BLOCK = bytes(range(256)) * 4096
    KEY = bytes(32)

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


def run_probe(source: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", source, *args],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(proc.stdout)


@pytest.mark.skipif(sys.platform == "win32", reason="uses the resource module")
def test_peak_memory_stays_bounded_for_a_256_mib_artifact() -> None:
    report = run_probe(_MEMORY_PROBE)
    assert report["total"] == 256 * 1024 * 1024
    assert report["growth_mib"] < 64, report


_TO_BYTES_PROBE = _PEAK_RSS + textwrap.dedent(
    """
    import json
    from marketplace.vault.stream import decrypt_to_bytes

    class ReadOnly:  # no seek and no readinto: the size is unknown, the buffer must grow
        def __init__(self, f):
            self.read = f.read

    path, kind = sys.argv[1:]
    with open(path, "rb") as f:
        baseline = max_rss_mib()
        plaintext = decrypt_to_bytes(
            f if kind == "file" else ReadOnly(f), data_key=bytes(32), artifact_id="big"
        )
        growth = max_rss_mib() - baseline
    print(json.dumps({"size": len(plaintext), "growth_mib": growth}))
    """
)


@pytest.fixture(scope="module")
def big_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vault") / "big.mmv"
    block = bytes(range(256)) * 4096  # 1 MiB
    with path.open("wb") as out:
        encrypt_stream(
            (block for _ in range(128)), out, data_key=bytes(32), artifact_id="big", key_id="k"
        )
    return path


@pytest.mark.skipif(sys.platform == "win32", reason="uses the resource module")
@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_decrypt_to_bytes_holds_the_plaintext_about_once(big_artifact: Path, kind: str) -> None:
    report = run_probe(_TO_BYTES_PROBE, str(big_artifact), kind)
    assert report["size"] == 128 * 1024 * 1024
    # Collecting chunks and joining them needed twice the plaintext; one growing (or
    # presized) buffer needs it once, plus a chunk and the buffer's slack.
    assert report["growth_mib"] < 1.25 * 128, report
