"""Frames on the pipe between the worker and a model host arrive whole and in order however
the bytes are cut: several frames in one read, one frame over many reads, a payload larger
than a read. Both ends read ahead to save system calls, so these are the cases that matter."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
import time

import pytest

from inference.runtime.protocol import FrameReader, encode_header, pack, predicted
from workers import host as host_module
from workers import sandbox
from workers.host import HostFailure, ModelHost

BIG = bytes(range(256)) * 1024  # 256 KiB: more than one read ahead


def frames(*items: tuple[dict, bytes]) -> bytes:
    return b"".join(b"".join(pack(header, payload)) for header, payload in items)


def test_the_host_reads_frames_written_together_or_cut_anywhere():
    read_end, write_end = os.pipe()
    data = frames(({"op": "ping"}, b""), ({"op": "predict"}, b"tensors"), ({"op": "load"}, BIG))

    def send():
        try:
            os.write(write_end, data[:5])  # a cut inside the first prefix
            os.write(write_end, data[5:40])
            for start in range(40, len(data), 70_000):  # the rest in uneven pieces
                os.write(write_end, data[start : start + 70_000])
        except BrokenPipeError:
            pass  # the reader failed and left
        finally:
            os.close(write_end)

    writer = threading.Thread(target=send)
    writer.start()
    reader = FrameReader(read_end, poll_seconds=0.0005)
    try:
        assert reader.read_frame() == ({"op": "ping"}, b"")
        assert reader.read_frame() == ({"op": "predict"}, b"tensors")
        assert reader.read_frame() == ({"op": "load"}, BIG)
        with pytest.raises(EOFError):
            reader.read_frame()
    finally:
        os.close(read_end)
        writer.join()


def test_a_pipe_closed_in_the_middle_of_a_frame_is_an_end_not_a_short_frame():
    read_end, write_end = os.pipe()
    os.write(write_end, frames(({"op": "load"}, b"x" * 100))[:-10])
    os.close(write_end)
    with pytest.raises(EOFError):
        FrameReader(read_end).read_frame()
    os.close(read_end)


# A stand-in host that answers every request with progress frames and a reply written in a
# single write, then one reply with a payload larger than the worker reads at once; and
# "predictions" that take as long as they are told.
SCRIPTED_HOST = textwrap.dedent(
    """
    import os, sys, time
    sys.path[:0] = {paths!r}
    from inference.runtime.protocol import PREFIX, FrameReader, pack

    def frame(header, payload=b""):
        return b"".join(pack(header, payload))

    BIG = bytes(range(256)) * 1024
    os.write(1, frame({{"ok": True, "ready": True}}))
    reader = FrameReader(0)
    while True:
        try:
            header, payload = reader.read_frame()
        except EOFError:
            break
        if header["op"] == "steps":
            os.write(1, b"".join(
                [frame({{"ok": True, "progress": True, "step": i}}) for i in range(3)]
                + [frame({{"ok": True, "echo": payload.decode()}}, payload)]
            ))
        elif header["op"] == "count":
            os.write(1, frame({{"ok": True, "received": len(payload)}}))
        elif header["op"] == "raw":  # the payload is the reply's header, as it is
            os.write(1, PREFIX.pack(len(payload), 0) + payload)
        elif header["op"] == "predict":  # a forward pass that takes this long
            time.sleep(header["seconds"])
            os.write(1, frame({{"ok": True}}))
        else:
            os.write(1, frame({{"ok": True, "size": len(BIG)}}, BIG))
    """
)


@pytest.fixture
def scripted_host(monkeypatch):
    def command(**_kwargs):
        code = SCRIPTED_HOST.format(paths=[str(sandbox.ROOT)])
        return [sys.executable, "-c", code], {"PATH": "/usr/bin:/bin"}

    monkeypatch.setattr(host_module.sandbox, "bubblewrap", lambda: None)
    monkeypatch.setattr(host_module.sandbox, "host_command", command)
    host = ModelHost().start(timeout=30)
    yield host
    host.kill()


def test_the_worker_separates_progress_frames_and_a_reply_that_arrive_in_one_read(
    scripted_host,
):
    for round_no in range(3):
        seen = []
        reply, body = scripted_host.request(
            {"op": "steps"}, f"round {round_no}".encode(), timeout=10, on_progress=seen.append
        )
        assert [frame["step"] for frame in seen] == [0, 1, 2]
        assert reply["echo"] == f"round {round_no}"
        assert body == f"round {round_no}".encode()
        # Nothing of this request is left over to be taken for the next one's reply.
        reply, body = scripted_host.request({"op": "big"}, timeout=10)
        assert reply["size"] == len(BIG)
        assert body == BIG


def test_a_request_larger_than_the_pipe_holds_arrives_whole(scripted_host):
    """The worker's end of the pipe does not block: a write that fills it waits for room."""
    payload = os.urandom(5 * 2**20)  # several times the pipe's 1 MiB

    reply, _ = scripted_host.request({"op": "count"}, payload, timeout=30)

    assert reply["received"] == len(payload)


