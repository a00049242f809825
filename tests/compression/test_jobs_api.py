"""The compression jobs API without a worker: who may start a job, which methods and
parameters are refused up front (and why), cancel, metering and promotion rules."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from accounts import services as accounts
from accounts.models import AuditEvent
from billing.models import UsageRecord
from inference import compression_services as jobs
from inference.models import CompressionJob
from marketplace import services as registry
from marketplace.models import Listing, ModelVersion
from marketplace.vault.store import artifact_create
from tests.compression.conftest import ready_version, signature

pytestmark = pytest.mark.django_db
URL = "/api/v1/compression-jobs"


def start(api, method: str, params: dict | None = None, model: str = "acme/mlp", **extra):
    body = {"model": model, "version": "1", "method": method, "params": params or {}, **extra}
    return api.post(URL, body, format="json")


def test_owner_queues_a_job_with_normalised_parameters(api, mlp_version):
    response = start(api, "quantize")

    assert response.status_code == 201, response.json()
    job = response.json()
    assert job["id"].startswith("job_")
    assert job["status"] == "queued"
    assert job["params"] == {"scheme": "dynamic_int8"}
    assert job["progress"] == {"phase": "", "percent": 0.0, "eta_seconds": None, "loss": None}
    assert api.get(f"{URL}/{job['id']}").json()["id"] == job["id"]
    assert [j["id"] for j in api.get(URL).json()["results"]] == [job["id"]]


def test_unknown_method_is_a_400_as_any_typo(api, mlp_version):
    # It was a 422, which says the method cannot apply to this version (decision 0007).
    response = start(api, "sparsify")

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert (
        "Unknown method 'sparsify'; choose one of quantize, prune, distill."
        in (response.json()["detail"])
    )
    assert list(response.json()["errors"]) == ["method"]  # it was said under "params"


def test_quantizing_an_export_archive_is_refused_with_the_reason(api, tenant, model_files):
    ready_version(tenant, "graph", model_files["pt2"], sig=signature([4], 3), format="pt2")

    response = start(api, "quantize", model="acme/graph")

    assert response.status_code == 422
    assert "needs the model's modules" in response.json()["detail"]


def test_an_export_archive_takes_only_the_half_precision_casts(api, tenant, model_files):
    ready_version(tenant, "graph", model_files["pt2"], sig=signature([4], 3), format="pt2")

    cast = start(api, "quantize", {"scheme": "bf16"}, model="acme/graph")
    pruned = start(api, "prune", {"kind": "unstructured"}, model="acme/graph")

    assert cast.status_code == 201 and cast.json()["params"] == {"scheme": "bf16"}
    assert pruned.status_code == 422 and "fp16 and bf16 casts" in pruned.json()["detail"]


def test_structured_pruning_of_a_resnet_is_refused_with_the_reason(api, tenant):
    from safetensors.torch import save

    from inference.runtime.architectures import ResNet

    ready_version(
        tenant,
        "res",
        save(ResNet(width=8, stages=1, blocks=1).state_dict()),
        sig=signature([3, 32, 32]),
        architecture="resnet",
        config={"width": 8, "stages": 1, "blocks": 1},
    )

    response = start(api, "prune", {"kind": "structured"}, model="acme/res")

    assert response.status_code == 422
    assert "use kind 'unstructured'" in response.json()["detail"]


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("quantize", {"scheme": "int4"}, "scheme must be one of"),
        ("prune", {"amount": 1.5}, "amount must be between"),
        ("prune", {"amont": 0.5}, "Unknown parameter(s) amont"),
        ("distill", {"epochs": 3}, "distill needs a student"),
        ("distill", {"student": {"architecture": "mlp"}, "hard_weight": 0.5}, "needs data"),
        ("distill", {"student": {"architecture": "mlp", "config": {"classes": 3}}}, "come from"),
        # Taken before, then the job failed in the host, blamed on the model.
        (
            "distill",
            {"student": {"architecture": "mlp", "config": {"hidden": 8}}},
            "student.config.hidden is a list of 1 to 32 integers, e.g. [64, 32].",
        ),
        # 2.1 billion parameters: accepted, then failed in the host "out of memory".
        (
            "distill",
            {"student": {"architecture": "mlp", "config": {"hidden": [8192] * 32}}},
            "would have 2,082,816,010 parameters; a student may have at most 100,000,000",
        ),
    ],
)
def test_bad_parameters_are_refused_with_400(api, mlp_version, method, params, message):
    response = start(api, method, params)

    assert response.status_code == 400, response.json()
    assert message in response.json()["detail"]
    assert not CompressionJob.objects.exists()


def test_data_that_does_not_fit_the_signature_is_refused(api, mlp_version):
    response = start(api, "distill", {"student": {"architecture": "mlp"}}, data={"inputs": [[1]]})

    assert response.status_code == 400
    assert "should have shape [-1, 256]" in response.json()["detail"]


def test_data_with_nan_inputs_or_labels_that_are_not_integers_is_refused(api, mlp_version):
    """One null among the inputs made a version whose weights were all NaN, ready and billed;
    labels 2.9 and true were cut to 2 and 1."""
    rows = [[0.5] * 256 for _ in range(40)]
    student = {"student": {"architecture": "mlp"}}
    with_nan = [row[:] for row in rows]
    with_nan[7][3] = None

    nan = start(api, "distill", student, data={"inputs": with_nan})
    fractional = start(api, "distill", student, data={"inputs": rows, "labels": [2.9] * 40})
    booleans = start(api, "distill", student, data={"inputs": rows, "labels": [True] * 40})
    whole = start(api, "distill", student, data={"inputs": rows, "labels": [1] * 40})

    assert nan.status_code == 400
    assert "finite numbers; rows [7] hold NaN" in nan.json()["detail"]
    for refused in (fractional, booleans):
        assert refused.status_code == 400
        assert "class indices from 0 to" in refused.json()["detail"]
    assert whole.status_code == 201
    assert CompressionJob.objects.count() == 1


def test_outsider_cannot_compress_a_private_model(outsider_api, mlp_version):
    response = start(outsider_api, "quantize")

    assert response.status_code == 404


def test_subscriber_of_a_public_model_cannot_distill_it(outsider_api, mlp_version):
    from django.conf import settings

    Listing.objects.create(
        model=mlp_version.model,
        title="MLP",
        visibility=Listing.Visibility.PUBLIC,
        platform_fee_percent=Decimal(settings.PLATFORM_FEE_PERCENT),
    )

    response = start(outsider_api, "distill", {"student": {"architecture": "mlp"}})

    assert response.status_code == 403
    assert "Only the publisher" in response.json()["detail"]


def test_outsider_sees_no_job(api, outsider_api, mlp_version):
    job = start(api, "quantize").json()

    assert outsider_api.get(f"{URL}/{job['id']}").status_code == 404
    assert outsider_api.post(f"{URL}/{job['id']}/cancel").status_code == 404
    assert outsider_api.get(URL).json()["results"] == []


def test_a_version_that_is_not_ready_cannot_be_compressed(api, mlp_version):
    ModelVersion.objects.filter(pk=mlp_version.pk).update(status="validating")

    assert start(api, "quantize").status_code == 409


def test_cancelled_job_is_not_run_or_billed(api, mlp_version):
    job = start(api, "quantize").json()

    cancelled = api.post(f"{URL}/{job['id']}/cancel").json()
    again = api.post(f"{URL}/{job['id']}/cancel")

    assert cancelled["status"] == "cancelled"
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    row = CompressionJob.objects.get(public_id=job["id"])
    assert jobs.job_claim(row) is False  # a worker picking it up does nothing
    assert not UsageRecord.objects.exists()
    # In the organisation's log, once (an operator's cancellation was; a member's was not).
    (audited,) = AuditEvent.objects.filter(action="compression.cancel", target_id=job["id"])
    assert audited.data["by"] == "member"


def _finish(job: CompressionJob, tenant, agreement: float) -> ModelVersion | None:
    return jobs.job_succeed(
        job,
        artifact=artifact_create(tenant=tenant, chunks=[b"weights"]),
        format="safetensors",
        architecture="mlp",
        architecture_config={"compression": "dynamic_int8"},
        report={"fidelity": {"agreement": agreement, "cosine": 0.999}},
        compute_seconds=12.5,
        actor=accounts.SYSTEM,
    )


def test_a_finished_job_makes_a_version_with_lineage_billed_exactly_once(
    api, tenant, mlp_version, settings
):
    job = CompressionJob.objects.get(public_id=start(api, "quantize").json()["id"])
    assert jobs.job_claim(job)

    version = _finish(job, tenant, 0.995)
    again = _finish(job, tenant, 0.995)  # a redelivered task finds the job done

    assert again is None
    assert (version.number, version.parent, version.operation) == (2, mlp_version, "quantize")
    assert version.operation_params == {"scheme": "dynamic_int8"}
    assert not version.aliases.exists()
    (record,) = UsageRecord.objects.filter(source_id=job.public_id)
    assert record.consumer == tenant and record.kind == "compression"
    assert record.amount == Decimal("12.5") * Decimal(settings.COMPRESSION_PRICE_PER_SECOND)
    shown = api.get(f"{URL}/{job.public_id}").json()
    assert shown["result"]["version"] == 2 and shown["cost"]["amount"] == str(record.amount)


def test_a_job_whose_version_was_yanked_while_it_ran_fails_unbilled_and_makes_no_version(
    api, tenant, mlp_version
):
    job = CompressionJob.objects.get(public_id=start(api, "quantize").json()["id"])
    assert jobs.job_claim(job)
    registry.version_yank(version=mlp_version, reason="leaked PII", actor=accounts.SYSTEM)

    assert _finish(job, tenant, 0.995) is None

    shown = api.get(f"{URL}/{job.public_id}").json()
    assert shown["status"] == "failed"
    assert "Version 1 was yanked while the job ran; no version was made" in shown["error"]
    assert list(mlp_version.model.versions.values_list("number", flat=True)) == [1]
    assert not UsageRecord.objects.exists()


def test_a_job_whose_version_was_yanked_while_it_was_queued_is_never_run(api, mlp_version):
    job = CompressionJob.objects.get(public_id=start(api, "quantize").json()["id"])
    registry.version_yank(version=mlp_version, reason="leaked PII", actor=accounts.SYSTEM)

    assert jobs.job_claim(job) is False  # the worker does not run it

    shown = api.get(f"{URL}/{job.public_id}").json()
    assert shown["status"] == "failed"
    assert "Version 1 was yanked while the job was queued; no version was made" in shown["error"]
    assert not UsageRecord.objects.exists()


def _past_its_sunset(version):
    from django.utils import timezone

    registry.version_deprecate(
        version=version,
        sunset_at=timezone.now() + timedelta(days=1),
        reason="superseded",
        actor=accounts.SYSTEM,
    )
    ModelVersion.objects.filter(pk=version.pk).update(
        sunset_at=timezone.now() - timedelta(seconds=1)
    )


def test_a_version_past_its_sunset_cannot_be_compressed(api, mlp_version):
    _past_its_sunset(mlp_version)

    refused = start(api, "quantize")

    assert refused.status_code == 409 and "reached its sunset" in refused.json()["detail"]
    assert not CompressionJob.objects.exists()


def test_a_job_whose_version_passed_its_sunset_while_it_was_queued_is_never_run(api, mlp_version):
    job = CompressionJob.objects.get(public_id=start(api, "quantize").json()["id"])
    _past_its_sunset(mlp_version)

    assert jobs.job_claim(job) is False

    shown = api.get(f"{URL}/{job.public_id}").json()
    assert shown["status"] == "failed"
    assert "Version 1 was past its sunset while the job was queued" in shown["error"]
    assert not UsageRecord.objects.exists()


def test_promotion_needs_the_fidelity_threshold_to_be_met(api, tenant, mlp_version):
    job = CompressionJob.objects.get(public_id=start(api, "quantize").json()["id"])
    jobs.job_claim(job)
    version = _finish(job, tenant, 0.97)
    registry.version_record_validation(version=version, ok=True, signature=signature([256]))
    promote = f"{URL}/{job.public_id}/promote"

    refused = api.post(promote, {"alias": "staging", "min_agreement": 0.99}, format="json")
    no_threshold = api.post(promote, {"alias": "staging"}, format="json")
    accepted = api.post(promote, {"alias": "staging", "min_agreement": 0.95}, format="json")

    assert refused.status_code == 409 and "agreement is 0.97" in refused.json()["detail"]
    assert no_threshold.status_code == 400
    assert accepted.status_code == 200
    assert api.get("/api/v1/models/acme/mlp/aliases").json()[0]["name"] == "staging"


def test_promotion_refuses_a_version_its_aliass_callers_could_not_call(api, tenant, mlp_version):
    """A distilled version of a model whose input was ``x`` took ``input``: promoted to
    production on its fidelity, it refused every request production's callers sent."""
    pointed = api.put("/api/v1/models/acme/mlp/aliases/production", {"version": 1}, format="json")
    assert pointed.status_code == 200, pointed.json()
    job = CompressionJob.objects.get(public_id=start(api, "quantize").json()["id"])
    jobs.job_claim(job)
    version = _finish(job, tenant, 0.99)
    renamed = signature([256])
    renamed["inputs"][0]["name"] = "x"
    registry.version_record_validation(version=version, ok=True, signature=renamed)
    promote = f"{URL}/{job.public_id}/promote"

    refused = api.post(promote, {"alias": "production", "min_agreement": 0.9}, format="json")
    elsewhere = api.post(promote, {"alias": "candidate", "min_agreement": 0.9}, format="json")

    assert refused.status_code == 409
    assert (
        "v2 does not take the requests v1 (production) takes: inputs input FP32[256] became "
        "x FP32[256]"
    ) in refused.json()["detail"]
    assert elsewhere.status_code == 200
    aliases = {a["name"]: a["version"] for a in api.get("/api/v1/models/acme/mlp/aliases").json()}
    assert aliases == {"production": 1, "candidate": 2}


