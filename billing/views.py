"""Stripe's webhook endpoint, and the dashboard's billing pages."""

from __future__ import annotations

import logging
from datetime import date, timedelta
from decimal import Decimal
from urllib.parse import urlsplit

from csp.decorators import csp_replace
from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from accounts.exceptions import ServiceError
from accounts.models import ApiKey, Scope
from accounts.tenancy import request_actor
from accounts.views import tenant_required
from billing import selectors
from billing import stripe_gateway as gateway
from billing.models import Invoice, Transfer
from billing.services import (
    account_for,
    connect_onboarding_start,
    key_budget_set,
    payment_method_confirm,
    payment_setup_start,
    spend_cap_set,
    stripe_configured,
    stripe_event_record,
)

log = logging.getLogger(__name__)


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """Verify the signature on the raw body, store the event once, answer at once; a task
    does the work. Duplicates and events we do not act on get 200 too."""
    try:
        event = gateway.event_from_webhook(request.body, request.headers.get("Stripe-Signature"))
    except gateway.InvalidSignature as exc:
        log.warning("Stripe webhook refused: %s", exc)
        return HttpResponse("Bad signature.", status=400, content_type="text/plain")
    if not event.get("id"):
        return HttpResponse("Not an event.", status=400, content_type="text/plain")
    stored = stripe_event_record(event)
    return HttpResponse("ok" if stored else "duplicate", content_type="text/plain")


class SpendCapForm(forms.Form):
    spend_cap = forms.DecimalField(
        required=False,
        min_value=Decimal(0),
        decimal_places=2,
        max_digits=12,
        help_text="Paid calls answer 402 once this month's spend reaches it; empty for none.",
    )


def _can_manage_billing(request: HttpRequest) -> bool:
    return Scope.BILLING_WRITE in request.membership.scopes


@tenant_required(scope=Scope.BILLING_READ)
def billing_home(request: HttpRequest) -> HttpResponse:
    """Usage charts, this period's running total, invoices, payment method, spend cap, and
    for publishers their earnings and transfers. Members whose role reads billing only."""
    tenant = request.tenant
    account = account_for(tenant)
    period = selectors.period_of()
    form = SpendCapForm(initial={"spend_cap": account.spend_cap})
    if request.method == "POST":
        if not _can_manage_billing(request):
            raise PermissionDenied("Only owners, admins and billing members can change billing.")
        form = SpendCapForm(request.POST)
        if form.is_valid():
            spend_cap_set(
                tenant=tenant, cap=form.cleaned_data["spend_cap"], actor=request_actor(request)
            )
            messages.success(request, "Spend cap saved.")
            return redirect("billing_dashboard:home")
    summary = selectors.consumer_summary(consumer=tenant, period=period)
    by_key = selectors.usage_by(consumer=tenant, period=period, field="api_key")
    days = selectors.daily_usage(consumer=tenant)
    peaks: dict[str, Decimal] = {}
    for day in days:
        peaks[day["currency"]] = max(peaks.get(day["currency"], Decimal(0)), day["amount"])
    context = {
        "account": account,
        "form": form,
        "period": period,
        "summary": summary,
        # A cap holds for each currency's spend alone: the banner shows the nearest to it.
        "cap_percent": _cap_percent(account.spend_cap, summary["spend"]),
        "days": days,
        "chart": _chart(days, peaks),
        "by_model": selectors.usage_by(consumer=tenant, period=period, field="model_ref"),
        "by_key": by_key,
        "budgets": _key_budgets(tenant, by_key),
        "can_set_budgets": request.membership.can_manage,
        "invoices": Invoice.objects.filter(consumer=tenant)[:24],
        "earnings": selectors.earnings(publisher=tenant)[:48],
        "transfers": Transfer.objects.filter(publisher=tenant).select_related("invoice")[:48],
        "can_manage": _can_manage_billing(request),
        "stripe_configured": stripe_configured(),
        "payment_method_required": settings.PAYMENT_METHOD_REQUIRED,
    }
    return render(request, "billing/home.html", context)


MAX_BUDGET_KEYS = 200  # an organisation's live keys shown with their budgets


def _key_budgets(tenant, by_key: list[dict]) -> list[dict]:
    """Each live key with its monthly budget (None for none) and what it spent this month, per
    currency (a budget holds for each currency's spend alone)."""
    spent: dict[str, list[dict]] = {}
    for row in by_key:
        if row["api_key"] is not None:
            spent.setdefault(row["api_key__public_id"], []).append(row)
    keys = (
        ApiKey.objects.filter(ApiKey.active_q(), tenant=tenant)
        .select_related("budget")
        .order_by("name", "created_at")[:MAX_BUDGET_KEYS]
    )
    return [
        {
            "key": key,
            "limit": key.budget.monthly_limit if hasattr(key, "budget") else None,
            "spent": spent.get(key.public_id, []),
        }
        for key in keys
    ]


class KeyBudgetForm(forms.Form):
    monthly_limit = forms.DecimalField(
        required=False, min_value=Decimal(0), decimal_places=2, max_digits=12
    )


