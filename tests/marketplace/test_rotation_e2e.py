from __future__ import annotations

import time
from io import StringIO

import pytest
from django.core.management import call_command

from marketplace.models import Artifact, TenantKey
from marketplace.vault.store import artifact_create, artifact_read

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_tenant_key_rotation_runs_as_a_background_job(celery_worker_process, tenant):
    datas = [bytes([i]) * (300_000 + i) for i in range(3)]
    artifacts = [artifact_create(tenant=tenant, chunks=[d]) for d in datas]
    old_key = TenantKey.objects.get(tenant=tenant)

    out = StringIO()
    call_command("rotate_tenant_key", "acme", stdout=out)
    assert "queued" in out.getvalue()

    deadline = time.monotonic() + 60
    while TenantKey.objects.get(pk=old_key.pk).status != TenantKey.Status.DESTROYED:
        assert time.monotonic() < deadline, "the worker did not finish the rotation"
        time.sleep(0.2)
    new_key = TenantKey.objects.get(tenant=tenant, status=TenantKey.Status.ACTIVE)
    assert set(Artifact.objects.values_list("key", flat=True)) == {new_key.pk}
    for artifact, data in zip(artifacts, datas, strict=True):
        artifact.refresh_from_db()
        assert artifact_read(artifact=artifact, purpose="predict") == data