@pytest.mark.parametrize(
    "field, value",
    [
        ("min_agreement", "Infinity"),
        ("min_cosine", "-Infinity"),
        ("max_mean_abs_error", "NaN"),
        ("max_mean_abs_error", "1e400"),  # parses as infinity
    ],
)
def test_a_threshold_that_is_not_a_finite_number_is_a_400_naming_it(
    api, tenant, mlp_version, field, value
):
    # A client's json.dumps writes float("inf") as Infinity; the 400 said only "JSON parse
    # error", not which threshold to fix.
    job = CompressionJob.objects.get(public_id=start(api, "quantize").json()["id"])
    jobs.job_claim(job)
    version = _finish(job, tenant, 0.97)
    registry.version_record_validation(version=version, ok=True, signature=signature([256]))

    response = api.post(
        f"{URL}/{job.public_id}/promote",
        f'{{"alias": "staging", "{field}": {value}}}',
        content_type="application/json",
    )

    assert response.status_code == 400
    assert field in response.json()["detail"]
    assert not version.aliases.exists()


def test_compression_endpoints_are_in_the_openapi_schema(api):
    schema = api.get("/api/schema/", {"format": "json"}).json()

    for path in ["", "/{id}", "/{id}/cancel", "/{id}/promote"]:
        assert f"/api/v1/compression-jobs{path}" in schema["paths"], path


