"""Frames on the pipe between the worker and a model host.

A frame is ``>IQ`` (header length, payload length), a JSON header, then the payload bytes
(a model file, or tensors as safetensors).
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO

PREFIX = struct.Struct(">IQ")
MAX_HEADER = 1 << 20


class ProtocolError(RuntimeError):
    pass


SMALL_FRAME = 1 << 20


def pack(header: dict[str, Any], payload: bytes = b"") -> list[bytes]:
    """The frame's bytes; small frames come as one piece so the peer wakes once per message."""
    encoded = json.dumps(header, separators=(",", ":")).encode()
    prefix = PREFIX.pack(len(encoded), len(payload)) + encoded
    if len(payload) <= SMALL_FRAME:
        return [prefix + bytes(payload)]
    return [prefix, payload]


def write_frame(out: BinaryIO, header: dict[str, Any], payload: bytes = b"") -> None:
    for part in pack(header, payload):
        out.write(part)
    out.flush()


def _read_exact(src: BinaryIO, size: int) -> bytes:
    chunks = []
    while size:
        chunk = src.read(size)
        if not chunk:
            raise EOFError("the pipe closed mid-frame")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(src: BinaryIO) -> tuple[dict[str, Any], bytes]:
    prefix = src.read(PREFIX.size)
    if not prefix:
        raise EOFError("the pipe closed")
    if len(prefix) < PREFIX.size:
        prefix += _read_exact(src, PREFIX.size - len(prefix))
    header_len, payload_len = PREFIX.unpack(prefix)
    if header_len > MAX_HEADER:
        raise ProtocolError(f"header of {header_len} bytes is too large")
    header = json.loads(_read_exact(src, header_len))
    return header, _read_exact(src, payload_len) if payload_len else b""
