"""Uploads through the web server as deployed: gunicorn with threaded workers, as in the
Procfile. An upload survives the web process dying mid-way; chunks stream from the socket
(``marketplace.api.body``), also when pipelined on one connection, cut off, reset, or too
long. A client that resets its connection mid-body is never a server error."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from marketplace.models import ModelVersion
from tests.conftest import database_url, key_client
from tests.plugin import _free_port

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]
CHUNK = 65536


def _start_web(port: int, log: Path | None = None, chunk: int = CHUNK) -> subprocess.Popen:
    from django.db import connection

    env = {
        **os.environ,
        "DATABASE_URL": database_url(connection.settings_dict),
        "MM_UPLOAD_CHUNK_SIZE": str(chunk),
    }
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
        [
            *(sys.executable, "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{port}"),
            *("--workers", "2", "--threads", "4", "--timeout", "60"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab") if log else subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            assert proc.poll() is None, "gunicorn exited"
            assert time.monotonic() < deadline, "the web server did not start"
            time.sleep(0.2)


@pytest.fixture(autouse=True)
def small_chunks(settings):
    settings.UPLOAD_CHUNK_SIZE = CHUNK  # here as in the web process


@pytest.fixture
def web():
    port = _free_port()
    proc = _start_web(port)
    yield port
    proc.terminate()
    proc.wait()


def _call(port: int, method: str, path: str, key: str, body: bytes = b"", **headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, body=body, headers={"Authorization": f"Bearer {key}", **headers})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, json.loads(payload) if payload else None


def test_upload_resumes_after_the_web_process_is_killed(tenant, model_files):
    data = model_files["pt2"] * 40  # ~0.5 MB: several 64 KiB chunks
    api = key_client(tenant)
    assert api.post("/api/v1/models", {"name": "big"}, format="json").status_code == 201
    port = _free_port()
    web = _start_web(port)
    try:
        status, upload = _call(
            port,
            "POST",
            "/api/v1/models/acme/big/uploads",
            api.secret,
            json.dumps(
                {
                    "filename": "big.pt2",
                    "format": "pt2",
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            ).encode(),
            **{"Content-Type": "application/json"},
        )
        assert status == 201, upload
        size = upload["chunk_size"]
        chunks = [(start, min(start + size, len(data)) - 1) for start in range(0, len(data), size)]
        for start, end in chunks[: len(chunks) // 2]:
            status, _ = _call(
                port,
                "PUT",
                upload["upload_url"],
                api.secret,
                data[start : end + 1],
                **{"Content-Range": f"bytes {start}-{end}/{len(data)}"},
            )
            assert status == 200
    finally:
        os.killpg(web.pid, signal.SIGKILL)  # the master and its workers, mid-upload
        web.wait()

    port = _free_port()
    web = _start_web(port)
    try:
        status, state = _call(port, "GET", upload["upload_url"], api.secret)
        assert status == 200 and state["missing_ranges"]
        sent = 0
        for rng in state["missing_ranges"]:
            first, last = (int(v) for v in rng.removeprefix("bytes ").split("-"))
            for start, end in chunks:
                if first <= start <= last:
                    _call(
                        port,
                        "PUT",
                        upload["upload_url"],
                        api.secret,
                        data[start : end + 1],
                        **{"Content-Range": f"bytes {start}-{end}/{len(data)}"},
                    )
                    sent += 1
        status, version = _call(port, "POST", f"{upload['upload_url']}/complete", api.secret)
    finally:
        web.terminate()
        web.wait()

    assert sent == len(chunks) - len(chunks) // 2  # only what was missing
    assert status == 201, version
    stored = ModelVersion.objects.get(public_id=version["id"])
    assert stored.artifact.sha256 == hashlib.sha256(data).hexdigest()


# --- chunks straight from the socket ------------------------------------------------------


def test_mib_chunks_sent_at_once_and_trickling_in_make_the_file_sent(tenant):
    """As ``mm push`` sends a model: chunks of 2 MiB, four at once, each body arriving in
    slices. The server fills its 1 MiB pieces over many receives, stores the parts (with
    direct I/O where the file system takes it) and hashes the chunks in order as they come."""
    big = 2 * 1024 * 1024
    data = safetensors_bytes(6 * big + 12345)
    api = key_client(tenant)
    assert api.post("/api/v1/models", {"name": "pushed"}, format="json").status_code == 201
    port = _free_port()
    web = _start_web(port, chunk=big)
    try:
        status, upload = _call(
            port,
            "POST",
            "/api/v1/models/acme/pushed/uploads",
            api.secret,
            json.dumps(
                {
                    "filename": "pushed.safetensors",
                    "format": "safetensors",
                    "architecture": "mlp",
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            ).encode(),
            **{"Content-Type": "application/json"},
        )
        assert status == 201 and upload["chunk_size"] == big, upload
        path = urlsplit(upload["upload_url"]).path

        def send(index: int) -> int:
            start = index * big
            end = min(start + big, len(data)) - 1
            head = raw_request(
                "PUT",
                path,
                api.secret,
                Content_Type="application/octet-stream",
                Content_Range=f"bytes {start}-{end}/{len(data)}",
            )
            head = head.replace(b"Content-Length: 0", f"Content-Length: {end - start + 1}".encode())
            with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                sock.sendall(head)
                for at in range(start, end + 1, 300_000):  # slices that straddle the pieces
                    sock.sendall(data[at : min(at + 300_000, end + 1)])
                    time.sleep(0.002)
                return _Responses(sock).next()[0]

        with ThreadPoolExecutor(max_workers=4) as pool:
            statuses = list(pool.map(send, range(-(-len(data) // big))))
        status, version = _call(port, "POST", f"{path}/complete", api.secret)
    finally:
        web.terminate()
        web.wait()

    assert statuses == [200] * 7
    assert status == 201, version
    stored = ModelVersion.objects.select_related("artifact").get(public_id=version["id"])
    assert stored.artifact.sha256 == hashlib.sha256(data).hexdigest()
    assert len(stored.artifact.chunk_blobs) == 7  # the parts taken over as stored


def safetensors_bytes(size: int) -> bytes:
    """A valid-looking safetensors file of exactly ``size`` bytes (one U8 tensor)."""
    header = b'{"weight": {"dtype": "U8", "shape": [PAYLOAD], "data_offsets": [0, PAYLOAD]}}'
    payload = size - 8 - 128
    header = header.replace(b"PAYLOAD", str(payload).encode()).ljust(128, b" ")
    return len(header).to_bytes(8, "little") + header + os.urandom(payload)


def new_upload(api, name: str, data: bytes) -> dict:
    assert api.post("/api/v1/models", {"name": name}, format="json").status_code == 201
    response = api.post(
        f"/api/v1/models/acme/{name}/uploads",
        {
            "filename": f"{name}.safetensors",
            "format": "safetensors",
            "architecture": "mlp",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    upload = response.json()
    assert upload["chunk_size"] == CHUNK
    return upload


def raw_request(method: str, path: str, key: str, body: bytes = b"", **headers) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {key}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunk_put(upload: dict, key: str, data: bytes, index: int, **headers) -> bytes:
    start = index * CHUNK
    end = min(start + CHUNK, len(data)) - 1
    return raw_request(
        "PUT",
        urlsplit(upload["upload_url"]).path,
        key,
        data[start : end + 1],
        Content_Type="application/octet-stream",
        Content_Range=f"bytes {start}-{end}/{len(data)}",
        **headers,
    )


class _Responses:
    """Reads the responses that come back on one connection, in order."""

    def __init__(self, sock: socket.socket):
        self.file = sock.makefile("rb")

    def makefile(self, *_args, **_kwargs):
        return self  # http.client reads through this and "closes" it after each response

    def __getattr__(self, name: str):
        return getattr(self.file, name)

    def close(self) -> None:
        pass

    def next(self) -> tuple[int, dict]:
        response = http.client.HTTPResponse(self)  # type: ignore[arg-type]
        response.begin()
        return response.status, json.loads(response.read() or b"null")


def test_pipelined_chunks_on_one_connection_each_get_their_own_bytes(tenant, web):
    api = key_client(tenant)
    # The last chunk is small, so gunicorn's first read of its request takes its whole
    # body and the start of the next request with it: that must stay for the next one.
    data = safetensors_bytes(7 * CHUNK + 1000)
    upload = new_upload(api, "pipelined", data)
    order = [7, 3, 0, 6, 1, 5, 2, 4]
    requests = [chunk_put(upload, api.secret, data, index) for index in order]
    complete = urlsplit(upload["upload_url"]).path + "/complete"
    requests.append(raw_request("POST", complete, api.secret))

    with socket.create_connection(("127.0.0.1", web), timeout=60) as sock:
        sock.sendall(b"".join(requests))  # all at once: HTTP/1.1 pipelining
        responses = _Responses(sock)
        answers = [responses.next() for _ in requests]

    assert [status for status, _ in answers] == [200] * len(order) + [201], answers
    version = answers[-1][1]
    assert (version["sha256"], version["size"]) == (hashlib.sha256(data).hexdigest(), len(data))


def test_a_chunk_cut_off_mid_body_stores_nothing_and_can_be_sent_again(tenant, web):
    api = key_client(tenant)
    data = safetensors_bytes(3 * CHUNK)
    upload = new_upload(api, "cut", data)
    request = chunk_put(upload, api.secret, data, 1)

    with socket.create_connection(("127.0.0.1", web), timeout=60) as sock:
        sock.sendall(request[: len(request) - CHUNK // 2])  # the client dies half-way

    url = urlsplit(upload["upload_url"]).path
    for _ in range(5):  # and stays so while the server finishes with the broken request
        status, state = _call(web, "GET", url, api.secret)
        assert (status, state["missing_ranges"]) == (200, [f"bytes 0-{len(data) - 1}"])
        time.sleep(0.2)
    with socket.create_connection(("127.0.0.1", web), timeout=60) as sock:
        sock.sendall(b"".join(chunk_put(upload, api.secret, data, i) for i in range(3)))
        responses = _Responses(sock)
        assert [responses.next()[0] for _ in range(3)] == [200, 200, 200]
    status, version = _call(web, "POST", f"{url}/complete", api.secret)
    assert status == 201, version
    assert version["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_connection_reset_mid_chunk_stores_nothing_and_is_no_server_error(tenant, tmp_path):
    api = key_client(tenant)
    data = safetensors_bytes(3 * CHUNK)
    upload = new_upload(api, "reset", data)
    url = urlsplit(upload["upload_url"]).path
    log = tmp_path / "web.log"
    port = _free_port()
    web = _start_web(port, log)
    try:
        request = chunk_put(upload, api.secret, data, 1)
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        sock.sendall(request[: len(request) - CHUNK // 2])
        time.sleep(0.5)  # the server is reading the body
        # Closing with a zero linger time sends a reset instead of an orderly end.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        time.sleep(0.5)

        status, state = _call(port, "GET", url, api.secret)
        assert (status, state["missing_ranges"]) == (200, [f"bytes 0-{len(data) - 1}"])
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(b"".join(chunk_put(upload, api.secret, data, i) for i in range(3)))
            responses = _Responses(sock)
            assert [responses.next()[0] for _ in range(3)] == [200, 200, 200]
    finally:
        web.terminate()
        web.wait()

    logged = log.read_text()
    assert "Internal Server Error" not in logged and "Traceback" not in logged, logged


def test_a_json_request_reset_mid_body_is_no_server_error(tenant, tmp_path):
    api = key_client(tenant)
    log = tmp_path / "web.log"
    port = _free_port()
    web = _start_web(port, log)
    try:
        body = json.dumps({"name": "cut", "description": "x" * 200_000}).encode()
        request = raw_request(
            "POST", "/api/v1/models", api.secret, body, Content_Type="application/json"
        )
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        sock.sendall(request[: len(request) // 2])
        time.sleep(0.5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # a reset, mid-body
        time.sleep(0.5)
        status, models = _call(port, "GET", "/api/v1/models", api.secret)
    finally:
        web.terminate()
        web.wait()

    assert status == 200 and models["results"] == []  # nothing half-made
    logged = log.read_text()
    assert "Internal Server Error" not in logged and "Traceback" not in logged, logged


def test_a_chunk_longer_than_its_range_gets_a_400_and_the_next_request_is_answered(tenant, web):
    api = key_client(tenant)
    data = safetensors_bytes(2 * CHUNK)
    upload = new_upload(api, "long", data)
    url = urlsplit(upload["upload_url"]).path
    too_long = raw_request(
        "PUT",
        url,
        api.secret,
        data[:CHUNK] + b"x" * 4096,
        Content_Type="application/octet-stream",
        Content_Range=f"bytes 0-{CHUNK - 1}/{len(data)}",
    )

    with socket.create_connection(("127.0.0.1", web), timeout=60) as sock:
        sock.sendall(too_long + raw_request("GET", url, api.secret))  # pipelined
        responses = _Responses(sock)
        (status, error), (status_after, state) = responses.next(), responses.next()

    assert status == 400
    assert f"longer than {CHUNK} bytes" in json.dumps(error), error
    assert status_after == 200
    assert state["missing_ranges"] == [f"bytes 0-{len(data) - 1}"]


def test_a_client_that_waits_for_100_continue_sends_its_chunk_and_completes(tenant, web):
    api = key_client(tenant)
    data = safetensors_bytes(CHUNK)
    upload = new_upload(api, "curl", data)
    request = chunk_put(upload, api.secret, data, 0, Expect="100-continue")
    head, body = request.split(b"\r\n\r\n", 1)

    with socket.create_connection(("127.0.0.1", web), timeout=60) as sock:
        sock.sendall(head + b"\r\n\r\n")  # as curl does: the body only after the go-ahead
        responses = _Responses(sock)
        assert responses.file.readline().startswith(b"HTTP/1.1 100")
        assert responses.file.readline() == b"\r\n"
        sock.sendall(body)
        status, state = responses.next()

    assert (status, state["missing_ranges"]) == (200, [])
    status, version = _call(
        web, "POST", f"{urlsplit(upload['upload_url']).path}/complete", api.secret
    )
    assert status == 201 and version["sha256"] == hashlib.sha256(data).hexdigest(), version
