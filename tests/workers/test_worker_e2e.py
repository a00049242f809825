from __future__ import annotations

import pytest

from workers.tasks import ping

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_task_runs_in_a_real_worker_process(celery_worker_process):
    result = ping.delay("hello").get(timeout=30)
    assert result == {"echo": "hello", "hostname": result["hostname"], "pid": result["pid"]}
    # Executed by a child of the worker we started, not in this test process.
    import psutil

    assert psutil.Process(result["pid"]).ppid() == celery_worker_process.pid
