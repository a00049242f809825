"""Writes of the registry: models, uploads, versions and aliases."""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import io
import os
import re
import threading
import time
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.exceptions import Conflict, Forbidden, PayloadTooLarge, UnsupportedMediaType
from accounts.models import Scope, Tenant
from accounts.services import Actor, audit_record
from accounts.tenancy import Access
from config import sql, tasks
from inference.runtime.spec import ARCHITECTURE_NAMES
from marketplace.listings import example_input_clean
from marketplace.models import (
    MODEL_NAME_RE,
    Alias,
    AliasMove,
    Artifact,
    Format,
    Model,
    ModelVersion,
    Task,
    TenantKey,
    UploadPart,
    UploadSession,
)
from marketplace.vault import store, uploads

# The batch dimension is exported dynamic, as compression and batching need; torch.export
# fixes a dimension of size 1 into the graph, hence the example of 2 or more. TorchScript is
# scripted, not traced (as docs/client.md says): a trace records the one path its example
# took, so a model with control flow would answer every input as that example's branch.
EXPORT_GUIDANCE = (
    "Export your model with torch.export and save it, with an example batch of 2 or more and "
    "the batch dimension dynamic: `ep = torch.export.export(model.eval(), (example,), "
    "dynamic_shapes=({0: torch.export.Dim('batch')},)); torch.export.save(ep, 'model.pt2')` "
    "(preferred), or save TorchScript with `torch.jit.save(torch.jit.script(model.eval()), "
    "'model.pt')`, or upload a safetensors state dict with one of our built-in architectures."
)
PROTECTED_ALIASES = frozenset({"production"})


# --- models -----------------------------------------------------------------------------------


@transaction.atomic
def model_create(
    *, tenant: Tenant, name: str, actor: Actor, description: str = "", task: str = Task.OTHER
) -> Model:
    if not re.match(MODEL_NAME_RE, name):
        raise ValidationError(
            {
                "name": "Use 1-100 lowercase letters, digits, '.', '_' or '-', starting with a "
                "letter or digit."
            }
        )
    try:
        with transaction.atomic():
            model = Model.objects.create(
                tenant=tenant,
                name=name,
                description=description,
                task=task,
                created_by=actor.user,
            )
    except IntegrityError:
        raise Conflict(f"{tenant.slug}/{name} already exists.") from None
    audit_record(
        action="model.create", actor=actor, tenant=tenant, target=model, data={"name": name}
    )
    return model


# --- uploads ----------------------------------------------------------------------------------


def upload_session_create(
    *,
    model: Model,
    filename: str,
    format: str,
    size: int,
    sha256: str,
    actor: Actor,
    label: str = "",
    architecture: str = "",
    architecture_config: dict | None = None,
    example_input=None,
) -> UploadSession:
    if format not in Format.values:
        raise UnsupportedMediaType(
            f"'{format}' is not a format we accept (pt2, torchscript, safetensors). "
            + EXPORT_GUIDANCE
        )
    if format == Format.SAFETENSORS and architecture not in ARCHITECTURE_NAMES:
        # Said now, not after the whole file is sent and a worker fails to build it.
        named = f"'{architecture}' is not one of" if architecture else "A safetensors upload names"
        raise ValidationError(
            {
                "architecture": f"{named} our built-in architectures: "
                f"{', '.join(ARCHITECTURE_NAMES)}."
            }
        )
    if size > settings.MAX_ARTIFACT_BYTES:
        raise PayloadTooLarge(
            f"The file is {size} bytes; the limit is {settings.MAX_ARTIFACT_BYTES} bytes."
        )
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValidationError({"sha256": "Give the file's SHA-256 as 64 lowercase hex digits."})
    if example_input is not None:
        example_input = example_input_clean(example_input)
    key, artifact_id, header = uploads.session_header(
        tenant=model.tenant, piece_size=settings.UPLOAD_CHUNK_SIZE
    )
    session = UploadSession.objects.create(
        artifact_id=artifact_id,
        key=key,
        header=header,
        tenant=model.tenant,
        model=model,
        filename=filename,
        format=format,
        size=size,
        sha256=sha256,
        chunk_size=settings.UPLOAD_CHUNK_SIZE,
        label=label,
        architecture=architecture,
        architecture_config=architecture_config or {},
        example_input=example_input,
        created_by=actor.user,
        expires_at=timezone.now() + settings.UPLOAD_SESSION_TTL,
    )
    return session


def parse_content_range(header: str, session: UploadSession) -> int:
    """The chunk index a ``Content-Range: bytes start-end/total`` header names; chunks must
    line up with the session's chunk size."""
    match = re.fullmatch(r"bytes (\d{1,19})-(\d{1,19})/(\d{1,19})", header.strip(), re.ASCII)
    if match is None:
        raise ValidationError(
            "Send 'Content-Range: bytes START-END/TOTAL' with each chunk (END inclusive)."
        )
    start, end, total = (int(g) for g in match.groups())
    if total != session.size:
        raise ValidationError(
            f"Content-Range total {total} differs from the upload's size {session.size}."
        )
    index, remainder = divmod(start, session.chunk_size)
    if remainder or index >= session.chunk_count or (start, end) != session.chunk_range(index):
        expected = session.chunk_range(min(index, session.chunk_count - 1))
        raise ValidationError(
            f"Chunks are {session.chunk_size} bytes and start at multiples of it; "
            f"for example bytes {expected[0]}-{expected[1]}/{session.size}."
        )
    return index


