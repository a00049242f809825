"""Uploads in chunks of real size (MiB), as ``mm push`` and the dashboard send them.

A stored chunk is written with direct I/O where the file system allows it (the device reads
it from the web process's memory, without a copy into the page cache) and as usual where it
refuses. Chunks sent at once are each hashed as soon as the chunks before them are, in the
order SHA-256 needs, so completion finds the whole file hashed; a chunk never waits for one
that is not being received."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import threading
import time

import pytest
from django.db import connection

from accounts.services import SYSTEM
from marketplace import services
from marketplace.models import UploadSession
from marketplace.vault import store, uploads
from marketplace.vault.store import artifact_read
from tests.marketplace.conftest import session_start

MiB = 1024 * 1024
CHUNK = 2 * MiB
# A safetensors file (header length, JSON header, payload): accepted with an architecture.
PAYLOAD = 5 * MiB + 12345


@pytest.fixture(autouse=True)
def _mib_chunks(settings, isolated_store):
    settings.UPLOAD_CHUNK_SIZE = CHUNK
    settings.ARTIFACT_CHUNK_SIZE = MiB


@pytest.fixture
def model(tenant):
    return services.model_create(tenant=tenant, name="big", actor=SYSTEM)


@pytest.fixture(scope="module")
def data() -> bytes:
    header = json.dumps(
        {"w": {"dtype": "U8", "shape": [PAYLOAD], "data_offsets": [0, PAYLOAD]}}
    ).encode()
    return len(header).to_bytes(8, "little") + header + os.urandom(PAYLOAD)


def _direct_io_works(directory) -> bool:
    """Whether files in ``directory`` take direct I/O (tmpfs before Linux 6.6, some FUSE and
    network mounts, and macOS do not)."""
    if not hasattr(os, "O_DIRECT"):
        return False
    import mmap

    path = directory / "direct-probe"
    buffer = mmap.mmap(-1, store.DIRECT_ALIGN)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
        try:
            return os.write(fd, buffer) == store.DIRECT_ALIGN
        finally:
            os.close(fd)
    except OSError:
        return False
    finally:
        path.unlink(missing_ok=True)


@pytest.fixture
def direct_writes(monkeypatch, isolated_store) -> list[int]:
    """Bytes each blob write sent with direct I/O."""
    isolated_store.mkdir(parents=True, exist_ok=True)
    if not _direct_io_works(isolated_store):
        pytest.skip("this file system refuses direct I/O (where it does, the plain writes run)")
    written: list[int] = []
    real = store._write_direct

    def spy(fd, view):
        written.append(real(fd, view))
        return written[-1]

    monkeypatch.setattr(store, "_write_direct", spy)
    return written


def _start(model, data: bytes) -> UploadSession:
    return session_start(model, data, "big.safetensors", format="safetensors", architecture="mlp")


def _pieces(session: UploadSession, data: bytes, index: int, gate=None):
    """Chunk ``index`` in 1 MiB pieces, as the upload view reads them; with ``gate``, stops
    after the first piece until the gate is set."""
    start, end = session.chunk_range(index)
    for at in range(start, end + 1, MiB):
        yield data[at : min(at + MiB, end + 1)]
        if gate is not None:
            assert gate.wait(30)


def _send(session, data, index, gate=None):
    return services.upload_part_store(
        session=session, index=index, chunks=_pieces(session, data, index, gate)
    )


@pytest.mark.django_db
def test_chunks_are_stored_with_direct_io_and_read_back_whole(model, data, direct_writes):
    session = _start(model, data)
    for index in range(session.chunk_count):
        _send(session, data, index)

    version = services.upload_complete(session=session, actor=SYSTEM)

    assert artifact_read(artifact=version.artifact, purpose="validate") == data
    # Each part went to the device from the sealing buffer, but for its unaligned tail.
    sizes = [min(CHUNK, len(data) - at) for at in range(0, len(data), CHUNK)]
    assert len(direct_writes) == len(sizes) == session.chunk_count
    assert all(
        size - store.DIRECT_ALIGN < n <= size for n, size in zip(direct_writes, sizes, strict=True)
    )


@pytest.mark.django_db
def test_completion_opens_only_the_vault_chunks_the_format_is_told_from(model, data, opened_spans):
    """The chunks were hashed as they arrived; to tell the format, completion reads and
    opens the first vault chunk (the safetensors header is in it), not the first and last
    4 MiB."""
    session = _start(model, data)
    for index in range(session.chunk_count):
        _send(session, data, index)

    version = services.upload_complete(session=session, actor=SYSTEM)

    assert opened_spans == [(0, (0, MiB))]  # one vault chunk of 1 MiB, of a 5 MiB file
    assert version.artifact.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("accepted", [0, 1])
@pytest.mark.django_db
def test_where_direct_io_is_refused_the_chunks_are_written_as_usual(
    model, data, direct_writes, monkeypatch, accepted
):
    """Some file systems (tmpfs, network ones) refuse O_DIRECT with EINVAL, from the first
    write or after some: the rest is written as usual, from where direct I/O stopped."""
    real_write = os.write
    direct_calls = []

    def write(fd, view):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            blob = os.fstat(fd).st_ino
            direct_calls.append(blob)
            if direct_calls.count(blob) > accepted:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_write(fd, view[: store.DIRECT_ALIGN])  # a short write
        return real_write(fd, view)

    monkeypatch.setattr(os, "write", write)
    session = _start(model, data)
    for index in range(session.chunk_count):
        _send(session, data, index)

    version = services.upload_complete(session=session, actor=SYSTEM)

    assert artifact_read(artifact=version.artifact, purpose="validate") == data
    assert direct_writes == [accepted * store.DIRECT_ALIGN] * session.chunk_count


def _sending(session, data, index, errors, gate=None) -> threading.Thread:
    """Chunk ``index`` sent on a thread of its own (held after its first piece by ``gate``),
    once it is being received; what it raises goes to ``errors``."""

    def send():
        try:
            _send(session, data, index, gate)
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append(e)
        finally:
            connection.close()

    def receiving() -> bool:
        digest = services._digests.get(session.public_id)
        return bool(digest and digest.receiving[index])

    thread = threading.Thread(target=send)
    thread.start()
    deadline = time.monotonic() + 30
    while thread.is_alive() and not receiving():
        assert time.monotonic() < deadline, "the chunk was never received"
        time.sleep(0.01)
    return thread


@pytest.mark.django_db(transaction=True)
def test_chunks_sent_at_once_are_hashed_in_order_as_they_arrive(model, data):
    """Chunk 1 arrives whole while chunk 0 is still arriving: it is stored, waits for chunk
    0's hash and is hashed after it, so completion has nothing left to hash."""
    session = _start(model, data)
    gate, errors = threading.Event(), []
    first = _sending(session, data, 0, errors, gate)
    second = _sending(session, data, 1, errors)
    second.join(0.5)
    waiting = second.is_alive()  # stored, and waiting for chunk 0's hash
    gate.set()
    first.join(30)
    second.join(30)
    digest = services._digests[session.public_id]
    hashed = digest.next
    _send(session, data, 2)

    version = services.upload_complete(session=session, actor=SYSTEM)

    assert not errors
    assert waiting and hashed == 2 and digest.next == 3 and not digest.receiving
    assert version.artifact.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.django_db
