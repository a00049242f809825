"""The operators' console: take-downs answer 451 with the reason, retry and cancel of running
work, the operations page, worker heartbeats and two-factor sign-in. Every action leaves an
audit row."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

import numpy as np
import pytest
from django.test import Client
from django.utils import timezone
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts import services as accounts
from accounts.models import AuditEvent, User
from billing.services import usage_record_create
from inference import tensors
from inference.models import CompressionJob, Prediction
from marketplace import listings
from marketplace import services as registry
from marketplace.models import Alias, Listing, ModelVersion
from tests.conftest import PASSWORD, key_client, make_user, statements
from tests.inference.conftest import Classifier, export, ready_version, signature

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(db) -> User:
    user = make_user("ops@modelmarket.example")
    User.objects.filter(pk=user.pk).update(is_staff=True, is_superuser=True)
    user.refresh_from_db()
    return user


@pytest.fixture
def console(operator) -> Client:
    client = Client()
    client.force_login(operator)
    return client


@pytest.fixture
def clf(tenant) -> ModelVersion:
    return ready_version(tenant, "clf", export(Classifier()), "pt2", signature(4, 3))


def act(console: Client, model: str, action: str, pks: list, **form) -> None:
    url = f"/admin/{model}/"
    response = console.post(
        url, {"action": action, "_selected_action": [str(pk) for pk in pks], **form}
    )
    assert response.status_code == 302, response.content[-2000:]


def audited(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action))


# --- take-downs ------------------------------------------------------------------------------


def test_a_taken_down_listing_answers_451_with_the_reason_everywhere_but_to_its_publisher(
    console, operator, tenant, outsider, api, outsider_api, clf
):
    listings.listing_publish(
        model=clf.model, actor=accounts.SYSTEM, visibility="public", title="Classifier"
    )
    assert outsider_api.post("/api/v1/catalogue/acme/clf/subscribe").status_code in (200, 201)
    listing = Listing.objects.get(model=clf.model)

    act(console, "marketplace/listing", "take_down", [listing.pk], reason="DMCA notice 2026-118")

    (event,) = audited("listing.take_down")
    assert event.actor_user == operator and event.data["reason"] == "DMCA notice 2026-118"
    detail = outsider_api.get("/api/v1/catalogue/acme/clf")
    assert detail.status_code == 451
    assert (
        detail.json()["code"] == "taken_down" and "DMCA notice 2026-118" in detail.json()["detail"]
    )
    prediction = outsider_api.post(
        "/api/v1/predictions", {"model": "acme/clf", "input": {"x": [[1, 2, 3, 4]]}}, format="json"
    )
    assert prediction.status_code == 451 and "DMCA notice 2026-118" in prediction.json()["detail"]
    assert outsider_api.get("/v2/models/acme/clf").status_code == 451
    page = Client().get("/catalogue/acme/clf/")
    assert page.status_code == 451 and b"DMCA notice 2026-118" in page.content
    member = Client()
    member.force_login(outsider.memberships.get().user)
    playground = member.get("/dashboard/playground/acme/clf/")
    assert playground.status_code == 451 and b"DMCA notice 2026-118" in playground.content
    assert outsider_api.get("/api/v1/catalogue", {"q": "clf"}).json()["results"] == []
    # The publisher still reaches its own model.
    assert api.get("/api/v1/models/acme/clf").status_code == 200

    act(console, "marketplace/listing", "restore", [listing.pk])

    assert outsider_api.get("/api/v1/catalogue/acme/clf").status_code == 200
    assert len(audited("listing.restore")) == 1


def test_a_take_down_needs_a_reason(console, tenant, clf):
    listings.listing_publish(model=clf.model, actor=accounts.SYSTEM, visibility="public", title="C")
    listing = Listing.objects.get(model=clf.model)

    act(console, "marketplace/listing", "take_down", [listing.pk], reason="  ")

    listing.refresh_from_db()
    assert listing.taken_down_at is None and audited("listing.take_down") == []


def test_a_private_listing_taken_down_stays_404_to_outsiders(console, tenant, outsider_api, clf):
    listings.listing_publish(
        model=clf.model, actor=accounts.SYSTEM, visibility="private", title="C"
    )
    act(console, "marketplace/listing", "take_down", [clf.model.listing.pk], reason="policy")

    assert outsider_api.get("/api/v1/catalogue/acme/clf").status_code == 404


def test_operator_yanks_a_version_with_a_reason(console, operator, tenant, clf):
    act(console, "marketplace/modelversion", "yank", [clf.pk], reason="leaks training data")

    clf.refresh_from_db()
    assert clf.status == ModelVersion.Status.YANKED and clf.status_reason == "leaks training data"
    assert audited("version.yank")[0].actor_user == operator


# --- running work --------------------------------------------------------------------------


def failed_prediction(tenant, version) -> Prediction:
    return Prediction.objects.create(
        tenant=tenant,
        model=version.model,
        version=version,
        input_data=tensors.encode({"x": np.ones((1, 4), dtype=np.float32)}),
        status=Prediction.Status.FAILED,
        error="The model host failed: crash",
        error_kind="crash",
    )


def test_operator_retries_a_failed_prediction_and_cancels_a_queued_one(
    console, operator, tenant, clf
):
    failed = failed_prediction(tenant, clf)
    queued = Prediction.objects.create(tenant=tenant, model=clf.model, version=clf)

    act(console, "inference/prediction", "retry", [failed.pk])
    act(console, "inference/prediction", "cancel", [queued.pk])

    failed.refresh_from_db()
    queued.refresh_from_db()
    assert (failed.status, failed.error) == ("queued", "")
    assert queued.status == "canceled"
    retried, cancelled = audited("prediction.retry"), audited("prediction.cancel")
    assert retried[0].target_id == failed.public_id and retried[0].actor_user == operator
    assert cancelled[0].target_id == queued.public_id


@pytest.mark.django_db(transaction=True)  # the hand-off runs after the real commit
def test_a_retry_while_redis_is_down_says_so_and_leaves_the_prediction_queued(
    console, tenant, clf, monkeypatch
):
    """The retry commits, then handing the prediction to the queue fails: that was a 500 page,
    with the prediction queued and nothing said. The beat's sweep sends it once Redis is
    back; the operator is told."""
    import redis
    from celery import current_app

    from inference import dispatch

    def down(*args, **kwargs):
        raise redis.ConnectionError("Error 111 connecting to localhost:6379")

    monkeypatch.setattr(dispatch, "send", lambda queue, prediction_id: False)
    monkeypatch.setattr(current_app, "send_task", down)
    failed = failed_prediction(tenant, clf)

    response = console.post(
        "/admin/inference/prediction/",
        {"action": "retry", "_selected_action": [str(failed.pk)]},
        follow=True,
    )

    assert response.status_code == 200
    page = response.content.decode()
    assert "The queue could not be reached (ConnectionError: is Redis up?)" in page
    assert failed.public_id in page
    failed.refresh_from_db()
    assert failed.status == "queued" and len(audited("prediction.retry")) == 1


@pytest.mark.parametrize("change", ["yank", "take_down", "share_revoked", "suspend", "spend_cap"])
def test_a_prediction_is_not_retried_where_a_new_request_would_be_refused(
    console, tenant, outsider, clf, change, settings
):
    """A retry runs the model and bills it: not on a yanked version, a taken-down model, a
    model no longer shared with the consumer, for a suspended organisation, or past the
    consumer's spend cap (before, only the prediction's own status was checked; then the
    spend cap was not, and a review helper's retry billed past it)."""
    listings.model_share(model=clf.model, tenant_slug=outsider.slug, actor=accounts.SYSTEM)
    failed = failed_prediction(outsider, clf)
    if change == "yank":
        Alias.objects.filter(version=clf).delete()
        registry.version_yank(version=clf, reason="leaks training data", actor=accounts.SYSTEM)
    elif change == "take_down":
        listings.listing_publish(
            model=clf.model, actor=accounts.SYSTEM, visibility="public", title="C"
        )
        listings.listing_take_down(
            listing=Listing.objects.get(model=clf.model), reason="policy", actor=accounts.SYSTEM
        )
    elif change == "share_revoked":
        listings.model_share_revoke(
            model=clf.model, tenant_slug=outsider.slug, actor=accounts.SYSTEM
        )
    elif change == "suspend":
        accounts.tenant_suspend(tenant=outsider, reason="unpaid", actor=accounts.SYSTEM)
    else:
        settings.PAYMENT_METHOD_REQUIRED = False
        listings.listing_publish(
            model=clf.model,
            actor=accounts.SYSTEM,
            visibility="public",
            title="C",
            price_per_call="0.25",
        )
        capped = key_client(outsider).put(
            "/api/v1/billing/settings", {"spend_cap": "0.10"}, format="json"
        )
        assert capped.status_code == 200

    act(console, "inference/prediction", "retry", [failed.pk])

    failed.refresh_from_db()
    assert failed.status == "failed" and failed.error_kind == "crash"
    assert audited("prediction.retry") == []


