from __future__ import annotations

import hashlib

import pytest


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def session_start(model, data: bytes, filename: str, **fields):
    """An upload session for ``data`` opened through the service (``fields``: its format,
    and an architecture for a state dict)."""
    from accounts.services import SYSTEM
    from marketplace import services

    return services.upload_session_create(
        model=model, filename=filename, size=len(data), sha256=sha256(data), actor=SYSTEM, **fields
    )


def put_range(api, upload: dict, data: bytes, start: int, end: int, *, body: bytes | None = None):
    """PUT bytes ``start``..``end`` (inclusive) of ``data`` to an upload session, as a client
    sends a chunk; ``body`` replaces the bytes sent (a chunk cut off on the way)."""
    return api.generic(
        "PUT",
        upload["upload_url"],
        data[start : end + 1] if body is None else body,
        content_type="application/octet-stream",
        HTTP_CONTENT_RANGE=f"bytes {start}-{end}/{len(data)}",
    )


def put_all(api, upload: dict, data: bytes) -> list[int]:
    """Send ``data`` in the session's chunk size, in order; the status of each PUT."""
    size = upload["chunk_size"]
    return [
        put_range(api, upload, data, start, min(start + size, len(data)) - 1).status_code
        for start in range(0, len(data), size)
    ]


def upload_version(api, ref: str, data: bytes, fmt: str, filename: str):
    """Create an upload session for ``ref`` (owner/name), send every chunk and complete it:
    the completion's response."""
    upload = api.post(
        f"/api/v1/models/{ref}/uploads",
        {"filename": filename, "format": fmt, "size": len(data), "sha256": sha256(data)},
        format="json",
    ).json()
    assert set(put_all(api, upload, data)) == {200}
    return api.post(f"{upload['upload_url']}/complete")


@pytest.fixture
def opened_spans(monkeypatch) -> list[tuple[int, tuple[int, int] | None]]:
    """(chunk index, span) of each part completion decrypts: a span, or None for the whole
    part (to hash it)."""
    from marketplace import services

    opened: list[tuple[int, tuple[int, int] | None]] = []
    real = services._part_plaintext

    def spy(session, part, span=None):
        opened.append((part.index, span))
        return real(session, part, span)

    monkeypatch.setattr(services, "_part_plaintext", spy)
    return opened
