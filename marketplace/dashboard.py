"""The publisher's dashboard: the organisation's models, their versions and aliases (moved and
rolled back here too), and the upload of a new version.

The upload itself runs in the browser (``static/js/upload.js``) against the REST API, with the
dashboard session as its credentials; these views only render the pages around it. Every
model is looked up within ``request.tenant``, so another organisation's model is a 404.
"""

from __future__ import annotations

import json
from decimal import Decimal

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import OuterRef, Prefetch, Q, Subquery
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts.api.parsers import unstorable
from accounts.exceptions import Conflict, ServiceError
from accounts.models import Scope
from accounts.tenancy import request_actor, session_access
from accounts.views import error_text, tenant_required
from marketplace import listings, services
from marketplace.models import (
    AccessRequest,
    Alias,
    AliasMove,
    Entitlement,
    Format,
    Listing,
    Model,
    ModelVersion,
    Task,
)
from marketplace.selectors import is_number

# The versions an alias may point at (``services.alias_set`` refuses the others).
ALIASABLE = (ModelVersion.Status.READY, ModelVersion.Status.DEPRECATED)


class ModelCreateForm(forms.Form):
    name = forms.CharField(
        max_length=100,
        help_text="Lowercase letters, digits, '.', '_' or '-'. "
        "The model's address is your organisation's slug / this name.",
    )
    task = forms.ChoiceField(choices=Task.choices, initial=Task.OTHER)
    description = forms.CharField(
        max_length=5000, required=False, widget=forms.Textarea(attrs={"rows": 2})
    )


class ListingForm(forms.Form):
    """The model's listing, as ``PUT /api/v1/models/{ref}/listing`` takes it; the registry's
    ``listing_publish`` checks each value (prices, licence, tags, currency) for both."""

    title = forms.CharField(max_length=120)
    summary = forms.CharField(max_length=300, required=False)
    visibility = forms.ChoiceField(choices=Listing.Visibility.choices)
    gated = forms.BooleanField(
        required=False, label="Gated", help_text="Consumers request access; you approve each."
    )
    price_per_call = forms.DecimalField(required=False, help_text="Blank or 0: free.")
    price_per_second = forms.DecimalField(
        required=False, label="Price per compute-second", help_text="Blank or 0: none."
    )
    currency = forms.CharField(max_length=8, initial="usd")
    free_calls_per_month = forms.IntegerField(min_value=0, max_value=10**9, initial=0)
    license = forms.CharField(
        max_length=64,
        initial="proprietary",
        help_text="An SPDX identifier (MIT, Apache-2.0, …), 'proprietary' or 'LicenseRef-<name>'.",
    )
    tags = forms.CharField(max_length=2000, required=False, help_text="Separated by commas.")
    card_markdown = forms.CharField(
        label="Model card (Markdown)",
        required=False,
        strip=False,
        max_length=100_000,
        widget=forms.Textarea(attrs={"rows": 10}),
    )
    example_input = forms.CharField(
        label="Example input (JSON)",
        required=False,
        max_length=listings.MAX_EXAMPLE_INPUT_BYTES,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Shown on the listing and filled into the playground; blank for none.",
    )

    @classmethod
    def initial_of(cls, listing: Listing | None, model: Model) -> dict:
        if listing is None:
            return {"title": model.name, "summary": model.description[:300]}
        example = listing.example_input
        if example is not None:
            # As compact as the registry measures it (and non-ASCII as typed): json.dumps's
            # default spacing made an example near the size limit too long for the form.
            example = json.dumps(example, separators=(",", ":"), ensure_ascii=False)
        return {
            **{name: getattr(listing, name) for name in cls.base_fields if name != "tags"},
            "tags": ", ".join(listing.tags),
            "example_input": example or "",
            # As the listing shows them (0.5, not the column's 0.500000).
            "price_per_call": listings.money_text(listing.price_per_call),
            "price_per_second": listings.money_text(listing.price_per_second),
        }

    def clean_example_input(self):
        text = self.cleaned_data["example_input"].strip()
        if not text:
            return None
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            raise ValidationError("Not valid JSON.") from None
        problem = unstorable(value)
        if problem:
            raise ValidationError(problem)
        try:
            # Python's JSON reads NaN, Infinity and 1e999 (an infinity); JSON has none of them,
            # and the database's JSON check refuses them (a 500).
            json.dumps(value, allow_nan=False)
        except ValueError:
            raise ValidationError(
                "JSON has no NaN or Infinity (nor numbers as large as 1e999): use finite numbers."
            ) from None
        return value

    def clean_card_markdown(self):
        # Browsers send a textarea's line breaks as CRLF: kept as LF, as the card was written,
        # or saving the form untouched changed every card (and recorded an update).
        return self.cleaned_data["card_markdown"].replace("\r\n", "\n")

    def clean_tags(self):
        return [tag.strip() for tag in self.cleaned_data["tags"].split(",") if tag.strip()]