def test_a_retried_start_with_the_same_idempotency_key_returns_the_first_job(api, mlp_version):
    body = {"model": "acme/mlp", "version": "1", "method": "quantize", "params": {}}

    first = api.post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY="start-once")
    again = api.post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY="start-once")
    other = api.post(
        URL, {**body, "method": "prune"}, format="json", HTTP_IDEMPOTENCY_KEY="start-once"
    )

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert other.status_code == 409 and "different request body" in other.json()["detail"]
    assert CompressionJob.objects.count() == 1


def test_a_retried_start_answers_with_the_first_job_after_its_version_was_yanked(api, mlp_version):
    # The retry resolved the version again: 410, though the first job ran (and was billed).
    from accounts import services as accounts
    from marketplace import services as registry

    body = {"model": "acme/mlp", "version": "1", "method": "quantize", "params": {}}
    first = api.post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY="start-once")
    registry.version_yank(version=mlp_version, reason="recalled", actor=accounts.SYSTEM)

    again = api.post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY="start-once")
    fresh = api.post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY="start-twice")

    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert fresh.status_code == 410
    assert CompressionJob.objects.count() == 1


@pytest.mark.postgres  # where a failed INSERT aborts the transaction until its savepoint
def test_a_start_that_raced_a_retry_with_its_key_answers_with_the_retrys_job(
    api, monkeypatch, mlp_version, django_capture_on_commit_callbacks
):
    """The same key from two requests at once, each looking it up before the other wrote:
    one job (compute is billed per job), queued once, and both told its id."""
    from tests.conftest import race_idempotency_key

    body = {"model": "acme/mlp", "version": "1", "method": "quantize", "params": {}}

    def send():
        return api.post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY="both")

    raced, queued = race_idempotency_key(monkeypatch, jobs, send)
    with django_capture_on_commit_callbacks(execute=True):
        late = send()

    [first] = raced
    assert (first.status_code, late.status_code) == (201, 200)
    assert late.json()["id"] == first.json()["id"]
    assert CompressionJob.objects.count() == 1
    assert queued == [first.json()["id"]]  # the loser's went with its rolled-back write


