"""The encrypted artifact store: write, read and re-encrypt artifacts, and shred tenants.

Plaintext only ever exists in memory: writes encrypt while streaming into Django's storage
API (the file system, or S3), reads decrypt while streaming out of it. Every decryption is
written to the owning tenant's audit log.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import io
import logging
import os
from collections.abc import Iterable, Iterator, Sequence

from django.conf import settings
from django.core.files import File
from django.core.files.storage import FileSystemStorage, Storage, storages
from django.db import transaction
from django.db.models import ProtectedError, RestrictedError
from django.dispatch import Signal
from django.utils import timezone

from accounts.models import ApiKey, Invitation, Membership, Tenant
from accounts.services import SYSTEM, Actor, audit_record, tenant_suspend
from marketplace.listings import listing_take_down
from marketplace.models import (
    Artifact,
    Entitlement,
    Listing,
    SealedSecret,
    TenantKey,
    UploadPart,
    UploadSession,
)

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


Buffer = bytes | bytearray | memoryview


def blob_write(name: str, pieces: Sequence[Buffer]) -> tuple[str, int]:
    """Write a new blob made of ``pieces`` (ciphertext only); returns its name (the storage
    may pick another) and size. On a local file system the file is created exclusively
    (``FileExistsError`` if the name is taken) and written without copies in this process;
    other storages stream through it. A failed write leaves nothing behind."""
    storage = artifact_storage()
    if isinstance(storage, FileSystemStorage):
        return name, _file_write(storage, name, pieces)
    reader = _ConcatReader(pieces)
    try:
        stored = storage.save(name, _StreamFile(reader, name=name))
    except BaseException:
        storage.delete(name)
        raise
    return stored, reader.bytes_out


# Direct I/O (``O_DIRECT``): the device reads the bytes from this process's memory, so the
# kernel neither copies them into the page cache nor keeps them there. For a large blob that
# copy is the biggest CPU cost of storing it after SHA-256 (``bench/upload.py``), and the blob
# is not read again soon (at completion, a part is read for its header and the first and last
# only for the chunks its format is told from). It needs the
# buffer's address, the file offset and the length aligned to the device's block size.
_DIRECT = getattr(os, "O_DIRECT", 0)
DIRECT_ALIGN = 4096
_DIRECT_MIN = 1024 * 1024  # below it the page cache's copy costs little


def _aligned(view: memoryview) -> bool:
    if view.readonly or not view.contiguous or not view.nbytes:
        return False
    return ctypes.addressof(ctypes.c_char.from_buffer(view)) % DIRECT_ALIGN == 0


def _write_all(fd: int, view: memoryview) -> int:
    written = 0
    while view:
        n = os.write(fd, view)
        view = view[n:]
        written += n
    return written


def _write_direct(fd: int, view: memoryview) -> int:
    """Write the block-aligned head of ``view`` with direct I/O; returns how many bytes were
    written (0 where the file system refuses direct I/O: the caller writes the rest as
    usual, from where this stopped)."""
    head = len(view) - len(view) % DIRECT_ALIGN
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _DIRECT)
    except OSError:
        return 0
    done = 0
    try:
        while done < head:
            done += os.write(fd, view[done:head])
    except OSError as e:
        # EINVAL: no direct I/O here, or another alignment; EOPNOTSUPP: some FUSE and 9p mounts.
        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
    return done


def _file_write(storage: FileSystemStorage, name: str, pieces: Sequence[Buffer]) -> int:
    path = storage.path(name)
    os.makedirs(
        os.path.dirname(path), mode=storage.directory_permissions_mode or 0o777, exist_ok=True
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, storage.file_permissions_mode or 0o666)
    written = 0
    try:
        for piece in pieces:
            view = memoryview(piece).cast("B")
            if (
                _DIRECT
                and len(view) >= _DIRECT_MIN
                and written % DIRECT_ALIGN == 0
                and _aligned(view)
            ):
                n = _write_direct(fd, view)
                view = view[n:]
                written += n
            written += _write_all(fd, view)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return written


class _ConcatReader(io.RawIOBase):
    """The bytes of ``pieces`` one after the other (read from them, not copied first)."""

    def __init__(self, pieces: Sequence[Buffer]):
        self._views = [memoryview(piece).cast("B") for piece in pieces]
        self.bytes_out = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._views and not self._views[0]:
            self._views.pop(0)
        if not self._views:
            return 0
        view = self._views[0]
        n = min(len(buffer), len(view))
        memoryview(buffer).cast("B")[:n] = view[:n]
        self._views[0] = view[n:]
        self.bytes_out += n
        return n


class _ArtifactReader(io.RawIOBase):
    """An artifact stored as several blobs (``Artifact.chunk_blobs``), read as one seekable
    file: the blobs' ``[offset, offset + length)`` ranges one after the other. Each blob is
    opened only when reached."""

    def __init__(self, storage: Storage, ranges: Sequence[tuple[str, int, int]]):
        self._storage = storage
        self._ranges = [tuple(r) for r in ranges]
        self._starts = []
        total = 0
        for _name, _offset, length in self._ranges:
            self._starts.append(total)
            total += length
        self._size = total
        self._pos = 0
        self._index = -1  # the range the open blob belongs to
        self._blob = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        self._close_blob()
        return self._pos

    def readinto(self, buffer) -> int:
        while self._pos < self._size:
            index = self._index
            if index < 0 or not (
                self._starts[index] <= self._pos < self._starts[index] + self._ranges[index][2]
            ):
                self._close_blob()
                index = max(i for i, start in enumerate(self._starts) if start <= self._pos)
                name, offset, length = self._ranges[index]
                if self._pos >= self._starts[index] + length:
                    raise VaultIntegrityError(f"blob {name} has an empty range recorded")
                self._blob = self._storage.open(name, "rb")
                self._blob.seek(offset + self._pos - self._starts[index])
                self._index = index
            left = self._starts[index] + self._ranges[index][2] - self._pos
            view = memoryview(buffer)[: min(len(buffer), left)]
            n = self._blob.readinto(view)
            if not n:
                raise VaultIntegrityError(f"blob {self._ranges[index][0]} is shorter than recorded")
            self._pos += n
            return n
        return 0

    def _close_blob(self) -> None:
        if self._blob is not None:
            self._blob.close()
        self._blob, self._index = None, -1

    def close(self) -> None:
        self._close_blob()
        super().close()


def _open_artifact(artifact: Artifact):
    storage = artifact_storage()
    if not artifact.chunk_blobs:
        return storage.open(artifact.storage_name, "rb")
    # The header blob's length, from what the row records (no size request to the storage).
    head = artifact.ciphertext_size - sum(length for _name, _offset, length in artifact.chunk_blobs)
    return _ArtifactReader(storage, [(artifact.storage_name, 0, head), *artifact.chunk_blobs])


def blob_read(name: str, size: int, offset: int = 0) -> bytes:
    """``size`` bytes of a blob from ``offset`` (fewer at its end)."""
    with artifact_storage().open(name, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


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
    """Delete an artifact's row and blobs (e.g. an upload chunk once assembled)."""
    names = artifact.blob_names()
    artifact.delete()
    for name in names:
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
            with _open_artifact(artifact) as fh:
                plaintext = decrypt_to_bytes(
                    fh, data_key=_resolver(artifact), artifact_id=artifact.public_id
                )
            break
        except (FileNotFoundError, KeyUnavailableError):
            # A tenant key rotation may have moved the artifact since we loaded its row.
            before = (artifact.blob_names(), artifact.key_id)
            artifact.refresh_from_db()
            if attempt == 2 or (artifact.blob_names(), artifact.key_id) == before:
                raise
    _audit_decrypt(artifact, purpose, actor, prediction=prediction_id, job=job_id)
    return plaintext


