"""Uploaded chunks are sealed where they sit in the finished artifact, so completing an upload
copies and re-encrypts nothing; every guarantee of the upload flow still holds."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from accounts.exceptions import Conflict
from accounts.services import SYSTEM
from marketplace import services
from marketplace.models import Artifact, TenantKey, UploadPart, UploadSession
from marketplace.vault import VaultIntegrityError
from marketplace.vault.store import (
    artifact_read,
    artifact_storage,
    artifact_stream,
    tenant_destroy,
    tenant_key_rotate_begin,
    tenant_key_rotate_run,
)
from tests.marketplace.conftest import session_start, sha256
from tests.marketplace.test_vault_scale import s3_store  # noqa: F401 - a fixture

pytestmark = pytest.mark.django_db
PIECE = 8192  # an upload chunk of two vault chunks


@pytest.fixture(autouse=True)
def _small_chunks(settings, isolated_store):
    settings.UPLOAD_CHUNK_SIZE = PIECE
    settings.ARTIFACT_CHUNK_SIZE = 4096


@pytest.fixture
def model(tenant):
    return services.model_create(tenant=tenant, name="net", actor=SYSTEM)


@pytest.fixture
def data(model_files) -> bytes:
    return model_files["pt2"] + b"\0" * 1000  # trailing bytes keep it a valid zip


def _start(model, data: bytes) -> UploadSession:
    return session_start(model, data, "m.pt2", format="pt2")


def _send(session: UploadSession, data: bytes, index: int, read: int = 1000) -> UploadPart:
    start, end = session.chunk_range(index)
    piece = data[start : end + 1]
    return services.upload_part_store(
        session=session,
        index=index,
        chunks=(piece[i : i + read] for i in range(0, len(piece), read)),
    )


def _files() -> list[Path]:
    return sorted(p for p in Path(artifact_storage().location).rglob("*") if p.is_file())


def _forget_running_digests():
    """As if every chunk had gone to another web process."""
    services._digests.clear()


@pytest.mark.parametrize(("in_order", "read"), [(True, 1000), (False, 4096), (True, 8192)])
def test_completion_takes_the_sealed_chunks_over_without_copying(model, data, in_order, read):
    session = _start(model, data)
    order = list(range(session.chunk_count))
    if not in_order:
        random.Random(3).shuffle(order)
    for index in order:
        _send(session, data, index, read)
    part_blobs = {part.artifact.storage_name for part in session.parts.select_related("artifact")}

    version = services.upload_complete(session=session, actor=SYSTEM)

    artifact = version.artifact
    assert artifact.public_id == session.artifact_id and artifact.sha256 == sha256(data)
    assert {name for name, _offset, _length in artifact.chunk_blobs} == part_blobs
    assert artifact_read(artifact=artifact, purpose="validate") == data
    assert b"".join(artifact_stream(artifact=artifact, purpose="download")) == data
    assert list(Artifact.objects.all()) == [artifact] and not UploadPart.objects.exists()
    stored = b"".join(path.read_bytes() for path in _files())
    assert data[:64] not in stored and data[-2000:-1000] not in stored


def test_checksum_is_checked_when_no_process_saw_the_chunks_in_order(model, data):
    session = _start(model, data)
    corrupted = bytearray(data)
    corrupted[-1500] ^= 0xFF  # in a middle chunk, outside the bytes sniffed for the format
    for index in range(session.chunk_count):
        _send(session, bytes(corrupted), index)
    _forget_running_digests()

    with pytest.raises(ValidationError, match="Checksum mismatch"):
        services.upload_complete(session=session, actor=SYSTEM)

    _send(session, data, session.chunk_count - 1)  # the changed chunk, re-sent
    version = services.upload_complete(session=session, actor=SYSTEM)
    assert artifact_read(artifact=version.artifact, purpose="validate") == data


def test_a_chunk_resent_with_other_bytes_is_never_sealed_at_the_same_position(
    model, data, django_capture_on_commit_callbacks
):
    session = _start(model, data)
    for index in range(session.chunk_count):
        _send(session, data, index)
    first = session.parts.get(index=1).artifact

    same = _send(session, data, 1)  # a retry of the same bytes changes nothing
    assert same.artifact == first and same.layout == UploadPart.Layout.SEALED_IN_PLACE
    changed = bytearray(data)
    changed[PIECE + 5] ^= 0xFF
    with django_capture_on_commit_callbacks(execute=True):
        replaced = _send(session, bytes(changed), 1)
        _send(session, data, 1)  # and back: still not sealed under the session's nonces again

    part = session.parts.get(index=1)
    assert part.layout == UploadPart.Layout.FILE and part.artifact not in (first, replaced.artifact)
    assert not Artifact.objects.filter(pk__in=[first.pk, replaced.artifact.pk]).exists()
    version = services.upload_complete(session=session, actor=SYSTEM)
    # Re-encrypted whole under a fresh header instead.
    assert version.artifact.chunk_blobs == [] and version.artifact.public_id != session.artifact_id
    assert artifact_read(artifact=version.artifact, purpose="validate") == data


def test_a_tampered_part_fails_when_read(model, data):
    session = _start(model, data)
    for index in range(session.chunk_count):
        _send(session, data, index)
    version = services.upload_complete(session=session, actor=SYSTEM)
    name, offset, _length = version.artifact.chunk_blobs[1]
    path = Path(artifact_storage().path(name))
    blob = bytearray(path.read_bytes())
    blob[offset + 10] ^= 1
    path.write_bytes(blob)

    with pytest.raises(VaultIntegrityError):
        artifact_read(artifact=version.artifact, purpose="validate")


def test_sessions_from_before_sealing_still_complete(model, data):
    session = _start(model, data)
    UploadSession.objects.filter(pk=session.pk).update(header=b"", artifact_id="", key=None)
    session.refresh_from_db()
    for index in reversed(range(session.chunk_count)):
        assert _send(session, data, index).layout == UploadPart.Layout.FILE

    version = services.upload_complete(session=session, actor=SYSTEM)

    assert artifact_read(artifact=version.artifact, purpose="validate") == data


def test_abandoned_uploads_leave_no_blob(model, data, django_capture_on_commit_callbacks):
    session = _start(model, data)
    for index in range(session.chunk_count):
        _send(session, data, index)
    with django_capture_on_commit_callbacks(execute=True):
        _send(session, data[:-1] + b"!", session.chunk_count - 1)
    with pytest.raises(ValidationError):  # a failed completion is cleaned up too
        services.upload_complete(session=session, actor=SYSTEM)
    UploadSession.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    assert services.upload_sessions_expire() == 1
    assert _files() == [] and not Artifact.objects.exists()


def test_rotation_leaves_open_uploads_be_and_they_complete_under_the_new_key(tenant, model, data):
    session = _start(model, data)
    _send(session, data, 0)
    old_key = session.key
    new_key = tenant_key_rotate_begin(tenant=tenant, actor=SYSTEM)

    assert tenant_key_rotate_run(tenant=tenant) == 0
    old_key.refresh_from_db()
    assert old_key.status == TenantKey.Status.RETIRING  # the upload still seals under it
    for index in range(1, session.chunk_count):
        _send(session, data, index)
    version = services.upload_complete(session=session, actor=SYSTEM)
    assert version.artifact.key == new_key and version.artifact.chunk_blobs == []
    tenant_key_rotate_run(tenant=tenant)
    old_key.refresh_from_db()
    assert old_key.status == TenantKey.Status.DESTROYED
    assert artifact_read(artifact=version.artifact, purpose="validate") == data


def test_rotating_an_assembled_artifact_moves_it_into_one_blob(tenant, model, data):
    session = _start(model, data)
    for index in range(session.chunk_count):
        _send(session, data, index)
    version = services.upload_complete(session=session, actor=SYSTEM)
    tenant_key_rotate_begin(tenant=tenant, actor=SYSTEM)

    assert tenant_key_rotate_run(tenant=tenant) == 1

    artifact = Artifact.objects.get(pk=version.artifact.pk)
    assert artifact.chunk_blobs == []
    assert _files() == [Path(artifact_storage().path(artifact.storage_name))]
    assert artifact_read(artifact=artifact, purpose="validate") == data


def test_destroying_the_tenant_deletes_every_blob(tenant, model, data):
    session = _start(model, data)
    for index in range(session.chunk_count):
        _send(session, data, index)
    version = services.upload_complete(session=session, actor=SYSTEM)
    version.delete()  # versions protect their artifacts; the artifact and its blobs stay
    _send(_start(model, data), data, 0)  # and an open upload's part

    tenant_destroy(tenant=tenant, actor=SYSTEM)

    assert _files() == []


def test_chunks_keep_the_vault_chunk_size_their_session_started_with(model, data, settings):
    session = _start(model, data)
    _send(session, data, 0)
    settings.ARTIFACT_CHUNK_SIZE = 1024  # changed by a deploy while the upload is open
    for index in range(1, session.chunk_count):
        _send(session, data, index)

    version = services.upload_complete(session=session, actor=SYSTEM)

    assert artifact_read(artifact=version.artifact, purpose="validate") == data


@pytest.fixture
def s3(s3_store):  # noqa: F811
    """The moto S3 store, emptied and its bucket removed afterwards: moto keeps its state for
    the whole process, and the next test to use the store creates the bucket again."""
    yield s3_store
    for obj in s3_store.list_objects_v2(Bucket="artifacts").get("Contents", []):
        s3_store.delete_object(Bucket="artifacts", Key=obj["Key"])
    s3_store.delete_bucket(Bucket="artifacts")


def test_an_upload_to_s3_is_taken_over_as_stored(model, data, s3):
    session = _start(model, data)
    for index in reversed(range(session.chunk_count)):
        _send(session, data, index)

    version = services.upload_complete(session=session, actor=SYSTEM)

    assert len(version.artifact.chunk_blobs) == session.chunk_count
    assert artifact_read(artifact=version.artifact, purpose="validate") == data
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="artifacts")["Contents"]]
    assert sorted(keys) == sorted(f"art/{name}" for name in version.artifact.blob_names())
    stored = b"".join(s3.get_object(Bucket="artifacts", Key=key)["Body"].read() for key in keys)
    assert data[:64] not in stored
    # Each part keeps its copy of the header in front of the chunks the artifact reads.
    headers = len(session.header) * session.chunk_count
    assert len(stored) == version.artifact.ciphertext_size + headers


def test_a_chunk_whose_claim_fails_to_link_leaves_nothing_and_can_be_sent_again(model, data):
    """The database refuses the write that links a sealed chunk to its claim (locked): the
    chunk's blob and row go, and the chunk re-sent is stored on its own, since its position
    was claimed; the upload completes byte-identical."""
    from django.db import OperationalError, connection

    session = _start(model, data)
    for index in range(session.chunk_count - 1):
        _send(session, data, index)

    def locked(execute, sql, params, many, context):
        if sql.startswith('UPDATE "marketplace_uploadpart"'):
            raise OperationalError("database is locked")
        return execute(sql, params, many, context)

    files_before = _files()
    with connection.execute_wrapper(locked), pytest.raises(OperationalError):
        _send(session, data, session.chunk_count - 1)
    assert _files() == files_before
    assert Artifact.objects.count() == UploadPart.objects.filter(artifact__isnull=False).count()

    part = _send(session, data, session.chunk_count - 1)
    assert part.layout == UploadPart.Layout.FILE
    version = services.upload_complete(session=session, actor=SYSTEM)
    assert artifact_read(artifact=version.artifact, purpose="validate") == data


def test_the_upload_answer_is_what_drfs_fields_give(model, data):
    """UploadSessionSerializer builds its answer by hand (a PUT gives it for every chunk): the
    same keys, values and JSON as ModelSerializer's fields, from open to completed."""
    from rest_framework import serializers
    from rest_framework.renderers import JSONRenderer

    from marketplace.api.serializers import UploadSessionSerializer

    def both(session):
        session = UploadSession.objects.select_related("model__tenant", "version").get(
            pk=session.pk
        )
        fast = UploadSessionSerializer(session)
        fields = serializers.ModelSerializer.to_representation(fast, session)
        return JSONRenderer().render(fast.data), JSONRenderer().render(fields)

    session = _start(model, data)
    seen = [both(session)]
    _send(session, data, 1)
    seen.append(both(session))
    for index in range(session.chunk_count):
        _send(session, data, index)
    version = services.upload_complete(session=session, actor=SYSTEM)
    seen.append(both(session))

    assert all(fast == fields for fast, fields in seen)
    assert f'"version":{version.number}'.encode() in seen[-1][0]
    start, end = session.chunk_range(1)  # the exported file's size varies with the machine
    assert f'"received_ranges":["bytes {start}-{end}"]'.encode() in seen[1][0]
    assert b'"status":"completed"' in seen[-1][0]


