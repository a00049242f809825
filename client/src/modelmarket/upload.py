"""Resumable, chunked, verified uploads.

The file's SHA-256 is computed first (the server needs it up front and checks it when the
upload completes). The upload session's id is kept in a small state file named after that
SHA-256, so a later run for the same file, after a dropped connection or a killed process,
asks the server which byte ranges it already holds and sends only the rest. The version the
server makes must report the same SHA-256 and size, or the push fails.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelmarket._http import Transport
from modelmarket.config import write_private_json
from modelmarket.errors import (
    ChecksumMismatch,
    Conflict,
    InvalidRequest,
    NotFound,
    UnsupportedFormat,
    UsageError,
)
from modelmarket.types import PushResult, Upload, Version

# ``progress(phase, done, total)``: phase is "hash" (reading the file to checksum it) or
# "upload" (bytes the server holds, counting those stored by an earlier run).
Progress = Callable[[str, int, int], None]
READ_BLOCK = 1024 * 1024


def _quiet(phase: str, done: int, total: int) -> None:
    pass


def file_sha256(path: Path, progress: Progress = _quiet) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    done = 0
    with path.open("rb") as handle:
        while block := handle.read(READ_BLOCK):
            digest.update(block)
            done += len(block)
            progress("hash", done, size)
    return digest.hexdigest()


def detect_format(path: Path) -> str | None:
    """``pt2``, ``torchscript`` or ``safetensors`` from the file's contents, as the server will
    see it; None when unknown. A pickle (``torch.save``) is refused here, before any upload:
    the server refuses it too, as it could run code when loaded."""
    with path.open("rb") as handle:
        head = handle.read(16)
    if len(head) >= 10 and head[8:9] == b"{":
        return "safetensors"
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        roots = {name.split("/", 1)[1] if "/" in name else name for name in names}
        if "archive_format" in roots:
            return "pt2"
        if any(r.startswith("code/") for r in roots) and "constants.pkl" in roots:
            return "torchscript"
        if "data.pkl" in roots:
            raise UsageError(_PICKLE)
        return None
    if head[:1] == b"\x80":
        raise UsageError(_PICKLE)
    return None


_PICKLE = (
    "This is a pickled model (torch.save), which could run code when loaded, so Modelmarket "
    "does not accept it. Export it with torch.export.save (.pt2), torch.jit.save "
    "(TorchScript) or safetensors."
)


class UploadState:
    """The sessions in progress for one file, by server and model: ``<sha256>.json``."""

    def __init__(self, directory: Path, sha256: str):
        self.path = directory / "uploads" / f"{sha256}.json"

    def _read(self) -> dict[str, Any]:
        import json

        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> dict[str, Any] | None:
        return self._read().get(key)

    def put(self, key: str, entry: dict[str, Any]) -> None:
        data = self._read()
        data[key] = entry
        write_private_json(self.path, data)

    def drop(self, key: str) -> None:
        data = self._read()
        if data.pop(key, None) is None:
            return
        if data:
            write_private_json(self.path, data)
        else:
            self.path.unlink(missing_ok=True)


def _expired(upload: Upload) -> bool:
    text = upload.raw.get("expires_at")
    if not text:
        return False
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return when <= datetime.now(UTC)


def _chunks(upload: Upload) -> list[tuple[int, int]]:
    """The missing chunks, as inclusive byte ranges aligned to the session's chunk size."""
    size, step = upload.size, upload.chunk_size
    wanted: set[int] = set()
    for first, last in upload.missing:
        wanted.update(range(first // step, last // step + 1))
    return [(i * step, min((i + 1) * step, size) - 1) for i in sorted(wanted)]


class _Reader:
    """Reads byte ranges of the file from several threads at once."""

    def __init__(self, path: Path):
        self._handle = path.open("rb")
        self._lock = threading.Lock()

    def read(self, start: int, end: int) -> bytes:
        length = end - start + 1
        if hasattr(os, "pread"):
            data = os.pread(self._handle.fileno(), length, start)
        else:  # pragma: no cover - Windows
            with self._lock:
                self._handle.seek(start)
                data = self._handle.read(length)
        if len(data) != length:
            raise UsageError("The file got shorter while it was being uploaded.")
        return data

    def close(self) -> None:
        self._handle.close()


def push_file(
    transport: Transport,
    *,
    ref: str,
    path: Path,
    format: str,
    state_dir: Path,
    label: str = "",
    architecture: str = "",
    architecture_config: dict[str, Any] | None = None,
    example_input: Any = None,
    sha256: str | None = None,
    workers: int = 4,
    progress: Progress = _quiet,
) -> PushResult:
    """Upload ``path`` as a new version of ``ref`` (``owner/name``), resuming an earlier
    session for the same file if the server still holds it. Returns when the version exists
    (status ``validating``); it does not wait for validation."""
    started = time.monotonic()
    owner, name = ref.split("/", 1)
    size = path.stat().st_size
    if size == 0:
        raise UsageError(f"{path} is empty.")
    sha256 = sha256 or file_sha256(path, progress)
    state = UploadState(state_dir, sha256)
    key = f"{transport.base_url} {ref}"

    upload = _resume(transport, state, key, sha256, size)
    if upload is not None and upload.status == "completed" and upload.version:
        # An earlier run completed it and was killed before it could forget the session.
        version = Version.from_json(
            transport.json("GET", f"/api/v1/models/{owner}/{name}/versions/{upload.version}")
        )
        state.drop(key)
        _verify(version, sha256, size)
        return PushResult(
            version, ref, upload.id, sha256, size, 0, size, time.monotonic() - started
        )
    if upload is None:
        body: dict[str, Any] = {
            "filename": path.name,
            "format": format,
            "size": size,
            "sha256": sha256,
            "label": label,
        }
        if architecture:
            body["architecture"] = architecture
            body["architecture_config"] = architecture_config or {}
        if example_input is not None:
            body["example_input"] = example_input
        upload = Upload.from_json(
            transport.json(
                "POST",
                f"/api/v1/models/{owner}/{name}/uploads",
                json=body,
                repeatable=True,  # a second session is harmless: it expires
            )
        )
        state.put(
            key,
            {
                "upload_id": upload.id,
                "upload_url": upload.upload_url,
                "model": ref,
                "file": str(path.resolve()),
                "size": size,
                "created": datetime.now(UTC).isoformat(),
            },
        )
    resumed = upload.received_bytes
    progress("upload", resumed, size)

    reader = _Reader(path)
    sent = 0
    try:
        for _round in range(3):
            sent += _send(transport, upload, reader, workers, progress)
            try:
                data = _complete(transport, upload)
                break
            except Conflict as exc:
                missing = exc.body.get("missing_ranges")
                if missing:  # a chunk did not land: send what is missing, then again
                    upload = Upload.from_json(transport.json("GET", upload.upload_url))
                    continue
                # Completed by our own earlier attempt whose answer was lost on the way?
                current = Upload.from_json(transport.json("GET", upload.upload_url))
                if current.status == "completed" and current.version:
                    data = transport.json(
                        "GET", f"/api/v1/models/{owner}/{name}/versions/{current.version}"
                    )
                    break
                state.drop(key)
                raise
            except (InvalidRequest, UnsupportedFormat):
                state.drop(key)  # a checksum or format refusal: the session cannot finish
                raise
        else:
            raise Conflict(409, "The server kept reporting missing chunks; try again.")
    finally:
        reader.close()

    version = Version.from_json(data)
    state.drop(key)
    _verify(version, sha256, size)
    return PushResult(
        version, ref, upload.id, sha256, size, sent, resumed, time.monotonic() - started
    )


# How long to wait for an earlier attempt of ours that the server is still completing.
COMPLETING_WAIT_S = 600.0


def _complete(transport: Transport, upload: Upload) -> dict:
    """POST the completion. Repeatable: a repeat of a complete that worked is a 409, resolved
    by the caller. One that meets our own earlier attempt still being completed (a retry after
    a lost answer; 409 with ``completing``) waits and asks again, rather than taking the upload
    for failed and dropping it from under that attempt."""
    deadline = time.monotonic() + COMPLETING_WAIT_S
    while True:
        try:
            return transport.json("POST", f"{upload.upload_url}/complete", repeatable=True)
        except Conflict as exc:
            if not exc.body.get("completing") or time.monotonic() > deadline:
                raise
            time.sleep(2.0)


def _resume(
    transport: Transport, state: UploadState, key: str, sha256: str, size: int
) -> Upload | None:
    entry = state.get(key)
    if not entry:
        return None
    try:
        upload = Upload.from_json(transport.json("GET", entry["upload_url"]))
    except NotFound:
        state.drop(key)
        return None
    if upload.sha256 != sha256 or upload.size != size:
        state.drop(key)
        return None
    if upload.status == "completed":
        return upload
    if upload.status != "open" or _expired(upload):
        state.drop(key)
        return None
    return upload


def _send(
    transport: Transport, upload: Upload, reader: _Reader, workers: int, progress: Progress
) -> int:
    """PUT every missing chunk, ``workers`` at a time. Returns the bytes sent."""
    chunks = _chunks(upload)
    lock = threading.Lock()
    done = [upload.received_bytes]

    def put(start: int, end: int) -> int:
        data = reader.read(start, end)
        headers = {
            "Content-Range": f"bytes {start}-{end}/{upload.size}",
            "Content-Type": "application/octet-stream",
        }
        try:
            transport.request("PUT", upload.upload_url, content=data, headers=headers)
        except Conflict as exc:
            if "twice at once" not in exc.detail:
                raise
            time.sleep(0.5)  # another sender held this chunk; re-sending replaces it
            transport.request("PUT", upload.upload_url, content=data, headers=headers)
        with lock:
            done[0] += len(data)
            progress("upload", min(done[0], upload.size), upload.size)
        return len(data)

    if not chunks:
        return 0
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(chunks))))
    try:
        futures = [pool.submit(put, start, end) for start, end in chunks]
        finished, _pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in finished:
            if future.exception() is not None:
                raise future.exception()
        return sum(f.result() for f in futures)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _verify(version: Version, sha256: str, size: int) -> None:
    if version.sha256 != sha256 or version.size != size:
        raise ChecksumMismatch(
            f"The server stored version {version.number} with SHA-256 {version.sha256} "
            f"({version.size} bytes), but the file's is {sha256} ({size} bytes)."
        )
