"""A request body in pieces, for views that stream it (upload chunks).

Under gunicorn the body is read from the client's socket straight into one reused buffer.
gunicorn's own reader hands it over through two ``BytesIO`` buffers, which copy every byte
about six times: about 0.1 CPU s per 128 MiB on our 2-core reference VM, a sixth of the web
worker's whole cost of an upload (``bench/upload.py --profile``). Anywhere else (Django's test
client and development server, another WSGI server, or a gunicorn whose reader is not the one
this knows) the body is read through Django's stream as usual.

The pieces are views of two buffers used in turn: each is valid until the one after the next
is asked for, so a consumer may still be working on a piece (hashing it on another thread)
while the next one is received. The buffers come from a pool shared by the threads and go
back when the ``with`` block ends. Allocated per request, they were kept by glibc's
per-thread malloc arenas after being freed: the web process's peak grew by tens of MiB with
the threads that had received a chunk (``bench/upload.py``: 262 MiB, 187 MiB with
``MALLOC_ARENA_MAX=1``).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

from django.http import HttpRequest

from marketplace.vault.uploads import BufferPool

_receiving = BufferPool(keep=8)


@contextmanager
def body_pieces(request: HttpRequest, block: int) -> Iterator[Iterator[bytes | memoryview]]:
    """The body in pieces of at most ``block`` bytes, ending where its Content-Length does
    (or, if the client hangs up first, where its bytes did); valid inside the ``with``."""
    source = _gunicorn_body(request)
    if source is None:  # Django reads it, into buffers of its own
        yield iter(lambda: request.read(block), b"")
        return
    buffers = [_receiving.take(block), _receiving.take(block)]
    pieces = _from_socket(request, block, source, [memoryview(b)[:block] for b in buffers])
    try:
        yield pieces
    finally:
        pieces.close()  # gunicorn drains what is left, as it counts it
        for buffer in buffers:
            _receiving.give_back(buffer)


def _from_socket(request: HttpRequest, block: int, source, views: list[memoryview]) -> Iterator:
    body, reader, sock = source
    request._read_started = True  # Django's own read() must not start over
    try:
        ahead = reader.unreader.take_buffered()  # read with the headers
        mine, rest = memoryview(ahead[: reader.length]), ahead[reader.length :]
        if rest:  # the start of a pipelined next request: gunicorn parses it later
            reader.unreader.unread(rest)
        reader.length -= len(mine)
        turn = 0
        while mine or reader.length:
            # Each piece is filled to ``block`` bytes (a recv gives what has arrived, often
            # far less): whole pieces line up with the vault's chunks, which are then sealed
            # where they lie instead of being staged.
            view, turn = views[turn], 1 - turn
            want = min(block, len(mine) + reader.length)
            filled = min(len(mine), want)
            view[:filled], mine = mine[:filled], mine[filled:]
            while filled < want:
                try:
                    received = sock.recv_into(view[filled:want])
                except OSError:  # reset or timed out: the client's failure, as a hang-up is
                    received = 0
                if not received:  # the client hung up: the caller sees the body end short
                    body.failed = True
                    if filled:
                        yield view[:filled]
                    return
                reader.length -= received
                filled += received
            yield view[:want]
    except GeneratorExit:
        raise  # the caller stopped early: gunicorn drains what is left, as it counts it
    except BaseException:  # anything else while reading (a signal, gunicorn's own reader)
        body.failed = True  # where the next request starts is unknown: close the connection
        raise


def _gunicorn_body(request: HttpRequest):
    """gunicorn's body, its length reader and the socket, when the body is a plain
    Content-Length one that nobody has read from yet; ``None`` otherwise."""
    environ = request.META
    sock = environ.get("gunicorn.socket")
    body = environ.get("wsgi.input")
    reader = getattr(body, "reader", None)
    if (
        sock is None
        or getattr(request, "_read_started", True)
        or type(reader).__name__ != "LengthReader"
        or getattr(getattr(reader, "unreader", None), "sock", None) is not sock
        or not isinstance(getattr(body, "buf", None), io.BytesIO)
        or body.buf.tell()  # bytes already taken from the reader: gunicorn's read goes on
        or not isinstance(getattr(reader, "length", None), int)
        or not hasattr(reader.unreader, "take_buffered")
    ):
        return None
    return body, reader, sock