@pytest.mark.parametrize(
    ("index", "span", "chunks_read"),
    # Spans as functions of the part's length (the exported file's size varies by machine;
    # the last part is between one and two 4 KiB vault chunks long).
    [
        (0, lambda n: (0, 100), 1),  # the head of a part: its first vault chunk only
        (0, lambda n: (4000, 4200), 2),  # straddling two chunks
        (1, lambda n: (4096, n), 1),  # the last (partial, final) chunk of the last part
        (1, lambda n: (100, n), 2),
        (1, lambda n: (0, n), 2),  # all of it
    ],
)
def test_a_span_of_a_part_reads_and_opens_only_the_chunks_holding_it(
    model, data, monkeypatch, index, span, chunks_read
):
    """Completion sniffs the format from the file's first and last 4 MiB: of a part already
    hashed it opens only the vault chunks holding those bytes."""
    from marketplace.vault import store

    session = _start(model, data)
    for i in range(session.chunk_count):
        _send(session, data, i)
    part = session.parts.select_related("artifact__key").get(index=index)
    read: list[int] = []
    real_read = store.blob_read
    monkeypatch.setattr(
        store,
        "blob_read",
        lambda name, size, offset=0: read.append(size) or real_read(name, size, offset),
    )

    first, last = session.chunk_range(index)
    length = last - first + 1
    assert index == 0 or 4096 < length <= 8192, "the file no longer fits these spans"
    span = span(length)
    got = services._part_plaintext(session, part, span=span)

    assert bytes(got) == data[first + span[0] : first + span[1]]
    assert sum(read) <= chunks_read * (4096 + 16) + len(session.header)


