"""Abuse: API keys guessed, revoked, expired and sent where they leak; Stripe webhooks forged,
replayed and stale; hostile request bodies and model files; the dashboard's CSRF, XSS,
clickjacking and session fixation defences; a model-extraction flood."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import random
import re
import statistics
import time
import zipfile
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import secrets
from accounts import services as accounts
from accounts.models import ApiKey
from billing.models import StripeEvent
from inference.models import AbuseFlag
from marketplace import listings
from marketplace import services as registry
from marketplace.models import ModelVersion
from tests.conftest import PASSWORD, key_client, make_user
from tests.inference.conftest import Classifier, export, ready_version, signature
from tests.marketplace.conftest import put_all, sha256

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]


def bearer(secret: str) -> APIClient:
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def forged_key(prefix: str | None = None) -> str:
    """A well-formed key (valid checksum) with a random secret, on ``prefix`` if given."""
    prefix = prefix or secrets.random_base62(8)
    body = f"{secrets.KEY_PREFIX}{prefix}_{secrets.random_base62(43)}"
    return body + secrets._checksum(body)


def test_api_keys_cannot_be_guessed_reused_or_leaked(scenario, knobs, tenant, caplog):
    record = scenario(
        "API keys: brute force, revoked, expired, query string, logs",
        injected=f"{knobs['brute_force']} well-formed keys with random prefixes, as many on "
        "the real key's prefix with a wrong secret, malformed keys; a revoked and an expired "
        "key; the real key in ?api_key=, ?key= and ?token=; all logs captured at DEBUG",
        expected="401 for every guess (timing of unknown prefix and wrong secret alike), "
        "revoked and expired keys 401 with a reason, a key in the query string never "
        "authenticates, no secret ever appears in a log line",
    )
    caplog.set_level(logging.DEBUG)
    api = key_client(tenant)
    real = api.secret
    real_prefix = secrets.parse_api_key(real)
    url = "/api/v1/models"
    assert api.get(url).status_code == 200

    statuses: dict[int, int] = {}
    timings: dict[str, list[float]] = {"unknown prefix": [], "known prefix": []}
    for i in range(knobs["brute_force"]):
        for label, guess in (
            ("unknown prefix", forged_key()),
            ("known prefix", forged_key(real_prefix)),
        ):
            started = time.perf_counter()
            status = bearer(guess).get(url).status_code
            if i >= 10:  # after warm-up
                timings[label].append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
    for junk in ["mm_live_", real[:-1], real + "x", real.upper(), "sk_live_" + real[8:], "x" * 500]:
        status = bearer(junk).get(url).status_code
        statuses[status] = statuses.get(status, 0) + 1

    revoked = key_client(tenant)
    accounts.api_key_revoke(
        key=ApiKey.objects.get(prefix=secrets.parse_api_key(revoked.secret)),
        actor=accounts.SYSTEM,
    )
    expired = key_client(tenant, expires_at=timezone.now() + timedelta(seconds=1))
    ApiKey.objects.filter(prefix=secrets.parse_api_key(expired.secret)).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    revoked_answer = revoked.get(url)
    expired_answer = expired.get(url)

    anonymous = APIClient(raise_request_exception=False)
    in_query = [
        anonymous.get(url, {name: real}).status_code for name in ("api_key", "key", "token")
    ]
    in_query += [anonymous.post("/api/v1/predictions?api_key=" + real, {}).status_code]

    logged = [r for r in caplog.records if real in r.getMessage() or real in str(r.args)]
    logged_guess = [r for r in caplog.records if "mm_live_" in r.getMessage()]
    median = {k: statistics.median(v) * 1e6 for k, v in timings.items()}

    record.figures = {
        "guesses": sum(statuses.values()),
        "answers": ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())),
        "median us unknown prefix / known prefix wrong secret": (
            f"{median['unknown prefix']:.0f} / {median['known prefix']:.0f}"
        ),
        "revoked / expired": f"{revoked_answer.status_code} / {expired_answer.status_code}",
        "key in query string": ", ".join(map(str, in_query)),
        "log records scanned": len(caplog.records),
        "log records with a key": len(logged) + len(logged_guess),
    }
    assert set(statuses) == {401}
    assert revoked_answer.status_code == 401 and "revoked" in revoked_answer.json()["detail"]
    assert expired_answer.status_code == 401 and "expired" in expired_answer.json()["detail"]
    assert set(in_query) == {401}
    assert not logged and not logged_guess
    # The secret's comparison is constant-time (an HMAC and compare_digest either way); the
    # lookup is not: a known prefix comes from the key cache, an unknown one costs a database
    # query each time. Reported, not failed: a prefix is 8 base62 characters (2**47) and
    # knowing one brings a guess no closer to the 256-bit secret.
    ratio = max(median.values()) / min(median.values())
    record.figures["timing ratio"] = f"{ratio:.2f}"
    record.observed = (
        f"every guess 401; revoked and expired keys 401 with the reason; query-string keys "
        f"401; no key in {len(caplog.records)} log records; timing ratio {ratio:.2f}"
    )


def stripe_signature(payload: bytes, *, at: int | None = None, secret: str | None = None) -> str:
    at = at or int(time.time())
    secret = secret or os.environ["STRIPE_WEBHOOK_SECRET"]
    mac = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def test_stripe_webhooks_forged_replayed_or_stale_are_refused(scenario, caplog):
    record = scenario(
        "Stripe webhooks: forged, replayed, stale",
        injected="POSTs to /billing/stripe/webhook: no signature, a signature under another "
        "secret, a valid signature over another body, a valid event sent 5 times, a valid "
        "signature 10 minutes old, a signed body that is not an event",
        expected="400 for every forged or stale one and nothing stored; the replayed event "
        "stored once (200 'duplicate' after the first); never a 500",
    )
    client = Client(raise_request_exception=False)
    url = "/billing/stripe/webhook"
    event = json.dumps(
        {"id": "evt_reliability_1", "object": "event", "type": "invoice.paid", "data": {}}
    ).encode()

    def post(body: bytes, signature: str | None):
        headers = {"HTTP_STRIPE_SIGNATURE": signature} if signature is not None else {}
        return client.post(url, body, content_type="application/json", **headers)

    forged = [
        post(event, None),
        post(event, ""),
        post(event, stripe_signature(event, secret="whsec_attacker")),
        post(event, stripe_signature(b'{"id": "evt_other"}')),
        post(event, "t=1,v1=" + "0" * 64),
        post(event, stripe_signature(event, at=int(time.time()) - 600)),
        post(b'{"object": "event"}', stripe_signature(b'{"object": "event"}')),
    ]
    stored_after_forged = StripeEvent.objects.count()
    replays = [post(event, stripe_signature(event)) for _ in range(5)]

    record.figures = {
        "forged or stale": len(forged) - 1,
        "their answers": ", ".join(str(r.status_code) for r in forged),
        "replays": len(replays),
        "replay answers": ", ".join(f"{r.status_code} {r.content.decode()}" for r in replays),
        "events stored": StripeEvent.objects.count(),
    }
    assert [r.status_code for r in forged] == [400] * len(forged)
    assert stored_after_forged == 0
    assert [r.status_code for r in replays] == [200] * 5
    assert [r.content for r in replays] == [b"ok"] + [b"duplicate"] * 4
    assert StripeEvent.objects.filter(event_id="evt_reliability_1").count() == 1
    record.observed = "forged and stale: 400, nothing stored; the replayed event stored once"


def zip_bomb(base: bytes) -> bytes:
    """An export archive with one extra entry that inflates 4 MiB -> 2 GiB."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(base)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            target.writestr(info, source.read(info))
        root = source.namelist()[0].split("/")[0]
        with target.open(
            zipfile.ZipInfo(f"{root}/data/weights/bomb"), "w", force_zip64=True
        ) as bomb:
            block = bytes(1024 * 1024)
            for _ in range(2048):
                bomb.write(block)
    return out.getvalue()