def _can_write(request: HttpRequest) -> bool:
    return Scope.MODELS_WRITE in request.membership.scopes


def _tenant_model(request: HttpRequest, name: str) -> Model:
    return get_object_or_404(
        Model.objects.select_related("tenant"), tenant=request.tenant, name=name
    )


# The model page shows the newest versions and those an alias names or being validated; the
# rest on asking (?versions=all). It rendered every one, and reloaded them all every 5 s while
# one validated: 593 KB and 345 ms for a model of 1,000 versions.
VERSIONS_SHOWN = 50
MODELS_PER_PAGE = 100


def _versions_context(model: Model, request: HttpRequest) -> dict:
    all_versions = (
        model.versions.select_related("artifact", "created_by")
        .prefetch_related(Prefetch("aliases", queryset=Alias.objects.order_by("name")))
        .order_by("-number")
    )
    show_all = request.GET.get("versions") == "all"
    versions = list(all_versions if show_all else all_versions[:VERSIONS_SHOWN])
    total = len(versions)
    if not show_all and total == VERSIONS_SHOWN:
        total = model.versions.count()
        named = all_versions.filter(
            Q(aliases__isnull=False) | Q(status=ModelVersion.Status.VALIDATING),
            number__lt=versions[-1].number,
        ).distinct()
        versions += list(named)
    validating = any(v.status == ModelVersion.Status.VALIDATING for v in versions)
    aliasable = [v for v in versions if v.status in ALIASABLE and not v.past_sunset]
    return {
        "model": model,
        "versions": versions,
        "validating": validating,
        "aliasable": aliasable,
        "versions_hidden": total - len(versions),
        "versions_total": total,
        "versions_all": show_all,
    }


@tenant_required()
def model_list(request: HttpRequest) -> HttpResponse:
    form = ModelCreateForm(request.POST if request.method == "POST" else None)
    if request.method == "POST":
        if not _can_write(request):
            raise PermissionDenied("Your role cannot create models.")
        if form.is_valid():
            try:
                model = services.model_create(
                    tenant=request.tenant, actor=request_actor(request), **form.cleaned_data
                )
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    form.add_error(field if field in form.fields else None, errors)
            except Conflict as exc:
                form.add_error("name", exc.message)
            else:
                messages.success(request, f"Model {model.ref} created. Upload its first version.")
                return redirect("models:detail", name=model.name)
    latest = ModelVersion.objects.filter(model=OuterRef("pk")).order_by("-number")
    models = (
        Model.objects.filter(tenant=request.tenant)
        .annotate(
            latest_number=Subquery(latest.values("number")[:1]),
            latest_status=Subquery(latest.values("status")[:1]),
        )
        .prefetch_related(
            Prefetch("aliases", queryset=Alias.objects.select_related("version").order_by("name"))
        )
        .order_by("name")
    )
    # A page at a time: all of an organisation's models made a page of 548 KB at 2,000.
    page = Paginator(models, MODELS_PER_PAGE).get_page(request.GET.get("page"))
    context = {"models": page, "page": page, "form": form, "can_write": _can_write(request)}
    return render(request, "models/list.html", context)


# What a refused compression form was sent with (inference.compression_views.job_start), for
# the model page to show it again once.
COMPRESS_FORM_KEY = "mm_compress_form"
KEPT_PARAMS_MAX = 64 * 1024


# What a refused alias move was sent with (alias_move), for the model page to show it again.
ALIAS_FORM_KEY = "mm_alias_form"


def _alias_form(request: HttpRequest, model: Model) -> dict:
    kept = request.session.pop(ALIAS_FORM_KEY, None)
    if not isinstance(kept, dict) or kept.get("model") != model.pk:
        return {"alias": "", "version": ""}
    return {"alias": str(kept.get("alias", ""))[:40], "version": str(kept.get("version", ""))}


def _compress_form(request: HttpRequest, model: Model) -> dict:
    kept = request.session.pop(COMPRESS_FORM_KEY, None)
    if not isinstance(kept, dict) or kept.get("model") != model.pk:
        kept = {}
    return {
        "version": kept.get("version") or request.GET.get("version", ""),
        "method": kept.get("method", ""),
        "params": kept.get("params") or "{}",
    }