def test_a_chunk_whose_predecessor_is_not_arriving_does_not_wait_for_it(model, data, monkeypatch):
    """Chunk 0 went to another web process (or was never sent): chunk 2 is answered at once
    and completion hashes what no process hashed in order."""
    monkeypatch.setattr(services, "_DIGEST_WAIT_S", 300.0)
    session = _start(model, data)
    began = time.monotonic()
    _send(session, data, 2)
    _send(session, data, 1)
    answered = time.monotonic() - began
    services._digests.clear()  # as if chunk 0 went to another process
    _send(session, data, 0)

    version = services.upload_complete(session=session, actor=SYSTEM)

    assert answered < 60  # not the 300 s a wait would take
    assert version.artifact.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.django_db(transaction=True)
def test_a_chunk_stops_waiting_for_a_stalled_predecessor_and_completion_hashes_it(
    model, data, monkeypatch
):
    """Chunk 0 stalls mid-body (a slow client): chunk 1 waits for it no longer than the
    limit, is answered without its hash, and completion hashes both."""
    monkeypatch.setattr(services, "_DIGEST_WAIT_S", 0.3)
    session = _start(model, data)
    gate, errors = threading.Event(), []
    first = _sending(session, data, 0, errors, gate)
    began = time.monotonic()
    _send(session, data, 1)
    waited = time.monotonic() - began
    hashed = services._digests[session.public_id].next
    gate.set()
    first.join(30)
    _send(session, data, 2)

    version = services.upload_complete(session=session, actor=SYSTEM)

    assert not errors and waited >= 0.3 and hashed == 0
    assert version.artifact.sha256 == hashlib.sha256(data).hexdigest()


def test_the_buffer_pool_keeps_its_largest_buffers_for_the_next_pieces():
    """A small last piece given back to a full pool does not displace a full-sized buffer."""
    pool = uploads.BufferPool(keep=2)
    full = [pool.take(CHUNK), pool.take(CHUNK)]
    small = pool.take(1000)
    for buffer in (*full, small):
        pool.give_back(buffer)

    again = [pool.take(CHUNK), pool.take(CHUNK)]

    assert sorted(map(id, again)) == sorted(map(id, full))  # no fresh buffer mapped
