"""Frames on the pipe between the worker and a model host.

A frame is ``>IQ`` (header length, payload length), a JSON header, then the payload bytes
(a model file, or tensors as safetensors).
"""

from __future__ import annotations

import json
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
