"""``make run``: the web server, a Celery worker and beat in one foreground command.

Ctrl-C (or SIGTERM) stops all of them, and the embedded Redis if this command started it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.conf import settings

    from config import embedded

    python = sys.executable
    address = os.environ.get("MM_ADDRESS", "127.0.0.1:8000")
    env = {**os.environ, "REDIS_URL": settings.REDIS_URL, "PYTHONUNBUFFERED": "1"}
    commands = {
        "web": [python, "manage.py", "runserver", address],
        # Threads, not processes: concurrent predictions for one model meet in the same
        # worker process and are batched; the models themselves run in sandboxed hosts.
        "worker": [
            *(python, "-m", "celery", "-A", "config", "worker", "-Q", "default,cpu"),
            *("--pool", "threads", "--concurrency", os.environ.get("MM_WORKER_CONCURRENCY", "16")),
            *("--loglevel", "INFO", "-n", "cpu@%h"),
        ],
        "beat": [
            python,
            "-m",
            "celery",
            "-A",
            "config",
            "beat",
            "--loglevel",
            "INFO",
            "--schedule",
            str(settings.VAR_DIR / "celerybeat-schedule"),
        ],
    }
    procs = {name: subprocess.Popen(cmd, cwd=ROOT, env=env) for name, cmd in commands.items()}  # noqa: S603
    print(
        f"Modelmarket is running at http://{address}/ (Ctrl-C stops web, worker and beat).",
        flush=True,
    )

    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    while not stopping:
        for name, proc in procs.items():
            if proc.poll() is not None:
                print(
                    f"{name} exited with status {proc.returncode}; stopping the rest.", flush=True
                )
                exit_code = proc.returncode or 1
                stopping = True
                break
        time.sleep(0.5)
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    if settings.EMBEDDED_REDIS:
        embedded.stop_redis(settings.VAR_DIR / "redis")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
