"""An upload survives the web process dying mid-way: a new process resumes it."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from marketplace.models import ModelVersion
from tests.conftest import database_url, key_client

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_web(port: int) -> subprocess.Popen:
    from django.db import connection

    env = {
        **os.environ,
        "DATABASE_URL": database_url(connection.settings_dict),
        "MM_UPLOAD_CHUNK_SIZE": "65536",
    }
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            assert time.monotonic() < deadline, "the web server did not start"
            time.sleep(0.2)


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
        web.send_signal(signal.SIGKILL)
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