def test_a_succeeded_prediction_cannot_be_retried(console, tenant, clf):
    done = Prediction.objects.create(
        tenant=tenant, model=clf.model, version=clf, status=Prediction.Status.SUCCEEDED
    )

    act(console, "inference/prediction", "retry", [done.pk])

    done.refresh_from_db()
    assert done.status == "succeeded" and audited("prediction.retry") == []


def test_operator_retries_a_failed_compression_job_and_cancels_a_running_one(console, tenant, clf):
    failed = CompressionJob.objects.create(
        tenant=tenant,
        model=clf.model,
        version=clf,
        method="quantize",
        status=CompressionJob.Status.FAILED,
        error="The job did not finish within its time limit of 1800 s.",
    )
    running = CompressionJob.objects.create(
        tenant=tenant, model=clf.model, version=clf, method="prune", status="running"
    )

    act(console, "inference/compressionjob", "retry", [failed.pk])
    act(console, "inference/compressionjob", "cancel", [running.pk])

    failed.refresh_from_db()
    running.refresh_from_db()
    assert (failed.status, failed.error) == ("queued", "")
    assert running.status == "cancelled"
    assert len(audited("compression.retry")) == len(audited("compression.cancel")) == 1


def test_predictions_and_jobs_show_their_errors_but_never_their_tensors(console, tenant, clf):
    failed = failed_prediction(tenant, clf)

    page = console.get(f"/admin/inference/prediction/{failed.pk}/change/")

    assert page.status_code == 200 and b"The model host failed: crash" in page.content
    assert b"input_data" not in page.content
    with statements() as sql:
        listed = console.get("/admin/inference/prediction/")
    assert listed.status_code == 200 and failed.public_id.encode() in listed.content
    assert not [q for q in sql if "input_data" in q or "output_data" in q], sql  # not read


