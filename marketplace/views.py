"""The public catalogue pages: search and browse listings (signed out too), read a listing's
card and prices, and subscribe or request access as a member of another organisation."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from accounts.exceptions import NotFound, ServiceError, TakenDown
from accounts.models import Scope
from accounts.tenancy import Access, request_actor, session_access
from accounts.views import org_switched
from marketplace import listings
from marketplace.models import Listing, Task

PAGE_SIZE = 20
SORT_CHOICES = [("newest", "Newest"), ("most_used", "Most used"), ("price", "Lowest price")]


class CatalogueFilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=200, label="Search")
    task = forms.ChoiceField(required=False, choices=[("", "Any task"), *Task.choices])
    license = forms.CharField(required=False, max_length=64, label="Licence")
    publisher = forms.SlugField(required=False, max_length=50)
    tag = forms.CharField(required=False, max_length=64)
    currency = forms.CharField(required=False, max_length=3, label="Currency (e.g. usd)")
    max_price_per_call = forms.DecimalField(
        required=False, min_value=0, max_digits=12, decimal_places=6, label="Max price per call"
    )
    free = forms.BooleanField(required=False, label="Free only")
    sort = forms.ChoiceField(required=False, choices=SORT_CHOICES)

    def clean_currency(self) -> str:
        value = self.cleaned_data["currency"].strip().lower()
        problem = value and listings.currency_problem(value)
        if problem:
            raise forms.ValidationError(problem)
        return value


def _with_prices(listing: Listing) -> Listing:
    listing.display_price_per_call = listings.money_text(listing.price_per_call, listing.currency)
    listing.display_price_per_second = listings.money_text(
        listing.price_per_second, listing.currency
    )
    return listing


def catalogue(request: HttpRequest) -> HttpResponse:
    form = CatalogueFilterForm(request.GET or None)
    filters = {}
    if form.is_bound:
        form.is_valid()  # invalid fields are left out of cleaned_data and shown as errors
        filters = {k: v for k, v in form.cleaned_data.items() if v not in (None, "", False)}
    page = Paginator(listings.catalogue_search(**filters), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    for listing in page:
        _with_prices(listing)
    kept = {k: v for k, v in request.GET.items() if k != "page" and v}
    context = {"form": form, "page": page, "query": urlencode(kept), "filtered": bool(filters)}
    return render(request, "catalogue/index.html", context)


def _listing_or_404(access: Access | None, owner: str, name: str) -> Listing:
    try:
        return listings.listing_for_viewer(access, owner=owner, name=name)
    except NotFound as exc:
        raise Http404(exc.message) from None


def _taken_down(request: HttpRequest, exc: TakenDown) -> HttpResponse:
    return render(request, "catalogue/taken_down.html", {"message": exc.message}, status=451)


def _example_text(value: object, indent: str = "", depth: int = 0) -> str:
    """JSON with each innermost list on one line: a 28×28 image reads as 28 rows, where
    ``indent=2`` gave 800 lines of one number each. Past a tensor's depth it is written
    compact (the nesting a JSON body may hold would run out of Python's stack here)."""
    if depth > listings.MAX_EXAMPLE_INPUT_DEPTH:
        return json.dumps(value)
    if isinstance(value, dict) and value:
        inner = indent + "  "
        items = []
        for key, item in value.items():
            name = json.dumps(key)
            # A list's rows line up under its first row; a dict indents as usual.
            under = inner + " " * (len(name) + 2) if isinstance(item, list) else inner
            items.append(f"{inner}{name}: {_example_text(item, under, depth + 1)}")
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and any(isinstance(item, list | dict) for item in value):
        inner = indent + " "
        return (
            "["
            + (",\n" + inner).join(_example_text(item, inner, depth + 1) for item in value)
            + "]"
        )
    return json.dumps(value)


def listing_detail(request: HttpRequest, owner: str, name: str) -> HttpResponse:
    access = session_access(request)
    try:
        listing = _with_prices(_listing_or_404(access, owner, name))
    except TakenDown as exc:
        return _taken_down(request, exc)
    versions = listings.catalogue_versions(listing.model)
    context = {
        "listing": listing,
        "model": listing.model,
        # Sanitised when published; cleaned again here so a row written by any other path
        # (admin, a migration, a future bug) still cannot carry script into the page.
        "card_html": mark_safe(listings.card_sanitise(listing.card_html)),  # noqa: S308
        "versions": versions,
        "aliases": sorted(
            (alias.name, version.number) for version in versions for alias in version.aliases.all()
        ),
        "example_input": None
        if listing.example_input is None
        else _example_text(listing.example_input),
        "state": listings.viewer_state(access, listing),
        "can_subscribe": access is not None and access.has_scope(Scope.INFERENCE),
        # What billing's authorisation asks of a paid call (on with Stripe configured).
        "payment_method_required": settings.PAYMENT_METHOD_REQUIRED,
    }
    return render(request, "catalogue/detail.html", context)


def _consumer_action(request: HttpRequest, owner: str, name: str, action) -> HttpResponse:
    """Run ``action(listing, access)`` for the signed-in member's organisation, reporting
    the outcome or the reason it was refused as a message on the listing's page."""
    if refused := org_switched(request):
        return refused
    access = session_access(request)
    try:
        listing = _listing_or_404(access, owner, name)
    except TakenDown as exc:
        return _taken_down(request, exc)
    if access is None:
        messages.error(
            request, "Create or join an organisation first; subscriptions belong to organisations."
        )
    elif not access.tenant.is_active:
        messages.error(request, f"The organisation '{access.tenant.slug}' is suspended.")
    elif not access.has_scope(Scope.INFERENCE):
        messages.error(
            request,
            "Your role cannot subscribe; ask an owner, admin or developer "
            f"of {access.tenant.name}.",
        )
    else:
        try:
            text = action(listing, access)
        except ServiceError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, text)
            if listings.viewer_state(access, listing)["entitlement"] is None and (
                listing.visibility == Listing.Visibility.PRIVATE
            ):
                return redirect("catalogue:index")  # a private listing given up is gone
    return redirect("catalogue:listing", owner=owner, name=name)


@login_required
@require_POST
def listing_subscribe(request: HttpRequest, owner: str, name: str) -> HttpResponse:
    def subscribe(listing: Listing, access: Access) -> str:
        listings.listing_subscribe(
            listing=listing, tenant=access.tenant, actor=request_actor(request)
        )
        return f"{access.tenant.name} is subscribed to {listing.title}."

    return _consumer_action(request, owner, name, subscribe)


@login_required
@require_POST
def listing_request_access(request: HttpRequest, owner: str, name: str) -> HttpResponse:
    def request_access(listing: Listing, access: Access) -> str:
        listings.access_request_create(
            listing=listing,
            tenant=access.tenant,
            actor=request_actor(request),
            message=request.POST.get("message", "")[:2000],
        )
        return "Access requested. The publisher will approve or decline it."

    return _consumer_action(request, owner, name, request_access)


@login_required
@require_POST
def listing_unsubscribe(request: HttpRequest, owner: str, name: str) -> HttpResponse:
    def unsubscribe(listing: Listing, access: Access) -> str:
        entitlement = listings.entitlement_live(model=listing.model, tenant=access.tenant)
        if entitlement is None:
            raise NotFound(f"{access.tenant.name} has no subscription to {listing.title}.")
        listings.subscription_cancel(entitlement=entitlement, actor=request_actor(request))
        return f"{access.tenant.name} is no longer subscribed to {listing.title}."

    return _consumer_action(request, owner, name, unsubscribe)
