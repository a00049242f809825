"""Listings, the catalogue, and who may use a model: subscriptions, shares, access requests
and download grants.

The rights themselves are django-guardian object permissions on the model, granted to the
consumer tenant's group; an ``Entitlement`` row records why the group holds them. Every read
of a right goes to the database (``selectors.tenant_perms``), so a revocation takes effect
on the next request.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

import nh3
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml

from accounts.exceptions import Conflict, Forbidden, NotFound
from accounts.models import Tenant
from accounts.services import Actor, audit_record
from accounts.tenancy import Access
from marketplace.models import AccessRequest, Entitlement, Listing, Model, ModelVersion
from marketplace.selectors import (
    PUBLICLY_VISIBLE,
    model_get,
    refuse_if_taken_down,
    refuse_unless_key_allows,
    tenant_perms,
)

# --- validation -------------------------------------------------------------------------------

# Common SPDX identifiers, keyed by lower case: SPDX matching is case-insensitive, and we
# store the canonical spelling.
SPDX_LICENSES = {
    spdx.lower(): spdx
    for spdx in (
        "MIT",
        "Apache-2.0",
        "BSD-2-Clause",
        "BSD-3-Clause",
        "ISC",
        "Unlicense",
        "CC0-1.0",
        "CC-BY-4.0",
        "CC-BY-SA-4.0",
        "CC-BY-NC-4.0",
        "CC-BY-NC-SA-4.0",
        "CC-BY-ND-4.0",
        "CC-BY-NC-ND-4.0",
        "GPL-2.0-only",
        "GPL-2.0-or-later",
        "GPL-3.0-only",
        "GPL-3.0-or-later",
        "LGPL-2.1-only",
        "LGPL-3.0-only",
        "LGPL-3.0-or-later",
        "AGPL-3.0-only",
        "AGPL-3.0-or-later",
        "MPL-2.0",
        "EPL-2.0",
        "Zlib",
        "BigScience-OpenRAIL-M",
        "CreativeML-OpenRAIL-M",
        "proprietary",
    )
}
LICENSE_REF_RE = re.compile(r"LicenseRef-[A-Za-z0-9.-]+")
LICENSE_EXAMPLES = "MIT, Apache-2.0, BSD-3-Clause, CC-BY-4.0, GPL-3.0-only, MPL-2.0"
TAG_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
TAG_FRAGMENT_RE = re.compile(r"[a-z0-9-]+")  # what can appear inside a tag
MAX_TAGS = 20
# A listing's example input is shown on every catalogue and playground view of it; a
# version's (sent with its upload) fills the playground and goes to the model host that
# validates the version. One rule for both: example_input_clean.
MAX_EXAMPLE_INPUT_BYTES = 1024 * 1024
MAX_EXAMPLE_INPUT_DEPTH = 40
MAX_TAG_LENGTH = 40
# The currencies a listing may be priced in (ISO 4217, lowercase as Stripe takes them), with
# the digits of each one's minor unit: Stripe's amounts count in it (cents; whole yen for JPY).
# Not offered: Stripe's three-decimal currencies (BHD, JOD, KWD, OMR, TND), which it charges
# rounded to tens, and those it takes in two decimals but charges whole (HUF, ISK, TWD).
ZERO_DECIMAL_CURRENCIES = frozenset(
    {
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    }
)
TWO_DECIMAL_CURRENCIES = frozenset(
    {
        "aed",
        "aud",
        "brl",
        "cad",
        "chf",
        "cny",
        "czk",
        "dkk",
        "eur",
        "gbp",
        "hkd",
        "ils",
        "inr",
        "mxn",
        "myr",
        "nok",
        "nzd",
        "php",
        "pln",
        "ron",
        "sar",
        "sek",
        "sgd",
        "thb",
        "try",
        "usd",
        "zar",
    }
)
CURRENCIES = ZERO_DECIMAL_CURRENCIES | TWO_DECIMAL_CURRENCIES
PRICE_PLACES = 6
PRICE_LIMIT = Decimal(10) ** 6  # the column holds 12 digits, 6 of them after the point

# What a model card may contain once rendered: text formatting, links, images, code, tables.
CARD_TAGS = {
    "a",
    "abbr",
    "b",
    "blockquote",
    "br",
    "code",
    "dd",
    "del",
    "details",
    "dl",
    "dt",
    "em",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "kbd",
    "li",
    "ol",
    "p",
    "pre",
    "s",
    "samp",
    "strong",
    "sub",
    "summary",
    "sup",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "tr",
    "ul",
}
CARD_ATTRIBUTES = {
    "a": {"href", "title"},
    "abbr": {"title"},
    "img": {"src", "alt", "title", "width", "height"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan"},
    "ol": {"start"},
}
_card_cleaner = nh3.Cleaner(
    tags=CARD_TAGS,
    clean_content_tags={"script", "style"},
    attributes=CARD_ATTRIBUTES,
    url_schemes={"http", "https", "mailto"},
    link_rel="noopener noreferrer nofollow",
)


# CommonMark with tables and strikethrough, in time linear in the card's length: Python-Markdown
# took time growing with its square on runs of "[" (15 s for 8,000 of them, minutes of a web
# thread for a card within the size limit).
_card_markdown = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])


def _card_image(renderer, tokens, idx, options, env) -> str:
    """An image of this site's as an image; one on another host as a link to it, titled with
    its host, or as its text alone inside a link (a badge). Viewers' browsers fetch nothing
    from other hosts unasked (the pages' policy, config/csp.py, would refuse it anyway): the
    publisher would learn each viewer's address and the time of each visit."""
    token = tokens[idx]
    src = token.attrGet("src") or ""
    target = urlsplit(src.replace("\\", "/"))  # browsers read "/\\host" as "//host"
    if not target.scheme and not target.netloc:
        return renderer.image(tokens, idx, options, env)
    text = escapeHtml(renderer.renderInlineAsText(token.children or [], options, env) or src)
    if env.get("open_links"):
        return text
    host = escapeHtml(target.hostname or "another site")
    return f'<a href="{escapeHtml(src)}" title="Image on {host}">Image: {text}</a>'


def _card_link(renderer, tokens, idx, options, env) -> str:
    """Counts the links open around what is being rendered (for ``_card_image``)."""
    env["open_links"] = env.get("open_links", 0) + (1 if tokens[idx].nesting > 0 else -1)
    return renderer.renderToken(tokens, idx, options, env)


_card_markdown.add_render_rule("image", _card_image)
_card_markdown.add_render_rule("link_open", _card_link)
_card_markdown.add_render_rule("link_close", _card_link)


def card_render(card_markdown: str) -> str:
    """The card as safe HTML: Markdown (raw HTML allowed) rendered, then sanitised, so no
    script, style, event handler or ``javascript:`` URL survives."""
    return card_sanitise(_card_markdown.render(card_markdown))


def card_sanitise(html: str) -> str:
    return _card_cleaner.clean(html)


def license_clean(value: str) -> str:
    value = value.strip()
    canonical = SPDX_LICENSES.get(value.lower())
    if canonical:
        return canonical
    if LICENSE_REF_RE.fullmatch(value):
        return value
    raise ValidationError(
        {
            "license": f"'{value}' is not a licence we recognise. Use an SPDX identifier "
            f"such as {LICENSE_EXAMPLES}; 'proprietary'; or 'LicenseRef-<name>' for a "
            "licence of your own."
        }
    )


def price_clean(field: str, value: Decimal | str | int) -> Decimal:
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        raise ValidationError({field: "Give the price as a decimal number."}) from None
    if not price.is_finite():
        raise ValidationError({field: "Give the price as a decimal number."})
    if price < 0:
        raise ValidationError({field: "A price cannot be negative."})
    if price >= PRICE_LIMIT:
        raise ValidationError({field: f"A price must be below {PRICE_LIMIT}."})
    # Compared exactly: normalize() rounds what is below its context's smallest number
    # (1e-1000026) to 0, so such a price passed as having no decimal places, and PostgreSQL's
    # numeric could not hold it (a 500).
    places = Decimal(1).scaleb(-PRICE_PLACES)
    if price.quantize(places) != price:
        raise ValidationError(
            {field: f"Prices have at most {PRICE_PLACES} decimal places (e.g. 0.000125)."}
        )
    return abs(price).quantize(places)  # abs: "-0" is 0 (it was echoed and audited as -0)


def tags_clean(tags: list[str]) -> list[str]:
    cleaned: list[str] = []
    for tag in tags:
        tag = str(tag).strip().lower()
        if not (TAG_RE.fullmatch(tag) and len(tag) <= MAX_TAG_LENGTH):
            raise ValidationError(
                {
                    "tags": f"'{tag}' is not a tag: use lowercase letters, digits and single "
                    f"hyphens, at most {MAX_TAG_LENGTH} characters (e.g. 'image-net')."
                }
            )
        if tag not in cleaned:
            cleaned.append(tag)
    if len(cleaned) > MAX_TAGS:
        raise ValidationError({"tags": f"A listing has at most {MAX_TAGS} tags."})
    return cleaned


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in ``value`` (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack.extend(
                (child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)
            )
    return deepest


def example_input_clean(value: Any) -> Any:
    """A listing's or a version's example input, refused (400) past the depth and size
    limits above."""
    if _depth(value) > MAX_EXAMPLE_INPUT_DEPTH:
        raise ValidationError(
            {
                "example_input": f"An example input nests at most {MAX_EXAMPLE_INPUT_DEPTH} "
                "lists and objects deep (a tensor has at most 32 dimensions)."
            }
        )
    size = len(json.dumps(value, separators=(",", ":")).encode())
    if size > MAX_EXAMPLE_INPUT_BYTES:
        raise ValidationError(
            {
                "example_input": f"An example input is at most {MAX_EXAMPLE_INPUT_BYTES} bytes "
                f"of JSON; this one is {size}. A small example is enough to try the model "
                "(one row, a small image)."
            }
        )
    return value


def currency_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a currency code, or None when it is one we bill in."""
    if value in CURRENCIES:
        return None
    return (
        f"{value!r} is not a currency we bill in; give its ISO 4217 code in lowercase, one of: "
        + ", ".join(sorted(CURRENCIES))
        + "."
    )


def currency_clean(value: str) -> str:
    value = value.strip().lower()
    problem = currency_problem(value)
    if problem:
        raise ValidationError({"currency": problem})
    return value


def currency_digits(currency: str) -> int:
    """The digits of ``currency``'s minor unit: 0 for JPY, 2 for USD."""
    return 0 if currency in ZERO_DECIMAL_CURRENCIES else 2


def money_text(value: Decimal | int | str, currency: str = "") -> str:
    """An amount exactly as the ledger holds it (six places at most), without trailing zeros:
    0.00005, 2, 1.5. With a currency, at least its minor unit's digits: 0.80 USD, 0.00005 USD,
    12 JPY. Never rounded: a call cheaper than a cent must not read as 0.00 or 0.0001."""
    amount = Decimal(value).normalize()
    digits = currency_digits(currency.lower()) if currency else 0
    if -amount.as_tuple().exponent < digits:
        amount = amount.quantize(Decimal(1).scaleb(-digits))
    return f"{amount:f}"


def platform_fee_percent() -> Decimal:
    return Decimal(str(settings.PLATFORM_FEE_PERCENT))


# --- publishing -------------------------------------------------------------------------------


KEEP: Any = object()  # listing_publish's "leave the example input as it is"


@transaction.atomic
def listing_publish(
    *,
    model: Model,
    actor: Actor,
    visibility: str | None = None,
    gated: bool | None = None,
    title: str | None = None,
    summary: str | None = None,
    card_markdown: str | None = None,
    license: str | None = None,
    tags: list[str] | None = None,
    price_per_call: Decimal | None = None,
    price_per_second: Decimal | None = None,
    currency: str | None = None,
    free_calls_per_month: int | None = None,
    example_input: Any = KEEP,
) -> Listing:
    """Create or update the model's listing. An argument left as None keeps the listing's
    current value (the default on first publish), except ``example_input``: left out
    (``KEEP``) it is kept, and None removes it. The caller has checked that ``actor`` may
    publish the model (``model_for_access(..., perm="publish")``).

    The platform fee is recorded when the listing is first published and kept on updates:
    publishers keep the terms they listed under."""
    changes: dict[str, Any] = {}
    if visibility is not None:
        if visibility not in Listing.Visibility.values:
            raise ValidationError(
                {"visibility": f"Choose one of {', '.join(Listing.Visibility.values)}."}
            )
        changes["visibility"] = visibility
    if gated is not None:
        changes["gated"] = bool(gated)
    if title is not None:
        if not title.strip():
            raise ValidationError({"title": "A listing needs a title."})
        changes["title"] = title.strip()
    if summary is not None:
        changes["summary"] = summary.strip()
    if card_markdown is not None:
        changes["card_markdown"] = card_markdown
        changes["card_html"] = card_render(card_markdown)
    if license is not None:
        changes["license"] = license_clean(license)
    if tags is not None:
        changes["tags"] = tags_clean(tags)
    if price_per_call is not None:
        changes["price_per_call"] = price_clean("price_per_call", price_per_call)
    if price_per_second is not None:
        changes["price_per_second"] = price_clean("price_per_second", price_per_second)
    if currency is not None:
        changes["currency"] = currency_clean(currency)
    if free_calls_per_month is not None:
        if free_calls_per_month < 0:
            raise ValidationError({"free_calls_per_month": "Cannot be negative."})
        changes["free_calls_per_month"] = free_calls_per_month
    if example_input is not KEEP:
        changes["example_input"] = (
            None if example_input is None else example_input_clean(example_input)
        )

    now = timezone.now()
    # The model's row first: a listing not made yet has no row to lock, and two first
    # publishes at once (a double-clicked Publish, a retried PUT) both went on to create it,
    # the second a 500 on the unique model.
    # (NO KEY UPDATE: predictions of the model, which reference its row, go on meanwhile.)
    rows = Model.objects.select_for_update(no_key=True).filter(pk=model.pk)
    list(rows.values_list("pk", flat=True))
    listing = Listing.objects.select_for_update().filter(model=model).first()
    if listing is None:
        changes.setdefault("title", model.name)
        listing = Listing.objects.create(
            model=model,
            platform_fee_percent=platform_fee_percent(),
            published_at=now,
            updated_at=now,
            **changes,
        )
        audit_record(
            action="listing.publish",
            actor=actor,
            tenant=model.tenant,
            target=listing,
            data={
                "model": model.ref,
                "visibility": listing.visibility,
                "gated": listing.gated,
                "license": listing.license,
                **_price_data(listing),
                "platform_fee_percent": str(listing.platform_fee_percent),
            },
        )
        return listing

    before = _price_data(listing)
    changed = [f for f, v in changes.items() if getattr(listing, f) != v]
    for field in changed:
        setattr(listing, field, changes[field])
    if not changed:
        return listing
    listing.updated_at = now
    if "visibility" in changed and listing.visibility == Listing.Visibility.PUBLIC:
        # In the catalogue from now on: its date (and place among the newest) is this one,
        # not the one of the draft it was made from.
        listing.published_at = now
        changed.append("published_at")
    listing.save(update_fields=[*changed, "updated_at"])
    audit_record(
        action="listing.update",
        actor=actor,
        tenant=model.tenant,
        target=listing,
        data={"model": model.ref, "fields": sorted(f for f in changed if f != "card_html")},
    )
    after = _price_data(listing)
    if after != before:
        audit_record(
            action="listing.price_change",
            actor=actor,
            tenant=model.tenant,
            target=listing,
            data={"model": model.ref, "from": before, "to": after},
        )
    return listing


def _price_data(listing: Listing) -> dict[str, str | int]:
    places = Decimal(1).scaleb(-PRICE_PLACES)
    return {
        "price_per_call": str(Decimal(listing.price_per_call).quantize(places)),
        "price_per_second": str(Decimal(listing.price_per_second).quantize(places)),
        "currency": listing.currency,
        "free_calls_per_month": listing.free_calls_per_month,
    }


@transaction.atomic
def listing_unpublish(*, listing: Listing, actor: Actor) -> Listing:
    """Take the listing out of the catalogue: it becomes private. The card, prices and
    access-request history stay, and existing entitlements keep working until revoked, so
    unpublishing never breaks a consumer mid-flight."""
    if listing.visibility != Listing.Visibility.PRIVATE:
        listing.visibility = Listing.Visibility.PRIVATE
        listing.updated_at = timezone.now()
        listing.save(update_fields=["visibility", "updated_at"])
        audit_record(
            action="listing.unpublish",
            actor=actor,
            tenant=listing.model.tenant,
            target=listing,
            data={"model": listing.model.ref},
        )
    return listing


@transaction.atomic
def listing_take_down(*, listing: Listing, reason: str, actor: Actor) -> Listing:
    """An operator withdraws a listing (a legal complaint, a policy breach): it leaves the
    catalogue, and everyone but its publisher, subscribers included, gets 451 with ``reason``
    from its page, its API and its predictions. Entitlements stay, so a restore resumes them."""
    reason = reason.strip()
    if not reason:
        raise ValidationError({"reason": "Say why the listing is taken down; consumers see it."})
    Listing.objects.filter(pk=listing.pk).update(
        taken_down_at=timezone.now(), takedown_reason=reason[:500]
    )
    listing.refresh_from_db(fields=["taken_down_at", "takedown_reason"])
    audit_record(
        action="listing.take_down",
        actor=actor,
        tenant=listing.model.tenant,
        target=listing,
        data={"model": listing.model.ref, "reason": listing.takedown_reason},
    )
    return listing


@transaction.atomic
def listing_restore(*, listing: Listing, actor: Actor) -> Listing:
    """Undo a take-down."""
    restored = Listing.objects.filter(pk=listing.pk, taken_down_at__isnull=False).update(
        taken_down_at=None, takedown_reason=""
    )
    listing.refresh_from_db(fields=["taken_down_at", "takedown_reason"])
    if restored:
        audit_record(
            action="listing.restore",
            actor=actor,
            tenant=listing.model.tenant,
            target=listing,
            data={"model": listing.model.ref},
        )
    return listing


# --- entitlements -----------------------------------------------------------------------------

RUN_PERMS = ("view_model", "run_model")
ALL_PERMS = (*RUN_PERMS, "download_model")


def entitlement_live(*, model: Model, tenant: Tenant) -> Entitlement | None:
    return Entitlement.objects.filter(model=model, tenant=tenant, revoked_at__isnull=True).first()


def _entitlement_grant(*, model: Model, tenant: Tenant, kind: str) -> tuple[Entitlement, bool]:
    """The tenant's live entitlement to ``model``, created with its grants if there is none.
    Returns it and whether it was created.

    The live row is locked: a revocation waits for the caller's commit, then ends it and
    withdraws the approval the caller may just have recorded (``entitlement_revoke``). Read
    unlocked, a revocation committed in between left an approval standing beside a revoked
    entitlement, and the consumer could subscribe again."""
    existing = (
        Entitlement.objects.select_for_update()
        .filter(model=model, tenant=tenant, revoked_at__isnull=True)
        .first()
    )
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            entitlement = Entitlement.objects.create(model=model, tenant=tenant, kind=kind)
    except IntegrityError:
        # A concurrent request made it first (one live entitlement per tenant and model).
        return entitlement_live(model=model, tenant=tenant), False
    for perm in RUN_PERMS:
        assign_perm(perm, tenant.group, model)
    return entitlement, True


def _entitlement_end(entitlement: Entitlement) -> bool:
    """Revoke the entitlement and its grants; False if it was already revoked."""
    ended = Entitlement.objects.filter(pk=entitlement.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    if not ended:
        return False
    entitlement.refresh_from_db(fields=["revoked_at"])
    for perm in ALL_PERMS:
        remove_perm(perm, entitlement.tenant.group, entitlement.model)
    return True


@transaction.atomic
def listing_subscribe(*, listing: Listing, tenant: Tenant, actor: Actor) -> Entitlement:
    """Subscribe ``tenant`` to a listing: an entitlement and the grants ``view_model`` and
    ``run_model`` for its group. Subscribing again returns the live entitlement.

    A gated listing needs the publisher's approval first (403). Subscribing costs nothing:
    a paid listing's calls are billed by usage, and billing refuses them (402) until the
    organisation has a payment method."""
    model = listing.model
    existing = entitlement_live(model=model, tenant=tenant)
    if existing is not None:
        return existing
    if model.tenant_id == tenant.pk:
        raise Conflict(f"Your organisation publishes {model.ref}; it needs no subscription.")
    if listing.visibility not in PUBLICLY_VISIBLE:
        raise NotFound(f"No listing {model.ref}.")
    refuse_if_taken_down(listing)
    if listing.gated and not _access_approved(listing=listing, tenant=tenant):
        raise Forbidden(
            f"{model.ref} is gated: request access and wait for the publisher to approve it.",
            request_access_url=f"/api/v1/catalogue/{model.ref}/request-access",
        )
    entitlement, created = _entitlement_grant(
        model=model, tenant=tenant, kind=Entitlement.Kind.SUBSCRIPTION
    )
    if created:
        audit_record(
            action="entitlement.subscribe",
            actor=actor,
            tenant=tenant,
            target=entitlement,
            data={"model": model.ref},
        )
    return entitlement


@transaction.atomic
def subscription_cancel(*, entitlement: Entitlement, actor: Actor) -> None:
    """The consumer gives up its entitlement (a subscription or a share)."""
    if _entitlement_end(entitlement):
        audit_record(
            action="entitlement.cancel",
            actor=actor,
            tenant=entitlement.tenant,
            target=entitlement,
            data={"model": entitlement.model.ref},
        )


@transaction.atomic
def entitlement_revoke(*, entitlement: Entitlement, actor: Actor) -> None:
    """The publisher takes a consumer's access away. On a gated listing the consumer's
    approval is withdrawn too (marked declined), so it cannot simply subscribe again."""
    if not _entitlement_end(entitlement):
        return
    model = entitlement.model
    AccessRequest.objects.filter(
        listing__model=model, tenant=entitlement.tenant, status=AccessRequest.Status.APPROVED
    ).update(status=AccessRequest.Status.DECLINED, decided_at=timezone.now())
    audit_record(
        action="entitlement.revoke",
        actor=actor,
        tenant=model.tenant,
        target=entitlement,
        data={"model": model.ref, "consumer": entitlement.tenant.slug, "kind": entitlement.kind},
    )


def _tenant_by_slug(slug: str, *, model: Model) -> Tenant:
    tenant = Tenant.objects.select_related("group").filter(slug=slug).first()
    if tenant is None:
        raise ValidationError({"tenant": f"There is no organisation '{slug}'."})
    if tenant.pk == model.tenant_id:
        raise ValidationError({"tenant": f"{model.ref} already belongs to '{slug}'."})
    return tenant


@transaction.atomic
def model_share(*, model: Model, tenant_slug: str, actor: Actor) -> Entitlement:
    """Share a model (typically private) with a named tenant: it may view and run it. A tenant
    that already holds an entitlement keeps it as it is."""
    tenant = _tenant_by_slug(tenant_slug, model=model)
    entitlement, created = _entitlement_grant(
        model=model, tenant=tenant, kind=Entitlement.Kind.SHARE
    )
    if created:
        audit_record(
            action="model.share",
            actor=actor,
            tenant=model.tenant,
            target=entitlement,
            data={"model": model.ref, "consumer": tenant.slug},
        )
    return entitlement


@transaction.atomic
def model_share_revoke(*, model: Model, tenant_slug: str, actor: Actor) -> None:
    share = (
        Entitlement.objects.filter(
            model=model,
            tenant__slug=tenant_slug,
            kind=Entitlement.Kind.SHARE,
            revoked_at__isnull=True,
        )
        .select_related("tenant__group", "model")
        .first()
    )
    if share is None:
        raise NotFound(f"{model.ref} is not shared with '{tenant_slug}'.")
    entitlement_revoke(entitlement=share, actor=actor)


@transaction.atomic
def download_grant(*, entitlement: Entitlement, actor: Actor) -> Entitlement:
    """Let an entitled tenant download the weights (the publisher's decision; off by
    default)."""
    # Conditional on the entitlement being live when written, not when the caller read it: a
    # revocation committed in between removed its grants already, and one still to come waits
    # for this row and removes this one with them.
    granted = Entitlement.objects.filter(
        pk=entitlement.pk, revoked_at__isnull=True, can_download=False
    ).update(can_download=True)
    entitlement.refresh_from_db(fields=["revoked_at", "can_download"])
    if entitlement.revoked_at is not None:
        raise Conflict("This entitlement was revoked; share the model again first.")
    if granted:
        assign_perm("download_model", entitlement.tenant.group, entitlement.model)
        audit_record(
            action="entitlement.download_grant",
            actor=actor,
            tenant=entitlement.model.tenant,
            target=entitlement,
            data={"model": entitlement.model.ref, "consumer": entitlement.tenant.slug},
        )
    return entitlement


@transaction.atomic
def download_revoke(*, entitlement: Entitlement, actor: Actor) -> Entitlement:
    withdrawn = Entitlement.objects.filter(pk=entitlement.pk, can_download=True).update(
        can_download=False
    )
    entitlement.refresh_from_db(fields=["can_download"])
    if withdrawn:
        remove_perm("download_model", entitlement.tenant.group, entitlement.model)
        audit_record(
            action="entitlement.download_revoke",
            actor=actor,
            tenant=entitlement.model.tenant,
            target=entitlement,
            data={"model": entitlement.model.ref, "consumer": entitlement.tenant.slug},
        )
    return entitlement


# --- access requests --------------------------------------------------------------------------


def _access_approved(*, listing: Listing, tenant: Tenant) -> bool:
    return listing.access_requests.filter(
        tenant=tenant, status=AccessRequest.Status.APPROVED
    ).exists()


@transaction.atomic
def access_request_create(
    *, listing: Listing, tenant: Tenant, actor: Actor, message: str = ""
) -> AccessRequest:
    """Ask the publisher of a gated listing for access. A pending or approved request is
    returned as it is; after a decline the tenant may ask again."""
    model = listing.model
    if model.tenant_id == tenant.pk:
        raise Conflict(f"Your organisation publishes {model.ref}; it needs no access request.")
    if not listing.gated:
        raise Conflict(f"{model.ref} is not gated; subscribe to it directly.")
    current = (
        listing.access_requests.filter(
            tenant=tenant,
            status__in=[AccessRequest.Status.PENDING, AccessRequest.Status.APPROVED],
        )
        .order_by("-created_at")
        .first()
    )
    if current is not None:
        return current
    try:
        with transaction.atomic():
            request = AccessRequest.objects.create(
                listing=listing, tenant=tenant, message=message.strip()
            )
    except IntegrityError:
        return listing.access_requests.get(tenant=tenant, status=AccessRequest.Status.PENDING)
    audit_record(
        action="access_request.create",
        actor=actor,
        tenant=tenant,
        target=request,
        data={"model": model.ref},
    )
    return request


def _decide(request: AccessRequest, status: str) -> None:
    decided = AccessRequest.objects.filter(
        pk=request.pk, status=AccessRequest.Status.PENDING
    ).update(status=status, decided_at=timezone.now())
    request.refresh_from_db(fields=["status", "decided_at"])  # a decision made meanwhile too
    if decided != 1:
        raise Conflict(f"This request was already {request.status}.")


@transaction.atomic
def access_request_approve(*, request: AccessRequest, actor: Actor) -> AccessRequest:
    """Approve a pending request. On a free listing the consumer is subscribed at once; on a
    paid one it may subscribe once billing lets it pay."""
    _decide(request, AccessRequest.Status.APPROVED)
    listing = request.listing
    data: dict[str, Any] = {"model": listing.model.ref, "consumer": request.tenant.slug}
    if listing.is_free:
        entitlement, _ = _entitlement_grant(
            model=listing.model, tenant=request.tenant, kind=Entitlement.Kind.SUBSCRIPTION
        )
        data["entitlement"] = entitlement.public_id
    audit_record(
        action="access_request.approve",
        actor=actor,
        tenant=listing.model.tenant,
        target=request,
        data=data,
    )
    return request


@transaction.atomic
def access_request_decline(*, request: AccessRequest, actor: Actor) -> AccessRequest:
    _decide(request, AccessRequest.Status.DECLINED)
    audit_record(
        action="access_request.decline",
        actor=actor,
        tenant=request.listing.model.tenant,
        target=request,
        data={"model": request.listing.model.ref, "consumer": request.tenant.slug},
    )
    return request


@transaction.atomic
def access_request_withdraw(*, request: AccessRequest, actor: Actor) -> AccessRequest:
    """Take back an approval: the request is declined, the consumer's subscription ends with
    it, and it may not subscribe again without a new approval. (An approval could only be
    taken back through a live subscription: one approved on a paid listing that had not
    subscribed yet, or whose consumer had cancelled, stood for good.)"""
    withdrawn = AccessRequest.objects.filter(
        pk=request.pk, status=AccessRequest.Status.APPROVED
    ).update(status=AccessRequest.Status.DECLINED, decided_at=timezone.now())
    request.refresh_from_db(fields=["status", "decided_at"])
    if withdrawn != 1:
        raise Conflict(f"This request is {request.status}; only an approval can be withdrawn.")
    model = request.listing.model
    live = entitlement_live(model=model, tenant=request.tenant)
    if live is not None and live.kind == Entitlement.Kind.SUBSCRIPTION:  # a share stays
        _entitlement_end(live)
    audit_record(
        action="access_request.withdraw",
        actor=actor,
        tenant=model.tenant,
        target=request,
        data={"model": model.ref, "consumer": request.tenant.slug},
    )
    return request


# --- selectors --------------------------------------------------------------------------------


def listing_for_viewer(access: Access | None, *, owner: str, name: str) -> Listing:
    """The listing of ``owner/name`` as the catalogue shows it: public and unlisted ones to
    anyone, signed out included; a private one only to its publisher and to tenants holding
    ``view_model`` (e.g. a share). Anything else is 404, as if it did not exist. An API key
    whose model allowlist leaves it out gets 403, as for any other use of the model."""
    refuse_unless_key_allows(access, f"{owner}/{name}")
    try:
        model = model_get(owner=owner, name=name)
    except NotFound:
        model = None  # the same answer as a model that exists unlisted: existence must not leak
    listing = getattr(model, "listing", None)
    if listing is not None:
        if access is not None and model.tenant_id == access.tenant.pk:
            return listing
        if listing.visibility in PUBLICLY_VISIBLE or "view_model" in tenant_perms(access, model):
            refuse_if_taken_down(listing)  # 451 with the reason to whoever could see it
            return listing
    raise NotFound(f"No listing {owner}/{name}.")


CATALOGUE_SORTS = ("newest", "most_used", "price")


def catalogue_search(
    *,
    q: str = "",
    task: str = "",
    license: str = "",
    publisher: str = "",
    tag: str = "",
    currency: str = "",
    max_price_per_call: Decimal | None = None,
    free: bool = False,
    sort: str = "newest",
) -> QuerySet[Listing]:
    """Public listings that are not taken down, filtered and sorted. Every word of ``q``
    must appear in the model's name or description, or the listing's title, summary or
    tags. Prices compare only within a currency: sorting by price groups the listings by
    currency, cheapest first in each, and ``max_price_per_call`` is meant with ``currency``."""
    listings = Listing.objects.select_related("model__tenant").filter(
        visibility=Listing.Visibility.PUBLIC, taken_down_at__isnull=True
    )
    for word in q.split()[:10]:
        found = (
            Q(model__name__icontains=word)
            | Q(model__description__icontains=word)
            | Q(title__icontains=word)
            | Q(summary__icontains=word)
        )
        # Tags are searched in the list's JSON text: only a word that can be part of a tag
        # may look there, or '"' and ',' would match every listing with tags.
        if TAG_FRAGMENT_RE.fullmatch(word.lower()):
            found |= Q(tags__icontains=word)
        listings = listings.filter(found)
    if task:
        listings = listings.filter(model__task=task)
    if license:
        listings = listings.filter(license__iexact=license)
    if publisher:
        listings = listings.filter(model__tenant__slug=publisher)
    if tag:
        # The JSON text of the list holds each tag quoted; this matches whole tags only and
        # works on SQLite, which has no JSON containment lookup. What is not a tag matches
        # none (a quote in it could span two tags).
        if not TAG_RE.fullmatch(tag.lower()):
            return Listing.objects.none()
        listings = listings.filter(tags__icontains=f'"{tag}"')
    if currency:
        listings = listings.filter(currency=currency.lower())
    if max_price_per_call is not None:
        listings = listings.filter(price_per_call__lte=max_price_per_call)
    if free:
        listings = listings.filter(price_per_call=0, price_per_second=0)
    if sort == "most_used":
        listings = listings.annotate(
            # Live subscriptions only: counting private shares told anyone how many
            # organisations a publisher shares a model with.
            subscribers=Count(
                "model__entitlements",
                filter=Q(
                    model__entitlements__revoked_at__isnull=True,
                    model__entitlements__kind=Entitlement.Kind.SUBSCRIPTION,
                ),
                distinct=True,
            )
        ).order_by("-subscribers", "-published_at", "-pk")
    elif sort == "price":
        listings = listings.order_by(
            "currency", "price_per_call", "price_per_second", "-published_at", "-pk"
        )
    else:
        listings = listings.order_by("-published_at", "-pk")
    return listings


CATALOGUE_VERSIONS = 20


def catalogue_versions(model: Model) -> list[ModelVersion]:
    """What a consumer can run: ready versions (and deprecated ones until their sunset), with
    their aliases, newest first: the newest ``CATALOGUE_VERSIONS``, and any older one an alias
    points at (``production`` left on an old version must not vanish from the page). The
    versions endpoint lists them all, a page at a time."""
    runnable = model.versions.filter(ModelVersion.runnable()).prefetch_related("aliases")
    newest = list(runnable.order_by("-number")[:CATALOGUE_VERSIONS])
    if len(newest) < CATALOGUE_VERSIONS:
        return newest
    aliased = runnable.filter(aliases__isnull=False, number__lt=newest[-1].number).distinct()
    return newest + list(aliased.order_by("-number"))


def viewer_state(access: Access | None, listing: Listing) -> dict[str, Any]:
    """Where the caller's organisation stands with a listing, for the page's button and the
    API's ``access`` block."""
    state: dict[str, Any] = {
        "publisher": False,
        "entitlement": None,
        "access_request": None,
    }
    if access is None:
        return state
    if listing.model.tenant_id == access.tenant.pk:
        state["publisher"] = True
        return state
    state["entitlement"] = entitlement_live(model=listing.model, tenant=access.tenant)
    state["access_request"] = (
        listing.access_requests.filter(tenant=access.tenant).order_by("-created_at").first()
    )
    return state