def test_a_job_its_owner_could_not_pay_for_is_refused_with_402(api, tenant, mlp_version):
    from billing.services import spend_cap_set

    spend_cap_set(tenant=tenant, cap=Decimal("0"), actor=accounts.SYSTEM)

    refused = start(api, "quantize")
    # A request that could never run says so first: paying would not make it run.
    mistyped = start(api, "quantize", {"scheme": "int4"})

    assert refused.status_code == 402
    assert "reached your spend cap (0.00)" in refused.json()["detail"]
    assert mistyped.status_code == 400 and "scheme must be one of" in mistyped.json()["detail"]
    assert not CompressionJob.objects.exists()


def test_an_organisation_may_have_only_so_many_jobs_queued_or_running(
    api, outsider_api, outsider, mlp_version, trained_mlp, settings
):
    from safetensors.torch import save

    settings.COMPRESSION_MAX_ACTIVE = 2
    body = {"model": "acme/mlp", "version": "1", "method": "quantize", "params": {}}
    first = api.post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY="first").json()
    jobs.job_claim(CompressionJob.objects.get(public_id=first["id"]))  # running
    start(api, "prune")  # queued
    ready_version(
        outsider,
        "mlp",
        save(trained_mlp.state_dict()),
        sig=mlp_version.signature,
        architecture="mlp",
        config=mlp_version.architecture_config,
    )

    refused = start(api, "quantize", {"scheme": "bf16"})
    retried = api.post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY="first")  # not a third
    elsewhere = start(outsider_api, "quantize", model="globex/mlp")  # its own limit
    api.post(f"{URL}/{first['id']}/cancel")
    after_cancel = start(api, "quantize", {"scheme": "bf16"})

    assert refused.status_code == 429
    assert refused.json()["code"] == "too_many_jobs"
    assert "already has 2 compression jobs queued or running" in refused.json()["detail"]
    assert "cancel one" in refused.json()["detail"]
    assert retried.status_code == 200 and retried.json()["id"] == first["id"]
    assert elsewhere.status_code == 201
    assert after_cancel.status_code == 201
    assert CompressionJob.objects.filter(tenant=mlp_version.model.tenant).count() == 3


