"""The encrypted artifact store: write, read and re-encrypt artifacts, and shred tenants.

Plaintext only ever exists in memory: writes encrypt while streaming into Django's storage
API (the file system, or S3), reads decrypt while streaming out of it. Every decryption is
written to the owning tenant's audit log.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Iterator

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage, storages
from django.db import transaction

from accounts.models import Tenant
from accounts.services import SYSTEM, Actor, audit_record
from marketplace.models import Artifact, TenantKey

from . import keys
from .keyring import KeyUnavailableError
from .stream import Encryptor, VaultIntegrityError, decrypt_stream, decrypt_to_bytes

logger = logging.getLogger("marketplace.vault")

PURPOSES = ("validate", "predict", "compress", "download", "rotate", "assemble")


def artifact_storage() -> Storage:
    return storages["artifacts"]


def _blob_name(artifact_id: str, key_id: str) -> str:
    # One blob per (artifact, key): a re-encryption never overwrites the blob readers use.
    return f"{artifact_id}/{key_id}.mmv"


class _EncryptingReader(io.RawIOBase):
    """A read-only file whose bytes are the ciphertext of ``chunks``, produced on demand, so
    a storage backend can pull from it without the plaintext ever being buffered whole."""

    def __init__(self, encryptor: Encryptor, chunks: Iterable[bytes]):
        self._encryptor = encryptor
        self._chunks = iter(chunks)
        self._pending = bytearray(encryptor.header())
        self._done = False
        self.bytes_out = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while len(self._pending) < len(buffer) and not self._done:
            piece = next(self._chunks, None)
            if piece is None:
                self._pending += self._encryptor.finalize()
                self._done = True
            else:
                self._pending += self._encryptor.update(piece)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        del self._pending[:n]
        self.bytes_out += n
        return n


class _StreamFile(File):
    DEFAULT_CHUNK_SIZE = 1024 * 1024


def _write_blob(*, name: str, key: TenantKey, artifact_id: str, chunks: Iterable[bytes]):
    encryptor = Encryptor(
        data_key=keys.data_key(key),
        artifact_id=artifact_id,
        key_id=key.public_id,
        chunk_size=settings.ARTIFACT_CHUNK_SIZE,
    )
    reader = _EncryptingReader(encryptor, chunks)
    storage = artifact_storage()
    if storage.exists(name):  # a leftover of an interrupted attempt: never append to it
        storage.delete(name)
    try:
        stored = storage.save(name, _StreamFile(reader, name=name))
    except BaseException:
        storage.delete(name)  # never leave a partial blob behind
        raise
    return stored, encryptor, reader.bytes_out


def artifact_create(*, tenant: Tenant, chunks: Iterable[bytes]) -> Artifact:
    """Encrypt ``chunks`` (plaintext pieces of any size) into the store under the tenant's
    active key and record the artifact. Memory stays bounded by the chunk size."""
    key = keys.active_key(tenant)
    artifact = Artifact(tenant=tenant, key=key)
    name = _blob_name(artifact.public_id, key.public_id)
    stored, encryptor, ciphertext_size = _write_blob(
        name=name, key=key, artifact_id=artifact.public_id, chunks=chunks
    )
    artifact.storage_name = stored
    artifact.size = encryptor.plaintext_size
    artifact.sha256 = encryptor.plaintext_sha256
    artifact.ciphertext_size = ciphertext_size
    try:
        artifact.save()
    except BaseException:
        artifact_storage().delete(stored)
        raise
    return artifact


def artifact_delete(artifact: Artifact) -> None:
    """Delete an artifact's row and blob (e.g. an upload chunk once assembled)."""
    name = artifact.storage_name
    artifact.delete()
    artifact_storage().delete(name)


def _resolver(artifact: Artifact):
    def resolve(key_id: str) -> bytes:
        # The header is untrusted until the first chunk authenticates: it may only confirm
        # the key our database says, never choose one.
        if key_id != artifact.key.public_id:
            raise VaultIntegrityError(
                f"Artifact {artifact.public_id} names key {key_id}, not its own key."
            )
        return keys.data_key(artifact.key)

    return resolve


def _audit_decrypt(artifact: Artifact, purpose: str, actor: Actor, **refs) -> None:
    if purpose not in PURPOSES:
        raise ValueError(f"Unknown decryption purpose {purpose!r}; one of {PURPOSES}.")
    audit_record(
        action="artifact.decrypt",
        actor=actor,
        tenant=artifact.tenant,
        target=artifact,
        data={"purpose": purpose, **{k: v for k, v in refs.items() if v}},
    )


def artifact_read(
    *,
    artifact: Artifact,
    purpose: str,
    actor: Actor = SYSTEM,
    prediction_id: str | None = None,
    job_id: str | None = None,
) -> bytearray:
    """The whole plaintext, returned only once every chunk has authenticated (this is what
    a model loader gets). Audited with the purpose and the prediction or job it serves."""
    for attempt in (1, 2):
        try:
            with artifact_storage().open(artifact.storage_name, "rb") as fh:
                plaintext = decrypt_to_bytes(
                    fh, data_key=_resolver(artifact), artifact_id=artifact.public_id
                )
            break
        except (FileNotFoundError, KeyUnavailableError):
            # A tenant key rotation may have moved the artifact since we loaded its row.
            before = (artifact.storage_name, artifact.key_id)
            artifact.refresh_from_db()
            if attempt == 2 or (artifact.storage_name, artifact.key_id) == before:
                raise
    _audit_decrypt(artifact, purpose, actor, prediction=prediction_id, job=job_id)
    return plaintext


