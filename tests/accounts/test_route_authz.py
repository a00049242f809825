"""Every route of the site, classified, and called by every kind of caller that should be
refused: signed out, another organisation, a viewer of the owner, a key without the scope, a
key limited to another model, a revoked, an expired key and a key of a suspended
organisation. Each refusal must be the status the rules give, and must change nothing; the
owner's own call (last) must get through, so the ids used are real.

``ROUTES`` classifies every URL pattern; a new route nobody classified fails
``test_every_route_is_classified``. The outsider's view of made-up ids (no existence oracle)
is the reliability suite's (tests/reliability/test_isolation_sweep.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, timedelta

import pytest
from django.apps import apps
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from django.utils.regex_helper import normalize
from rest_framework.test import APIClient

from accounts import keycache
from accounts import services as accounts
from accounts.models import ALL_SCOPES, ApiKey, Membership, Role, Scope, Tenant
from accounts.tenancy import SESSION_TENANT_KEY
from billing.models import Invoice, Transfer
from billing.services import account_for
from inference.models import AbuseFlag, CompressionJob, Prediction
from marketplace import listings
from marketplace import services as registry
from marketplace.models import AccessRequest, Alias, ModelVersion, UploadSession
from marketplace.vault.store import artifact_create
from tests.conftest import make_user

pytestmark = pytest.mark.django_db

SIG = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}],
}
READ, WRITE, INFER = Scope.MODELS_READ, Scope.MODELS_WRITE, Scope.INFERENCE
ADMIN, BILL_R, BILL_W = Scope.ADMIN, Scope.BILLING_READ, Scope.BILLING_WRITE
VIEWER_SCOPES = frozenset({READ})
DENIED = (401, 403, 404)


@dataclass(frozen=True)
class Rule:
    """How one method of one route decides.

    kind: ``api`` (keys and sessions, DRF), ``page`` (dashboard session), ``login`` (any
    signed-in user), ``public`` (anyone). scope: what the key or the role must hold (pages:
    the role's scopes). manage: owners and admins only (pages). target: what the URL names of
    acme's: ``model`` (owner/name: a key limited to other models gets 403), ``row`` (a row
    of one model: a key limited to other models finds nothing, 404), ``tenant`` (a row of the
    organisation), or None (the caller's own collection). ``refused``: a refusal shown as a
    message on a redirect (302) instead of a 403 page, for (viewer, suspended) callers."""

    kind: str
    scope: str | None = None
    manage: bool = False
    target: str | None = None
    body: dict | None = None
    while_suspended: bool = False
    viewer: int | None = None  # the viewer's status when it is not the default refusal
    suspended: int | None = None
    anon: int | None = None
    headers: dict = field(default_factory=dict)
    # The organisation's own record, read whole by any key that may read it (not narrowed
    # to a key's models, as usage and invoices are not).
    org_wide: bool = False
    owner_ok: tuple[int, ...] = ()  # what the owner may get besides a success


def api(scope, target=None, body=None, **kw) -> Rule:
    return Rule("api", scope=scope, target=target, body=body, **kw)


def page(scope=None, target=None, **kw) -> Rule:
    return Rule("page", scope=scope, target=target, **kw)


PUBLIC = Rule("public")
CONSUMER_ACTION = Rule("login", target="model", viewer=302, suspended=302)
M = "api/v1/models/{owner}/{name}"
PREDICT = {"model": "acme/secret-clf", "input": {"x": [[1, 2, 3, 4]]}}
JOB = {"model": "acme/secret-clf", "version": "1", "method": "quantize", "params": {}}
INFER_BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}

ROUTES: dict[str, dict[str, Rule]] = {
    # --- inference API
    "api/v1/predictions": {"GET": api(INFER), "POST": api(INFER, "model", PREDICT)},
    "api/v1/predictions/{id:prediction}": {"GET": api(INFER, "row")},
    "api/v1/predictions/{id:prediction}/cancel": {"POST": api(INFER, "row")},
    "api/v1/compression-jobs": {"GET": api(READ), "POST": api(WRITE, "model", JOB)},
    "api/v1/compression-jobs/{id:job}": {"GET": api(READ, "row")},
    "api/v1/compression-jobs/{id:job}/cancel": {"POST": api(WRITE, "row")},
    "api/v1/compression-jobs/{id:job}/promote": {"POST": api(WRITE, "row", {"alias": "prod"})},
    "api/v1/webhooks/secret": {"GET": api(ADMIN)},
    "api/v1/webhooks/secret/rotate": {"POST": api(ADMIN)},
    "api/v1/abuse-flags": {"GET": api(READ)},
    "api/v1/abuse-flags/{id:flag}": {"GET": api(READ, "row")},
    # --- accounts API
    "api/v1/organisation": {"GET": api(None)},
    "api/v1/members": {"GET": api(ADMIN)},
    "api/v1/members/{id:member}": {
        "GET": api(ADMIN, "tenant"),
        "PATCH": api(ADMIN, "tenant", {"role": "viewer"}),
        "DELETE": api(ADMIN, "tenant"),
    },
    "api/v1/invitations": {
        "GET": api(ADMIN),
        "POST": api(ADMIN, None, {"email": "new2@acme.example", "role": "viewer"}),
    },
    "api/v1/invitations/{id:invitation}": {"GET": api(ADMIN, "tenant")},
    "api/v1/invitations/{id:invitation}/revoke": {"POST": api(ADMIN, "tenant")},
    "api/v1/keys": {"GET": api(ADMIN), "POST": api(ADMIN, None, {"name": "k", "scopes": [READ]})},
    "api/v1/keys/{id:key}": {"GET": api(ADMIN, "tenant")},
    "api/v1/keys/{id:key}/revoke": {"POST": api(ADMIN, "tenant")},
    "api/v1/keys/{id:key}/rotate": {"POST": api(ADMIN, "tenant")},
    "api/v1/audit-events": {"GET": api(ADMIN, org_wide=True)},
    # --- registry API
    "api/v1/models": {"GET": api(READ), "POST": api(WRITE, None, {"name": "brand-new"})},
    M: {"GET": api(READ, "model"), "PATCH": api(WRITE, "model", {"description": "x"})},
    f"{M}/versions": {"GET": api(READ, "model")},
    f"{M}/versions/{{ref}}": {"GET": api(READ, "model")},
    f"{M}/versions/{{ref}}/download": {"GET": api(WRITE, "model", viewer=403)},
    f"{M}/versions/{{number}}/deprecate": {
        "POST": api(WRITE, "model", {"sunset_at": "2031-01-01T00:00:00Z"})
    },
    f"{M}/versions/{{number}}/yank": {"POST": api(ADMIN, "model", {"reason": "bad"})},
    f"{M}/aliases": {"GET": api(READ, "model")},
    f"{M}/aliases/{{alias}}": {
        "GET": api(READ, "model"),
        "PUT": api(WRITE, "model", {"version": 1}),
    },
    f"{M}/uploads": {
        "POST": api(
            WRITE,
            "model",
            {"filename": "a.pt2", "format": "pt2", "size": 10, "sha256": "0" * 64},
        )
    },
    "api/v1/uploads/{id:upload}": {
        "GET": api(WRITE, "row"),
        "PUT": api(WRITE, "row", headers={"HTTP_CONTENT_RANGE": "bytes 0-9/10"}),
        "DELETE": api(WRITE, "row"),
    },
    "api/v1/uploads/{id:upload}/complete": {"POST": api(WRITE, "row")},
    # --- listings API
    f"{M}/listing": {
        "GET": api(READ, "model"),
        "PUT": api(ADMIN, "model", {"summary": "changed"}),
        "DELETE": api(ADMIN, "model"),
    },
    f"{M}/access-requests": {"GET": api(ADMIN, "model")},
    f"{M}/shares": {
        "POST": api(ADMIN, "model", {"tenant": "hooli"}),
        "DELETE": api(ADMIN, "model", {"tenant": "initech"}),
    },
    f"{M}/entitlements": {"GET": api(ADMIN, "model")},
    f"{M}/entitlements/{{id:entitlement}}": {"DELETE": api(ADMIN, "model")},
    f"{M}/entitlements/{{id:entitlement}}/download": {
        "POST": api(ADMIN, "model"),
        "DELETE": api(ADMIN, "model"),
    },
    # The catalogue is public: a signed-out caller gets what a made-up name gets (404 for a
    # private listing), a key limited to other models 403.
    "api/v1/catalogue": {"GET": Rule("api", anon=200)},
    "api/v1/catalogue/{owner}/{name}": {"GET": Rule("api", target="model", anon=404)},
    "api/v1/catalogue/{owner}/{name}/subscribe": {"POST": api(INFER, "model")},
    "api/v1/catalogue/{owner}/{name}/request-access": {
        "POST": api(INFER, "model", {"message": "please"})
    },
    "api/v1/subscriptions": {"GET": api(READ)},
    "api/v1/subscriptions/{id:subscription}": {
        "GET": api(READ, "row"),
        "DELETE": api(INFER, "row"),
    },
    "api/v1/access-requests/{id:access_request}/approve": {"POST": api(ADMIN, "row")},
    "api/v1/access-requests/{id:access_request}/decline": {"POST": api(ADMIN, "row")},
    "api/v1/access-requests/{id:access_request}/withdraw": {"POST": api(ADMIN, "row")},
    # --- billing API
    "api/v1/usage": {"GET": api(BILL_R)},
    "api/v1/billing/settings": {
        "GET": api(BILL_R),
        "PUT": api(BILL_W, None, {"spend_cap": "10.00"}),
    },
    "api/v1/keys/{key_id}/budget": {
        "GET": api(ADMIN, "tenant"),
        "PUT": api(ADMIN, "tenant", {"monthly_limit": "5.00"}),
    },
    "api/v1/invoices": {"GET": api(BILL_R)},
    "api/v1/invoices/{id:invoice}": {"GET": api(BILL_R, "tenant")},
    "api/v1/transfers": {"GET": api(BILL_R)},
    # --- Open Inference Protocol
    "v2": {"GET": PUBLIC},
    "v2/health/live": {"GET": PUBLIC},
    "v2/health/ready": {"GET": PUBLIC},
    "v2/models/{owner}/{name}": {"GET": api(READ, "model")},
    "v2/models/{owner}/{name}/ready": {"GET": api(None, "model")},
    # No worker runs here: the owner's call times out (504) once it got through.
    "v2/models/{owner}/{name}/infer": {"POST": api(INFER, "model", INFER_BODY, owner_ok=(504,))},
    "v2/models/{owner}/{name}/versions/{version}": {"GET": api(READ, "model")},
    "v2/models/{owner}/{name}/versions/{version}/ready": {"GET": api(None, "model")},
    "v2/models/{owner}/{name}/versions/{version}/infer": {
        "POST": api(INFER, "model", INFER_BODY, owner_ok=(504,))
    },
    "v2/{rest}": {"GET": Rule("public", anon=404)},
    # --- accounts pages
    "": {"GET": PUBLIC},
    "signup/": {"GET": PUBLIC},
    "login/": {"GET": PUBLIC},
    "logout/": {},  # ends the caller's own session: nothing of anyone's to check
    "password/change/": {"GET": Rule("login")},
    "password/change/done/": {"GET": Rule("login")},
    "password/reset/": {"GET": PUBLIC},
    "password/reset/done/": {"GET": PUBLIC},
    "password/reset/{uidb64}/{token}/": {},  # a secret token: nothing to swap in
    "password/reset/complete/": {"GET": PUBLIC},
    "invitations/{token}/": {},  # a secret token: nothing to swap in
    "dashboard/": {"GET": page()},
    "dashboard/orgs/new/": {"GET": Rule("login")},
    "dashboard/switch/": {"POST": Rule("login", body={"tenant": "acme"})},
    "dashboard/members/": {"GET": page(), "POST": page(manage=True)},
    # Role changes and removals are refused by the service, shown as a message.
    "dashboard/members/{member_id}/role/": {
        "POST": page(target="tenant", viewer=302, body={"role": "viewer"})
    },
    "dashboard/members/{member_id}/remove/": {
        "POST": page(target="tenant", viewer=302, while_suspended=True)
    },
    "dashboard/invitations/{invitation_id}/revoke/": {
        "POST": page(manage=True, target="tenant", while_suspended=True)
    },
    "dashboard/keys/": {"GET": page(manage=True), "POST": page(manage=True)},
    "dashboard/webhooks/secret/": {"GET": page(manage=True), "POST": page(manage=True)},
    "dashboard/keys/{key_id}/revoke/": {
        "POST": page(manage=True, target="tenant", while_suspended=True)
    },
    "dashboard/keys/{key_id}/rotate/": {"POST": page(manage=True, target="tenant")},
    "dashboard/audit/": {"GET": page(manage=True)},
    # --- registry pages
    "dashboard/models/": {"GET": page(), "POST": page(WRITE, body={"name": "brand-new"})},
    "dashboard/models/{name}/": {"GET": page(target="tenant")},
    "dashboard/models/{name}/versions/": {"GET": page(target="tenant")},
    "dashboard/models/{name}/aliases/": {
        "POST": page(WRITE, target="tenant", body={"alias": "staging", "version": "1"})
    },
    "dashboard/models/{name}/listing/": {
        "GET": page(ADMIN, target="tenant"),
        "POST": page(ADMIN, target="tenant", body={"title": "x", "visibility": "private"}),
    },
    "dashboard/models/{name}/listing/unpublish/": {"POST": page(ADMIN, target="tenant")},
    "dashboard/models/{name}/access/": {
        "GET": page(ADMIN, target="tenant"),
        "POST": page(ADMIN, target="tenant", body={"action": "share", "tenant": "globex"}),
    },
    # --- inference pages
    "dashboard/playground/": {"GET": page()},
    "dashboard/playground/{owner}/{name}/": {"GET": page(target="model")},
    "dashboard/predictions/": {"GET": page(INFER)},
    "dashboard/predictions/rows/": {"GET": page(INFER)},
    "dashboard/compression/": {"GET": page()},
    "dashboard/compression/start/{name}/": {
        "POST": page(WRITE, target="tenant", body={"version": "1", "method": "quantize"})
    },
    "dashboard/compression/{job_id}/": {"GET": page(target="tenant")},
    "dashboard/compression/{job_id}/progress/": {"GET": page(target="tenant")},
    "dashboard/compression/{job_id}/cancel/": {"POST": page(WRITE, target="tenant")},
    # --- billing pages
    "dashboard/billing/": {
        "GET": page(BILL_R),
        "POST": page(BILL_W, body={"spend_cap": "10"}),
    },
    "dashboard/billing/payment-method/": {"GET": page(BILL_W, while_suspended=True)},
    "dashboard/billing/connect/": {"POST": page(manage=True)},
    "dashboard/billing/keys/{key_id}/budget/": {
        "POST": page(manage=True, target="tenant", body={"monthly_limit": "5"})
    },
    # --- catalogue pages: public; the actions refuse with a message on the listing's page
    "catalogue/": {"GET": PUBLIC},
    "catalogue/{owner}/{name}/": {"GET": Rule("public", target="model", anon=404)},
    "catalogue/{owner}/{name}/subscribe/": {"POST": CONSUMER_ACTION},
    "catalogue/{owner}/{name}/request-access/": {"POST": CONSUMER_ACTION},
    "catalogue/{owner}/{name}/unsubscribe/": {"POST": CONSUMER_ACTION},
    # --- the rest
    "billing/stripe/webhook": {"POST": Rule("public", anon=400)},
    "healthz": {"GET": PUBLIC},
    "readyz": {},  # waits for a worker's ping: tests/ops/test_health.py
    "metrics": {"GET": Rule("staff", anon=404)},
    "api/schema/": {"GET": PUBLIC},
    "api/docs/": {"GET": PUBLIC},
}


def url_templates() -> list[str]:
    """Every URL pattern as a path template with ``{param}`` placeholders (admin apart)."""

    def walk(patterns, prefix):
        for p in patterns:
            regex = p.pattern.regex.pattern.removeprefix("^")
            if isinstance(p, URLResolver):
                yield from walk(p.url_patterns, prefix + regex)
            elif isinstance(p, URLPattern):
                yield prefix + regex

    templates = []
    for regex in walk(get_resolver().url_patterns, ""):
        format_string, params = normalize(regex)[0]
        template = format_string % {p: "{" + p + "}" for p in params}
        if not template.startswith("admin/"):
            templates.append(template)
    return templates


def test_every_route_is_classified():
    """A new route fails here until someone writes down who may call it."""
    found = set(url_templates())
    unclassified = sorted(found - {strip(t) for t in ROUTES})
    stale = sorted({strip(t) for t in ROUTES} - found)
    assert not unclassified, f"routes nobody classified: {unclassified}"
    assert not stale, f"classified routes that no longer exist: {stale}"


@pytest.mark.django_db
def test_options_answers_on_every_api_route():
    """A CORS preflight or an API explorer asks OPTIONS: four POSTs that take no body (approve,
    decline, withdraw, complete an upload) were 500s."""
    import re

    from tests.conftest import key_client as all_scopes_client

    acme = accounts.tenant_create(
        slug="optionsco", name="Options", owner=make_user("o@options.example")
    )
    client = all_scopes_client(acme)
    failed = {}
    for template in url_templates():
        if not template.startswith(("api/", "v2/")):
            continue
        response = client.options("/" + re.sub(r"\{[^}]+\}", "x", template))
        if response.status_code >= 500:
            failed[template] = response.status_code
    assert not failed


def strip(template: str) -> str:
    """``{id:job}`` (which of acme's objects fills the id) as the URL pattern names it."""
    out, i = "", 0
    while i < len(template):
        if template[i] == "{":
            end = template.index("}", i)
            out += "{" + template[i + 1 : end].split(":")[0] + "}"
            i = end + 1
        else:
            out += template[i]
            i += 1
    return out


# --- the cast and acme's things -----------------------------------------------------------


@pytest.fixture
def world(tenant, alice, bob, outsider, charlie, settings):
    settings.OIP_TIMEOUT = 0.05
    vera = make_user("vera@acme.example")
    accounts.membership_add(tenant=tenant, user=vera, role=Role.VIEWER, actor=accounts.SYSTEM)
    initech = accounts.tenant_create(
        slug="initech", name="Initech", owner=make_user("dana@initech.example")
    )
    accounts.tenant_create(slug="hooli", name="Hooli", owner=make_user("gavin@hooli.example"))

    def version_of(owner, name) -> ModelVersion:
        model = registry.model_create(tenant=owner, name=name, actor=accounts.SYSTEM)
        version = ModelVersion.objects.create(
            model=model,
            number=1,
            format="pt2",
            status=ModelVersion.Status.READY,
            signature=SIG,
            artifact=artifact_create(tenant=owner, chunks=[b"weights!!!"]),
        )
        model.next_version = 2
        model.save(update_fields=["next_version"])
        return version

    version = version_of(tenant, "secret-clf")
    model = version.model
    version_of(tenant, "other")
    Alias.objects.create(model=model, name="prod", version=version)
    listing = listings.listing_publish(
        model=model, actor=accounts.SYSTEM, visibility="private", gated=True, title="Secret"
    )
    shared = listings.model_share(model=model, tenant_slug="initech", actor=accounts.SYSTEM)
    access_request = AccessRequest.objects.create(listing=listing, tenant=initech)
    theirs = version_of(initech, "pub").model
    their_listing = listings.listing_publish(
        model=theirs, actor=accounts.SYSTEM, visibility="public", title="Pub"
    )
    subscription = listings.listing_subscribe(
        listing=their_listing, tenant=tenant, actor=accounts.SYSTEM
    )
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
    flag = AbuseFlag.objects.create(
        tenant=tenant,
        model=model,
        consumer=initech,
        key_prefix="Initech1",
        window_start=timezone.now(),
    )
    key, _ = accounts.api_key_create(
        tenant=tenant, name="victim", scopes=[INFER], actor=accounts.SYSTEM
    )
    invitation, _ = accounts.invitation_create(
        tenant=tenant, email="new@acme.example", role="viewer", actor=accounts.SYSTEM
    )
    invoice = Invoice.objects.create(
        consumer=tenant, period=date(2026, 1, 1), currency="usd", amount_cents=1234
    )
    Transfer.objects.create(invoice=invoice, publisher=tenant, amount_cents=100, currency="usd")
    member = Membership.objects.get(tenant=tenant, user=bob)
    for each in Tenant.objects.all():
        account_for(each)  # made on first read otherwise, which a snapshot would count
    ids = {
        "owner": "acme",
        "name": "secret-clf",
        "ref": "1",
        "number": "1",
        "version": "1",
        "alias": "prod",
        "rest": "nothing/here",
        "prediction": prediction.public_id,
        "job": job.public_id,
        "job_id": job.public_id,
        "flag": flag.public_id,
        "member": member.public_id,
        "member_id": member.public_id,
        "invitation": invitation.public_id,
        "invitation_id": invitation.public_id,
        "key": key.public_id,
        "key_id": key.public_id,
        "upload": upload.public_id,
        "entitlement": shared.public_id,
        "subscription": subscription.public_id,
        "access_request": access_request.public_id,
        "invoice": invoice.public_id,
    }
    return {"acme": tenant, "ids": ids, "alice": alice, "vera": vera, "charlie": charlie}


def concrete(template: str, ids: dict) -> str:
    out, i = "/", 0
    while i < len(template):
        if template[i] == "{":
            end = template.index("}", i)
            name = template[i + 1 : end]
            out += ids[name.split(":")[-1]]
            i = end + 1
        else:
            out += template[i]
            i += 1
    return out


def key_client(tenant: Tenant, scopes=ALL_SCOPES, **kwargs) -> tuple[APIClient, ApiKey]:
    key, secret = accounts.api_key_create(
        tenant=tenant, name="sweep", scopes=sorted(scopes), actor=accounts.SYSTEM, **kwargs
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client, key


def session_client(user, tenant: Tenant) -> Client:
    client = Client()
    client.force_login(user)
    session = client.session
    session[SESSION_TENANT_KEY] = tenant.slug
    session.save()
    return client


# What a request may change without changing anything: when a key was last used.
VOLATILE = {"last_used_at"}


def snapshot() -> list:
    rows = []
    for label in ("accounts", "marketplace", "inference", "billing", "guardian"):
        for model in apps.get_app_config(label).get_models():
            values = model.objects.order_by("pk").values()
            rows.append(
                (
                    model.__name__,
                    [{k: v for k, v in r.items() if k not in VOLATILE} for r in values],
                )
            )
    return rows


def call(client, method: str, path: str, rule: Rule):
    kwargs = dict(rule.headers)
    if method == "GET":
        return client.get(path, **kwargs)
    if rule.kind == "api" or path.startswith(("/api/", "/v2")):
        body = json.dumps(rule.body or {})
        return client.generic(method, path, body, content_type="application/json", **kwargs)
    return client.post(path, rule.body or {}, **kwargs)


CASES = [
    (template, method)
    for template, methods in ROUTES.items()
    for method in methods
    if ROUTES[template][method].kind in ("api", "page", "login")
]


def expected(rule: Rule, actor: str, method: str) -> int | None:
    """The status ``actor`` must get from acme's object on this route; None: let through."""
    scope = rule.scope
    if rule.kind == "api":
        if actor == "anon":
            return rule.anon if rule.anon is not None else 401
        if actor in ("revoked", "expired"):
            return 401
        if actor == "wrong_ip":
            return 403
        if actor == "suspended":  # its key, even on the public catalogue
            return 403
        if actor == "outsider":
            return 404 if rule.target else None
        if actor == "consumer":  # initech, which acme shared the model with
            if rule.target == "model":
                return None if scope in (None, READ, INFER) else 403
            return 404 if rule.target else None
        if actor == "narrow":
            return 403 if scope else None
        if actor == "other_model":
            return {"model": 403, "row": 404}.get(rule.target)
        if actor == "viewer":
            if rule.viewer is not None:
                return rule.viewer
            return 403 if scope and scope not in VIEWER_SCOPES else None
    if rule.kind in ("page", "login"):
        if actor == "anon":
            return 302
        if actor == "outsider":
            return 404 if rule.target else None
        if actor == "viewer" and rule.viewer is not None:
            return rule.viewer
        if actor == "suspended" and rule.suspended is not None:
            return rule.suspended
        if rule.kind == "login":
            return None
        if actor == "viewer":
            if rule.viewer is not None:
                return rule.viewer
            refused = rule.manage or (scope and scope not in VIEWER_SCOPES)
            return 403 if refused else None
        if actor == "suspended":  # reads its pages, changes nothing
            return None if rule.while_suspended or method == "GET" else 403
    return None


@pytest.mark.parametrize("template, method", CASES, ids=[f"{m} /{t}" for t, m in CASES])
def test_route_refuses_whom_it_should_and_changes_nothing(world, template, method):
    rule = ROUTES[template][method]
    acme = world["acme"]
    path = concrete(template, world["ids"])
    needed = {rule.scope} if rule.scope else set()
    actors: dict[str, Client] = {"anon": APIClient() if rule.kind == "api" else Client()}
    if rule.kind == "api":
        revoked, key = key_client(acme)
        accounts.api_key_revoke(key=key, actor=accounts.SYSTEM)
        expired, key = key_client(acme, expires_at=timezone.now() + timedelta(days=1))
        ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
        actors.update(
            revoked=revoked,
            expired=expired,
            outsider=key_client(Tenant.objects.get(slug="globex"))[0],
            consumer=key_client(Tenant.objects.get(slug="initech"))[0],
            narrow=key_client(acme, ALL_SCOPES - needed)[0],
            other_model=key_client(acme, allowed_models=["acme/other"])[0],
            wrong_ip=key_client(acme, allowed_ips=["203.0.113.0/24"])[0],
            viewer=session_client(world["vera"], acme),
        )
        owner = key_client(acme)[0]
    else:
        actors.update(
            outsider=session_client(world["charlie"], Tenant.objects.get(slug="globex")),
            viewer=session_client(world["vera"], acme),
        )
        owner = session_client(world["alice"], acme)
    suspended = owner
    keycache.clear()

    problems = []
    through = False
    for actor, client in [*actors.items(), ("suspended", suspended)]:
        if actor == "suspended":
            Tenant.objects.filter(pk=acme.pk).update(status=Tenant.Status.SUSPENDED)
            keycache.clear()
        want = expected(rule, actor, method)
        # A refused GET changes nothing if the owner's GET does not (test_get_changes_nothing).
        checked = want is not None and method != "GET"
        before = snapshot() if checked else None
        response = call(client, method, path, rule)
        status = response.status_code
        changed = checked and snapshot() != before
        if actor == "suspended":
            Tenant.objects.filter(pk=acme.pk).update(status=Tenant.Status.ACTIVE)
            keycache.clear()
        if status >= 500 and status not in rule.owner_ok:
            problems.append(f"{actor}: {status}")
        elif want is not None and status != want:
            problems.append(f"{actor}: {status}, want {want}: {response.content[:200]!r}")
        elif (
            want is None
            and rule.target is None
            and rule.kind == "api"
            and not rule.org_wide
            and actor in ("outsider", "other_model")
            and b"secret-clf" in response.content
        ):
            problems.append(f"{actor}: {status} names acme/secret-clf")
        if changed:
            problems.append(f"{actor} ({status}) changed something")
        if want is None and status < 400:
            through = True
    if not (through and method != "GET"):  # a change already made is not made twice
        response = call(owner, method, path, rule)
        status = response.status_code
        if status not in rule.owner_ok and (status in DENIED or status >= 500):
            problems.append(f"owner: {status}: {response.content[:200]!r}")
    assert not problems, f"{method} {path}:\n" + "\n".join(problems)


OPEN_CASES = [
    (template, method)
    for template, methods in ROUTES.items()
    for method, rule in methods.items()
    if rule.kind in ("public", "staff")
]


@pytest.mark.parametrize("template, method", OPEN_CASES, ids=[f"{m} /{t}" for t, m in OPEN_CASES])
def test_open_routes_answer_anyone_and_staff_routes_nobody_else(world, template, method):
    rule = ROUTES[template][method]
    path = concrete(template, world["ids"])
    for client in (Client(), session_client(world["alice"], world["acme"])):
        response = call(client, method, path, rule)
        assert response.status_code < 500, response.content[:300]
        if rule.anon is not None and "_auth_user_id" not in client.session:
            assert response.status_code == rule.anon, response.content[:300]


def admin_paths() -> list[str]:
    def walk(patterns, prefix):
        for p in patterns:
            regex = p.pattern.regex.pattern.removeprefix("^")
            if isinstance(p, URLResolver):
                yield from walk(p.url_patterns, prefix + regex)
            elif isinstance(p, URLPattern):
                yield prefix + regex

    paths = []
    for regex in walk(get_resolver().url_patterns, ""):
        format_string, params = normalize(regex)[0]
        if format_string.startswith("admin/") and format_string not in (
            "admin/login/",
            "admin/logout/",
        ):
            values = {p: "1" if p != "app_label" else "accounts" for p in params}
            paths.append("/" + format_string % values)
    return paths


def test_admin_console_turns_away_members_who_are_not_staff(world):
    """The owner of an organisation is not an operator: every admin page sends them to the
    admin's sign-in, as it does a signed-out caller."""
    alice = session_client(world["alice"], world["acme"])
    problems = []
    for path in admin_paths():
        for client in (Client(), alice):
            for method in ("get", "post"):
                response = getattr(client, method)(path)
                if response.status_code != 302 or "/admin/login/" not in response["Location"]:
                    problems.append(f"{method.upper()} {path}: {response.status_code}")
    assert not problems, "\n".join(problems)


# GETs that change something on purpose: a download is audited; the card form opens a Stripe
# SetupIntent.
# Reads that record themselves: a download, and the webhook secret (audited; made on the
# first read if no delivery made it before).
GET_WRITES = {
    "api/v1/models/{owner}/{name}/versions/{ref}/download",
    "api/v1/webhooks/secret",
    "dashboard/webhooks/secret/",
}
GET_CASES = [
    t
    for t, methods in ROUTES.items()
    if methods and t not in GET_WRITES and t != "dashboard/billing/payment-method/"
]


@pytest.mark.parametrize("template", GET_CASES, ids=[f"GET /{t}" for t in GET_CASES])
def test_get_changes_nothing(world, template):
    """An action is a POST (with the CSRF check) or another unsafe method: a GET by the
    owner, the widest rights there are, must not change anything, on any route."""
    acme = world["acme"]
    path = concrete(template, world["ids"])
    api_route = path.startswith(("/api/", "/v2"))
    client = key_client(acme)[0] if api_route else session_client(world["alice"], acme)
    before = snapshot()
    response = client.get(path)
    assert response.status_code < 500 or template == "readyz"
    assert snapshot() == before, f"GET {path} ({response.status_code}) changed something"
