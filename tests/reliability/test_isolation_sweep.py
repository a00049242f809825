"""Every URL pattern of the site and the API, every method, called by another tenant with the
victim's ids, slugs and keys: the answers must be those a made-up id gets (no existence
oracle), never a success on the victim's object and never a 500."""

from __future__ import annotations

import re
import statistics
import time
from datetime import date, timedelta

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from django.utils.regex_helper import normalize

from accounts import services as accounts
from accounts.models import AuditEvent, Membership
from accounts.tenancy import SESSION_TENANT_KEY
from billing.models import Invoice
from inference.models import AbuseFlag, CompressionJob, Prediction
from marketplace import listings
from marketplace.models import Alias, UploadSession
from tests.conftest import key_client, make_user
from tests.inference.conftest import Classifier, export, ready_version, signature

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
# Endpoints that change the caller's own session rather than any tenant's data.
SKIP_NAMES = {"logout"}
# 5xx already reported to the billing owner (not isolation faults: the caller's own
# organisation, and Stripe errors that reach the dashboard unhandled). Counted apart.
KNOWN_5XX: dict[str, str] = {}
# Tokens that are secrets in themselves (not tenant ids): nothing to swap in.
SECRET_PARAMS = {"uidb64", "token"}


def url_patterns():
    """(regex, pattern) for every endpoint, with the prefixes of its includes."""

    def walk(patterns, prefix):
        for p in patterns:
            regex = p.pattern.regex.pattern.removeprefix("^")
            if isinstance(p, URLResolver):
                yield from walk(p.url_patterns, prefix + regex)
            elif isinstance(p, URLPattern):
                yield prefix + regex, p

    yield from walk(get_resolver().url_patterns, "")


@pytest.fixture
def victim(tenant, alice, bob):
    """Private things of acme, of every kind a URL can name."""
    version = ready_version(tenant, "secret-clf", export(Classifier()), "pt2", signature(4, 3))
    model = version.model
    Alias.objects.create(model=model, name="prod", version=version)
    third = accounts.tenant_create(
        slug="initech", name="Initech", owner=make_user("dana@initech.example")
    )
    entitlement = listings.model_share(model=model, tenant_slug="initech", actor=accounts.SYSTEM)
    upload = UploadSession.objects.create(
        tenant=tenant,
        model=model,
        filename="secret.pt2",
        format="pt2",
        size=10,
        sha256="0" * 64,
        chunk_size=1024,
        expires_at=timezone.now() + timedelta(days=1),
    )
    prediction = Prediction.objects.create(
        tenant=tenant, model=model, version=version, input_data=b"", batch_size=1
    )
    job = CompressionJob.objects.create(
        tenant=tenant, model=model, version=version, method="quantize"
    )
    key, _ = accounts.api_key_create(
        tenant=tenant, name="victim", scopes=["inference"], actor=accounts.SYSTEM
    )
    invitation, _ = accounts.invitation_create(
        tenant=tenant, email="new@acme.example", role="viewer", actor=accounts.SYSTEM
    )
    invoice = Invoice.objects.create(
        consumer=tenant, period=date(2026, 1, 1), currency="usd", amount_cents=1234
    )
    flag = AbuseFlag.objects.create(
        tenant=tenant,
        model=model,
        consumer=third,
        key_prefix="Initech1",
        window_start=timezone.now(),
    )
    member = Membership.objects.get(tenant=tenant, user=bob).public_id
    ids = {
        "owner": "acme",
        "name": "secret-clf",
        "ref": "1",
        "number": "1",
        "alias": "prod",
        "version": "1",
        "rest": "models/acme/secret-clf",
        "key_id": key.public_id,
        "member_id": member,
        "invitation_id": invitation.public_id,
        "job_id": job.public_id,
        "object_id": str(model.pk),
        "app_label": "marketplace",
        "content_type_id": "1",
    }
    # ``id`` names a different kind of object on each route.
    id_by_route = {
        "upload": upload.public_id,
        "upload-complete": upload.public_id,
        "prediction": prediction.public_id,
        "prediction-cancel": prediction.public_id,
        "compression-job": job.public_id,
        "compression-job-cancel": job.public_id,
        "compression-job-promote": job.public_id,
        "abuse-flag": flag.public_id,
        "entitlement": entitlement.public_id,
        "entitlement-download": entitlement.public_id,
        "subscription": entitlement.public_id,
        "invoice-detail": invoice.public_id,
        "member-detail": member,
        "apikey-detail": key.public_id,
        "invitation-detail": invitation.public_id,
        "auditevent-detail": str(AuditEvent.objects.filter(tenant=tenant).first().pk),
    }
    return {"ids": ids, "id_by_route": id_by_route, "third": third}


def bogus_of(value: str) -> str:
    """A made-up id of the same shape: same prefix and length, or a number that is free."""
    if value.isdigit():
        return str(int(value) + 9000)
    prefix, sep, rest = value.rpartition("_")
    if sep:
        return prefix + "_" + "z" * len(rest)
    return value[:-1] + "zz" if len(value) > 2 else value + "zz"