# --- changelist lookups the database cannot hold -------------------------------------------

HUGE = "9" * 23  # more than a 64-bit integer holds
# A changelist, a lookup in its query string, and the databases that cannot run it.
UNHOLDABLE_LOOKUPS = [
    ("billing/usagerecord", "amount__gte=1e999999", {"postgresql"}),  # numeric overflows
    ("billing/billingaccount", "spend_cap__lte=1e999999", {"postgresql"}),
    ("marketplace/listing", "price_per_call__gte=1e-999999", {"postgresql"}),
    ("accounts/user", "email__regex=(", {"postgresql", "sqlite"}),  # an invalid expression
    ("auth/group", "name__regex=(", {"postgresql"}),  # SQLite: no rows, no regexp() call
    ("accounts/tenant", "created_at__year=99999", {"postgresql", "sqlite"}),  # no such date
    ("billing/usagerecord", "period__year__gte=99999", {"postgresql", "sqlite"}),
    ("marketplace/artifact", f"size__in={HUGE}", {"sqlite"}),  # SQLite's integers overflow
    ("otp_totp/totpdevice", f"id__in={HUGE}", {"sqlite"}),
]


@pytest.mark.postgres
@pytest.mark.parametrize("changelist, lookup, databases", UNHOLDABLE_LOOKUPS)
def test_a_lookup_the_database_cannot_hold_is_the_admins_bad_lookup_redirect(
    console, changelist, lookup, databases
):
    """Django's answer to a lookup it cannot run: the changelist again without it (``?e=1``).
    These fail only when the query runs, where Django let them through as a 500. A database
    that can run the lookup shows the filtered page."""
    from django.db import connection

    response = console.get(f"/admin/{changelist}/?{lookup}")

    if connection.vendor not in databases:  # this database runs it: the filtered page
        assert response.status_code == 200
        return
    assert response.status_code == 302
    assert response["Location"] == f"/admin/{changelist}/?e=1"
    # The failed statement is behind a savepoint: the test's transaction still answers.
    assert console.get(response["Location"]).status_code == 200