@tenant_required(manage=True)
@require_POST
def key_budget(request: HttpRequest, key_id: str) -> HttpResponse:
    """Set or clear one key's monthly budget (owners and admins, as the API's ``admin``
    scope). It could only be set through ``PUT /api/v1/keys/{id}/budget``."""
    key = ApiKey.objects.filter(ApiKey.active_q(), tenant=request.tenant, public_id=key_id)
    key = key.first()
    if key is None:
        raise Http404("No such live API key in this organisation.")
    form = KeyBudgetForm(request.POST)
    if not form.is_valid():
        problems = " ".join(m for errors in form.errors.values() for m in errors)
        messages.error(request, f"The budget of {key.name} was not changed: {problems}")
    else:
        limit = form.cleaned_data["monthly_limit"]
        key_budget_set(key=key, limit=limit, actor=request_actor(request))
        messages.success(
            request,
            f"{key.name} has no budget now."
            if limit is None
            else f"{key.name} may spend {limit} a month.",
        )
    return redirect(f"{reverse('billing_dashboard:home')}#budgets")


def _stripe_missing(request: HttpRequest) -> HttpResponse:
    messages.error(request, "Stripe is not configured on this server (STRIPE_SECRET_KEY).")
    return redirect("billing_dashboard:home")


def _chart(days: list[dict], peaks: dict[str, Decimal]) -> list[dict]:
    """One slot per day of the window, quiet days included, so a bar's place is its date (one
    day of usage used to fill the whole chart as a single wide block)."""
    by_day: dict[date, list[dict]] = {}
    for day in days:
        by_day.setdefault(day["day"], []).append(day)
    today = timezone.localdate()
    first = min([today - timedelta(days=selectors.USAGE_CHART_DAYS), *by_day])
    slots = []
    for offset in range((today - first).days + 1):
        when = first + timedelta(days=offset)
        bars = [
            {**row, "height": int(row["amount"] * 100 / (peaks[row["currency"]] or 1))}
            for row in by_day.get(when, [])
        ]
        slots.append({"day": when, "bars": bars})
    return slots


def _cap_percent(cap: Decimal | None, spend: list[dict]) -> int | None:
    """How much of the spend cap the month has used, in the currency nearest to it (a cap
    holds for each currency's spend alone); a cap of zero is used up from the start."""
    if cap is None:
        return None
    if cap == 0:
        return 100
    return max((int(row["amount"] * 100 / cap) for row in spend), default=0)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


# The card page runs Stripe.js (config/csp.py): its script, the frames it draws the card field
# in, and its calls to Stripe's API (Stripe's published policy; localstripe in the tests).
_STRIPE_JS = _origin(settings.STRIPE_JS_URL)
_STRIPE_API = _origin(settings.STRIPE_API_BASE or "https://api.stripe.com")
STRIPE_PAGE_CSP = {
    "script-src": ["'self'", _STRIPE_JS],
    "frame-src": [_STRIPE_JS, "https://hooks.stripe.com"],
    "connect-src": ["'self'", _STRIPE_JS, _STRIPE_API],
}


@csp_replace(STRIPE_PAGE_CSP)
@tenant_required(while_suspended=True)  # settling the bills is how it gets reactivated
def payment_method(request: HttpRequest) -> HttpResponse:
    """GET: the card form (Stripe.js confirms a SetupIntent in the browser). POST (from the
    form's script): save the confirmed card as the default payment method."""
    if not _can_manage_billing(request):
        raise PermissionDenied("Only owners, admins and billing members can change billing.")
    if not stripe_configured():
        return _stripe_missing(request)
    if request.method == "POST":
        try:
            payment_method_confirm(
                tenant=request.tenant,
                setup_intent=request.POST.get("setup_intent", ""),
                actor=request_actor(request),
            )
        except ServiceError as e:
            messages.error(request, e.message)
        except gateway.GatewayError as e:
            messages.error(request, _stripe_trouble(e))
        else:
            messages.success(request, "Payment method saved.")
        return redirect("billing_dashboard:home")
    try:
        intent = payment_setup_start(tenant=request.tenant)
    except gateway.GatewayError as e:
        messages.error(request, _stripe_trouble(e))
        return redirect("billing_dashboard:home")
    context = {
        "client_secret": intent["client_secret"],
        "publishable_key": settings.STRIPE_PUBLISHABLE_KEY,
        "stripe_js": settings.STRIPE_JS_URL,
    }
    return render(request, "billing/payment_method.html", context)


@tenant_required(manage=True)
@require_POST
def connect_start(request: HttpRequest) -> HttpResponse:
    """Send a publisher to Stripe's Express onboarding for payouts."""
    if not stripe_configured():
        return _stripe_missing(request)
    try:
        page = connect_onboarding_start(tenant=request.tenant, actor=request_actor(request))
    except gateway.GatewayError as e:
        messages.error(request, _stripe_trouble(e))
        return redirect("billing_dashboard:home")
    return redirect(page)


def _stripe_trouble(error: gateway.GatewayError) -> str:
    if isinstance(error, gateway.GatewayUnavailable):
        return "Stripe cannot be reached right now; nothing was changed. Try again in a minute."
    return f"Stripe refused the request; nothing was changed. ({error})"
