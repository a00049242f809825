"""The encrypted artifact store through Django's storage API, as the registry and the
workers use it."""

from __future__ import annotations

import shutil
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from accounts.models import AuditEvent
from accounts.services import SYSTEM, Actor
from marketplace.models import Artifact, TenantKey
from marketplace.vault import KeyUnavailableError, VaultIntegrityError, decrypt_to_bytes
from marketplace.vault.keys import kek_backend
from marketplace.vault.store import (
    artifact_create,
    artifact_read,
    artifact_storage,
    artifact_stream,
    tenant_key_rotate_begin,
    tenant_key_rotate_run,
)

pytestmark = pytest.mark.django_db
CHUNK = 4096
MARKER = b"PLAINTEXT-WEIGHTS-"


@pytest.fixture(autouse=True)
def _isolated_store(settings, isolated_store):
    """A fresh store and key file per test, with small chunks so boundaries are cheap."""
    settings.ARTIFACT_CHUNK_SIZE = CHUNK


def _payload(size: int) -> bytes:
    return (MARKER * (size // len(MARKER) + 1))[:size]


def _pieces(data: bytes, size: int = 1000):
    return (data[i : i + size] for i in range(0, len(data), size))


def _blob_path(artifact: Artifact) -> Path:
    return Path(artifact_storage().path(artifact.storage_name))


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])
def test_artifact_round_trips_at_every_boundary(tenant, size):
    data = _payload(size)
    artifact = artifact_create(tenant=tenant, chunks=_pieces(data))

    assert artifact.size == size
    assert artifact_read(artifact=artifact, purpose="validate") == data
    assert b"".join(artifact_stream(artifact=artifact, purpose="download")) == data


def test_store_holds_no_plaintext(tenant, outsider, settings):
    for t in (tenant, outsider):
        artifact_create(tenant=t, chunks=_pieces(_payload(5 * CHUNK)))
    store = Path(settings.STORAGES["artifacts"]["OPTIONS"]["location"])
    files = [p for p in store.rglob("*") if p.is_file()]

    assert len(files) == 2
    for path in files:
        assert MARKER not in path.read_bytes()
        assert oct(path.stat().st_mode & 0o777) in ("0o600", "0o644")


def test_every_decryption_is_audited_with_purpose_and_reference(tenant):
    artifact = artifact_create(tenant=tenant, chunks=[b"weights"])
    artifact_read(
        artifact=artifact, purpose="predict", prediction_id="pred_123", actor=Actor(ip="10.0.0.1")
    )

    event = AuditEvent.objects.get(tenant=tenant, action="artifact.decrypt")
    assert event.target_id == artifact.public_id
    assert event.data == {"purpose": "predict", "prediction": "pred_123"}


def test_flipped_byte_in_the_store_fails_before_any_plaintext(tenant):
    artifact = artifact_create(tenant=tenant, chunks=_pieces(_payload(3 * CHUNK)))
    path = _blob_path(artifact)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))

    with pytest.raises(VaultIntegrityError):
        artifact_read(artifact=artifact, purpose="validate")
    assert not AuditEvent.objects.filter(action="artifact.decrypt").exists()