@pytest.mark.parametrize("damage", ["flipped", "cut short", "grown"])
def test_a_span_of_a_damaged_part_fails_as_tampered(model, data, damage):
    """Reading only some vault chunks of a part still authenticates them, and notices a
    stored part of the wrong length."""
    session = _start(model, data)
    for i in range(session.chunk_count):
        _send(session, data, i)
    part = session.parts.select_related("artifact__key").get(index=0)
    path = Path(artifact_storage().path(part.artifact.storage_name))
    blob = bytearray(path.read_bytes())
    if damage == "flipped":
        blob[len(session.header) + 10] ^= 1  # in the first vault chunk
    elif damage == "cut short":
        del blob[-1]
    else:
        blob += b"\0"
    path.write_bytes(blob)

    with pytest.raises(VaultIntegrityError):
        services._part_plaintext(session, part, span=(0, 100))


def test_a_span_outside_the_part_is_refused(model, data):
    session = _start(model, data)
    _send(session, data, 0)
    part = session.parts.select_related("artifact__key").get(index=0)

    for span in [(100, 100), (-1, 10), (0, part.artifact.size + 1)]:
        with pytest.raises(ValueError, match="is not within the part"):
            services._part_plaintext(session, part, span=span)


def test_a_chunk_for_an_upload_deleted_meanwhile_is_refused_and_leaves_nothing(model, data):
    """The session's row went (its model or organisation was deleted) while a chunk arrived:
    a 409 that says so, and no part stored."""
    session = _start(model, data)
    UploadSession.objects.filter(pk=session.pk).delete()

    with pytest.raises(Conflict, match="no longer exists"):
        _send(session, data, 0)

    assert not UploadPart.objects.exists() and not _files()