def test_every_admin_page_answers_a_lookup_the_database_cannot_hold_with_a_redirect():
    """The test above tries some admins; this holds every registered one, a new one too, to the
    base that does it."""
    from django.contrib import admin

    from accounts.admin import SafeChangelist

    unsafe = [
        model._meta.label
        for model, model_admin in admin.site._registry.items()
        if not isinstance(model_admin, SafeChangelist)
    ]

    assert unsafe == []


# --- the operations page -------------------------------------------------------------------


def test_operations_page_shows_queues_workers_failures_and_money(
    console, tenant, outsider, clf, settings
):
    from workers import heartbeat

    listings.listing_publish(
        model=clf.model,
        actor=accounts.SYSTEM,
        visibility="public",
        title="Classifier",
        price_per_call=Decimal("0.5"),
    )
    for i in range(4):
        usage_record_create(
            kind="prediction",
            source_id=f"pred_ops_{i}",
            consumer=outsider,
            model=clf.model,
            compute_seconds=Decimal("0.01"),
        )
    failed_prediction(tenant, clf)
    long_ago = timezone.now() - timedelta(hours=2)
    stuck = Prediction.objects.create(
        tenant=outsider, model=clf.model, version=clf, status="running", started_at=long_ago
    )
    lost_job = CompressionJob.objects.create(
        tenant=tenant,
        model=clf.model,
        version=clf,
        method="quantize",
        status="running",
        started_at=long_ago,
        heartbeat_at=long_ago,
    )
    # Never sent a heartbeat: the beat takes it as lost, and the page's own rule said not.
    silent_job = CompressionJob.objects.create(
        tenant=tenant,
        model=clf.model,
        version=clf,
        method="prune",
        status="running",
        started_at=long_ago,
    )
    settings.WORKER_HEARTBEAT_SECONDS = 5
    heartbeat.beat(name="cpu@box-7", queues=["default", "cpu"])
    with statements() as sql:
        page = console.get("/admin/operations/")
    # The failures list reads no tensors (each up to megabytes).
    assert not [q for q in sql if "input_data" in q or "output_data" in q], sql

    text = page.content.decode()
    assert page.status_code == 200
    assert "cpu@box-7" in text and "cpu, default" in text
    # Work in flight, oldest first, with its age: the page gave counts alone.
    unfinished = text[text.index('id="unfinished-predictions"') :]
    assert stuck.public_id in unfinished and "stuck" in unfinished
    running = text[text.index('id="running-jobs"') :]
    assert lost_job.public_id in running and "lost" in running
    silent_row = running[running.index(silent_job.public_id) :].split("</tr>", 1)[0]
    assert "never" in silent_row and "<strong>lost</strong>" in silent_row
    assert "The model host failed: crash" in text
    # 4 calls at 0.50: 2.00 of revenue, the platform's 20 % and the publisher's 80 %.
    money = text[text.index('id="money"') :]
    assert "2.00" in money and "0.40" in money and "1.60" in money
    assert "globex" in text[text.index('id="top-consumers"') :]


