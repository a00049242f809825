"""Model weights are never written in plaintext: a model whose weights hold a unique marker
goes through every flow that decrypts it (upload and completion, validation, a prediction,
a download, compression jobs, tenant-key and KEK rotation), then every file under the test's
``var/`` and store, every new file in the temporary directory, every Redis value, every
database row and the logs are searched for the marker (raw, hex and base64) and for pieces
of the compressed children's plaintext."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import redis
import torch
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import connection
from safetensors.torch import save as save_tensors

from accounts import services as accounts
from inference import tensors
from inference.models import Prediction
from inference.runtime.architectures import MLP
from marketplace.models import Artifact, ModelVersion
from marketplace.vault.store import artifact_read, tenant_key_rotate_begin, tenant_key_rotate_run
from tests.compression.conftest import queued
from workers.pool import HOSTS
from workers.services import compression_run, prediction_run, version_validate

pytestmark = pytest.mark.django_db

CONFIG = {"in_features": 64, "hidden": [128], "classes": 4}
# Eight distinctive, well-behaved float32 weights: their 32 bytes are the marker.
FLOATS = [0.0123457, -0.0234561, 0.0345672, -0.0456783, 0.0567894, -0.0678905, 0.0789016, -0.08901]
MARKER = struct.pack("<8f", *FLOATS)


def _forms(secret: bytes) -> list[bytes]:
    """The secret raw, in hex (either case) and in base64 at each of the three alignments."""
    forms = [secret, secret.hex().encode(), secret.hex().upper().encode()]
    for skip in range(3):
        encoded = base64.b64encode(secret[skip:])
        forms.append(encoded[4 : len(encoded) - 4])  # whole base64 quads only
    return forms


def _weights() -> bytes:
    torch.manual_seed(0)
    model = MLP(**CONFIG)
    with torch.no_grad():
        first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear)).weight
        first.copy_(torch.tensor(FLOATS).repeat(first.numel() // 8).reshape(first.shape))
    return save_tensors(model.state_dict())


def _upload(api, data: bytes) -> str:
    upload = api.post(
        "/api/v1/models/acme/secret-mlp/uploads",
        {
            "filename": "m.safetensors",
            "format": "safetensors",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "architecture": "mlp",
            "architecture_config": CONFIG,
        },
        format="json",
    ).json()
    size = upload["chunk_size"]
    for start in range(0, len(data), size):
        end = min(start + size, len(data)) - 1
        response = api.generic(
            "PUT",
            upload["upload_url"],
            data[start : end + 1],
            content_type="application/octet-stream",
            HTTP_CONTENT_RANGE=f"bytes {start}-{end}/{len(data)}",
        )
        assert response.status_code == 200, response.content
    response = api.post(f"{upload['upload_url']}/complete")
    assert response.status_code == 201, response.content
    return response.json()["id"] if "id" in response.json() else response.json()["number"]


def _files(root: Path, since: float | None = None, depth: int = 99) -> list[Path]:
    found = []
    for dirpath, dirs, names in os.walk(root, onerror=lambda _e: None):
        if len(Path(dirpath).relative_to(root).parts) >= depth:
            dirs[:] = []
        for name in names:
            path = Path(dirpath, name)
            try:
                if not path.is_file() or (since is not None and path.stat().st_mtime < since):
                    continue
            except OSError:
                continue
            found.append(path)
    return found


def _database_bytes() -> bytes:
    out = bytearray()
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f'SELECT * FROM "{table}"')  # noqa: S608 - our own table names
            for row in cursor.fetchall():
                for value in row:
                    if isinstance(value, memoryview | bytes | bytearray):
                        out += bytes(value)
                    elif value is not None:
                        out += str(value).encode("utf-8", "surrogatepass")
                    out += b"\x00"
    return bytes(out)


def _redis_bytes() -> bytes:
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    out = bytearray()
    for key in client.scan_iter(count=1000):
        out += key
        dumped = client.dump(key)
        if dumped:
            out += dumped
        kind = client.type(key)
        if kind == b"string":
            out += client.get(key) or b""
        elif kind == b"list":
            out += b"".join(client.lrange(key, 0, -1))
        elif kind == b"hash":
            out += b"".join(k + v for k, v in client.hgetall(key).items())
        elif kind == b"set":
            out += b"".join(client.smembers(key))
        elif kind == b"zset":
            out += b"".join(client.zrange(key, 0, -1))
    return bytes(out)


def _windows(plaintext: bytes, width: int = 48, count: int = 6) -> list[bytes]:
    """Pieces of a plaintext that no other file would hold by chance (tensor data)."""
    step = max(1, (len(plaintext) - width) // count)
    pieces = [plaintext[i : i + width] for i in range(step, len(plaintext) - width, step)]
    return [p for p in pieces if len(set(p)) > 8][:count]


def test_weights_never_reach_a_file_redis_the_database_or_the_logs(
    api, tenant, settings, isolated_store, caplog, monkeypatch, tmp_path
):
    settings.UPLOAD_CHUNK_SIZE = 16 * 1024
    settings.ARTIFACT_CHUNK_SIZE = 4 * 1024
    settings.MODEL_HOST_PRESTART = 0
    settings.MODEL_LOAD_TIMEOUT = 60
    settings.MODEL_REQUEST_TIMEOUT = 90
    settings.COMPRESSION_TIMEOUT = 120
    caplog.set_level(logging.DEBUG)
    started = time.time() - 1
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    data = _weights()
    assert data.count(MARKER) > 100
    api.post("/api/v1/models", {"name": "secret-mlp"}, format="json")

    try:
        _upload(api, data)
        version = ModelVersion.objects.get(model__name="secret-mlp", number=1)
        version = version_validate(version_id=version.public_id)
        assert version.status == "ready", version.failure_reason

        prediction = Prediction.objects.create(
            tenant=tenant,
            model=version.model,
            version=version,
            input_data=tensors.encode({"input": np.ones((1, 64), np.float32)}),
            batch_size=1,
        )
        assert prediction_run(prediction_id=prediction.public_id) == "succeeded"

        download = api.get("/api/v1/models/acme/secret-mlp/versions/1/download")
        assert b"".join(download.streaming_content) == data

        for method, params in (("quantize", {"scheme": "fp16"}), ("prune", {"amount": 0.3})):
            job = queued(tenant, version, method, params)
            assert compression_run(job_id=job.public_id) == "succeeded"
    finally:
        HOSTS.close()

    tenant_key_rotate_begin(tenant=tenant, actor=accounts.SYSTEM)
    tenant_key_rotate_run(tenant=tenant)
    call_command("rotate_kek", "--new", stdout=open(os.devnull, "w"))  # noqa: SIM115

    secrets = _forms(MARKER)
    children = ModelVersion.objects.filter(model=version.model).exclude(pk=version.pk)
    assert children.count() == 2
    for child in children:
        secrets += _windows(bytes(artifact_read(artifact=child.artifact, purpose="validate")))
    assert Artifact.objects.filter(tenant=tenant).count() == 3

    leaks = []
    # The test's var/ and store (and its private temporary directory), and what appeared in
    # the machine's /tmp meanwhile (a model host without bubblewrap has it as its HOME).
    roots = [(Path(django_settings.VAR_DIR), None, 99), (tmp_path, None, 99)]
    roots.append((Path("/tmp"), started, 3))  # noqa: S108
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    client.save()
    for root, since, depth in roots:
        for path in _files(root, since, depth):
            try:
                content = path.read_bytes()
            except OSError:
                continue
            leaks += [f"{path}: {s[:12]!r}" for s in secrets if s in content]
    for where, content in (
        ("database", _database_bytes()),
        ("redis", _redis_bytes()),
        ("logs", caplog.text.encode()),
    ):
        leaks += [f"{where}: {s[:12]!r}" for s in secrets if s in content]
    assert leaks == []