def _check_open(session: UploadSession) -> None:
    if session.status != UploadSession.Status.OPEN:
        raise Conflict(f"This upload is {session.status}; start a new one.")
    if session.expires_at <= timezone.now():
        raise Conflict("This upload expired; start a new one.")


def _lock_open(session: UploadSession) -> None:
    """Inside a transaction: lock the session's row and check it is still open, so a chunk
    that arrived while the upload was completed, aborted or expired is not kept (completion
    and the chunk's row change one at a time)."""
    row = sql.get(UploadSession, where={"id": session.pk}, fields=_OPEN_FIELDS, for_update=True)
    if row is None:  # expired and cleaned up while this request ran
        raise Conflict("This upload no longer exists; start a new one.")
    _check_open(row)


_OPEN_FIELDS = ("status", "expires_at")


@dataclass
class _RunningDigest:
    """SHA-256 of an upload's chunks received in order by this process: chunks ``0..next-1``,
    as stored in the parts named by ``parts``. Completion uses it when the parts are still
    those (any process may have replaced one), and only decrypts the rest to hash it.
    ``receiving`` counts the requests of each chunk this process is receiving now."""

    next: int = 0
    sha256: hashlib._Hash = field(default_factory=hashlib.sha256)
    parts: list[str] = field(default_factory=list)
    receiving: Counter[int] = field(default_factory=Counter)


_digests: OrderedDict[str, _RunningDigest] = OrderedDict()
_digests_lock = threading.Lock()
_digests_changed = threading.Condition(_digests_lock)
_MAX_DIGESTS = 64  # sessions this process is receiving at once; older ones are rehashed
# How long a chunk that arrived before the one ahead of it waits for that one's hash. A
# client sending chunks at once (``mm push`` sends four) gets each stored chunk hashed as soon
# as the chunks ahead of it are, in the order SHA-256 needs, instead of all of them again at
# completion; a chunk whose predecessor is not being received here does not wait at all.
_DIGEST_WAIT_S = 10.0

# SHA-256 is the largest CPU cost of storing a chunk and cannot be split (each byte's state
# depends on the last), but it can run beside the rest: each piece is hashed on this pool
# (hashlib releases the GIL) while the request thread seals it and receives the next one.
# A piece's update is waited for before the next is submitted, so a session's pieces are
# hashed in order. Small pieces are hashed inline, where handing them over costs more.
_HASH_AHEAD_MIN = 64 * 1024
_hash_pool: ThreadPoolExecutor | None = None
_hash_pool_lock = threading.Lock()


def _hasher() -> ThreadPoolExecutor:
    global _hash_pool
    if _hash_pool is None:
        with _hash_pool_lock:
            if _hash_pool is None:
                _hash_pool = ThreadPoolExecutor(
                    max_workers=os.cpu_count() or 2, thread_name_prefix="upload-sha256"
                )
    return _hash_pool


def _digest_begin(session: UploadSession, index: int):
    """Note that chunk ``index`` is being received, and return a running SHA-256 to feed it
    into if this process has hashed every chunk before it; ``None`` otherwise (the chunk is
    hashed once those are, ``_digest_finish``, or at completion). ``_digest_end`` follows."""
    with _digests_lock:
        digest = _digests.get(session.public_id)
        if digest is None:
            digest = _digests[session.public_id] = _RunningDigest()
            while len(_digests) > _MAX_DIGESTS:
                _digests.popitem(last=False)
        _digests.move_to_end(session.public_id)  # the least recently used is dropped first
        digest.receiving[index] += 1
        return digest.sha256.copy() if digest.next == index else None


def _digest_end(session: UploadSession, index: int) -> None:
    with _digests_changed:
        digest = _digests.get(session.public_id)
        if digest is not None:
            digest.receiving[index] -= 1
            if digest.receiving[index] <= 0:
                del digest.receiving[index]
        _digests_changed.notify_all()  # a chunk waiting on this one stops waiting


def _digest_finish(
    session: UploadSession, index: int, part_id: str, sha256, sealer: uploads.PieceSealer
) -> None:
    """Add the stored chunk to the running SHA-256. A chunk that was not hashed as it
    arrived waits while the chunk before it is being received here (which in turn waits for
    its own), then is hashed from its sealed copy in memory."""
    if sha256 is None:
        deadline = time.monotonic() + _DIGEST_WAIT_S
        with _digests_changed:
            digest = _digests.get(session.public_id)
            while (
                digest is not None
                and digest.next < index
                and digest.receiving[index - 1] > 0
                and _digests_changed.wait(max(0.0, deadline - time.monotonic()))
            ):
                digest = _digests.get(session.public_id)
            if digest is None or digest.next != index:
                return  # left to completion
            sha256 = digest.sha256.copy()
        sealer.hash_into(sha256)
    _digest_commit(session, index, part_id, sha256)


def _digest_forget(session: UploadSession) -> None:
    """Drop a completed or aborted upload's running SHA-256; a chunk still waiting to be
    hashed stops waiting."""
    with _digests_changed:
        _digests.pop(session.public_id, None)
        _digests_changed.notify_all()