@tenant_required()
def model_detail(request: HttpRequest, name: str) -> HttpResponse:
    model = _tenant_model(request, name)
    versions = _versions_context(model, request)
    moves = list(
        AliasMove.objects.filter(alias__model=model).select_related(
            "alias", "from_version", "to_version"
        )[:50]
    )
    # Each alias's own last move: "Roll back" sends it back where it came from. (Taken from
    # the 50 newest moves of the model, an alias that had not moved lately lost its button.)
    newest = AliasMove.objects.filter(alias=OuterRef("pk")).order_by("-created_at", "-pk")
    aliases = list(
        model.aliases.select_related("version")
        .annotate(last_move_id=Subquery(newest.values("pk")[:1]))
        .order_by("name")
    )
    last_moves = AliasMove.objects.select_related("from_version").in_bulk(
        [alias.last_move_id for alias in aliases if alias.last_move_id]
    )
    is_admin = Scope.ADMIN in request.membership.scopes
    for alias in aliases:
        last = last_moves.get(alias.last_move_id)
        alias.rollback_to = (
            last.from_version
            if last is not None
            and last.from_version is not None
            and last.to_version_id == alias.version_id
            and last.from_version.status in ALIASABLE
            and not last.from_version.past_sunset
            # The registry refuses the others a protected alias: no button to be refused.
            and (is_admin or alias.name not in services.PROTECTED_ALIASES)
            else None
        )
    context = {
        **versions,
        "aliases": aliases,
        "listing": Listing.objects.filter(model=model).first(),
        "moves": moves,
        "can_write": _can_write(request),
        "can_publish": is_admin,
        "pending_requests": AccessRequest.objects.filter(
            listing__model=model, status=AccessRequest.Status.PENDING
        ).count(),
        "compress": _compress_form(request, model),
        "alias_form": _alias_form(request, model),
        "formats": Format.choices,
        "upload_create_url": reverse(
            "upload-create", kwargs={"owner": model.tenant.slug, "name": model.name}
        ),
    }
    return render(request, "models/detail.html", context)


@require_POST
@tenant_required(scope=Scope.MODELS_WRITE)
def alias_move(request: HttpRequest, name: str) -> HttpResponse:
    """Point an alias at a version from the model page: create it, move it on, or roll it back
    (a history row's "Roll back" sends the version it moved from). The registry's
    ``alias_set`` decides, as for the API: moving ``production`` needs the admin role, and only
    a ready version takes an alias."""
    model = _tenant_model(request, name)
    alias = request.POST.get("alias", "").strip()
    number = request.POST.get("version", "")
    version = model.versions.filter(number=int(number)).first() if is_number(number) else None
    back = redirect(f"{reverse('models:detail', kwargs={'name': model.name})}#aliases")
    if version is None:
        messages.error(request, f"Choose a version of {model.ref} for '{alias or 'the alias'}'.")
        request.session[ALIAS_FORM_KEY] = {"model": model.pk, "alias": alias, "version": ""}
        return back
    try:
        moved = services.alias_set(
            model=model,
            name=alias,
            version=version,
            access=session_access(request),
            actor=request_actor(request),
        )
    except (ValidationError, ServiceError) as exc:
        messages.error(request, error_text(exc))
        # Shown again under the reason (it came back empty, on the first version).
        request.session[ALIAS_FORM_KEY] = {"model": model.pk, "alias": alias, "version": number}
    else:
        messages.success(request, f"{moved.name} now points at v{version.number}.")
    return back


@tenant_required(scope=Scope.ADMIN)
def listing_edit(request: HttpRequest, name: str) -> HttpResponse:
    """Publish the model, or change its listing: the same ``listing_publish`` as the API, and
    the same right (the admin role). Values the registry refuses come back on the form."""
    model = _tenant_model(request, name)
    listing = Listing.objects.filter(model=model).first()
    form = ListingForm(
        request.POST if request.method == "POST" else None,
        initial=ListingForm.initial_of(listing, model),
    )
    if request.method == "POST" and form.is_valid():
        values = dict(form.cleaned_data)
        for price in ("price_per_call", "price_per_second"):
            if values[price] is None:
                values[price] = Decimal(0)
        try:
            saved = listings.listing_publish(model=model, actor=request_actor(request), **values)
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                form.add_error(field if field in form.fields else None, errors)
        else:
            done = "published" if listing is None else "updated"
            messages.success(request, f"Listing {done}: {saved.get_visibility_display()}.")
            return redirect(f"{reverse('models:detail', kwargs={'name': model.name})}#listing")
    context = {
        "model": model,
        "listing": listing,
        "form": form,
        "fee_percent": listing.platform_fee_percent if listing else listings.platform_fee_percent(),
    }
    return render(request, "models/listing_form.html", context)


