"""The long-lived processes take what they load at start out of the cyclic garbage
collector's full passes (``gc.freeze``). A full pass walks every tracked object while the
process's other threads wait: about 80 ms in the web process and 70 ms in a worker on our
reference VM, and 200 ms in a model host, whose pass stopped the prediction it fell in.

Each check runs in a fresh interpreter, started the way the server starts the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _python(code: str) -> dict:
    done = subprocess.run(  # noqa: S603 - our own interpreter and a fixed script
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_the_web_process_loads_every_view_and_freezes_it_before_its_first_request():
    seen = _python(
        "import gc, json, sys\n"
        "import config.wsgi\n"  # what gunicorn imports in each worker
        "print(json.dumps({'frozen': gc.get_freeze_count(), 'left': len(gc.get_objects()),"
        " 'views': 'marketplace.api.registry' in sys.modules"
        " and 'inference.api.predictions' in sys.modules}))"
    )

    assert seen["views"]  # imported before the freeze, not by the first request
    assert seen["frozen"] > 50_000
    assert seen["left"] < seen["frozen"] / 20  # what a full pass still walks


def test_a_worker_freezes_what_it_loaded_once_it_is_ready():
    seen = _python(
        "import gc, json\n"
        "import django; django.setup()\n"
        "from celery.signals import worker_ready\n"
        "from config import celery_app\n"
        "celery_app.loader.import_default_modules()\n"  # as the worker does: the tasks
        "from workers import tasks\n"
        "receivers = worker_ready._live_receivers(None)\n"
        "tasks.freeze_loaded_objects()\n"
        "print(json.dumps({'last': receivers[-1] is tasks.freeze_loaded_objects,"
        " 'frozen': gc.get_freeze_count(), 'left': len(gc.get_objects())}))"
    )

    assert seen["last"]  # after the handlers that start hosts and the fast path
    assert seen["frozen"] > 50_000
    assert seen["left"] < seen["frozen"] / 20