def _digest_commit(session: UploadSession, index: int, part_id: str, sha256) -> None:
    if sha256 is None:
        return
    with _digests_changed:
        digest = _digests.get(session.public_id)
        if digest is None or digest.next != index:
            return
        _digests.move_to_end(session.public_id)
        digest.sha256 = sha256
        digest.parts.append(part_id)
        digest.next += 1
        _digests_changed.notify_all()


def _exactly(chunks: Iterable[bytes], index: int, size: int) -> Iterator[bytes]:
    """Chunk ``index``'s pieces as they arrive; a 400 once they pass ``size`` bytes or end
    short of it."""
    received = 0
    for piece in chunks:
        received += len(piece)
        if received > size:
            raise ValidationError(f"Chunk {index} is longer than {size} bytes.")
        yield piece
    if received != size:
        raise ValidationError(f"Chunk {index} should be {size} bytes; received {received}.")


def _read_chunk(chunks: Iterable[bytes], index: int, size: int) -> memoryview:
    """The whole chunk (sessions from before chunks were sealed)."""
    buffer = memoryview(bytearray(size))
    filled = 0
    for piece in _exactly(chunks, index, size):
        buffer[filled : filled + len(piece)] = piece
        filled += len(piece)
    return buffer


def upload_part_store(*, session: UploadSession, index: int, chunks: Iterable[bytes]) -> UploadPart:
    """Encrypt one chunk into the store. Re-sending a chunk replaces it, so any chunk can be
    retried safely, in any order.

    The chunk is sealed as it arrives, as the finished artifact's chunks at its position,
    and stored once it has all arrived, if its position was never claimed before. A re-sent
    chunk with the same bytes changes nothing; one with other bytes (or one whose earlier
    attempt failed after claiming) becomes a vault file of its own, since storing other
    bytes sealed at the same position would reuse GCM nonces."""
    _check_open(session)
    start, end = session.chunk_range(index)
    size = end - start + 1
    if not session.header:
        plaintext = _read_chunk(chunks, index, size)
        artifact = uploads.part_create_standalone(tenant=session.tenant, plaintext=plaintext)
        return _part_set(session, index, artifact, UploadPart.Layout.FILE)
    first, final = _vault_position(session, index)
    sealer = uploads.PieceSealer(
        key=session.key,
        header=session.header,
        artifact_id=session.artifact_id,
        first_chunk=first,
        final=final,
        size=size,
    )
    sha256 = _digest_begin(session, index)
    try:
        return _part_store_sealed(session, index, size, chunks, sealer, sha256)
    finally:
        _digest_end(session, index)
        sealer.close()


def _part_store_sealed(
    session: UploadSession,
    index: int,
    size: int,
    chunks: Iterable[bytes],
    sealer: uploads.PieceSealer,
    sha256,
) -> UploadPart:
    hashing = None  # the previous piece's SHA-256 update, running on another core
    for piece in _exactly(chunks, index, size):
        if hashing is not None:
            hashing.result()  # in order, and before the next piece reuses its buffer
            hashing = None
        if sha256 is not None:
            if len(piece) >= _HASH_AHEAD_MIN:
                hashing = _hasher().submit(sha256.update, piece)
            else:
                sha256.update(piece)
        sealer.update(piece)
    if hashing is not None:
        hashing.result()
    try:
        with transaction.atomic():
            _lock_open(session)
            claim = UploadPart(
                session=session, index=index, layout=UploadPart.Layout.SEALED_IN_PLACE
            )
            sql.insert(claim)
    except IntegrityError:
        claim = None
    if claim is not None:
        artifact = uploads.part_store(
            tenant=session.tenant, key=session.key, artifact_id=session.artifact_id, sealer=sealer
        )
        try:
            with transaction.atomic():  # a savepoint inside a caller's transaction
                _lock_open(session)
                linked = sql.update(
                    UploadPart, claim.pk, where={"artifact": None}, values={"artifact": artifact.pk}
                )
        except BaseException:
            store.artifact_delete(artifact)  # linked to nothing: leave no blob or row behind
            raise
        if linked:
            claim.artifact = artifact
            _digest_finish(session, index, artifact.public_id, sha256, sealer)
            return claim
        store.artifact_delete(artifact)  # a retry racing this one stored its copy first
        return UploadPart.objects.select_related("artifact").get(pk=claim.pk)
    existing = (
        UploadPart.objects.select_related("artifact")
        .filter(session=session, index=index, artifact__isnull=False)
        .first()
    )
    if (
        existing is not None
        and existing.layout == UploadPart.Layout.SEALED_IN_PLACE
        and uploads.part_holds(existing.artifact, sealer)
    ):
        _digest_finish(session, index, existing.artifact.public_id, sha256, sealer)
        return existing
    artifact = uploads.part_create_standalone(tenant=session.tenant, plaintext=sealer.plaintext())
    part = _part_set(session, index, artifact, UploadPart.Layout.FILE)
    _digest_finish(session, index, artifact.public_id, sha256, sealer)
    return part