def artifact_stream(
    *, artifact: Artifact, purpose: str, actor: Actor = SYSTEM, audit: bool = True
) -> Iterator[bytes]:
    """Plaintext chunks for a streamed download. A tampered or truncated blob raises after
    earlier chunks were yielded, so only use this where the consumer can discard a partial
    result (an HTTP download the client verifies against ``sha256``)."""
    fh = artifact_storage().open(artifact.storage_name, "rb")
    chunks = decrypt_stream(fh, data_key=_resolver(artifact), artifact_id=artifact.public_id)
    if audit:  # the caller records one event for a batch (e.g. the chunks of an upload)
        _audit_decrypt(artifact, purpose, actor)

    def generate():
        with fh:
            yield from chunks

    return generate()


# --- tenant key rotation ------------------------------------------------------------------


@transaction.atomic
def tenant_key_rotate_begin(*, tenant: Tenant, actor: Actor) -> TenantKey:
    """Retire the tenant's active key and create a new one; ``tenant_key_rotate_run`` then
    re-encrypts the artifacts. Calling it while a rotation is unfinished resumes that one."""
    if TenantKey.objects.filter(tenant=tenant, status=TenantKey.Status.RETIRING).exists():
        return keys.active_key(tenant)
    old = list(
        TenantKey.objects.select_for_update().filter(tenant=tenant, status=TenantKey.Status.ACTIVE)
    )
    TenantKey.objects.filter(pk__in=[k.pk for k in old]).update(status=TenantKey.Status.RETIRING)
    new = keys.tenant_key_create(tenant)
    audit_record(
        action="tenant_key.rotate",
        actor=actor,
        tenant=tenant,
        target=new,
        data={"retiring": [k.public_id for k in old]},
    )
    return new


def tenant_key_rotate_run(*, tenant: Tenant, stop_after: int | None = None) -> int:
    """Re-encrypt every artifact still under a retiring key, one at a time, then destroy the
    retired keys. Idempotent and resumable: each artifact switches over in one conditional
    update after its new blob is complete, so readers always find a readable blob.

    ``stop_after`` processes at most that many artifacts (tests use it to simulate a crash).
    """
    moved = 0
    pending = Artifact.objects.filter(tenant=tenant, key__status=TenantKey.Status.RETIRING)
    for artifact in pending.select_related("key", "tenant").order_by("pk"):
        if stop_after is not None and moved >= stop_after:
            return moved
        new_key = keys.active_key(tenant)
        old_name = artifact.storage_name
        fh = artifact_storage().open(old_name, "rb")
        with fh:
            plaintext = decrypt_stream(
                fh, data_key=_resolver(artifact), artifact_id=artifact.public_id
            )
            new_name, encryptor, ciphertext_size = _write_blob(
                name=_blob_name(artifact.public_id, new_key.public_id),
                key=new_key,
                artifact_id=artifact.public_id,
                chunks=plaintext,
            )
        if encryptor.plaintext_sha256 != artifact.sha256:
            artifact_storage().delete(new_name)
            raise VaultIntegrityError(f"Artifact {artifact.public_id} changed during rotation.")
        with transaction.atomic():
            switched = Artifact.objects.filter(
                pk=artifact.pk, key=artifact.key_id, storage_name=old_name
            ).update(key=new_key, storage_name=new_name, ciphertext_size=ciphertext_size)
            if switched:
                _audit_decrypt(artifact, "rotate", SYSTEM)
        if not switched:
            artifact_storage().delete(new_name)
        moved += switched
    _destroy_retired_keys(tenant)
    return moved


def _destroy_retired_keys(tenant: Tenant) -> None:
    retiring = TenantKey.objects.filter(tenant=tenant, status=TenantKey.Status.RETIRING)
    for key in retiring:
        if Artifact.objects.filter(key=key).exists():
            continue
        keys.key_destroy(key)
        audit_record(action="tenant_key.destroy", actor=SYSTEM, tenant=tenant, target=key)
        for artifact_id in Artifact.objects.filter(tenant=tenant).values_list(
            "public_id", flat=True
        ):
            artifact_storage().delete(_blob_name(artifact_id, key.public_id))


# --- crypto-shredding ---------------------------------------------------------------------


def tenant_destroy(*, tenant: Tenant, actor: Actor) -> int:
    """Delete an organisation for good: destroy its data keys first (after which none of its
    artifacts can be decrypted by anyone, wherever copies of the blobs survive), then its
    rows and blobs. Returns the number of artifacts shredded."""
    names = list(Artifact.objects.filter(tenant=tenant).values_list("storage_name", flat=True))
    with transaction.atomic():
        for key in TenantKey.objects.select_for_update().filter(tenant=tenant):
            keys.key_destroy(key)
        audit_record(
            action="tenant.destroy",
            actor=actor,
            tenant=None,
            data={"tenant": tenant.slug, "artifacts": len(names)},
        )
        group = tenant.group
        tenant.delete()
        group.delete()
    storage = artifact_storage()
    for name in names:
        try:
            storage.delete(name)
        except OSError:  # the keys are gone: a blob left behind is only noise
            logger.warning("Could not delete blob %s of destroyed tenant %s", name, tenant.slug)
    return len(names)