def lying_safetensors() -> bytes:
    """A safetensors header that claims a 4 GiB tensor over 16 bytes of data."""
    header = json.dumps(
        {"fc1.weight": {"dtype": "F32", "shape": [1024, 1024, 1024], "data_offsets": [0, 2**32]}}
    ).encode()
    return len(header).to_bytes(8, "little") + header + bytes(16)


def test_hostile_bodies_and_files_get_a_clear_4xx(scenario, settings, tenant, model_files):
    record = scenario(
        "Hostile bodies and model files",
        injected="a prediction body over MM_MAX_INPUT_BYTES, JSON nested 100,000 deep, "
        "bodies as text/plain, XML, multipart and form data, invalid UTF-8, a chunk past "
        "the declared size, a zip bomb (.pt2 with a 2 GiB entry compressed to a few MiB) "
        "and a safetensors file whose header lies about its tensor's size, each uploaded "
        "and validated in a sandboxed model host",
        expected="a 4xx that says what is wrong for every request, never a 500; the hostile "
        "files end as failed versions with a reason, never ready",
    )
    settings.MODEL_LOAD_TIMEOUT = 30
    ready_version(tenant, "clf", export(Classifier()), "pt2", signature(4, 3))
    api = key_client(tenant)
    api.raise_request_exception = False
    answers: dict[str, int] = {}

    huge = b'{"model": "acme/clf", "input": {"x": [' + b"[1.0, 2.0, 3.0, 4.0]," * 500_000
    huge += b"[1, 2, 3, 4]]}}"
    answers["huge JSON (10 MB)"] = api.generic(
        "POST", "/api/v1/predictions", huge, content_type="application/json"
    ).status_code
    nested = b'{"model": "acme/clf", "input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    answers["JSON nested 100,000 deep"] = api.generic(
        "POST", "/api/v1/predictions", nested, content_type="application/json"
    ).status_code
    for label, body, ctype in [
        ("text/plain", b"model=acme/clf", "text/plain"),
        ("XML", b"<predict><model>acme/clf</model></predict>", "application/xml"),
        ("multipart", b"--x\r\n\r\n--x--", "multipart/form-data; boundary=x"),
        ("form", b"model=acme%2Fclf&input=1", "application/x-www-form-urlencoded"),
        ("invalid UTF-8", b'{"model": "acme/\xff\xfe"}', "application/json"),
        ("JSON array", b"[1, 2, 3]", "application/json"),
        (
            "JSON NaN",
            b'{"model": "acme/clf", "input": {"x": [[NaN, 1, 2, 3]]}}',
            "application/json",
        ),
    ]:
        answers[label] = api.generic(
            "POST", "/api/v1/predictions", body, content_type=ctype
        ).status_code
        answers[f"{label} (new model)"] = api.generic(
            "POST", "/api/v1/models", body, content_type=ctype
        ).status_code

    registry.model_create(tenant=tenant, name="hostile", actor=accounts.SYSTEM)
    failures: dict[str, str] = {}
    small_cnn = {
        "architecture": "small_cnn",
        "architecture_config": {"in_channels": 1, "image_size": 28, "classes": 10},
    }
    for label, data, fmt, extra in [
        ("zip bomb", zip_bomb(model_files["pt2"]), "pt2", {}),
        ("lying safetensors", lying_safetensors(), "safetensors", small_cnn),
    ]:
        upload = api.post(
            "/api/v1/models/acme/hostile/uploads",
            {
                "filename": f"x.{fmt}",
                "format": fmt,
                "size": len(data),
                "sha256": sha256(data),
                **extra,
            },
            format="json",
        )
        answers[f"{label}: upload start"] = upload.status_code
        if upload.status_code != 201:
            failures[label] = f"refused at start: {upload.json()['detail'][:160]}"
            continue
        session = upload.json()
        past = api.generic(
            "PUT",
            session["upload_url"],
            b"x" * 10,
            content_type="application/octet-stream",
            HTTP_CONTENT_RANGE=f"bytes {len(data)}-{len(data) + 9}/{len(data)}",
        )
        answers[f"{label}: chunk past the end"] = past.status_code
        put_all(api, session, data)
        complete = api.post(f"{session['upload_url']}/complete")
        answers[f"{label}: complete"] = complete.status_code
        if complete.status_code == 201:
            from workers.services import version_validate

            version = version_validate(version_id=complete.json()["id"])
            version = ModelVersion.objects.get(pk=version.pk) if version else None
            failures[label] = f"{version.status}: {version.failure_reason[:120]}"
        else:
            failures[label] = f"refused at complete: {complete.json()['detail'][:120]}"

    record.figures = {**{k: v for k, v in answers.items()}, **failures}
    server_errors = {k: v for k, v in answers.items() if v >= 500}
    record.observed = (
        "no 500; "
        + "; ".join(f"{k}: {v}" for k, v in failures.items())
        + (f"; 5xx: {server_errors}" if server_errors else "")
    )
    assert not server_errors
    for label, outcome in failures.items():
        assert not outcome.startswith("ready"), (label, outcome)


