from __future__ import annotations

import pytest

from workers.tasks import ping

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_task_runs_in_a_real_worker_process(celery_worker_process):
    result = ping.delay("hello").get(timeout=30)
    assert result["echo"] == "hello" and result["hostname"] and result["request_id"] is None
    # Executed by the worker process we started, not in this test process.
    assert result["pid"] == celery_worker_process.pid


def _wait_for(predicate, timeout: float = 120):
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the worker"
        time.sleep(0.25)


def test_uploaded_version_is_validated_by_the_worker(celery_worker_process, api, model_files):
    from marketplace.models import ModelVersion
    from tests.marketplace.conftest import sha256

    data = model_files["pt2"]
    assert api.post("/api/v1/models", {"name": "clf"}, format="json").status_code == 201
    upload = api.post(
        "/api/v1/models/acme/clf/uploads",
        {
            "filename": "clf.pt2",
            "format": "pt2",
            "size": len(data),
            "sha256": sha256(data),
        },
        format="json",
    ).json()
    size = upload["chunk_size"]
    for start in range(0, len(data), size):
        end = min(start + size, len(data)) - 1
        api.generic(
            "PUT",
            upload["upload_url"],
            data[start : end + 1],
            content_type="application/octet-stream",
            HTTP_CONTENT_RANGE=f"bytes {start}-{end}/{len(data)}",
        )
    version = api.post(f"{upload['upload_url']}/complete").json()
    assert version["status"] == "validating"

    _wait_for(lambda: ModelVersion.objects.get(public_id=version["id"]).status != "validating")

    ready = api.get("/api/v1/models/acme/clf/versions/1").json()
    assert ready["status"] == "ready", ready["failure_reason"]
    assert ready["signature"]["inputs"][0]["shape"][1:] == [4]
    assert ready["parameter_count"] == 4 * 8 + 8 + 8 * 3 + 3