def test_the_cost_of_jobs_still_running_counts_against_the_spend_cap(
    api, tenant, mlp_version, settings
):
    from datetime import timedelta

    from django.utils import timezone

    from billing.services import spend_cap_set

    settings.COMPRESSION_PRICE_PER_SECOND = "0.002"
    spend_cap_set(tenant=tenant, cap=Decimal("1.00"), actor=accounts.SYSTEM)
    running = CompressionJob.objects.get(public_id=start(api, "quantize").json()["id"])
    jobs.job_claim(running)
    # It has run 400 s so far: 0.80 of the 1.00 cap, nothing billed yet.
    CompressionJob.objects.filter(pk=running.pk).update(
        started_at=timezone.now() - timedelta(seconds=400)
    )
    allowed = start(api, "prune")
    CompressionJob.objects.filter(pk=running.pk).update(
        started_at=timezone.now() - timedelta(seconds=600)
    )

    refused = start(api, "quantize", {"scheme": "bf16"})

    assert allowed.status_code == 201
    assert refused.status_code == 402
    assert (
        "(0.00, and 1.20 for work still running) has reached your spend cap"
        in (refused.json()["detail"])
    )


def test_a_keys_budget_covers_the_compression_jobs_it_starts(tenant, mlp_version, settings):
    # A job started with a key was billed to no key: a key with a budget started as many
    # jobs as it liked, and the usage by key counted them under the dashboard.
    from datetime import timedelta

    from django.utils import timezone

    from accounts.models import ApiKey
    from billing.services import key_budget_set
    from tests.conftest import key_client

    settings.COMPRESSION_PRICE_PER_SECOND = "0.002"
    capped, other = key_client(tenant), key_client(tenant)
    key = ApiKey.objects.order_by("pk").first()
    key_budget_set(key=key, limit=Decimal("1.00"), actor=accounts.SYSTEM)
    first = CompressionJob.objects.get(public_id=start(capped, "quantize").json()["id"])
    assert first.api_key == key
    jobs.job_claim(first)
    # It has run 600 s so far: 1.20 owed against the key's 1.00.
    CompressionJob.objects.filter(pk=first.pk).update(
        started_at=timezone.now() - timedelta(seconds=600)
    )

    refused = start(capped, "prune")
    elsewhere = start(other, "prune")  # another key of the organisation: no budget of its own
    _finish(first, tenant, 0.995)

    assert refused.status_code == 402
    assert f"API key {key.prefix} has used its monthly budget (1.00)" in refused.json()["detail"]
    assert elsewhere.status_code == 201
    assert UsageRecord.objects.get(source_id=first.public_id).api_key_id == key.pk