def artifact_stream(
    *, artifact: Artifact, purpose: str, actor: Actor = SYSTEM, audit: bool = True
) -> Iterator[bytes]:
    """Plaintext chunks for a streamed download. A tampered or truncated blob raises after
    earlier chunks were yielded, so only use this where the consumer can discard a partial
    result (an HTTP download the client verifies against ``sha256``)."""
    fh = _open_artifact(artifact)
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
    # Upload parts stay under the key their session started with (a part sealed in place is
    # no vault file of its own); completing such an upload re-encrypts it under the new key.
    pending = Artifact.objects.filter(tenant=tenant, key__status=TenantKey.Status.RETIRING).exclude(
        pk__in=UploadPart.objects.filter(artifact__isnull=False).values("artifact")
    )
    for artifact in pending.select_related("key", "tenant").order_by("pk"):
        if stop_after is not None and moved >= stop_after:
            return moved
        new_key = keys.active_key(tenant)
        old_name = artifact.storage_name
        fh = _open_artifact(artifact)
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
            ).update(
                key=new_key,
                storage_name=new_name,
                ciphertext_size=ciphertext_size,
                chunk_blobs=[],
            )
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
        if UploadSession.objects.filter(key=key, status=UploadSession.Status.OPEN).exists():
            continue  # an open upload still seals its chunks under it
        keys.key_destroy(key)
        audit_record(action="tenant_key.destroy", actor=SYSTEM, tenant=tenant, target=key)
        storage = artifact_storage()
        for artifact_id in Artifact.objects.filter(tenant=tenant).values_list(
            "public_id", flat=True
        ):
            storage.delete(_blob_name(artifact_id, key.public_id))
            # An assembled upload's parts sit beside its header blob, named after the key.
            try:
                _dirs, files = storage.listdir(artifact_id)
            except (FileNotFoundError, NotImplementedError):
                continue
            for name in files:
                if name.startswith(f"{key.public_id}.part-"):
                    storage.delete(f"{artifact_id}/{name}")