def test_operations_page_is_for_staff_only(client, alice):
    client.force_login(alice)
    response = client.get("/admin/operations/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def _staff(*codenames: str) -> Client:
    from django.contrib.auth.models import Permission

    user = make_user("support@modelmarket.example")
    User.objects.filter(pk=user.pk).update(is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def test_operations_page_is_refused_to_staff_who_may_not_see_usage_and_predictions(tenant):
    support = _staff("view_tenant")

    page = support.get("/admin/operations/")

    assert page.status_code == 403
    assert b"operations-link" not in support.get("/admin/").content


def test_operations_page_opens_to_staff_who_may_see_usage_predictions_and_jobs(tenant):
    support = _staff("view_usagerecord", "view_prediction", "view_compressionjob")

    assert support.get("/admin/operations/").status_code == 200
    assert b"operations-link" in support.get("/admin/").content


def test_operations_page_shows_sub_cent_money_exactly(tenant, outsider, clf):
    """As the billing page does (money_text): a call at 0.00005 USD is not 0.00 of revenue."""
    listings.listing_publish(
        model=clf.model,
        actor=accounts.SYSTEM,
        visibility="public",
        title="Classifier",
        price_per_call=Decimal("0.00005"),
    )
    usage_record_create(
        kind="prediction",
        source_id="pred_ops_cheap",
        consumer=outsider,
        model=clf.model,
        compute_seconds=Decimal("0.01"),
    )
    support = _staff("view_usagerecord", "view_prediction", "view_compressionjob")

    page = support.get("/admin/operations/")

    text = page.content.decode()
    assert page.status_code == 200
    # Revenue, the platform's 20 %, the publisher's 80 %; no credits, nothing invoiced yet.
    row = "<td>USD</td><td>1</td><td>0.00005</td><td>0.00001</td><td>0.00004</td>"
    assert row + "<td>0.00</td><td>0.00</td><td>0.00</td>" in text[text.index('id="money"') :]
    consumers = text[text.index('id="top-consumers"') :]
    assert "<td>globex</td><td>1</td><td>0.00005 USD</td>" in consumers


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_live_worker_reports_its_device_queues_and_memory(celery_worker_process):
    from workers import heartbeat

    deadline = time.monotonic() + 30
    while True:
        mine = [w for w in heartbeat.workers_seen() if w["pid"] == celery_worker_process.pid]
        if mine:
            break
        assert time.monotonic() < deadline, heartbeat.workers_seen()
        time.sleep(0.25)
    (worker,) = mine
    assert worker["device"] == "cpu" and {"default", "cpu"} <= set(worker["queues"])
    assert worker["worker_rss"] > 0 and worker["age"] < 30


# --- two-factor sign-in --------------------------------------------------------------------


def test_staff_need_a_second_factor_when_the_setting_asks(operator, settings):
    settings.ADMIN_REQUIRE_2FA = True
    device = TOTPDevice.objects.create(user=operator, name="phone", confirmed=True)
    client = Client()

    password_only = client.post(
        "/admin/login/?next=/admin/", {"username": operator.email, "password": PASSWORD}
    )
    assert password_only.status_code == 200  # the form again, asking for the token
    assert client.get("/admin/").status_code == 302

    token = totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits)
    signed_in = client.post(
        "/admin/login/?next=/admin/",
        {
            "username": operator.email,
            "password": PASSWORD,
            "otp_device": device.persistent_id,
            "otp_token": f"{token:0{device.digits}d}",
        },
    )
    assert signed_in.status_code == 302, signed_in.content[-1500:]
    assert client.get("/admin/").status_code == 200


def test_without_the_setting_a_password_is_enough(operator):
    client = Client()
    client.post("/admin/login/?next=/admin/", {"username": operator.email, "password": PASSWORD})
    assert client.get("/admin/").status_code == 200


def test_a_signed_in_staff_member_without_a_device_is_refused_when_2fa_is_on(console, settings):
    assert console.get("/metrics").status_code == 200
    settings.ADMIN_REQUIRE_2FA = True
    assert console.get("/admin/").status_code == 302
    assert console.get("/admin/operations/").status_code == 302
    assert console.get("/metrics").status_code == 404  # no way round the second factor


def test_an_immutable_versions_file_cannot_be_rewritten_from_the_console(console, clf):
    artifact = clf.artifact
    blobs = list(artifact.chunk_blobs)

    page = console.get(f"/admin/marketplace/artifact/{artifact.pk}/change/")
    saved = console.post(
        f"/admin/marketplace/artifact/{artifact.pk}/change/", {"chunk_blobs": "[]"}
    )

    assert page.status_code == 200 and b'name="chunk_blobs"' not in page.content
    assert saved.status_code == 403
    artifact.refresh_from_db()
    assert artifact.chunk_blobs == blobs


def test_the_console_edits_no_field_but_an_organisations_display_name(operator):
    """Everything else changes through the services (which check and audit) or the console's
    actions: a field left editable by mistake bypasses both."""
    from django.contrib import admin
    from django.test import RequestFactory

    request = RequestFactory().get("/admin/")
    request.user = operator
    editable = {}
    for model, model_admin in admin.site._registry.items():
        if model._meta.app_label in ("auth", "otp_totp") or model is User:
            continue  # Django's own users, groups and devices: edited as Django intends
        if not model_admin.has_change_permission(request):
            continue
        form = model_admin.get_form(request, None, fields=None)
        fields = set(form.base_fields) - set(model_admin.get_readonly_fields(request))
        if fields:
            editable[model.__name__] = sorted(fields)
    assert editable == {"Tenant": ["name"]}
