"""Frames on the pipe between the worker and a model host.

A frame is ``>IQ`` (header length, payload length), a JSON header, then the payload bytes
(a model file, or tensors as safetensors).
"""

from __future__ import annotations

import json
import math
import os
import select
import struct
import time
from collections.abc import Callable
from typing import Any, BinaryIO

PREFIX = struct.Struct(">IQ")
MAX_HEADER = 1 << 20


class ProtocolError(RuntimeError):
    pass


SMALL_FRAME = 1 << 20


# A prediction's reply, the one frame on the hot path, is written and read without the json
# module: after a large model's forward pass everything runs cold, and json.dumps or loads of
# even this small header cost ~55-65 µs there, against ~20 µs for these few steps.
PREDICTED = b'{"ok":true,"compute_ms":'


def encode_header(header: dict[str, Any]) -> bytes:
    compute_ms = header.get("compute_ms")
    fast = len(header) == 2 and header.get("ok") is True and type(compute_ms) is float
    if fast and math.isfinite(compute_ms):
        return b"%s%r}" % (PREDICTED, compute_ms)
    return json.dumps(header, separators=(",", ":")).encode()


def predicted(encoded: bytes) -> dict[str, Any] | None:
    """A header that ``encode_header`` wrote for a prediction's reply, read; None for any
    other (read it as JSON)."""
    if not (encoded.startswith(PREDICTED) and encoded.endswith(b"}")):
        return None
    number = encoded[len(PREDICTED) : -1]
    try:
        compute_ms = float(number)
    except ValueError:
        return None
    # Exactly what encode_header writes (float() also reads ".5", "01", "1_0", " 1", which
    # JSON does not): anything else is read as JSON.
    if not math.isfinite(compute_ms) or b"%r" % compute_ms != number:
        return None
    return {"ok": True, "compute_ms": compute_ms}


def pack(header: dict[str, Any], payload: bytes = b"") -> list[bytes]:
    """The frame's bytes; small frames come as one piece so the peer wakes once per message."""
    encoded = encode_header(header)
    prefix = PREFIX.pack(len(encoded), len(payload)) + encoded
    if len(payload) <= SMALL_FRAME:
        return [prefix + bytes(payload)]
    return [prefix, payload]


def write_frame(out: BinaryIO, header: dict[str, Any], payload: bytes = b"") -> None:
    for part in pack(header, payload):
        out.write(part)
    out.flush()


class FrameReader:
    """Frames from a pipe, in as few system calls as the data allows: a small frame (prefix,
    header and payload together) is one read. ``poll_seconds``: before sleeping in ``read``
    for the next frame, look for it this long without sleeping. A request that follows its
    predecessor closely (a steady stream, a batch after a batch) then costs no wake-up, which
    on a virtual machine is most of an empty round trip."""

    READ_AHEAD = 1 << 16

    def __init__(self, fd: int, poll_seconds: float = 0.0):
        self.fd = fd
        self.poll_seconds = poll_seconds
        self.buffer = bytearray()

    def read_exact(self, size: int, wait: Callable[[], None] | None = None) -> bytes:
        """Exactly ``size`` bytes; raises EOFError when the pipe closes first. ``wait`` is
        called before each read (a non-blocking descriptor's deadline)."""
        buffer = self.buffer
        if len(buffer) >= size:
            taken = bytes(buffer[:size])
            del buffer[:size]
            return taken
        chunks, remaining = [bytes(buffer)], size - len(buffer)
        buffer.clear()
        while remaining:
            if wait is not None:
                wait()
            try:
                chunk = os.read(self.fd, max(self.READ_AHEAD, min(remaining, 1 << 20)))
            except BlockingIOError:
                continue
            if not chunk:
                raise EOFError("the pipe closed")
            if len(chunk) > remaining:  # read ahead into the next frame
                buffer += memoryview(chunk)[remaining:]
                chunk = chunk[:remaining]
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _poll(self) -> None:
        until = time.perf_counter() + self.poll_seconds
        while time.perf_counter() < until:
            if select.select([self.fd], [], [], 0)[0]:
                return

    def read_frame(self) -> tuple[dict[str, Any], bytes]:
        if not self.buffer and self.poll_seconds > 0:
            self._poll()
        header_len, payload_len = PREFIX.unpack(self.read_exact(PREFIX.size))
        if header_len > MAX_HEADER:
            raise ProtocolError(f"header of {header_len} bytes is too large")
        header = json.loads(self.read_exact(header_len))
        return header, self.read_exact(payload_len) if payload_len else b""
