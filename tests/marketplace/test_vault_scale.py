"""Large artifacts and S3: memory stays bounded by the chunk size, and the S3 path (moto's
S3 server over real HTTP) stores only ciphertext."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

STREAM_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, os, resource, sys
    import django
    django.setup()
    from django.core.management import call_command
    call_command("migrate", verbosity=0)
    from accounts import services
    from marketplace.vault.store import artifact_create, artifact_stream

    SIZE = int(sys.argv[1])
    PIECE = 1024 * 1024
    owner = services.User.objects.create_user("o@big.example")
    tenant = services.tenant_create(slug="big", name="Big", owner=owner)

    def plaintext():
        block = os.urandom(PIECE)
        for i in range(SIZE // PIECE):
            yield block[i % 251:] + block[:i % 251]

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    artifact = artifact_create(tenant=tenant, chunks=plaintext())
    digest = hashlib.sha256()
    n = 0
    for chunk in artifact_stream(artifact=artifact, purpose="download"):
        digest.update(chunk)
        n += len(chunk)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"size": n, "ok": digest.hexdigest() == artifact.sha256,
                      "growth_mib": (peak - baseline) / 1024}))
    """
)


def test_two_gib_artifact_streams_in_bounded_memory(tmp_path):
    size = 2 * 1024**3
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "MM_VAR_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }
    result = subprocess.run(
        [sys.executable, "-c", STREAM_SCRIPT, str(size)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["size"] == size and report["ok"]
    assert report["growth_mib"] < 64, report


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_store(settings, monkeypatch, tmp_path):
    import boto3
    from moto.server import ThreadedMotoServer

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-1")
    s3.create_bucket(
        Bucket="artifacts", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    from marketplace.vault.keys import kek_backend_forget

    settings.KEK_FILE = tmp_path / "keyring.json"
    settings.KEK_FILE_CREATE = True
    settings.ARTIFACT_CHUNK_SIZE = 64 * 1024
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": "artifacts",
                "endpoint_url": endpoint,
                "region_name": "eu-west-1",
                "file_overwrite": True,
                "location": "art",
            },
        },
    }
    kek_backend_forget()
    yield s3
    kek_backend_forget()
    server.stop()


@pytest.mark.django_db
def test_s3_store_round_trips_and_holds_only_ciphertext(tenant, s3_store):
    from marketplace.vault.store import artifact_create, artifact_read

    marker = b"S3-PLAINTEXT-MARKER-"
    data = marker * 50_000  # ~1 MB, several chunks and a multipart-sized body
    artifact = artifact_create(
        tenant=tenant, chunks=[data[i : i + 7000] for i in range(0, len(data), 7000)]
    )

    assert artifact_read(artifact=artifact, purpose="validate") == data
    objects = s3_store.list_objects_v2(Bucket="artifacts")["Contents"]
    assert [o["Key"] for o in objects] == [f"art/{artifact.storage_name}"]
    stored = s3_store.get_object(Bucket="artifacts", Key=objects[0]["Key"])["Body"].read()
    assert marker not in stored
    assert len(stored) == artifact.ciphertext_size