def _part_set(session: UploadSession, index: int, artifact: Artifact, layout: str) -> UploadPart:
    """Point the chunk's row at its newly stored part; the part it replaces is deleted."""
    try:
        with transaction.atomic():
            _lock_open(session)
            part = (
                # of=self: PostgreSQL locks no row of a nullable join ("FOR UPDATE cannot be
                # applied to the nullable side of an outer join"); the part's row is enough.
                UploadPart.objects.select_for_update(of=("self",))
                .select_related("artifact")
                .filter(session=session, index=index)
                .first()
            )
            if part is None:
                return UploadPart.objects.create(
                    session=session, index=index, artifact=artifact, layout=layout
                )
            replaced = part.artifact
            part.artifact, part.layout = artifact, layout
            part.save(update_fields=["artifact", "layout"])
            if replaced is not None:
                transaction.on_commit(lambda: store.artifact_delete(replaced))
    except IntegrityError:
        # The same chunk's first copy arrived twice at once; the other one won.
        store.artifact_delete(artifact)
        raise Conflict(f"Chunk {index} was being sent twice at once; retry it.") from None
    except Conflict:  # the upload was completed, aborted or expired while it arrived
        store.artifact_delete(artifact)
        raise
    return part


def _vault_position(session: UploadSession, index: int) -> tuple[int, bool]:
    """The vault chunk counter chunk ``index`` starts at, and whether it is the last."""
    final = index == session.chunk_count - 1
    if not session.header:  # a session from before sealing: its parts are files of their own
        return 0, final
    return index * (session.chunk_size // uploads.header_chunk_size(session.header)), final


def _part_plaintext(
    session: UploadSession, part: UploadPart, span: tuple[int, int] | None = None
) -> bytearray:
    first, final = _vault_position(session, part.index)
    return uploads.part_open(
        part=part.artifact,
        sealed_in_place=part.layout == UploadPart.Layout.SEALED_IN_PLACE,
        header=session.header,
        artifact_id=session.artifact_id,
        first_chunk=first,
        final=final,
        span=span,
    )


def upload_stored_indexes(session: UploadSession) -> set[int]:
    """Indexes of the chunks stored so far: all of them once the upload is complete (its
    parts then belong to the version's artifact, and their rows are gone)."""
    if session.status == UploadSession.Status.COMPLETED:
        return set(range(session.chunk_count))
    return set(session.parts.filter(artifact__isnull=False).values_list("index", flat=True))


def upload_received_ranges(
    session: UploadSession, *, stored: set[int] | None = None
) -> list[tuple[int, int]]:
    """Byte ranges stored so far, merged (inclusive ends)."""
    ranges: list[tuple[int, int]] = []
    for index in sorted(upload_stored_indexes(session) if stored is None else stored):
        start, end = session.chunk_range(index)
        if ranges and ranges[-1][1] + 1 == start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return ranges


def upload_missing_ranges(
    session: UploadSession, *, stored: set[int] | None = None
) -> list[tuple[int, int]]:
    have = upload_stored_indexes(session) if stored is None else stored
    missing: list[tuple[int, int]] = []
    for index in range(session.chunk_count):
        if index in have:
            continue
        start, end = session.chunk_range(index)
        if missing and missing[-1][1] + 1 == start:
            missing[-1] = (missing[-1][0], end)
        else:
            missing.append((start, end))
    return missing


def sniff_format(read: Callable[[int, int], bytes], size: int) -> str | None:
    """What the file is, from bytes of its first and last ``SNIFF_BYTES``, read as needed
    (``read(offset, length)``): ``pt2``, ``torchscript``, ``safetensors``, ``pickle`` (a
    torch.save file: refused) or None (unknown)."""
    head = read(0, min(size, 8))
    if _looks_like_safetensors(head, read, size):
        return Format.SAFETENSORS
    if head[:4] == b"PK\x03\x04":
        source = _SparseFile(read, size)
        try:
            names = zipfile.ZipFile(source).namelist()
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError):
            if source.failure is not None:  # the stored bytes could not be read: not the file's
                raise source.failure from None
            return None  # not a zip we can read (NotImplementedError: a newer zip version)
        roots = {name.split("/", 1)[1] if "/" in name else name for name in names}
        if "archive_format" in roots:
            return Format.EXPORT
        if any(r.startswith("code/") for r in roots) and "constants.pkl" in roots:
            return Format.TORCHSCRIPT
        if "data.pkl" in roots:
            return "pickle"
        return None
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"  # the PROTO opcode and its protocol: a legacy torch.save file
    return None


def _looks_like_safetensors(head: bytes, read: Callable[[int, int], bytes], size: int) -> bool:
    """An 8-byte little-endian header length, then that many bytes of a JSON object (read
    and parsed when they lie within the first ``SNIFF_BYTES``)."""
    if len(head) < 8 or size < 10:
        return False
    header_len = int.from_bytes(head[:8], "little")
    if not 2 <= header_len <= min(size - 8, 100 * 1024 * 1024) or read(8, 1) != b"{":
        return False
    if 8 + header_len <= SNIFF_BYTES:
        import json

        try:
            return isinstance(json.loads(read(8, header_len)), dict)
        except (ValueError, RecursionError):  # RecursionError: nested past any real header
            return False
    return True


class _SparseFile(io.RawIOBase):
    """A read-only view of a file's first and last ``SNIFF_BYTES``, read as asked for:
    enough for ``zipfile`` to read the central directory without the whole plaintext, and
    no further (a central directory beyond them is not a model we take)."""

    def __init__(self, read: Callable[[int, int], bytes], size: int):
        self._read, self._size, self._pos = read, size, 0
        self.failure: Exception | None = None  # what ``read`` raised (a part not readable)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        position = {0: offset, 1: self._pos + offset, 2: self._size + offset}[whence]
        if position < 0:  # as a file refuses it (a file too short, an offset that lies)
            raise OSError(f"negative seek position {position}")
        self._pos = position
        return position

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self._size - self._pos))
        start, end = self._pos, self._pos + n
        if n and not (end <= SNIFF_BYTES or start >= self._size - SNIFF_BYTES):
            raise OSError("outside the inspected part of the file")
        try:
            buffer[:n] = self._read(start, n) if n else b""
        except Exception as exc:
            self.failure = exc
            raise
        self._pos = end
        return n


