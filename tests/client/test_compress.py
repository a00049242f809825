"""Compression from the command line, run by a live worker in a sandboxed model host."""

from __future__ import annotations

import pytest
from safetensors.torch import save

from inference.runtime.architectures import MLP
from tests.compression.conftest import ready_version, signature

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
CONFIG = {"in_features": 16, "hidden": [32], "classes": 4}


@pytest.fixture
def small(tenant):
    return ready_version(
        tenant,
        "small",
        save(MLP(**CONFIG).state_dict()),
        sig=signature([16], 4),
        architecture="mlp",
        config=CONFIG,
    )


def test_compress_watch_report_and_promote(celery_worker_process, mm, small):
    watched = mm("compress", "acme/small:1", "--method", "int8", "--watch", "--json")

    assert watched.code == 0, watched.err
    job = watched.json()
    assert job["status"] == "succeeded", job["error"]
    assert job["params"] == {"scheme": "dynamic_int8"}
    assert job["result"]["version"] == 2 and job["result"]["parent"] == 1
    assert job["report"]["fidelity"]["agreement"] > 0.5

    shown = mm("job", job["id"])
    assert "fidelity  agreement" in shown.out and "x smaller" in shown.out

    promoted = mm("promote", job["id"], "production", "--min-agreement", "0.5")
    assert promoted.code == 0, promoted.err
    assert "acme/small:production → version 2" in promoted.out


def test_a_method_that_cannot_apply_is_exit_5_with_the_reason(mm, tenant, model_files):
    ready_version(tenant, "graph", model_files["pt2"], sig=signature([4], 3), format="pt2")

    run = mm("compress", "acme/graph:1", "--method", "int8")

    assert run.code == 5
    assert "needs the model's modules" in run.err and "(HTTP 422)" in run.err


def test_a_report_with_figures_it_could_not_measure_shows_them_as_n_a_with_the_warning(
    mm, tenant, small
):
    from inference.models import CompressionJob

    warning = "The outputs include infinities or NaN, so cosine cannot be measured (null)."
    job = CompressionJob.objects.create(
        tenant=tenant,
        model=small.model,
        version=small,
        method="quantize",
        params={"scheme": "fp16"},
        status=CompressionJob.Status.SUCCEEDED,
        report={
            "fidelity": {"agreement": 0.25, "cosine": None, "mean_abs_error": None},
            "warnings": [warning],
        },
    )

    shown = mm("job", job.public_id)

    assert shown.code == 0, shown.err
    assert "agreement 25.00%, cosine n/a, mean abs error n/a" in shown.out
    assert warning in " ".join(shown.out.split())


@pytest.mark.parametrize(
    ("child_size", "ratio", "said", "not_said"),
    [
        # An fp16 cast of a tiny graph grew from 7.5 to 11.5 KiB and mm said "(0.65x smaller)".
        (1600, 0.625, "(1.60x larger)", "smaller"),
        # A ratio of 1 read "(1.00x smaller)".
        (1000, 1.0, "(the same size)", "1.00x"),
    ],
)
def test_a_result_not_smaller_than_its_parent_is_not_called_smaller(
    mm, tenant, small, child_size, ratio, said, not_said
):
    from inference.models import CompressionJob

    figures = {"size_bytes": 1000, "latency_b1_ms": 1.0, "latency_b32_ms": 2.0}
    job = CompressionJob.objects.create(
        tenant=tenant,
        model=small.model,
        version=small,
        method="quantize",
        params={"scheme": "fp16"},
        status=CompressionJob.Status.SUCCEEDED,
        report={
            "parent": figures,
            "child": {**figures, "size_bytes": child_size},
            "size_ratio": ratio,
        },
    )

    shown = mm("job", job.public_id)

    assert shown.code == 0, shown.err
    assert said in shown.out and not_said not in shown.out


def test_showing_a_cancelled_job_is_not_a_failure(mm, small):
    """It exited 7 with "Error: Compression job job_… cancelled: " and no reason."""
    from inference.models import CompressionJob

    job = CompressionJob.objects.create(  # as a cancellation leaves it (no worker races this)
        tenant=small.model.tenant,
        model=small.model,
        version=small,
        method="quantize",
        params={"scheme": "fp16"},
        status="cancelled",
    )

    shown = mm("job", job.public_id)

    assert shown.code == 0, shown.err
    assert "cancelled" in shown.out