@pytest.mark.django_db(transaction=True)  # the hand-off runs after the real commit
def test_jobs_that_cannot_be_handed_to_a_worker_fail_and_free_their_slot(
    api, mlp_version, monkeypatch
):
    """The broker down just after the commit: the caller got a 503, but the job stayed queued
    for good and took one of the organisation's three active jobs; three such, and every new
    job was a 429."""
    from kombu.exceptions import OperationalError

    def down(job):
        raise OperationalError("the broker is restarting")

    def keyed(key: str):
        body = {"model": "acme/mlp", "version": "1", "method": "quantize", "params": {}}
        return api.post(URL, body, format="json", HTTP_IDEMPOTENCY_KEY=key)

    monkeypatch.setattr(jobs, "enqueue", down)
    refused = [keyed(f"k{i}") for i in range(3)]
    monkeypatch.setattr(jobs, "enqueue", lambda job: None)  # the broker back

    assert [r.status_code for r in refused] == [503, 503, 503]
    assert set(CompressionJob.objects.values_list("status", flat=True)) == {"failed"}
    assert "was not run or billed" in CompressionJob.objects.first().error
    again = keyed("k0")  # a retry under the same key runs
    assert again.status_code == 201, again.json()
    assert again.json()["status"] == "queued"


def test_a_queued_job_is_sent_again_only_once_nothing_waits_on_its_queue(api, mlp_version):
    """A job queued past MM_COMPRESSION_JOB_LOST_SECONDS lost its task on the way, unless a
    backlog still holds it: while tasks wait on its queue it is left alone (each sweep would
    add another task for it)."""
    from datetime import timedelta

    from django.utils import timezone

    from inference import realtime

    job_id = start(api, "quantize").json()["id"]  # its task is sent on a commit never made
    CompressionJob.objects.filter(public_id=job_id).update(
        queue="jobs-backlog-test", created_at=timezone.now() - timedelta(minutes=10)
    )
    redis = realtime.client()
    redis.rpush("jobs-backlog-test", b"a task ahead of it")
    try:
        assert jobs.jobs_requeue_lost() == 0
        redis.delete("jobs-backlog-test")
        assert jobs.jobs_requeue_lost() == 1
        assert redis.llen("jobs-backlog-test") == 1  # its task, sent again
    finally:
        redis.delete("jobs-backlog-test")