def concrete(regex: str, values: dict) -> str | None:
    format_string, params = normalize(regex)[0]
    if SECRET_PARAMS & set(params):
        return None
    try:
        return "/" + format_string % {p: values[p] for p in params}
    except KeyError:
        return None


def is_error(response, name: str) -> bool:
    """A 5xx, except the readiness probes' 503 (no worker runs during this sweep)."""
    return response.status_code >= 500 and not (
        response.status_code == 503 and name in ("readyz", "oip-ready")
    )


CSRF = re.compile(rb'(csrfmiddlewaretoken" value="|csrftoken=|"csrfToken": ")[^";]+')


def normalised(body: bytes, values: dict) -> bytes:
    body = CSRF.sub(rb"\1CSRF", body)
    for value in sorted(values.values(), key=len, reverse=True):
        if len(value) > 2:
            body = body.replace(value.encode(), b"<ID>")
    return body


def test_outsider_cannot_tell_victims_objects_from_made_up_ids(
    scenario, victim, outsider, charlie, stripe_api
):
    record = scenario(
        "Tenant isolation sweep",
        injected="every URL pattern x GET/POST/PUT/PATCH/DELETE, called by globex (API key "
        "for /api and /v2, dashboard session otherwise) with acme's private model, version, "
        "alias, upload, prediction, compression job, abuse flag, entitlement, invoice, key, "
        "member and invitation ids; each repeated with a made-up id of the same shape",
        expected="never a 2xx on acme's objects, never a 500, and the victim's answer equal "
        "to the made-up id's (status and body, ids masked): existence does not leak",
    )
    api = key_client(outsider)
    api.defaults["HTTP_ACCEPT"] = "application/json"
    api.raise_request_exception = False  # a 500 is a finding to count, not a crash
    browser = Client(raise_request_exception=False)
    browser.force_login(charlie)
    session = browser.session
    session[SESSION_TENANT_KEY] = outsider.slug
    session.save()

    patterns = list(url_patterns())
    requests = leaks = errors = oracles = skipped = parameterised = known = 0
    problems: list[str] = []
    timings = {"victim": [], "bogus": []}
    statuses: dict[int, int] = {}
    for regex, pattern in patterns:
        name = pattern.name or ""
        if name in SKIP_NAMES:
            skipped += 1
            continue
        values = dict(victim["ids"])
        if name in victim["id_by_route"]:
            values["id"] = victim["id_by_route"][name]
        path = concrete(regex, values)
        if path is None:
            skipped += 1
            continue
        params = normalize(regex)[0][1]
        fake = {k: (bogus_of(v) if k in params and k != "owner" else v) for k, v in values.items()}
        fake_path = concrete(regex, fake)
        fake["bogus name"] = bogus_of(values["name"])  # inside ``rest`` on /v2
        is_api = path.startswith(("/api/", "/v2"))
        client = api if is_api else browser
        parameterised += bool(params)
        for method in METHODS:
            answers = []
            for label, url in (("victim", path), ("bogus", fake_path)):
                kwargs = {"content_type": "application/json", "data": "{}"}
                if method == "GET":
                    kwargs = {}
                started = time.perf_counter()
                response = client.generic(method, url, **kwargs) if kwargs else client.get(url)
                timings[label].append(time.perf_counter() - started)
                requests += 1
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                answers.append(response)
            mine, made_up = answers
            where = f"{method} {path} -> {mine.status_code}"
            if is_error(mine, name) or is_error(made_up, name):
                if name in KNOWN_5XX:
                    known += 1
                    continue
                errors += 1
                problems.append(f"5xx: {where} / {made_up.status_code}")
                continue
            if not params:
                # No id in the URL: the caller's own collection; it must not name acme's
                # private things.
                body = mine.content
                if b"secret-clf" in body or victim["ids"]["key_id"].encode() in body:
                    leaks += 1
                    problems.append(f"leak: {where} names acme's objects")
                continue
            if mine.status_code != made_up.status_code or normalised(
                mine.content, values
            ) != normalised(made_up.content, fake):
                oracles += 1
                problems.append(
                    f"oracle: {where}, made-up id -> {made_up.status_code}: "
                    f"{normalised(mine.content, values)[:150]!r} vs "
                    f"{normalised(made_up.content, fake)[:150]!r}"
                )
            elif 200 <= mine.status_code < 300:
                leaks += 1
                problems.append(f"leak: {where}")

    record.figures = {
        "URL patterns": len(patterns),
        "with ids": parameterised,
        "skipped (logout, secret tokens)": skipped,
        "requests": requests,
        "leaks": leaks,
        "existence oracles": oracles,
        "5xx": errors,
        "known 5xx (reported, not isolation)": f"{known} ({', '.join(sorted(KNOWN_5XX))})",
        "statuses": ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())),
        "median ms victim / made-up": f"{statistics.median(timings['victim']) * 1000:.1f} / "
        f"{statistics.median(timings['bogus']) * 1000:.1f}",
    }
    record.observed = (
        "no leak, no existence oracle, no unexpected 5xx"
        if not problems
        else "; ".join(problems[:15])
    )
    assert not problems, "\n".join(problems)