@require_POST
@tenant_required(scope=Scope.ADMIN)
def listing_unpublish(request: HttpRequest, name: str) -> HttpResponse:
    """Make the listing private (it leaves the catalogue; consumers entitled keep access)."""
    model = _tenant_model(request, name)
    listing = get_object_or_404(Listing, model=model)
    listings.listing_unpublish(listing=listing, actor=request_actor(request))
    messages.success(request, "The listing is private now: it has left the catalogue.")
    return redirect(f"{reverse('models:detail', kwargs={'name': model.name})}#listing")


def _access_context(model: Model) -> dict:
    listing = Listing.objects.filter(model=model).first()
    requests = (
        AccessRequest.objects.filter(listing__model=model, status=AccessRequest.Status.PENDING)
        .select_related("tenant")
        .order_by("created_at")
    )
    entitlements = (
        Entitlement.objects.filter(model=model, revoked_at__isnull=True)
        .select_related("tenant")
        .order_by("created_at")
    )
    # Approvals not (or no longer) used by a subscription: invisible otherwise, and the
    # consumer may subscribe on them at any time.
    approved = (
        AccessRequest.objects.filter(listing__model=model, status=AccessRequest.Status.APPROVED)
        .exclude(tenant__in=[e.tenant_id for e in entitlements])
        .select_related("tenant")
        .order_by("decided_at")
    )
    return {
        "model": model,
        "listing": listing,
        "requests": requests,
        "approved": approved,
        "entitlements": entitlements,
        "request_actions": [("approve", "Approve"), ("decline", "Decline")],
    }


# What the access page's buttons do: (the service, what it is called on, the message after).
ACCESS_ACTIONS = {
    "approve": (listings.access_request_approve, "request", "Approved {tenant}'s request."),
    "decline": (listings.access_request_decline, "request", "Declined {tenant}'s request."),
    "withdraw": (
        listings.access_request_withdraw,
        "request",
        "Withdrew {tenant}'s approval: it may not subscribe.",
    ),
    "revoke": (listings.entitlement_revoke, "entitlement", "{tenant} no longer has access."),
    "allow_download": (listings.download_grant, "entitlement", "{tenant} may download it."),
    "withdraw_download": (listings.download_revoke, "entitlement", "{tenant} may not download it."),
}


@tenant_required(scope=Scope.ADMIN)
def model_access(request: HttpRequest, name: str) -> HttpResponse:
    """Who may run the model: pending access requests (a gated listing's), the organisations
    entitled to it (subscribed, or shared with by name) with their download right, and a form
    to share it with another organisation. Each button calls the listings service the API
    calls, with the same right (the admin role)."""
    model = _tenant_model(request, name)
    if request.method != "POST":
        return render(request, "models/access.html", _access_context(model))
    action, actor = request.POST.get("action", ""), request_actor(request)
    back = redirect("models:access", name=model.name)
    try:
        if action == "share":
            # Slugs are lowercase; a publisher may well type the name's capital.
            slug = request.POST.get("tenant", "").strip().lower()
            listings.model_share(model=model, tenant_slug=slug, actor=actor)
            messages.success(request, f"Shared with {slug}: it may view and run {model.ref}.")
            return back
        if action not in ACCESS_ACTIONS:
            messages.error(request, "Unknown action.")
            return back
        service, kind, done = ACCESS_ACTIONS[action]
        target_id = request.POST.get("id", "")
        if kind == "request":
            target = get_object_or_404(
                AccessRequest.objects.select_related("listing__model", "tenant"),
                listing__model=model,
                public_id=target_id,
            )
            service(request=target, actor=actor)
        else:
            target = get_object_or_404(
                Entitlement.objects.select_related("model__tenant", "tenant__group"),
                model=model,
                public_id=target_id,
            )
            service(entitlement=target, actor=actor)
    except (ValidationError, ServiceError) as exc:
        messages.error(request, error_text(exc))
    else:
        messages.success(request, done.format(tenant=target.tenant.name))
    return back


@tenant_required()
def model_versions(request: HttpRequest, name: str) -> HttpResponse:
    """The versions table alone: the upload widget swaps it in after an upload, and it polls
    itself while a version is being validated. The Compress form's version select comes along
    (swapped out of band), keeping the version chosen there (``?version=``)."""
    model = _tenant_model(request, name)
    context = {
        **_versions_context(model, request),
        "compress_oob": _can_write(request),
        "compress": {"version": request.GET.get("version", "")},
    }
    # The alias form's versions too, once none is validating any more (the poll's last
    # refresh): a version that became ready can take an alias without a reload. Not on the
    # polls before, which would reset a choice being made.
    context["aliases_oob"] = context["compress_oob"] and not context["validating"]
    return render(request, "models/_versions.html", context)