def test_truncated_blob_fails(tenant):
    artifact = artifact_create(tenant=tenant, chunks=_pieces(_payload(3 * CHUNK)))
    path = _blob_path(artifact)
    path.write_bytes(path.read_bytes()[: -(CHUNK // 2)])
    with pytest.raises(VaultIntegrityError):
        artifact_read(artifact=artifact, purpose="validate")


def test_blob_moved_to_another_artifact_fails(tenant):
    first = artifact_create(tenant=tenant, chunks=[b"first model"])
    second = artifact_create(tenant=tenant, chunks=[b"second model"])
    shutil.copy(_blob_path(first), _blob_path(second))
    with pytest.raises(VaultIntegrityError):
        artifact_read(artifact=second, purpose="validate")


def test_cross_tenant_replay_fails(tenant, outsider):
    victim = artifact_create(tenant=tenant, chunks=[b"acme secret weights"])
    attacker = artifact_create(tenant=outsider, chunks=[b"globex weights"])
    # The attacker swaps the victim's blob into its own artifact, and also points its row at
    # the victim's blob: neither decrypts under the attacker's key.
    shutil.copy(_blob_path(victim), _blob_path(attacker))
    with pytest.raises(VaultIntegrityError):
        artifact_read(artifact=attacker, purpose="predict")
    Artifact.objects.filter(pk=attacker.pk).update(storage_name=victim.storage_name)
    attacker.refresh_from_db()
    with pytest.raises(VaultIntegrityError):
        artifact_read(artifact=attacker, purpose="predict")


def test_wrapped_key_copied_to_another_tenant_does_not_unwrap(tenant, outsider):
    artifact_create(tenant=tenant, chunks=[b"a"])
    mine = artifact_create(tenant=outsider, chunks=[b"b"])
    acme_key = TenantKey.objects.get(tenant=tenant)
    TenantKey.objects.filter(tenant=outsider).update(
        kek_id=acme_key.kek_id, wrapped=acme_key.wrapped
    )
    mine.refresh_from_db()
    with pytest.raises(VaultIntegrityError):
        artifact_read(artifact=mine, purpose="predict")


def test_kek_rotation_rewraps_keys_and_old_kek_can_then_be_retired(tenant, outsider, settings):
    artifacts = [artifact_create(tenant=t, chunks=[t.slug.encode()]) for t in (tenant, outsider)]
    old_kek = kek_backend().primary_id

    call_command("rotate_kek", "--new", stdout=StringIO())

    new_kek = kek_backend().primary_id
    assert new_kek != old_kek
    assert set(TenantKey.objects.values_list("kek_id", flat=True)) == {new_kek}
    # The old KEK wraps nothing now, so it can be retired; everything still decrypts.
    call_command("rotate_kek", "--retire", old_kek, stdout=StringIO())
    assert old_kek not in settings.KEK_FILE.read_text()
    for artifact in artifacts:
        artifact.refresh_from_db()
        assert artifact_read(artifact=artifact, purpose="validate") == artifact.tenant.slug.encode()


def test_tenant_key_rotation_interrupted_and_resumed(tenant):
    datas = [_payload(CHUNK * i + 7) for i in range(4)]
    artifacts = [artifact_create(tenant=tenant, chunks=_pieces(d)) for d in datas]
    old_key = TenantKey.objects.get(tenant=tenant)

    new_key = tenant_key_rotate_begin(tenant=tenant, actor=SYSTEM)
    assert tenant_key_rotate_run(tenant=tenant, stop_after=2) == 2  # the "crash"

    # Mid-rotation every artifact is readable, whichever key it is under.
    for artifact, data in zip(artifacts, datas, strict=True):
        artifact.refresh_from_db()
        assert artifact_read(artifact=artifact, purpose="predict") == data
    assert Artifact.objects.filter(key=new_key).count() == 2

    # A reader holding a stale row still gets the plaintext after the rest moves.
    stale = Artifact.objects.get(pk=artifacts[3].pk)
    assert tenant_key_rotate_begin(tenant=tenant, actor=SYSTEM) == new_key  # resumes
    assert tenant_key_rotate_run(tenant=tenant) == 2
    assert artifact_read(artifact=stale, purpose="predict") == datas[3]

    old_key.refresh_from_db()
    assert old_key.status == TenantKey.Status.DESTROYED and old_key.wrapped is None
    assert set(Artifact.objects.values_list("key", flat=True)) == {new_key.pk}
    old_blobs = [p for p in Path(artifact_storage().location).rglob(f"{old_key.public_id}.mmv")]
    assert old_blobs == []


def test_deleted_tenant_is_crypto_shredded(tenant, outsider, tmp_path):
    artifact = artifact_create(tenant=tenant, chunks=[b"acme weights"])
    backup = tmp_path / "backup.mmv"
    shutil.copy(_blob_path(artifact), backup)  # a copy of the store survives somewhere
    artifact_create(tenant=outsider, chunks=[b"globex weights"])

    call_command("delete_tenant", "acme", "--yes", stdout=StringIO())

    assert not TenantKey.objects.filter(tenant__slug="acme").exists()
    assert not _blob_path(artifact).exists()
    # No key left anywhere decrypts the surviving copy.
    for key in TenantKey.objects.all():
        from marketplace.vault.keys import data_key

        with pytest.raises(VaultIntegrityError), backup.open("rb") as fh:
            decrypt_to_bytes(fh, data_key=data_key(key), artifact_id=artifact.public_id)
    assert AuditEvent.objects.filter(action="tenant.destroy", data__tenant="acme").exists()


def test_destroyed_key_reports_unavailable(tenant):
    artifact = artifact_create(tenant=tenant, chunks=[b"w"])
    TenantKey.objects.filter(tenant=tenant).update(wrapped=None, status="destroyed")
    artifact.refresh_from_db()
    with pytest.raises(KeyUnavailableError):
        artifact_read(artifact=artifact, purpose="predict")


def test_failed_write_leaves_no_blob_and_no_row(tenant):
    def broken():
        yield b"x" * (3 * CHUNK)
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        artifact_create(tenant=tenant, chunks=broken())
    assert Artifact.objects.count() == 0
    assert [p for p in Path(artifact_storage().location).rglob("*") if p.is_file()] == []


def test_rotate_tenant_key_command_runs_inline(tenant):
    artifact = artifact_create(tenant=tenant, chunks=[b"w" * 10])
    call_command("rotate_tenant_key", "acme", "--now", stdout=StringIO())
    artifact.refresh_from_db()
    assert artifact.key.status == TenantKey.Status.ACTIVE
    assert TenantKey.objects.filter(tenant=tenant, status="destroyed").count() == 1
    assert artifact_read(artifact=artifact, purpose="predict") == b"w" * 10


def test_a_kek_that_still_wraps_keys_cannot_be_retired(tenant):
    artifact = artifact_create(tenant=tenant, chunks=[b"w"])
    with pytest.raises(CommandError, match="still wraps 1 key"):
        call_command("rotate_kek", "--retire", kek_backend().primary_id, stdout=StringIO())
    assert artifact_read(artifact=artifact, purpose="predict") == b"w"


def test_an_organisation_with_versions_aliases_and_predictions_is_crypto_shredded(tenant):
    from django.db.models import RestrictedError

    from inference import webhooks
    from inference.models import Prediction
    from marketplace import services as registry
    from marketplace.models import Alias, ModelVersion, SealedSecret

    model = registry.model_create(tenant=tenant, name="m", actor=SYSTEM)
    artifact = artifact_create(tenant=tenant, chunks=[b"acme weights"])
    version = ModelVersion.objects.create(
        model=model, number=1, format="torchscript", status="ready", artifact=artifact
    )
    Alias.objects.create(model=model, name="production", version=version)
    Prediction.objects.create(tenant=tenant, model=model, version=version, batch_size=1)
    webhooks.signing_key_rotate(tenant, SYSTEM)  # its webhook secret and the one before
    with pytest.raises(RestrictedError):  # an artifact alone never goes from under its version
        artifact.delete()

    call_command("delete_tenant", "acme", "--yes", stdout=StringIO())

    assert not TenantKey.objects.filter(tenant__slug="acme").exists()
    assert not SealedSecret.objects.exists()
    assert not ModelVersion.objects.exists() and not Artifact.objects.exists()
    assert not _blob_path(artifact).exists()


def test_a_running_process_follows_a_kek_rotation_made_by_another(
    transactional_db, tenant, settings, django_db_blocker
):
    """``rotate_kek --new`` run by an operator re-wraps every data key under a new KEK; web
    processes and workers kept the key file they had read, and every upload and model load
    failed (a 500) until they were restarted."""
    import subprocess
    import sys

    from tests.conftest import worker_env

    root = Path(__file__).resolve().parents[2]

    artifact = artifact_create(tenant=tenant, chunks=[b"weights"])
    old_kek = kek_backend().primary_id  # this process has read the key file

    subprocess.run(  # noqa: S603 - our own interpreter and fixed arguments
        [sys.executable, "manage.py", "rotate_kek", "--new"],
        env={**worker_env(django_db_blocker), "MM_KEK_FILE": str(settings.KEK_FILE)},
        cwd=root,
        check=True,
        capture_output=True,
    )

    assert TenantKey.objects.get(tenant=tenant).kek_id != old_kek
    artifact.refresh_from_db()
    assert artifact_read(artifact=artifact, purpose="predict") == b"weights"
    assert kek_backend().primary_id != old_kek  # new keys are wrapped under the new KEK