SNIFF_BYTES = 4 * 1024 * 1024


def upload_complete(*, session: UploadSession, actor: Actor) -> ModelVersion:
    """Assemble the chunks into the version's artifact, check the SHA-256 and the format, and
    create the version in ``validating`` (a worker validates it). A failure leaves no version
    and no artifact behind.

    Chunks sealed in place are copied into the artifact as they are; only the SHA-256 of
    chunks this process did not see arrive in order, and the few chunks the format is told
    from (``sniff_format``), are decrypted. Otherwise (parts stored as files of their own,
    or a tenant key rotated meanwhile) every chunk is decrypted and re-encrypted under the
    active key.

    One completion runs at a time (``_completion_claim``): a second request meanwhile is a 409
    at once, instead of racing the first for parts the first is taking over."""
    if session.status == UploadSession.Status.COMPLETED:
        raise _completed(session)
    _check_open(session)
    _completion_claim(session)
    try:
        return _complete_claimed(session, actor)
    except BaseException:
        # Complete it again at once (unless the database is what failed: then the lease runs
        # out, and the error raised is the first one).
        with contextlib.suppress(DatabaseError):
            UploadSession.objects.filter(pk=session.pk, status=UploadSession.Status.OPEN).update(
                completing_until=None
            )
        raise


# How long a completion holds its upload against other completions: it takes seconds (the
# sealed parts are copied, or at worst the whole file is re-encrypted at about a GB/s), so
# this matters only when the process completing it died on the way.
COMPLETION_LEASE = timedelta(minutes=10)


def _completion_claim(session: UploadSession) -> None:
    now = timezone.now()
    free = Q(completing_until__isnull=True) | Q(completing_until__lte=now)
    claimed = UploadSession.objects.filter(
        free, pk=session.pk, status=UploadSession.Status.OPEN
    ).update(completing_until=now + COMPLETION_LEASE)
    if claimed:
        return
    current = UploadSession.objects.select_related("version").filter(pk=session.pk).first()
    if current is None:
        raise Conflict("This upload no longer exists; start a new one.")
    if current.status == UploadSession.Status.COMPLETED:
        raise _completed(current)
    _check_open(current)
    raise Conflict(
        "Another request is completing this upload; GET the upload in a few seconds to see "
        "its version.",
        completing=True,
        headers={"Retry-After": "2"},
    )


def _completed(session: UploadSession) -> Conflict:
    """The 409 for completing an upload that is completed already (a retry whose first answer
    was lost, or another request's), naming its version."""
    number = session.version.number if session.version_id else None
    return Conflict(f"This upload is completed already, as version {number}.", version=number)


def _complete_claimed(session: UploadSession, actor: Actor) -> ModelVersion:
    missing = upload_missing_ranges(session)
    if missing:
        raise Conflict(
            "The upload is incomplete; send the missing ranges, then complete it again.",
            missing_ranges=[f"bytes {s}-{e}" for s, e in missing],
        )
    parts = list(session.parts.select_related("artifact__key").order_by("index"))
    try:
        sha256 = _plaintext_sha256(session, parts)
        size = sum(part.artifact.size for part in parts)
        if sha256 != session.sha256 or size != session.size:
            raise ValidationError(
                f"Checksum mismatch: the uploaded bytes hash to {sha256}, not "
                f"{session.sha256}. Re-send the chunks that changed, or start a new upload."
            )
        detected = sniff_format(_plaintext_reader(session, parts), size)
        if detected == "pickle":
            raise UnsupportedMediaType(
                "This is a pickled file (torch.save). Pickles run arbitrary code when loaded, "
                "so we do not accept them. " + EXPORT_GUIDANCE
            )
        if detected != session.format:
            what = f"a {Format(detected).label}" if detected else "not a model file we recognise"
            raise UnsupportedMediaType(
                f"The upload was declared as {Format(session.format).label} but is {what}. "
                + EXPORT_GUIDANCE
            )
        in_place = (
            bool(session.header)
            and session.key.status == TenantKey.Status.ACTIVE
            and all(part.layout == UploadPart.Layout.SEALED_IN_PLACE for part in parts)
        )
        if in_place:
            artifact = uploads.artifact_take_over(
                tenant=session.tenant,
                key=session.key,
                header=session.header,
                artifact_id=session.artifact_id,
                parts=[part.artifact for part in parts],
                sha256=sha256,
            )
        else:
            artifact = _artifact_reencrypted(session, parts, sha256)
    except Exception:
        # Aborted or expired meanwhile: its chunks were deleted under us (a part that is not
        # there), which says why, rather than the missing file.
        closed = _closed_meanwhile(session)
        if closed is not None:
            _check_open(closed)
        raise
    try:
        with transaction.atomic():
            _lock_open(session)
            now_parts = dict(session.parts.values_list("index", "artifact_id"))
            if now_parts != {part.index: part.artifact_id for part in parts}:
                raise Conflict(
                    "A chunk was sent again while the upload was being completed; complete "
                    "it again."
                )
            if in_place:
                artifact.save(force_insert=True)
            version = _version_create(
                model=session.model,
                artifact=artifact,
                format=session.format,
                label=session.label,
                architecture=session.architecture,
                architecture_config=session.architecture_config,
                example_input=session.example_input,
                actor=actor,
            )
            claimed = UploadSession.objects.filter(
                pk=session.pk, status=UploadSession.Status.OPEN
            ).update(status=UploadSession.Status.COMPLETED, version=version, completing_until=None)
            if claimed != 1:
                raise Conflict("This upload was completed by another request.")
            if in_place:  # the artifact took the parts' blobs over; drop only their rows
                UploadPart.objects.filter(session=session).delete()
                Artifact.objects.filter(pk__in=[part.artifact.pk for part in parts]).delete()
    except BaseException as error:
        if not in_place:
            store.artifact_delete(artifact)
        else:
            _closed_meanwhile(session)  # the header blob just written, if nobody will use it
        if isinstance(error, IntegrityError):  # the artifact's id: another completion won
            raise Conflict("This upload was completed by another request.") from None
        raise
    audit_record(
        action="artifact.decrypt",
        actor=actor,
        tenant=session.tenant,
        target=session,
        data={"purpose": "assemble", "chunks": len(parts), "version": version.public_id},
    )
    _digest_forget(session)
    session.refresh_from_db()
    _delete_parts(session)
    return version