def dashboard_post_urls() -> list[str]:
    """Every dashboard URL pattern, concrete (ids need not exist: CSRF is checked first)."""
    from django.utils.regex_helper import normalize

    urls = []

    def walk(patterns, prefix):
        for p in patterns:
            regex = prefix + p.pattern.regex.pattern.removeprefix("^")
            if isinstance(p, URLResolver):
                walk(p.url_patterns, regex)
            elif isinstance(p, URLPattern):
                fmt, params = normalize(regex)[0]
                urls.append("/" + fmt % {k: "x1" for k in params})

    walk(get_resolver().url_patterns, "")
    return [u for u in urls if not u.startswith(("/api/", "/v2", "/billing/stripe/"))]


XSS = '<script>alert("xss")</script><img src=x onerror=alert(1)>'


def test_dashboard_resists_csrf_xss_framing_and_session_fixation(scenario, tenant, alice):
    record = scenario(
        "Dashboard: CSRF, XSS, clickjacking, session fixation",
        injected="a POST without a CSRF token to every non-API URL pattern while signed in; "
        "a model description, listing title, summary and card holding script and event "
        "handler markup, rendered on the dashboard and the public catalogue; a session key "
        "planted before sign-in",
        expected="403 for every POST without a token; the markup shown escaped or "
        "sanitised, never live; X-Frame-Options DENY and no framing allowed by CSP; a new "
        "session key after sign-in",
    )
    browser = Client(enforce_csrf_checks=True, raise_request_exception=False)
    browser.force_login(alice)
    urls = dashboard_post_urls()
    csrf = {url: browser.post(url, {"x": "1"}).status_code for url in urls}
    not_refused = {u: s for u, s in csrf.items() if s != 403}

    model = registry.model_create(
        tenant=tenant, name="xss-probe", description=XSS, actor=accounts.SYSTEM
    )
    listings.listing_publish(
        model=model,
        actor=accounts.SYSTEM,
        visibility="public",
        title=XSS[:60],
        summary=XSS,
        card_markdown=f"# Card\n\n{XSS}\n\n[click](javascript:alert(1))",
    )
    pages = {
        "dashboard model": browser.get("/dashboard/models/xss-probe/"),
        "catalogue page": Client().get("/catalogue/acme/xss-probe/"),
        "catalogue index": Client().get("/catalogue/?q=xss"),
    }
    live = {
        name: bool(re.search(rb"<script>alert|<img[^>]*onerror|href=.?javascript:", page.content))
        for name, page in pages.items()
    }
    framing = {name: page.headers.get("X-Frame-Options") for name, page in pages.items()}

    fixation = Client()
    fixation.get("/login/")
    planted = fixation.cookies["sessionid"].value if "sessionid" in fixation.cookies else None
    fixation.cookies["sessionid"] = "plantedsessionkey0123456789abcdef"
    login = fixation.post("/login/", {"username": alice.email, "password": PASSWORD})
    after = fixation.cookies["sessionid"].value

    record.figures = {
        "POST URLs tried without a token": len(urls),
        "refused (403)": len(urls) - len(not_refused),
        "not refused": ", ".join(f"{u} {s}" for u, s in not_refused.items()) or "none",
        "pages with live markup": sum(live.values()),
        "X-Frame-Options": ", ".join(f"{k}: {v}" for k, v in framing.items()),
        "session key rotated at sign-in": after != "plantedsessionkey0123456789abcdef",
    }
    assert login.status_code == 302, login.content[:300]
    assert planted is None or planted != after
    assert after != "plantedsessionkey0123456789abcdef"
    assert not not_refused
    assert all(page.status_code == 200 for page in pages.values()), {
        k: p.status_code for k, p in pages.items()
    }
    assert not any(live.values()), live
    assert set(framing.values()) == {"DENY"}
    # Each page's policy as its directives (django-csp writes them in no fixed order).
    policies = [
        {d.strip() for d in page.headers.get("Content-Security-Policy", "").split(";")}
        for page in pages.values()
    ]
    assert all({"frame-ancestors 'none'", "script-src 'self'"} <= p for p in policies), policies
    record.observed = (
        f"all {len(urls)} POSTs refused with 403; markup escaped on "
        f"{len(pages)} pages; X-Frame-Options DENY; session key rotated at sign-in"
    )


