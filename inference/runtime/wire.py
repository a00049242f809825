"""A lean safetensors encoder and decoder for the tensors that cross the worker/host pipe.

The ``safetensors`` package's ``save`` costs ~90 µs for a small batch; writing the format
directly (an 8-byte header length, a JSON header padded to 8 bytes, then the raw buffers) costs
~15 µs. Decoding a header for the first time stays with ``safetensors``, which validates what
it reads; ``Layouts`` then remembers where that header's tensors lie.

Predictions of one model send the same few headers again and again (one per batch size), and
both ends cache them: after the forward pass of a large model (200 MB of weights streamed
through the caches) every step here runs cold, at about ten times its warm cost, so each
JSON encode or decode skipped is ~50-100 µs of a warm prediction's added time.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable

CACHE_LIMIT = 256  # distinct headers kept per cache
# Longer headers are not kept (a prediction's are a few hundred bytes): safetensors reads
# headers of up to 100 MB, and a header of many tiny tensors is ten times its size as Python
# objects, so a hostile model host could otherwise fill the worker's caches with them.
CACHE_HEADER_BYTES = 4 * 1024
_LENGTH = struct.Struct("<Q")
# (name, dtype, shape) of each tensor → the encoded length and header
_headers: dict[tuple, bytes] = {}


def raw(array) -> memoryview:
    """The bytes of a C-contiguous numpy array, without copying (empty arrays included)."""
    import numpy as np

    array = np.ascontiguousarray(array)
    return memoryview(array).cast("B") if array.size else memoryview(b"")


def encode(items: Iterable[tuple[str, str, list[int], memoryview]]) -> bytes:
    """``items``: (name, safetensors dtype such as "F32", shape, the raw bytes)."""
    items = list(items)
    key = tuple((name, dtype, tuple(shape), buffer.nbytes) for name, dtype, shape, buffer in items)
    head = _headers.get(key)
    if head is None:
        head = _header(items)
        if len(head) <= CACHE_HEADER_BYTES:
            if len(_headers) >= CACHE_LIMIT:
                _headers.clear()
            _headers[key] = head
    return b"".join([head, *(buffer for *_, buffer in items)])


def _header(items: list[tuple[str, str, list[int], memoryview]]) -> bytes:
    header: dict[str, dict] = {}
    offset = 0
    for name, dtype, shape, buffer in items:
        size = buffer.nbytes
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return _LENGTH.pack(len(encoded)) + encoded


# One tensor of a known header: name, safetensors dtype, shape, start and end in the data.
Slot = tuple[str, str, tuple[int, ...], int, int]


class Layouts:
    """Where the tensors of a safetensors payload lie, for headers decoded (and so checked by
    ``safetensors``) before. A payload is known by its header's bytes and its total length,
    which together decide everything ``safetensors`` checks; ``known`` answers None for any
    other, and the caller decodes it the full way and calls ``learn``. ``viewable``: the
    safetensors dtypes the caller reads from a layout by itself; headers with others are
    not remembered."""

    def __init__(self, viewable: Iterable[str], limit: int = CACHE_LIMIT) -> None:
        self.viewable = frozenset(viewable)
        self.limit = limit
        self._slots: dict[tuple[bytes, int], tuple[Slot, ...]] = {}

    @staticmethod
    def _key(data, longest: int) -> tuple[bytes, int] | None:
        """The length prefix and JSON header of ``data`` (up to ``longest`` bytes of JSON),
        and ``data``'s length."""
        if len(data) < 8:
            return None
        (length,) = _LENGTH.unpack_from(data)
        if length > min(len(data) - 8, longest):
            return None
        return bytes(memoryview(data)[: 8 + length]), len(data)

    def known(self, data) -> tuple[Slot, ...] | None:
        key = self._key(data, CACHE_HEADER_BYTES)
        return None if key is None else self._slots.get(key)

    def learn(self, data) -> tuple[Slot, ...]:
        """The tensors of ``data``, which ``safetensors`` has just read without complaint, in
        its header's order: the order they were encoded in (the model's own order of its
        outputs), where ``safetensors`` gives them in a random order. Remembered for ``known``
        when the header is short and all its dtypes are ``viewable``."""
        key = self._key(data, len(data))
        assert key is not None, "learn() takes payloads safetensors has read"
        header, base = json.loads(key[0][8:]), len(key[0])
        header.pop("__metadata__", None)
        slots = tuple(
            (
                name,
                spec["dtype"],
                tuple(spec["shape"]),
                base + spec["data_offsets"][0],
                base + spec["data_offsets"][1],
            )
            for name, spec in header.items()
        )
        remember = all(dtype in self.viewable for _, dtype, *_ in slots)
        if remember and base <= 8 + CACHE_HEADER_BYTES:
            if len(self._slots) >= self.limit:
                self._slots.clear()
            self._slots[key] = slots
        return slots