def test_the_data_sent_with_a_job_is_dropped_after_retention_and_with_its_organisation(
    api, tenant, mlp_version, settings
):
    """A job's training data (the publisher's own rows) stayed in the database for good, and
    survived the erasure of its organisation."""
    from datetime import timedelta

    from django.utils import timezone

    from inference import services

    rows = {"inputs": [[0.25] * 256 for _ in range(40)]}
    student = {"student": {"architecture": "mlp"}}
    ended, queued = (
        CompressionJob.objects.get(public_id=start(api, "distill", student, data=rows).json()["id"])
        for _ in range(2)
    )
    CompressionJob.objects.filter(pk=ended.pk).update(
        status="failed",
        completed_at=timezone.now() - settings.PREDICTION_DATA_TTL - timedelta(minutes=1),
    )

    services.predictions_purge()

    assert CompressionJob.objects.get(pk=ended.pk).data is None
    assert CompressionJob.objects.get(pk=queued.pk).data is not None  # its worker needs it
    services.tenant_data_erase(tenant=tenant)
    assert CompressionJob.objects.get(pk=queued.pk).data is None


def test_jobs_are_listed_by_method(api, mlp_version):
    """?method= was ignored: every job was listed."""
    quantized = start(api, "quantize").json()["id"]
    pruned = start(api, "prune", {"amount": 0.5}).json()["id"]

    listed = api.get(URL, {"method": "prune"})
    typo = api.get(URL, {"method": "prunning"})

    assert [job["id"] for job in listed.json()["results"]] == [pruned] != [quantized]
    assert typo.status_code == 400 and "quantize, prune, distill" in typo.json()["detail"]


def test_a_page_of_jobs_reads_their_costs_in_one_query(api, tenant, mlp_version):
    """Each succeeded job read its own usage record: 19 of a page's 20 queries."""
    from tests.conftest import statements

    def finished(count: int) -> None:
        for _ in range(count):
            job = CompressionJob.objects.get(public_id=start(api, "quantize").json()["id"])
            jobs.job_claim(job)
            _finish(job, tenant, 0.99)

    finished(2)
    with statements() as few:
        two = api.get(URL).json()["results"]
    finished(3)
    with statements() as more:
        five = api.get(URL).json()["results"]

    assert len(more) == len(few)
    assert [job["cost"] is not None for job in five] == [True] * 5
    assert two[0]["cost"] == five[3]["cost"]
