"""A compression job's task delivered twice: a job running in a live worker is left alone; a
job whose worker died (its heartbeat stopped) is claimed again, up to three attempts."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from inference import compression_services as jobs
from inference.models import CompressionJob
from tests.compression.conftest import queued

pytestmark = pytest.mark.django_db


@pytest.fixture
def job(tenant, mlp_version) -> CompressionJob:
    return queued(tenant, mlp_version, "quantize", {"scheme": "dynamic_int8"})


def silent_for(job: CompressionJob, minutes: float) -> None:
    CompressionJob.objects.filter(pk=job.pk).update(
        heartbeat_at=timezone.now() - timedelta(minutes=minutes)
    )


def test_a_job_running_in_a_live_worker_is_not_claimed_again(job):
    assert jobs.job_claim(job)
    assert jobs.job_heartbeat(job)

    assert not jobs.job_claim(job)  # the redelivered task does nothing
    assert CompressionJob.objects.get(pk=job.pk).attempts == 1


def test_a_job_whose_worker_died_is_claimed_again_then_failed_after_three_losses(job):
    assert jobs.job_claim(job)
    for attempt in (2, 3):
        silent_for(job, 3)
        assert jobs.job_claim(job)
        assert CompressionJob.objects.get(pk=job.pk).attempts == attempt

    silent_for(job, 3)
    assert not jobs.job_claim(job)

    lost = CompressionJob.objects.get(pk=job.pk)
    assert lost.status == CompressionJob.Status.FAILED
    assert "lost 3 times" in lost.error


def test_a_job_claimed_again_starts_its_progress_over(job):
    """The lost attempt's 80 % showed until the new one reported."""
    assert jobs.job_claim(job)
    CompressionJob.objects.filter(pk=job.pk).update(
        phase="training", percent=80.0, eta_seconds=12.0, loss=0.4
    )
    silent_for(job, 3)

    assert jobs.job_claim(job)

    again = CompressionJob.objects.get(pk=job.pk)
    assert (again.phase, again.percent, again.eta_seconds, again.loss) == (
        "starting",
        0,
        None,
        None,
    )


def test_a_worker_whose_job_was_claimed_again_cannot_fail_or_finish_it(job, tenant):
    """Its heartbeat had stopped (a long pause, a network split) and another worker took the
    job over; when the first one comes back, what it sends changes nothing."""
    from accounts import services as accounts
    from marketplace.vault.store import artifact_create

    first = CompressionJob.objects.get(pk=job.pk)
    assert jobs.job_claim(first)
    silent_for(first, 3)
    second = CompressionJob.objects.get(pk=job.pk)
    assert jobs.job_claim(second)

    stale_heartbeat = jobs.job_heartbeat(first)
    stale_progress = jobs.job_progress(first, phase="stale", percent=99.0)
    stale_fail = jobs.job_fail(first, error="the first worker's late failure")
    stale_result = jobs.job_succeed(
        first,
        artifact=artifact_create(tenant=tenant, chunks=[b"stale"]),
        format="safetensors",
        architecture="mlp",
        architecture_config={},
        report={},
        compute_seconds=1.0,
        actor=accounts.SYSTEM,
    )

    assert (stale_heartbeat, stale_progress, stale_fail, stale_result) == (False,) * 3 + (None,)
    assert jobs.job_heartbeat(second)  # the worker running it now carries on
    now = CompressionJob.objects.get(pk=job.pk)
    assert (now.status, now.attempts, now.error) == (CompressionJob.Status.RUNNING, 2, "")
    assert now.phase != "stale"


def test_a_cancelled_job_is_never_claimed(job):
    CompressionJob.objects.filter(pk=job.pk).update(status=CompressionJob.Status.CANCELLED)

    assert not jobs.job_claim(job)
    assert not jobs.job_heartbeat(job)


def test_an_operator_retry_of_a_job_lost_three_times_can_be_claimed_again(job):
    from accounts import services as accounts
    from inference import operations

    jobs.job_claim(job)
    for _ in range(3):
        silent_for(job, 3)
        jobs.job_claim(job)
    assert CompressionJob.objects.get(pk=job.pk).status == CompressionJob.Status.FAILED

    operations.job_retry(job=job, actor=accounts.SYSTEM)

    assert jobs.job_claim(job)
    assert CompressionJob.objects.get(pk=job.pk).attempts == 1


def test_an_operator_cannot_retry_a_job_whose_version_was_yanked(job):
    from accounts import services as accounts
    from accounts.exceptions import Conflict
    from inference import operations
    from marketplace import services as registry

    jobs.job_claim(job)
    jobs.job_fail(job, error="The model raised an error.")
    registry.version_yank(version=job.version, reason="leaked PII", actor=accounts.SYSTEM)

    with pytest.raises(Conflict, match="version 1 of acme/mlp is yanked"):
        operations.job_retry(job=job, actor=accounts.SYSTEM)

    assert CompressionJob.objects.get(pk=job.pk).status == CompressionJob.Status.FAILED
