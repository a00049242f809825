"""Model extraction: a key of another organisation that floods a model with distinct inputs
runs into its rate limit (429) and is flagged for the publisher, once per window; the flag
is the publisher's to see and nobody else's."""

from __future__ import annotations

import random

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts import secrets
from inference import realtime
from inference.models import AbuseFlag
from tests.conftest import key_client
from tests.inference.conftest import listed_classifier

pytestmark = pytest.mark.django_db

LIMIT = 20


@pytest.fixture
def listed_clf(tenant, outsider, settings):
    """acme's classifier, listed free; globex subscribed. A low limit and threshold."""
    settings.RATE_LIMIT_PER_MINUTE = LIMIT
    settings.EXTRACTION_FLAG_REJECTIONS = 10
    settings.EXTRACTION_MIN_CALLS = 10
    return listed_classifier(tenant, outsider).model


def flood(api, rejections: int, *, distinct: bool = True, seed: int = 1) -> list[int]:
    """Predictions until the limit has refused ``rejections`` of them (a minute boundary
    mid-flood only means a few more calls get through)."""
    rng = random.Random(seed)
    statuses: list[int] = []
    while statuses.count(429) < rejections:
        x = [[rng.uniform(-9, 9) for _ in range(4)]] if distinct else [[1.0, 2.0, 3.0, 4.0]]
        response = api.post(
            "/api/v1/predictions", {"model": "acme/clf", "input": {"x": x}}, format="json"
        )
        statuses.append(response.status_code)
        assert len(statuses) < 10 * LIMIT + rejections, statuses
    return statuses


def test_flood_of_distinct_queries_is_limited_and_flagged_for_the_publisher(
    listed_clf, tenant, outsider
):
    thief = key_client(outsider)
    statuses = flood(thief, rejections=30)

    assert set(statuses) == {201, 429}
    assert statuses.count(201) >= LIMIT
    flag = AbuseFlag.objects.get()
    assert (flag.tenant, flag.model, flag.consumer) == (tenant, listed_clf, outsider)
    assert flag.key_prefix == secrets.parse_api_key(thief.secret)
    assert flag.rejected == 30
    assert flag.predictions == flag.distinct_inputs == statuses.count(201)

    listed = key_client(tenant).get("/api/v1/abuse-flags").json()["results"]
    assert [(f["id"], f["model"], f["consumer"], f["key"]) for f in listed] == [
        (flag.public_id, "acme/clf", "globex", flag.key_prefix)
    ]


def test_a_flood_is_flagged_once_per_window(listed_clf, outsider):
    thief = key_client(outsider)
    flood(thief, rejections=30)
    first = AbuseFlag.objects.get()
    flood(thief, rejections=30, seed=2)

    again = AbuseFlag.objects.get()
    assert again.public_id == first.public_id and again.first_seen == first.first_seen
    assert again.rejected == 60 and again.last_seen > first.last_seen


def test_a_long_flood_is_looked_at_once_a_minute_while_its_rejections_are_counted(
    listed_clf, outsider
):
    thief = key_client(outsider)
    with CaptureQueriesContext(connection) as queries:
        flood(thief, rejections=60)
    looks = [q for q in queries.captured_queries if "SELECT DISTINCT" in q["sql"]]

    assert len(looks) == 1  # at the 10th rejection; the 20th to the 60th only count
    flag = AbuseFlag.objects.get()
    assert flag.rejected == 60

    redis = realtime.client()
    for looked_at in redis.scan_iter("mm:abuse:look:*"):  # the minute passes (a Redis expiry)
        redis.delete(looked_at)
    with CaptureQueriesContext(connection) as queries:
        flood(thief, rejections=10, seed=2)
    looks = [q for q in queries.captured_queries if "SELECT DISTINCT" in q["sql"]]
    assert len(looks) == 1
    assert AbuseFlag.objects.get().rejected == 70


def test_with_the_recheck_off_every_tenth_rejection_looks_at_the_key(
    listed_clf, outsider, settings
):
    settings.EXTRACTION_RECHECK_SECONDS = 0
    with CaptureQueriesContext(connection) as queries:
        flood(key_client(outsider), rejections=30)
    looks = [q for q in queries.captured_queries if "SELECT DISTINCT" in q["sql"]]

    assert len(looks) == 3
    assert AbuseFlag.objects.get().rejected == 30


def test_another_organisation_cannot_see_the_flag(listed_clf, outsider, charlie):
    flood(key_client(outsider), rejections=10)
    flag = AbuseFlag.objects.get()
    globex = key_client(outsider)

    assert globex.get("/api/v1/abuse-flags").json()["results"] == []
    assert globex.get(f"/api/v1/abuse-flags/{flag.public_id}").status_code == 404
    browser = Client()
    browser.force_login(charlie)
    assert browser.get(f"/api/v1/abuse-flags/{flag.public_id}").status_code == 404


def test_the_publishers_members_see_the_flag_in_the_dashboard_session(listed_clf, outsider, alice):
    flood(key_client(outsider), rejections=10)
    browser = Client()
    browser.force_login(alice)

    listed = browser.get("/api/v1/abuse-flags").json()["results"]
    assert [f["consumer"] for f in listed] == ["globex"]


def test_the_same_input_in_a_loop_is_limited_but_not_flagged(listed_clf, outsider):
    statuses = flood(key_client(outsider), rejections=30, distinct=False)

    assert statuses.count(429) == 30
    assert not AbuseFlag.objects.exists()


def test_the_publishers_own_key_is_limited_like_any_other_and_never_flagged(listed_clf, tenant):
    statuses = flood(key_client(tenant), rejections=30)

    assert statuses.count(201) >= LIMIT and statuses.count(429) == 30
    assert not AbuseFlag.objects.exists()


def test_operators_see_the_flags_in_the_admin(listed_clf, outsider, admin_client):
    flood(key_client(outsider), rejections=10)
    flag = AbuseFlag.objects.get()

    page = admin_client.get("/admin/inference/abuseflag/")
    assert page.status_code == 200 and flag.key_prefix in page.content.decode()


def test_the_publishers_model_page_names_the_flagged_key(listed_clf, outsider, alice):
    flood(key_client(outsider), rejections=10)
    flag = AbuseFlag.objects.get()
    browser = Client()
    browser.force_login(alice)

    page = browser.get("/dashboard/models/clf/").content.decode()
    assert "Possible extraction" in page and flag.key_prefix in page and "globex" in page
