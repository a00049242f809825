"""Fixtures for the client and ``mm`` tests: a live server (pytest-django's ``live_server``,
on the test database) and ``mm``, which runs the command line in this process against it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from accounts import services as accounts
from accounts.models import ALL_SCOPES
from tests.inference.conftest import (
    Classifier,
    Raises,
    export,
    ready_version,
    scripted,
    signature,
)


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)

    def error(self) -> dict:
        """The ``{"error": ...}`` line a ``--json`` run writes to stderr on failure."""
        return json.loads(self.err.strip().splitlines()[-1])["error"]


def api_key(tenant, scopes=ALL_SCOPES) -> str:
    _key, secret = accounts.api_key_create(
        tenant=tenant, name="cli", scopes=sorted(scopes), actor=accounts.SYSTEM
    )
    return secret


@pytest.fixture
def secret(tenant) -> str:
    """An all-scopes key of ``acme``."""
    return api_key(tenant)


@pytest.fixture
def mm_env(monkeypatch, tmp_path, live_server, secret) -> dict[str, str]:
    """The environment ``mm`` reads: the live server, the key, and private config and state
    directories (never the developer's own)."""
    env = {
        "MM_BASE_URL": live_server.url,
        "MM_API_KEY": secret,
        "MM_CONFIG_DIR": str(tmp_path / "config"),
        "MM_STATE_DIR": str(tmp_path / "state"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MM_MAX_RETRIES", raising=False)
    return env


@pytest.fixture
def mm(mm_env, capsys):
    """``mm(*args)`` runs the command line and returns its exit code and output."""
    from modelmarket.cli import main

    def run(*args: str) -> Run:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


@pytest.fixture
def small_chunks(settings) -> int:
    """Upload sessions in 64 KiB chunks, so a small file has several."""
    settings.UPLOAD_CHUNK_SIZE = 64 * 1024
    return settings.UPLOAD_CHUNK_SIZE


@pytest.fixture
def classifier(tenant):
    """``acme/clf``, ready: takes x of shape [-1, 4], answers [-1, 3]."""
    return ready_version(tenant, "clf", export(Classifier()), "pt2", signature(4, 3))


@pytest.fixture
def raising(tenant):
    """``acme/raises``: raises "input out of range" when the input sums over 1000."""
    return ready_version(tenant, "raises", scripted(Raises()), "torchscript", signature(4, 4))


@pytest.fixture
def model_file(tmp_path, model_files) -> Path:
    path = tmp_path / "clf.pt2"
    path.write_bytes(model_files["pt2"])
    return path
