"""Request ids from the web request to the worker's task and the model host's output, and the
JSON log format."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
import warnings

import pytest
import torch
from torch import nn

from config.logs import JsonFormatter, RequestIdFilter, bind_request_id, unbind_request_id

pytestmark = pytest.mark.django_db


def test_response_carries_the_callers_request_id(client):
    response = client.get("/healthz", HTTP_X_REQUEST_ID="lb-7f3a.1")
    assert response["X-Request-ID"] == "lb-7f3a.1"


def test_a_missing_or_implausible_request_id_is_replaced_by_a_new_one(client):
    made = client.get("/healthz")["X-Request-ID"]
    replaced = client.get("/healthz", HTTP_X_REQUEST_ID="x" * 300)["X-Request-ID"]
    assert len(made) == 32 and len(replaced) == 32 and made != replaced


def test_djangos_own_request_log_names_the_request_id(client):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.addFilter(RequestIdFilter())
    handler.emit = records.append
    log = logging.getLogger("django.request")
    log.addHandler(handler)
    try:
        client.get("/no-such-page", HTTP_X_REQUEST_ID="req-404")
    finally:
        log.removeHandler(handler)
    (record,) = records
    assert record.getMessage() == "Not Found: /no-such-page" and record.request_id == "req-404"


def test_json_lines_carry_the_request_id_and_extra_fields():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    log = logging.getLogger("tests.json")
    log.addHandler(handler)
    token = bind_request_id("req-42")
    try:
        log.warning("payment for %s failed", "inv_1", extra={"invoice": "inv_1"})
        try:
            raise ValueError("declined")
        except ValueError:
            log.exception("collect failed")
    finally:
        unbind_request_id(token)
        log.removeHandler(handler)

    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "payment for inv_1 failed" and first["level"] == "WARNING"
    assert first["request_id"] == "req-42" and first["invoice"] == "inv_1"
    assert "ValueError: declined" in second["exception"]


def test_mm_log_format_json_switches_the_process_to_json_lines():
    code = (
        "import django, logging; django.setup(); "
        "logging.getLogger('modelmarket').warning('hello %s', 'ops')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "MM_LOG_FORMAT": "json", "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert line["message"] == "hello ops" and line["logger"] == "modelmarket"
    assert line["request_id"] == "-"


class Chatty(nn.Module):
    def forward(self, x):
        # A warning reaches the host's stderr at once (TorchScript's print is buffered).
        warnings.warn("hello from the model")  # noqa: B028 - TorchScript takes no stacklevel
        return x * 2


def test_model_host_output_is_logged_under_the_request_it_served(caplog):
    import io as _io

    from inference.runtime import codec
    from workers.pool import new_host

    buffer = _io.BytesIO()
    torch.jit.save(torch.jit.script(Chatty()), buffer)
    signature = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 2]}],
    }
    caplog.set_level(logging.INFO, logger="workers.host.output")
    host = new_host("cpu").start()
    try:
        host.request(
            {"op": "load", "format": "torchscript", "device": "cpu", "signature": signature},
            buffer.getvalue(),
            timeout=60,
        )
        host.request(
            {"op": "predict", "request_id": "req-host-1"},
            codec.encode({"x": torch.ones(1, 2)}),
            timeout=30,
        )
        deadline = time.monotonic() + 10
        while not [r for r in caplog.records if "hello from the model" in r.getMessage()]:
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            time.sleep(0.05)
    finally:
        host.kill()
    (line,) = [r for r in caplog.records if "hello from the model" in r.getMessage()]
    assert line.name == "workers.host.output" and line.request_id == "req-host-1"
    assert line.host_pid == host.proc.pid


def test_a_model_host_killed_mid_request_is_counted_as_a_restart():
    import signal
    import threading

    from config.metrics import HOST_RESTARTS
    from inference.runtime import codec
    from tests.inference.conftest import scripted, signature
    from tests.workers.test_host_eviction import Spin
    from workers.host import HostFailure
    from workers.pool import new_host

    before = HOST_RESTARTS.labels("crash")._value.get()
    host = new_host("cpu").start()
    host.request(
        {"op": "load", "format": "torchscript", "device": "cpu", "signature": signature(4, 4)},
        scripted(Spin()),
        timeout=60,
    )
    threading.Timer(0.3, os.kill, (host.proc.pid, signal.SIGKILL)).start()
    with pytest.raises(HostFailure, match="killed by signal"):
        # Busy for as long as it takes to be killed (Slow's second ran out first on a fast CPU).
        x = torch.full((1, 4), 1e9)
        host.request({"op": "predict"}, codec.encode({"x": x}), timeout=30)
    assert HOST_RESTARTS.labels("crash")._value.get() == before + 1


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_request_id_travels_with_the_task_to_the_worker(celery_worker_process):
    from workers.tasks import ping

    token = bind_request_id("req-e2e-1")
    try:
        result = ping.delay("hello").get(timeout=30)
    finally:
        unbind_request_id(token)
    assert result["request_id"] == "req-e2e-1" and result["pid"] == celery_worker_process.pid