def _closed_meanwhile(session: UploadSession) -> UploadSession | None:
    """The upload as it is now if it was aborted or expired while it was being completed
    (else None), after deleting the header blob the completion may have written for it: the
    abort deleted what existed then, and no completion can take the upload over any more."""
    now = UploadSession.objects.select_related("key").get(pk=session.pk)
    if now.status not in (UploadSession.Status.FAILED, UploadSession.Status.EXPIRED):
        return None
    if now.header:
        uploads.header_blob_discard(artifact_id=now.artifact_id, key=now.key)
    return now


def _plaintext_sha256(session: UploadSession, parts: list[UploadPart]) -> str:
    """The SHA-256 of the parts' plaintext. Uses this process's running digest for the
    leading chunks it still matches, and decrypts the rest to hash them."""
    with _digests_lock:
        digest = _digests.get(session.public_id)
        ids = [part.artifact.public_id for part in parts]
        if digest is not None and digest.parts == ids[: digest.next]:
            sha256, hashed = digest.sha256.copy(), digest.next
        else:
            sha256, hashed = hashlib.sha256(), 0
    for part in parts[hashed:]:
        sha256.update(_part_plaintext(session, part))
    return sha256.hexdigest()


def _plaintext_reader(
    session: UploadSession, parts: list[UploadPart]
) -> Callable[[int, int], bytes]:
    """``read(offset, length)`` of the parts' plaintext, for telling the format: only the vault
    chunks holding the bytes asked for are read and opened, and the last ones opened in each
    part are kept for the next read (the format is told from a few small reads; reading the
    whole first and last ``SNIFF_BYTES`` took half the time of completing a 16 MiB upload)."""
    starts, offset = [], 0
    for part in parts:
        starts.append(offset)
        offset += part.artifact.size
    # Spans are widened to whole vault chunks, which are read and opened anyway; a part that
    # is a vault file of its own is opened whole in any case, so it is kept whole.
    step = uploads.header_chunk_size(session.header) if session.header else 0
    opened: dict[int, tuple[int, bytes]] = {}  # part number: (where in it, plaintext)

    def part_read(number: int, lo: int, hi: int) -> bytes:
        start, data = opened.get(number, (0, b""))
        if not (start <= lo and hi <= start + len(data)):
            part = parts[number]
            size = part.artifact.size
            if step and part.layout == UploadPart.Layout.SEALED_IN_PLACE:
                start, end = lo - lo % step, min(size, -(-hi // step) * step)
            else:
                start, end = 0, size
            data = bytes(_part_plaintext(session, part, span=(start, end)))
            opened[number] = (start, data)
        return data[lo - start : hi - start]

    def read(at: int, length: int) -> bytes:
        out = bytearray()
        end = min(at + length, offset)
        number = max(0, bisect.bisect_right(starts, at) - 1)
        while at < end:
            first = starts[number]
            hi = min(end, first + parts[number].artifact.size) - first
            out += part_read(number, at - first, hi)
            at, number = first + hi, number + 1
        return bytes(out)

    return read


def _artifact_reencrypted(session: UploadSession, parts: list[UploadPart], sha256: str) -> Artifact:
    """The parts' plaintext encrypted afresh under the tenant's active key."""

    def plaintext() -> Iterator[bytes]:
        for part in parts:
            yield _part_plaintext(session, part)

    artifact = store.artifact_create(tenant=session.tenant, chunks=plaintext())
    if artifact.sha256 != sha256:  # a part changed since it was hashed
        store.artifact_delete(artifact)
        raise Conflict("The upload's chunks changed while it was completed; complete it again.")
    return artifact


def _delete_parts(session: UploadSession) -> None:
    for part in list(session.parts.select_related("artifact")):
        artifact = part.artifact
        part.delete()
        if artifact is not None:
            store.artifact_delete(artifact)
    if session.header and session.status != UploadSession.Status.COMPLETED:
        uploads.header_blob_discard(artifact_id=session.artifact_id, key=session.key)


def upload_abort(*, session: UploadSession) -> None:
    """Abandon an open upload and delete its chunks. A completed upload is a 409 (its version
    stays); one already aborted or expired has nothing left to delete."""
    aborted = UploadSession.objects.filter(pk=session.pk, status=UploadSession.Status.OPEN).update(
        status=UploadSession.Status.FAILED, failure_reason="Aborted by the client."
    )
    if not aborted:
        current = UploadSession.objects.select_related("version").filter(pk=session.pk).first()
        if current is not None and current.status == UploadSession.Status.COMPLETED:
            number = current.version.number if current.version_id else None
            raise Conflict(
                f"This upload is completed (version {number}): there is nothing to abort. "
                "Yank the version if it should not be used.",
                version=number,
            )
    _digest_forget(session)
    _delete_parts(session)


def upload_sessions_expire(*, now: datetime | None = None) -> int:
    """Expire abandoned uploads and delete their encrypted chunks (a beat task). One that a
    request is completing is left to finish."""
    now = now or timezone.now()
    expired = 0
    idle = Q(status=UploadSession.Status.OPEN) & (
        Q(completing_until__isnull=True) | Q(completing_until__lte=now)
    )
    for session in UploadSession.objects.filter(idle, expires_at__lte=now):
        if UploadSession.objects.filter(idle, pk=session.pk).update(
            status=UploadSession.Status.EXPIRED
        ):
            _delete_parts(session)
            expired += 1
    return expired


# --- versions ---------------------------------------------------------------------------------


def _version_create(
    *,
    model: Model,
    artifact: Artifact,
    format: str,
    actor: Actor,
    label: str = "",
    architecture: str = "",
    architecture_config: dict | None = None,
    example_input=None,
    parent: ModelVersion | None = None,
    operation: str = ModelVersion.Operation.UPLOAD,
    operation_params: dict | None = None,
) -> ModelVersion:
    Model.objects.filter(pk=model.pk).update(next_version=F("next_version") + 1)
    number = Model.objects.values_list("next_version", flat=True).get(pk=model.pk) - 1
    version = ModelVersion.objects.create(
        model=model,
        number=number,
        label=label,
        artifact=artifact,
        format=format,
        architecture=architecture,
        architecture_config=architecture_config or {},
        example_input=example_input,
        parent=parent,
        operation=operation,
        operation_params=operation_params or {},
        created_by=actor.user,
    )
    audit_record(
        action="version.create",
        actor=actor,
        tenant=model.tenant,
        target=version,
        data={
            "model": model.ref,
            "number": number,
            "operation": operation,
            "sha256": artifact.sha256,
            "size": artifact.size,
        },
    )
    transaction.on_commit(lambda: _enqueue_validation(version.public_id))
    return version


def version_derive(
    *,
    parent: ModelVersion,
    artifact: Artifact,
    format: str,
    operation: str,
    operation_params: dict,
    actor: Actor,
    architecture: str = "",
    architecture_config: dict | None = None,
    label: str = "",
) -> ModelVersion:
    """A new version of the parent's model made from it (quantized, pruned, distilled), with
    its lineage; validated like an upload and moved onto no alias."""
    return _version_create(
        model=parent.model,
        artifact=artifact,
        format=format,
        actor=actor,
        label=label,
        architecture=architecture,
        architecture_config=architecture_config,
        parent=parent,
        operation=operation,
        operation_params=operation_params,
    )


def _enqueue_validation(version_id: str) -> None:
    tasks.send("workers.validate_version", version_id, queue=settings.VALIDATION_QUEUE)


def version_claim_validation(*, version: ModelVersion, seconds: float) -> bool:
    """Take the validation of ``version`` for ``seconds``: False when it is no longer
    validating, or another worker holds it (its claim has not run out)."""
    now = timezone.now()
    return bool(
        ModelVersion.objects.filter(pk=version.pk, status=ModelVersion.Status.VALIDATING)
        .filter(Q(validation_claimed_until__isnull=True) | Q(validation_claimed_until__lte=now))
        .update(validation_claimed_until=now + timedelta(seconds=seconds))
    )


def version_release_validation(*, version: ModelVersion) -> None:
    """Give a claimed validation back unfinished (to be retried at once, not after the claim
    runs out)."""
    ModelVersion.objects.filter(pk=version.pk, status=ModelVersion.Status.VALIDATING).update(
        validation_claimed_until=None
    )


def version_record_validation(
    *,
    version: ModelVersion,
    ok: bool,
    reason: str = "",
    signature: dict | None = None,
    parameter_count: int | None = None,
    latency_ms: float | None = None,
    stateless: bool = False,
) -> ModelVersion:
    """What the model host found: the version becomes ``ready`` or ``failed``."""
    fields = {"validated_at": timezone.now(), "validation_claimed_until": None}
    if ok:
        fields.update(
            status=ModelVersion.Status.READY,
            signature=signature,
            parameter_count=parameter_count,
            latency_ms=latency_ms,
            stateless=stateless,
        )
    else:
        fields.update(status=ModelVersion.Status.FAILED, failure_reason=reason)
    ModelVersion.objects.filter(pk=version.pk, status=ModelVersion.Status.VALIDATING).update(
        **fields
    )
    version.refresh_from_db()
    return version


@transaction.atomic
def version_deprecate(
    *, version: ModelVersion, sunset_at: datetime, reason: str, actor: Actor
) -> ModelVersion:
    if version.status not in (ModelVersion.Status.READY, ModelVersion.Status.DEPRECATED):
        raise Conflict(f"Only a ready version can be deprecated; this one is {version.status}.")
    if version.past_sunset:  # retired for good: a later sunset would run it again
        raise Conflict(
            f"Version {version.number} reached its sunset on {version.sunset_at:%Y-%m-%d %H:%M} "
            "UTC and stays retired; publish a new version instead."
        )
    if sunset_at <= timezone.now():
        raise ValidationError({"sunset_at": "The sunset date must be in the future."})
    if version.status != ModelVersion.Status.DEPRECATED:  # a new sunset keeps the date
        version.deprecated_at = timezone.now()
    version.status = ModelVersion.Status.DEPRECATED
    version.sunset_at = sunset_at
    version.status_reason = reason
    version.save(update_fields=["status", "sunset_at", "status_reason", "deprecated_at"])
    audit_record(
        action="version.deprecate",
        actor=actor,
        tenant=version.model.tenant,
        target=version,
        data={"sunset_at": sunset_at.isoformat(), "reason": reason},
    )
    return version


@transaction.atomic
def version_yank(*, version: ModelVersion, reason: str, actor: Actor) -> ModelVersion:
    """Withdraw a published (ready or deprecated) version: it answers 410 from then on. The
    version's row is locked, as ``alias_set`` locks it, so an alias cannot move onto it
    meanwhile."""
    locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
    if locked.status not in (ModelVersion.Status.READY, ModelVersion.Status.DEPRECATED):
        raise Conflict(
            f"Version {version.number} is {locked.status}; only a ready or deprecated "
            "version can be yanked."
        )
    names = ", ".join(Alias.objects.filter(version=version).values_list("name", flat=True))
    if names:
        raise Conflict(
            f"Move the alias(es) {names} off version {version.number} before yanking it."
        )
    version.status = ModelVersion.Status.YANKED
    version.status_reason = reason
    version.save(update_fields=["status", "status_reason"])
    audit_record(
        action="version.yank",
        actor=actor,
        tenant=version.model.tenant,
        target=version,
        data={"reason": reason},
    )
    return version


# --- aliases ----------------------------------------------------------------------------------


@transaction.atomic
def alias_set(
    *, model: Model, name: str, version: ModelVersion, access: Access, actor: Actor
) -> Alias:
    """Point an alias at a ready version; moving ``production`` needs the admin role. Moving an
    alias back is how a rollback is done."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,39}", name) or name.isdigit():
        raise ValidationError(
            {
                "name": "Alias names are 1-40 lowercase letters, digits or '-', with at least "
                "one letter or '-' (a number names a version)."
            }
        )
    if name in PROTECTED_ALIASES and not access.has_scope(Scope.ADMIN):
        raise Forbidden(f"Moving '{name}' needs the admin role (the 'admin' scope).")
    if version.model_id != model.pk:
        raise ValidationError(
            {"version": f"Version {version.number} is not a version of {model.ref}."}
        )
    # Locked and read again (as version_yank locks it): a yank cannot slip in meanwhile.
    status, sunset_at = (
        ModelVersion.objects.select_for_update()
        .values_list("status", "sunset_at")
        .get(pk=version.pk)
    )
    if status not in (ModelVersion.Status.READY, ModelVersion.Status.DEPRECATED):
        raise Conflict(
            f"Version {version.number} is {status}; only a ready version can take an alias."
        )
    if status == ModelVersion.Status.DEPRECATED and sunset_at and sunset_at <= timezone.now():
        # It no longer runs: every call through the alias would be a 410.
        raise Conflict(
            f"Version {version.number} reached its sunset on {sunset_at:%Y-%m-%d %H:%M} UTC and "
            "no longer runs; point the alias at a version that does."
        )
    alias = Alias.objects.select_for_update().filter(model=model, name=name).first()
    if alias is None:
        try:
            with transaction.atomic():
                created = Alias.objects.create(model=model, name=name, version=version)
        except IntegrityError:
            # A concurrent first move made it meanwhile (PostgreSQL): move it on from there.
            alias = Alias.objects.select_for_update().get(model=model, name=name)
        else:
            return _alias_moved(created, model=model, previous=None, version=version, actor=actor)
    previous = alias.version
    if previous == version:
        return alias
    alias.version = version
    alias.updated_at = timezone.now()
    alias.save(update_fields=["version", "updated_at"])
    return _alias_moved(alias, model=model, previous=previous, version=version, actor=actor)


def _alias_moved(
    alias: Alias,
    *,
    model: Model,
    previous: ModelVersion | None,
    version: ModelVersion,
    actor: Actor,
) -> Alias:
    """Record that ``alias`` moved from ``previous`` to ``version``."""
    AliasMove.objects.create(
        alias=alias, from_version=previous, to_version=version, actor_label=actor.label
    )
    audit_record(
        action="alias.move",
        actor=actor,
        tenant=model.tenant,
        target=alias,
        data={
            "model": model.ref,
            "alias": alias.name,
            "to": version.number,
            "from": previous.number if previous else None,
        },
    )
    return alias