def test_a_reply_over_the_callers_limit_is_not_read_and_the_host_is_killed(scripted_host):
    with pytest.raises(HostFailure) as failure:
        scripted_host.request({"op": "big"}, timeout=10, max_payload=len(BIG) - 1)
    assert failure.value.kind == "protocol"
    assert not scripted_host.alive


def test_a_slow_models_predictions_cost_the_worker_no_polling(scripted_host):
    """A CPU host's worker polls for a reply only when its recent predictions came back within
    ``CPU_SPIN_CAP_SECONDS``: for a slow model, or a large batch, it sleeps at once and leaves
    the cores to the forward passes."""
    slow = host_module.CPU_SPIN_CAP_SECONDS * 3
    for _ in range(3):  # its recent predictions: slow
        scripted_host.request({"op": "predict", "seconds": slow}, timeout=10)

    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(10):
        scripted_host.request({"op": "predict", "seconds": slow}, timeout=10)
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall

    assert wall >= 10 * slow
    assert cpu < 0.1 * wall, f"the worker spent {cpu * 1e3:.1f} ms of CPU in {wall * 1e3:.0f} ms"


@pytest.mark.parametrize("compute_ms", [13.2345678, 0.0, 1e-05, 5e-324, 1.7976931348623157e308])
def test_a_predictions_reply_header_written_without_json_reads_as_json(compute_ms):
    header = {"ok": True, "compute_ms": compute_ms}
    encoded = encode_header(header)

    assert json.loads(encoded) == header
    assert predicted(encoded) == header


def test_reply_headers_the_short_way_does_not_read_are_read_as_json(scripted_host):
    """A host (perhaps a hostile one) may write anything: only what ``encode_header`` writes
    is read the short way; NaN is null as in any other header, and the rest is JSON's."""
    cases = {
        b'{"ok":true,"compute_ms":2.5}': {"ok": True, "compute_ms": 2.5},
        b'{"ok":true,"compute_ms":NaN}': {"ok": True, "compute_ms": None},
        b'{"ok":true,"compute_ms":1e999}': {"ok": True, "compute_ms": float("inf")},
        b'{"ok":true,"compute_ms": 3}': {"ok": True, "compute_ms": 3},
        b'{"ok":true,"compute_ms":1.50}': {"ok": True, "compute_ms": 1.5},
        b'{"ok":true,"compute_ms":1E2}': {"ok": True, "compute_ms": 100.0},
        b'{"ok":true,"compute_ms":3,"extra":1}': {"ok": True, "compute_ms": 3, "extra": 1},
    }
    for raw, expected in cases.items():
        reply, _ = scripted_host.request({"op": "raw"}, raw, timeout=10)
        assert reply == expected, raw
    assert encode_header({"ok": True, "compute_ms": float("nan")}) == (
        b'{"ok":true,"compute_ms":NaN}'
    )


@pytest.mark.parametrize(
    "raw",
    [
        b'{"ok":true,"compute_ms":.5}',  # float() reads it, JSON does not
        b"not json",
        b'{"ok":true,"error":"\xff"}',  # not UTF-8
        b"[1, 2]",
    ],
)
def test_a_reply_header_that_is_not_a_json_object_kills_the_host(scripted_host, raw):
    """The payload after a header the worker cannot read would be taken for the next reply:
    the host is killed and replaced, and the request fails as the host's fault."""
    with pytest.raises(HostFailure) as failure:
        scripted_host.request({"op": "raw"}, raw, timeout=10)

    assert failure.value.kind == "protocol"
    assert not scripted_host.alive


@pytest.mark.parametrize("op", ["ping", "load", "validate"])
def test_a_host_announcing_a_payload_where_its_reply_has_none_is_killed_unread(scripted_host, op):
    """A hostile host could announce exabytes with these replies, and the worker (serving
    every organisation) read on until its memory ran out: a review helper took one from 111
    MiB to 2 GiB within a load's deadline."""
    started = time.monotonic()
    with pytest.raises(HostFailure) as failure:
        scripted_host.request({"op": op}, timeout=30)

    assert failure.value.kind == "protocol"
    assert f"a payload of {len(BIG)} bytes with a reply that has none" in str(failure.value)
    assert not scripted_host.alive
    assert time.monotonic() - started < 5
