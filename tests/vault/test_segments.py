"""Chunks sealed at their positions, in any order, make the same vault file a reader reads."""

from __future__ import annotations

import io
import os

import pytest

from marketplace.vault import VaultIntegrityError, decrypt_to_bytes
from marketplace.vault.stream import TAG_SIZE, SegmentCipher

KEY = bytes(range(32))
CHUNK = 64


def _cipher(header: bytes, artifact_id: str = "art_1") -> SegmentCipher:
    return SegmentCipher(header=header, data_key=KEY, artifact_id=artifact_id)


def _seal(cipher: SegmentCipher, data: bytes, first: int, final: bool) -> bytes:
    out = bytearray(cipher.sealed_size(len(data)))
    assert cipher.seal_into(data, out, first=first, final=final) == len(out)
    return bytes(out)


@pytest.mark.parametrize("size", [1, CHUNK, 3 * CHUNK, 3 * CHUNK + 1, 7 * CHUNK - 5])
def test_pieces_sealed_out_of_order_decrypt_as_one_file(size):
    data = os.urandom(size)
    header = SegmentCipher.new_header(key_id="key_1", chunk_size=CHUNK)
    cipher = _cipher(header)
    piece = 2 * CHUNK  # an upload piece of two vault chunks
    starts = list(range(0, size, piece))
    sealed = {}
    for start in reversed(starts):
        final = start == starts[-1]
        sealed[start] = _seal(cipher, data[start : start + piece], start // CHUNK, final)

    blob = header + b"".join(sealed[start] for start in starts)

    assert decrypt_to_bytes(io.BytesIO(blob), data_key=KEY, artifact_id="art_1") == data
    assert len(blob) == len(header) + size + TAG_SIZE * -(-size // CHUNK)


def test_a_piece_at_another_position_or_artifact_fails():
    data = os.urandom(4 * CHUNK)
    header = SegmentCipher.new_header(key_id="key_1", chunk_size=CHUNK)
    first = _seal(_cipher(header), data[: 2 * CHUNK], 0, final=False)
    last = _seal(_cipher(header), data[2 * CHUNK :], 2, final=True)

    for blob, artifact_id in [
        (header + last + first, "art_1"),  # reordered
        (header + first, "art_1"),  # truncated at a piece boundary
        (header + first + last, "art_2"),  # presented as another artifact
    ]:
        with pytest.raises(VaultIntegrityError):
            decrypt_to_bytes(io.BytesIO(blob), data_key=KEY, artifact_id=artifact_id)


def test_open_into_round_trips_and_rejects_tampering():
    header = SegmentCipher.new_header(key_id="key_1", chunk_size=CHUNK)
    cipher = _cipher(header)
    data = os.urandom(3 * CHUNK + 9)
    sealed = bytearray(_seal(cipher, data, 6, final=True))
    out = bytearray(len(data))

    assert cipher.open_into(sealed, out, first=6, final=True) == len(data)
    assert out == data
    with pytest.raises(VaultIntegrityError):
        cipher.open_into(sealed, out, first=7, final=True)
    sealed[5] ^= 1
    with pytest.raises(VaultIntegrityError):
        cipher.open_into(sealed, out, first=6, final=True)


def test_only_the_final_run_may_end_in_a_partial_chunk():
    cipher = _cipher(SegmentCipher.new_header(key_id="key_1", chunk_size=CHUNK))
    with pytest.raises(ValueError, match="final"):
        cipher.seal_into(
            b"x" * (CHUNK + 1), bytearray(CHUNK + 1 + 2 * TAG_SIZE), first=0, final=False
        )