# --- crypto-shredding ---------------------------------------------------------------------


def tenant_destroy(*, tenant: Tenant, actor: Actor) -> tuple[int, bool]:
    """Delete an organisation for good: destroy its data keys first (after which none of its
    artifacts can be decrypted by anyone, wherever copies of the blobs survive), then its
    rows and blobs. Returns the number of artifacts shredded, and whether rows were kept.

    An organisation with billing history (usage records, invoices, payouts, or other
    organisations' predictions of its models) keeps the rows the ledger needs, under a
    suspended organisation that holds nothing else: its keys destroyed and blobs deleted, its
    members, invitations, API keys and webhook secrets gone, its own predictions' inputs and
    outputs erased, its listings taken down. Before, deleting such an organisation, which is
    any that had served or made a prediction, failed on the ledger's protected rows."""
    artifacts = list(Artifact.objects.filter(tenant=tenant))
    names = [name for artifact in artifacts for name in artifact.blob_names()]
    with transaction.atomic():
        for key in TenantKey.objects.select_for_update().filter(tenant=tenant):
            keys.key_destroy(key)
        audit_record(
            action="tenant.destroy",
            actor=actor,
            tenant=None,
            data={"tenant": tenant.slug, "artifacts": len(artifacts)},
        )
        try:
            with transaction.atomic():  # a savepoint: the keys stay destroyed either way
                group = tenant.group
                tenant.delete()
                group.delete()
            kept = False
        except (ProtectedError, RestrictedError):
            _erase_keeping_records(tenant, actor)
            kept = True
    storage = artifact_storage()
    for name in names:
        try:
            storage.delete(name)
        except OSError:  # the keys are gone: a blob left behind is only noise
            logger.warning("Could not delete blob %s of destroyed tenant %s", name, tenant.slug)
    return len(artifacts), kept


# Sent inside the transaction of ``tenant_destroy`` for an organisation whose rows must stay:
# the apps above the marketplace erase what they hold of it (``inference``: its predictions'
# inputs and outputs, its webhook signing keys).
tenant_erasing = Signal()


def _erase_keeping_records(tenant: Tenant, actor: Actor) -> None:
    now = timezone.now()
    tenant_erasing.send(sender=Tenant, tenant=tenant)
    Membership.objects.filter(tenant=tenant).delete()
    Invitation.objects.filter(tenant=tenant).delete()
    tenant.group.user_set.clear()
    ApiKey.objects.filter(tenant=tenant, revoked_at=None).update(revoked_at=now)
    SealedSecret.objects.filter(tenant=tenant).delete()
    Entitlement.objects.filter(tenant=tenant, revoked_at=None).update(revoked_at=now)
    for listing in Listing.objects.filter(model__tenant=tenant, taken_down_at=None):
        listing_take_down(
            listing=listing, reason="Its publisher deleted its organisation.", actor=actor
        )
    tenant.name = f"Deleted organisation {tenant.slug}"
    tenant.save(update_fields=["name"])
    tenant_suspend(
        tenant=tenant,
        reason=f"Deleted on {now:%Y-%m-%d}: its data keys were destroyed; its billing "
        "records are kept.",
        actor=actor,
    )
    tenant.deleted_at = now
    tenant.save(update_fields=["deleted_at"])