def test_model_extraction_flood_is_limited_and_flagged_for_the_publisher(
    scenario, knobs, tenant, outsider, settings
):
    flood = knobs["extraction_flood"]
    limit = 100
    record = scenario(
        "Model extraction: a flood of high-entropy queries",
        injected=f"one globex key sends {flood} predictions of uniformly random inputs to "
        f"acme's listed classifier as fast as it can (rate limit {limit}/min per key); "
        "beside it, another globex key making a few dozen ordinary calls, a globex key "
        "repeating one input in a loop, and acme's own key flooding its own model",
        expected="the flood is cut to the limit with 429 and Retry-After; exactly one flag, "
        "for that key and model, visible to acme (its API list and the admin), 404 to "
        "globex and to a third organisation; the ordinary key, the loop and acme's own key "
        "(limited exactly alike) are not flagged",
    )
    settings.RATE_LIMIT_PER_MINUTE = limit
    version = ready_version(tenant, "clf", export(Classifier()), "pt2", signature(4, 3))
    listing = listings.listing_publish(
        model=version.model,
        actor=accounts.SYSTEM,
        visibility="public",
        title="Classifier",
        price_per_call="0",
        price_per_second="0",
    )
    listings.listing_subscribe(listing=listing, tenant=outsider, actor=accounts.SYSTEM)
    rng = random.Random(11)

    def send(client, count: int, *, distinct: bool = True) -> dict[int, int]:
        statuses: dict[int, int] = {}
        for _ in range(count):
            x = [[rng.uniform(-1e3, 1e3) for _ in range(4)]] if distinct else [[1, 2, 3, 4]]
            response = client.post(
                "/api/v1/predictions", {"model": "acme/clf", "input": {"x": x}}, format="json"
            )
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 429:
                assert int(response["Retry-After"]) >= 0
        return statuses

    thief = key_client(outsider)
    started = time.monotonic()
    flooded = send(thief, flood)
    seconds = time.monotonic() - started
    ordinary = send(key_client(outsider), 30)
    looping = send(key_client(outsider), limit + 60, distinct=False)
    own = send(key_client(tenant), limit + 60)

    flags = list(AbuseFlag.objects.select_related("model__tenant"))
    thief_prefix = secrets.parse_api_key(thief.secret)
    publisher_view = key_client(tenant).get("/api/v1/abuse-flags").json()["results"]
    third = accounts.tenant_create(
        slug="initech", name="Initech", owner=make_user("dana@initech.example")
    )
    others = [
        key_client(outsider).get(f"/api/v1/abuse-flags/{flags[0].public_id}").status_code,
        key_client(third).get(f"/api/v1/abuse-flags/{flags[0].public_id}").status_code,
    ]
    others_list = key_client(outsider).get("/api/v1/abuse-flags").json()["results"]
    admin_user = make_user("ops@modelmarket.example")
    admin_user.is_staff = admin_user.is_superuser = True
    admin_user.save()
    console = Client()
    console.force_login(admin_user)
    admin_page = console.get("/admin/inference/abuseflag/")

    flag = flags[0] if flags else None
    record.figures = {
        "flood": ", ".join(f"{k}: {v}" for k, v in sorted(flooded.items())),
        "flood requests per second": round(flood / seconds),
        "flags": len(flags),
        "flag: rejected / calls / distinct inputs": flag
        and f"{flag.rejected} / {flag.predictions} / {flag.distinct_inputs}",
        "flag: first seen to last seen": flag
        and f"{(flag.last_seen - flag.first_seen).total_seconds():.1f} s",
        "ordinary key": ", ".join(f"{k}: {v}" for k, v in sorted(ordinary.items())),
        "looping key": ", ".join(f"{k}: {v}" for k, v in sorted(looping.items())),
        "acme's own key": ", ".join(f"{k}: {v}" for k, v in sorted(own.items())),
        "acme's API list": len(publisher_view),
        "globex / initech asking for the flag": " / ".join(map(str, others)),
        "admin list": admin_page.status_code,
    }
    record.observed = (
        f"the flood got {flooded.get(201, 0)} through and {flooded.get(429, 0)} refused with "
        f"429; {len(flags)} flag, for the flooding key: "
        f"{bool(flag and flag.key_prefix == thief_prefix)}; shown to acme, "
        f"{others[0]}/{others[1]} to the others; the ordinary key, the loop and acme's own "
        "key not flagged"
    )
    assert set(flooded) == {201, 429} and flooded[201] >= limit
    assert len(flags) == 1 and flag.key_prefix == thief_prefix
    assert (flag.tenant, flag.consumer, flag.model) == (tenant, outsider, version.model)
    assert flag.rejected >= flooded[429] - flooded[429] % 20
    assert [f["id"] for f in publisher_view] == [flag.public_id]
    assert others == [404, 404] and others_list == []
    assert admin_page.status_code == 200 and flag.public_id in admin_page.content.decode()
    assert looping.get(429) and own.get(429) and set(ordinary) == {201}
