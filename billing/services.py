"""The usage ledger: what a unit of work costs, recorded exactly once."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from contextlib import contextmanager, suppress
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import partial

import redis
from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone
from redis.exceptions import LockError

from accounts.exceptions import Conflict, NotFound, PaymentRequired, ServiceError
from accounts.models import ApiKey, Role, Tenant
from accounts.secrets import public_id
from accounts.services import SYSTEM, Actor, audit_record, tenant_locked
from billing import selectors
from billing import stripe_gateway as gateway
from billing.models import (
    BillingAccount,
    Invoice,
    InvoiceLine,
    KeyBudget,
    StripeEvent,
    Transfer,
    UsageRecord,
)
from billing.money import MICRO, from_minor_units, minor_units
from billing.stripe_gateway import GatewayError, GatewayUnavailable
from config import sql, tasks
from marketplace.listings import money_text
from marketplace.models import Listing, Model

ALERT_AT = Decimal("0.8")
# Work younger than this is still in someone's hands; older is resumed.
RESUME_AFTER = timedelta(minutes=2)


def _money(value: Decimal) -> Decimal:
    return value.quantize(MICRO, rounding=ROUND_HALF_UP)


# No savepoint of its own inside a caller's transaction: its callers let its errors through,
# rolling back the work it bills along with it (the unique source below keeps one).
@transaction.atomic(savepoint=False)
def usage_record_create(
    *,
    kind: str,
    source_id: str,
    consumer: Tenant,
    model: Model,
    compute_seconds: Decimal,
    api_key_id: int | None = None,
    admitted: tuple[Decimal, Decimal, str] | None = None,
) -> UsageRecord:
    """Record one unit of work at the listing's current price. Call it in the same
    transaction as the work's result; a second call for the same source returns the first
    record instead of billing again.

    ``admitted``: the price per call, per second and currency the work was admitted at (its
    spend cap and key budget were checked against them). It is billed at no more: a price
    raised while it waited applies to later work only (a publisher's raise was billed on a
    consumer's whole admitted backlog, far past its cap), a price lowered applies at once.
    Where the currency changed meanwhile, the admitted terms hold as they are.

    A publisher running its own model pays nothing; the listing's free calls per month are
    free for each consumer. A compression job is billed to the model's owner at the
    platform's compression price per compute-second, all of it platform fee. ``api_key_id``
    links the record to the key that made the call, if any.
    """
    if kind == UsageRecord.Kind.COMPRESSION:
        return _compression_record_create(
            source_id=source_id,
            consumer=consumer,
            model=model,
            compute_seconds=compute_seconds,
            api_key_id=api_key_id,
        )
    # No read-before-write: the unique source_id makes a second call fall through to the
    # IntegrityError branch below and return the first record.
    # Locked, so concurrent calls cannot all see a free call left (the caller's transaction).
    # Only the terms: the card and example input can be large, and are not needed here.
    listing = sql.get(  # hand-written (config/sql.py): the ORM's took 250 µs of CPU
        Listing,
        where={"model": model.pk},
        fields=[
            "price_per_call",
            "price_per_second",
            "platform_fee_percent",
            "free_calls_per_month",
            "currency",
        ],
        for_update=True,
    )
    now = timezone.now()
    period = selectors.period_of(now)
    own = consumer.pk == model.tenant_id
    per_call = Decimal(0) if own or listing is None else listing.price_per_call
    per_second = Decimal(0) if own or listing is None else listing.price_per_second
    currency = listing.currency if listing else "usd"
    if admitted is not None and listing is not None and not own:
        if admitted[2] == currency:
            per_call, per_second = min(per_call, admitted[0]), min(per_second, admitted[1])
        else:
            per_call, per_second, currency = admitted
    fee_percent = listing.platform_fee_percent if listing else Decimal(0)
    free = False
    if listing is not None and not own and listing.free_calls_per_month:
        used = selectors.free_calls_used(
            consumer=consumer, model=model, period=period, at_most=listing.free_calls_per_month
        )
        free = used < listing.free_calls_per_month
    compute_seconds = compute_seconds.quantize(MICRO)
    amount = Decimal(0) if free else _money(per_call + per_second * compute_seconds)
    fee = _money(amount * fee_percent / 100)
    try:
        with transaction.atomic():
            record = UsageRecord(
                kind=kind,
                source_id=source_id,
                consumer=consumer,
                publisher=model.tenant,
                model=model,
                model_ref=model.ref,
                listing=listing,
                api_key_id=api_key_id,
                calls=1,
                compute_seconds=compute_seconds,
                price_per_call=per_call,
                price_per_second=per_second,
                currency=currency,
                free=free,
                amount=amount,
                platform_fee=fee,
                publisher_share=amount - fee,
                period=period,
                created_at=now,
            )
            sql.insert(record)  # the hot path's INSERT, written once (config/sql.py)
            return record
    except IntegrityError:  # the same source recorded concurrently: exactly once
        return UsageRecord.objects.get(source_id=source_id)


def _compression_record_create(
    *,
    source_id: str,
    consumer: Tenant,
    model: Model,
    compute_seconds: Decimal,
    api_key_id: int | None = None,
) -> UsageRecord:
    per_second = Decimal(settings.COMPRESSION_PRICE_PER_SECOND)
    compute_seconds = compute_seconds.quantize(MICRO)
    amount = _money(per_second * compute_seconds)
    now = timezone.now()
    try:
        with transaction.atomic():
            return UsageRecord.objects.create(
                kind=UsageRecord.Kind.COMPRESSION,
                source_id=source_id,
                consumer=consumer,
                publisher=model.tenant,
                model=model,
                model_ref=model.ref,
                api_key_id=api_key_id,
                compute_seconds=compute_seconds,
                price_per_call=Decimal(0),
                price_per_second=per_second,
                currency=settings.PLATFORM_CURRENCY,
                amount=amount,
                platform_fee=amount,
                publisher_share=Decimal(0),
                period=selectors.period_of(now),
                created_at=now,
            )
    except IntegrityError:
        return UsageRecord.objects.get(source_id=source_id)


@transaction.atomic
def credit_create(
    *,
    consumer: Tenant,
    amount: Decimal,
    reason: str,
    actor: Actor,
    currency: str = "",
    key: str = "",
) -> tuple[UsageRecord, bool]:
    """An operator's credit: a new negative ledger entry, paid for by the platform, and
    whether it is new. ``key`` (at most 26 characters) makes it once only: a second credit
    with the same key (the console's form sent twice) returns the first."""
    if amount <= 0:
        raise ServiceError("A credit is a positive amount; it is recorded as a negative entry.")
    source_id = f"cred-{key}" if key else public_id("cred")
    existing = UsageRecord.objects.filter(source_id=source_id).first() if key else None
    if existing is not None:
        return existing, False
    now = timezone.now()
    try:
        with transaction.atomic():
            credit = UsageRecord.objects.create(
                kind=UsageRecord.Kind.CREDIT,
                source_id=source_id,
                consumer=consumer,
                publisher=None,
                model=None,
                model_ref=f"credit: {reason}"[:160],
                calls=0,
                compute_seconds=Decimal(0),
                price_per_call=Decimal(0),
                price_per_second=Decimal(0),
                currency=currency or settings.PLATFORM_CURRENCY,
                amount=-_money(amount),
                platform_fee=-_money(amount),
                publisher_share=Decimal(0),
                period=selectors.period_of(now),
                created_at=now,
            )
    except IntegrityError:  # the same key, sent at the same moment: the first stands
        if not key:
            raise
        return UsageRecord.objects.get(source_id=source_id), False
    audit_record(
        action="billing.credit",
        actor=actor,
        tenant=consumer,
        target=credit,
        data={"amount": str(amount), "reason": reason},
    )
    return credit, True


# --- accounts, payment methods and spend control ------------------------------------------


def account_for(tenant: Tenant) -> BillingAccount:
    account, _ = BillingAccount.objects.get_or_create(tenant=tenant)
    return account


def customer_ensure(account: BillingAccount) -> str:
    """The tenant's Stripe customer, created the first time it is needed."""
    if account.stripe_customer_id:
        return account.stripe_customer_id
    tenant = account.tenant
    customer = gateway.customer_create(
        name=tenant.name,
        email=_owner_email(tenant),
        metadata={"mm_tenant": tenant.slug},
        idempotency_key=f"customer-{tenant.pk}-{tenant.slug}",
    )
    BillingAccount.objects.filter(pk=account.pk, stripe_customer_id="").update(
        stripe_customer_id=customer
    )
    account.refresh_from_db(fields=["stripe_customer_id"])
    return account.stripe_customer_id


def _owner_email(tenant: Tenant) -> str:
    owner = tenant.memberships.filter(role=Role.OWNER).select_related("user").first()
    return owner.user.email if owner else ""


def payment_setup_start(*, tenant: Tenant) -> dict:
    """A SetupIntent for the dashboard's card form (Stripe.js confirms it in the browser)."""
    account = account_for(tenant)
    return gateway.setup_intent_create(customer=customer_ensure(account))


@transaction.atomic
def payment_method_confirm(*, tenant: Tenant, setup_intent: str, actor: Actor) -> BillingAccount:
    """Make the card a confirmed SetupIntent saved the tenant's default payment method."""
    if not setup_intent.startswith("seti_"):
        raise ServiceError("No confirmed card came with the form; enter the card again.")
    account = BillingAccount.objects.select_for_update().filter(tenant=tenant).first()
    if account is None or not account.stripe_customer_id:
        raise NotFound("No such setup intent for this organisation.")
    try:
        intent = gateway.setup_intent_retrieve(setup_intent)
    except gateway.ObjectMissing:
        raise NotFound("No such setup intent for this organisation.") from None
    if intent["customer"] != account.stripe_customer_id:
        raise NotFound("No such setup intent for this organisation.")
    if intent["status"] != "succeeded" or not intent["payment_method"]:
        raise Conflict(
            f"The card was not confirmed (setup intent is {intent['status']}); try again."
        )
    gateway.customer_default_payment_method_set(
        customer=account.stripe_customer_id, payment_method=intent["payment_method"]
    )
    account.payment_method_id = intent["payment_method"]
    account.payment_method_label = gateway.payment_method_label(intent["payment_method"])
    account.save(update_fields=["payment_method_id", "payment_method_label", "updated_at"])
    audit_record(
        action="billing.payment_method",
        actor=actor,
        tenant=tenant,
        data={"label": account.payment_method_label},
    )
    # Invoices a card declined are tried again on the new one.
    declined = Invoice.objects.filter(consumer=tenant, status=Invoice.Status.OPEN).exclude(
        payment_error=""
    )
    for invoice_id in declined.values_list("public_id", flat=True):
        transaction.on_commit(partial(_enqueue, "billing.collect_invoice", invoice_id))
    return account


@transaction.atomic
def spend_cap_set(*, tenant: Tenant, cap: Decimal | None, actor: Actor) -> BillingAccount:
    if cap is not None and cap < 0:
        raise ServiceError("A spend cap is zero or more; leave it empty for no cap.")
    account = account_for(tenant)
    account.spend_cap = cap
    account.cap_alerted_period = None
    account.save(update_fields=["spend_cap", "cap_alerted_period", "updated_at"])
    audit_record(action="billing.spend_cap", actor=actor, tenant=tenant, data={"cap": str(cap)})
    return account


@transaction.atomic
def key_budget_set(*, key: ApiKey, limit: Decimal | None, actor: Actor) -> KeyBudget | None:
    if limit is None:
        KeyBudget.objects.filter(api_key=key).delete()
        budget = None
    else:
        if limit < 0:
            raise ServiceError("A key's budget is zero or more; leave it empty for none.")
        budget, _ = KeyBudget.objects.update_or_create(
            api_key=key, defaults={"monthly_limit": limit, "alerted_period": None}
        )
    audit_record(
        action="billing.key_budget",
        actor=actor,
        tenant=key.tenant,
        target=key,
        data={"limit": str(limit)},
    )
    return budget


def spend_authorize(
    *,
    consumer: Tenant,
    model: Model,
    api_key: ApiKey | None,
    pending: Callable[[ApiKey | None, str], Decimal] | None = None,
    in_flight: Callable[[], int] | None = None,
) -> Listing | None:
    """Refuse paid work before it runs (402) when the consumer has no payment method, is past
    its grace period, or has reached its monthly spend cap or the key's budget. Free work is
    never refused, nor a call the listing's free calls this month still cover (counting the
    ``in_flight()`` calls of this consumer on this model not yet billed). Crossing 80 % of a
    cap or budget sends one alert per month. A cap or budget holds for each currency's spend
    alone: the listing's currency is the one compared.

    ``pending(key, currency)``, asked only where a cap or budget applies, is what the
    consumer's work admitted but not yet billed will cost in ``currency`` (about; of
    ``key``'s alone when given): it counts against the cap, so queued work cannot run past
    it.

    Returns the listing whose terms the work is admitted under (None: the consumer's own
    model, or no listing): it is billed at no more than them (``usage_record_create``)."""
    if consumer.pk == model.tenant_id:
        return None
    if Model.listing.is_cached(model):
        # Loaded with the model (and cached with it for a few seconds by the inference API):
        # the price charged is read again in the transaction that bills the work.
        listing = Model.listing.related.get_cached_value(model)  # None: no listing
    else:
        listing = (
            Listing.objects.filter(model=model)
            .only("price_per_call", "price_per_second", "currency", "free_calls_per_month")
            .first()
        )
    if listing is None or listing.is_free:
        return listing
    # The checks below count the work recorded; the caller's transaction records this one.
    # Two admissions that each counted before the other was recorded could both take the
    # last free call or the last room under a cap or budget (8 parallel calls were admitted
    # with room for one): paid admissions of one consumer take turns on its row. (SQLite's
    # write transactions already run one at a time.)
    tenant_locked(consumer)
    if listing.free_calls_per_month:
        period = selectors.period_of()
        used = selectors.free_calls_used(
            consumer=consumer, model=model, period=period, at_most=listing.free_calls_per_month
        )
        if used + (in_flight() if in_flight else 0) < listing.free_calls_per_month:
            return listing  # one of this month's free calls
    currency = listing.currency
    account, period = _account_authorize(
        consumer,
        paid=f"{model.ref} is a paid listing",
        pending=pending,
        currency=currency,
        price=(f"A call of {model.ref}", listing.price_per_call),
    )
    _key_budget_authorize(
        account,
        period,
        api_key=api_key,
        currency=currency,
        pending=pending,
        price=(f"A call of {model.ref}", listing.price_per_call),
    )
    return listing


def _shown(amount: Decimal, currency: str) -> str:
    """An amount of a 402's message, in full at the ledger's precision (``money_text``: 0.056
    spent is not "0.06", and a call of 0.0005 does not cost "0.00")."""
    return money_text(_money(amount), currency)  # rounded as the ledger rounds


def _key_budget_authorize(
    account: BillingAccount,
    period: date,
    *,
    api_key: ApiKey | None,
    currency: str,
    pending: Callable[[ApiKey | None, str], Decimal] | None,
    price: tuple[str, Decimal] | None = None,
) -> None:
    """402 when ``api_key``'s monthly budget is used up (counting its ``pending`` work), or
    has less left than ``price`` (what the work is, what it costs at least); one alert a
    month past 80 %."""
    budget = KeyBudget.objects.filter(api_key=api_key).first() if api_key else None
    if budget is None:
        return
    spent = selectors.month_spend(
        consumer=account.tenant, period=period, api_key=api_key, currency=currency
    )
    owed = spent + (pending(api_key, currency) if pending else Decimal(0))
    if owed >= budget.monthly_limit:
        raise PaymentRequired(
            f"API key {api_key.prefix} has used its monthly budget "
            f"({_shown(budget.monthly_limit, currency)}); raise it or use another key."
        )
    if price and owed + price[1] > budget.monthly_limit:
        what, cost = price
        raise PaymentRequired(
            f"{what} costs {_shown(cost, currency)}, more than API key {api_key.prefix} has "
            f"left of its monthly budget ({_shown(budget.monthly_limit - owed, currency)} of "
            f"{_shown(budget.monthly_limit, currency)}); raise it or use another key."
        )
    if spent >= budget.monthly_limit * ALERT_AT and budget.alerted_period != period:
        _alert_once(
            account=account, period=period, spent=spent, limit=budget.monthly_limit, key=budget
        )


def compute_authorize(
    *,
    consumer: Tenant,
    api_key: ApiKey | None = None,
    running_seconds: Callable[[ApiKey | None], Decimal] | None = None,
) -> None:
    """Refuse a compression job (402) its owner could not pay for: an invoice unpaid past its
    grace period, or no room under the spend cap. Unlike a paid listing it needs no payment
    method up front: a publisher's compression is invoiced at month end with the rest, and an
    invoice nobody pays stops it after the grace period. Nothing to check while compression
    is free. A job started with ``api_key`` also needs room in that key's monthly budget.
    ``running_seconds(key)``, asked only where a cap or budget applies, is how long the
    consumer's jobs still running (``key``'s alone when given) have run so far: their cost
    counts against the cap and the budget."""
    price = Decimal(settings.COMPRESSION_PRICE_PER_SECOND)
    if price == 0:
        return
    pending = (lambda key, _currency: price * running_seconds(key)) if running_seconds else None
    account, period = _account_authorize(
        consumer,
        paid="Compression is billed per compute-second",
        card=False,
        currency=settings.PLATFORM_CURRENCY,
        pending=pending,
    )
    _key_budget_authorize(
        account, period, api_key=api_key, currency=settings.PLATFORM_CURRENCY, pending=pending
    )


def _account_authorize(
    consumer: Tenant,
    *,
    paid: str,
    currency: str,
    pending: Callable[[ApiKey | None, str], Decimal] | None = None,
    card: bool = True,
    price: tuple[str, Decimal] | None = None,
) -> tuple[BillingAccount, date]:
    """The consumer's own checks before paid work in ``currency`` (``paid`` says why it is
    paid; ``card``, whether it needs a payment method first; ``price``, what the work is and
    what it costs at least, which must fit under the cap): its account and this month's
    period, or 402 saying what to do."""
    account = BillingAccount.objects.filter(tenant=consumer).first() or BillingAccount(
        tenant=consumer
    )
    if card and settings.PAYMENT_METHOD_REQUIRED and not account.has_payment_method:
        raise PaymentRequired(
            f"{paid}: add a payment method in the dashboard's billing page before calling it."
        )
    now = timezone.now()
    if (
        account.state == BillingAccount.State.PAST_DUE
        and account.grace_until
        and (now >= account.grace_until)
    ):
        raise PaymentRequired(
            "Your last invoice is unpaid and its grace period has ended: update the payment "
            "method in the dashboard's billing page, and paid calls resume once it is paid."
        )
    period = selectors.period_of(now)
    if account.spend_cap is not None:
        spent = selectors.month_spend(consumer=consumer, period=period, currency=currency)
        owed = pending(None, currency) if pending else Decimal(0)
        if spent + owed >= account.spend_cap:
            # What running work has cost so far is an estimate: to the cent.
            running = f", and {owed:.2f} for work still running" if owed else ""
            raise PaymentRequired(
                f"This month's {currency.upper()} spend ({_shown(spent, currency)}{running}) has "
                f"reached your spend cap ({_shown(account.spend_cap, currency)}); raise the cap on "
                "the dashboard's billing page or with PUT /api/v1/billing/settings."
            )
        if price and spent + owed + price[1] > account.spend_cap:
            what, cost = price
            raise PaymentRequired(
                f"{what} costs {_shown(cost, currency)} {currency.upper()}, more than this month's "
                "spend leaves under your spend cap "
                f"({_shown(account.spend_cap - spent - owed, currency)} of "
                f"{_shown(account.spend_cap, currency)}); raise the cap on the dashboard's billing "
                "page or with PUT /api/v1/billing/settings."
            )
        if spent >= account.spend_cap * ALERT_AT and account.cap_alerted_period != period:
            _alert_once(account=account, period=period, spent=spent, limit=account.spend_cap)
    return account, period


# Alerts found during an admission (``alerts_after_admission``), sent once it has ended.
_DEFERRED_ALERTS: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "mm_deferred_alerts", default=None
)


@contextmanager
def alerts_after_admission():
    """Admission runs in the transaction that records the work, under the consumer's lock
    (``spend_authorize``): an 80 % alert found there is sent once that transaction has ended,
    committed or rolled back, each in its own write. Sent inside, the e-mail held the lock
    for an SMTP round trip, and a call refused after it (a key's budget used up) rolled the
    alert's record back, so every refused call e-mailed the organisation again."""
    token = _DEFERRED_ALERTS.set([])
    try:
        yield
    finally:
        pending = _DEFERRED_ALERTS.get() or []
        _DEFERRED_ALERTS.reset(token)
        for alert in pending:
            alert()


def _alert_once(**alert) -> None:
    deferred = _DEFERRED_ALERTS.get()
    if deferred is not None:
        deferred.append(partial(_alert_now, **alert))
    else:
        _alert_now(**alert)


def _alert_now(
    *,
    account: BillingAccount,
    period,
    spent: Decimal,
    limit: Decimal,
    key: KeyBudget | None = None,
) -> None:
    # A conditional update: of concurrent requests crossing 80 %, one sends the email.
    if key is not None:
        won = (
            KeyBudget.objects.filter(pk=key.pk)
            .exclude(alerted_period=period)
            .update(alerted_period=period)
        )
        what = f"API key {key.api_key.prefix}'s monthly budget"
    else:
        won = (
            BillingAccount.objects.filter(pk=account.pk)
            .exclude(cap_alerted_period=period)
            .update(cap_alerted_period=period)
        )
        what = "your monthly spend cap"
    if not won:
        return
    tenant = account.tenant
    recipients = list(
        tenant.memberships.filter(role__in=[Role.OWNER, Role.ADMIN, Role.BILLING]).values_list(
            "user__email", flat=True
        )
    )
    if recipients:
        send_mail(
            subject=f"[Modelmarket] {tenant.name} has used 80% of {what}",
            message=(
                f"{tenant.name} has spent {spent:.2f} this month, {spent / limit:.0%} of "
                f"{what} ({limit:.2f}). Paid calls stop with 402 at 100%.\n\n"
                f"{settings.SITE_URL}/dashboard/billing/"
            ),
            from_email=None,
            recipient_list=recipients,
            fail_silently=True,
        )


# --- period close: the ledger into invoices ----------------------------------------------


def period_close(*, period: date, collect: bool = True) -> list[Invoice]:
    """Freeze every consumer's usage for the month into one invoice per currency (once: a
    second close finds them), and (``collect``) queue each unfinished one for collection."""
    if period >= selectors.period_of():
        raise Conflict(f"{period:%Y-%m} is not over yet; only past months can be closed.")
    groups = (
        UsageRecord.objects.filter(period=period)
        .values_list("consumer_id", "currency")
        .distinct()
        .order_by("consumer_id", "currency")
    )
    invoices = []
    for consumer_id, currency in groups:
        invoice = invoice_build(
            consumer=Tenant.objects.get(pk=consumer_id), period=period, currency=currency
        )
        if invoice is not None:
            invoices.append(invoice)
    if not stripe_configured():
        return invoices  # they wait in pending until Stripe is configured and this runs again
    for invoice in invoices:
        if collect and invoice.status in (Invoice.Status.PENDING, Invoice.Status.DRAFT):
            transaction.on_commit(partial(_enqueue, "billing.collect_invoice", invoice.public_id))
    return invoices


def stripe_configured() -> bool:
    """Whether this server may talk to Stripe (``STRIPE_SECRET_KEY``). Without it the ledger
    and invoices are kept as always, and nothing goes to Stripe (a close sent each customer's
    name and e-mail to api.stripe.com with no key, and failed)."""
    return bool(settings.STRIPE_SECRET_KEY)


@transaction.atomic
def invoice_build(*, consumer: Tenant, period: date, currency: str) -> Invoice | None:
    """The invoice for one consumer, month and currency, with a line per listing (and one
    for credits). None when there is nothing to charge and no publisher to pay.

    Credits larger than the month's usage pay all of it (an invoice of 0, paid at once, so
    the publishers still get their shares) and the rest carries into the month open now."""
    # Two closes at once (the beat task and an operator's command) take turns per consumer:
    # the second finds the first's invoice, as a later close does, instead of building its
    # own and failing on the unique invoice (PostgreSQL; SQLite serialises them anyway).
    Tenant.objects.select_for_update().filter(pk=consumer.pk).exists()
    existing = Invoice.objects.filter(consumer=consumer, period=period, currency=currency).first()
    if existing is not None:
        return existing
    rows = selectors.rollup(consumer=consumer, period=period, currency=currency)
    if _credit_carry(consumer=consumer, period=period, currency=currency, rows=rows):
        rows = selectors.rollup(consumer=consumer, period=period, currency=currency)
    lines = []
    for row in rows:
        amount_cents = minor_units(row["amount"], currency)
        if amount_cents == 0:
            continue
        lines.append(
            InvoiceLine(
                model_id=row["model"],
                publisher_id=row["publisher"],
                description=_line_description(row, period),
                calls=row["calls"],
                compute_seconds=row["compute_seconds"],
                amount=row["amount"],
                amount_cents=amount_cents,
                publisher_cents=minor_units(row["publisher_share"], currency),
            )
        )
    if not lines:
        return None
    total = sum(line.amount_cents for line in lines)
    invoice = Invoice.objects.create(
        consumer=consumer, period=period, currency=currency, amount_cents=total
    )
    for line in lines:
        line.invoice = invoice
    InvoiceLine.objects.bulk_create(lines)
    return invoice


def _credit_carry(*, consumer: Tenant, period: date, currency: str, rows: list[dict]) -> bool:
    """Move the part of ``period``'s credits its usage leaves unused into the month open now
    (or the next, while ``period`` is itself open): a positive entry takes it out of
    ``period``, so that its credit line comes to exactly minus its usage lines, and a
    negative one puts it in that month. Once per consumer, period and currency (the
    entries' ids say so). False when the credits do not exceed the usage."""
    credits = sum((r["amount"] for r in rows if _is_credits(r)), Decimal(0))
    used = sum(minor_units(r["amount"], currency) for r in rows if not _is_credits(r))
    excess = -(credits + from_minor_units(used, currency))
    if excess <= 0:
        return False
    now = timezone.now()
    into = max(selectors.period_of(now), (period + timedelta(days=32)).replace(day=1))
    tag = f"carry-{consumer.pk}-{period:%Y%m}-{currency}"
    entry = partial(
        UsageRecord,
        kind=UsageRecord.Kind.CREDIT,
        consumer=consumer,
        calls=0,
        compute_seconds=Decimal(0),
        price_per_call=Decimal(0),
        price_per_second=Decimal(0),
        currency=currency,
        publisher_share=Decimal(0),
        created_at=now,
    )
    UsageRecord.objects.bulk_create(
        [
            entry(
                source_id=f"{tag}-out",
                model_ref=f"credit: carried to {into:%B %Y}",
                amount=excess,
                platform_fee=excess,
                period=period,
            ),
            entry(
                source_id=f"{tag}-in",
                model_ref=f"credit: carried from {period:%B %Y}",
                amount=-excess,
                platform_fee=-excess,
                period=into,
            ),
        ]
    )
    return True


def _is_credits(row: dict) -> bool:
    """The rollup's row of credits: no model, and no publisher (the platform pays them)."""
    return row["model"] is None and row["publisher"] is None


def _line_description(row: dict, period: date) -> str:
    if _is_credits(row):
        return f"Credits, {period:%B %Y}"
    return (
        f"{row['model_ref']}: {row['calls']} calls, "
        f"{row['compute_seconds'].normalize():f} compute-seconds, {period:%B %Y}"
    )[:200]


class CollectionBusy(GatewayUnavailable):
    """Another process is collecting this invoice; try again later."""


def invoice_collect(invoice: Invoice) -> Invoice:
    """Take an invoice through Stripe: its items, the invoice, finalise, pay. Each step is
    saved as it lands and carries an idempotency key made of our ids; a retry after any
    crash picks up the objects a lost response made (matched by metadata) instead of
    creating them again. One collector at a time per invoice (a Redis lock): a second one
    waits for the first, then finds its work done."""
    lease = settings.BILLING_COLLECT_LEASE
    lock = _redis().lock(
        f"mm:billing:collect:{invoice.public_id}", timeout=lease, blocking_timeout=min(lease, 30)
    )
    if not lock.acquire():
        raise CollectionBusy(f"{invoice.public_id} is being collected by another process.")
    try:
        invoice.refresh_from_db()
        if invoice.status in (*Invoice.SETTLED, Invoice.Status.VOID):
            return invoice
        return _invoice_collect(invoice)
    finally:
        with suppress(LockError):  # held past its timeout: the work is idempotent anyway
            lock.release()


def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=10)


def _invoice_collect(invoice: Invoice) -> Invoice:
    account = account_for(invoice.consumer)
    customer = customer_ensure(account)
    if invoice.status in (Invoice.Status.PENDING, Invoice.Status.DRAFT):
        _invoice_create_in_stripe(invoice, customer)
    remote = gateway.invoice_retrieve(invoice.stripe_invoice_id)
    if remote["status"] == "draft":
        if remote["total"] != invoice.amount_cents:
            raise GatewayError(
                f"Stripe's draft {remote['id']} totals {remote['total']} but "
                f"{invoice.public_id} is {invoice.amount_cents}; not finalising."
            )
        remote = gateway.invoice_finalize(
            invoice.stripe_invoice_id, idempotency_key=f"finalize-{invoice.public_id}"
        )
        invoice_apply(invoice, remote)
    if remote["status"] == "open":
        try:
            # A retry after a lost response keeps the key; one after a decline gets a new one.
            failures = invoice.payment_failures
            key = f"pay-{invoice.public_id}" + (f"-{failures}" if failures else "")
            remote = gateway.invoice_pay(invoice.stripe_invoice_id, idempotency_key=key)
        except GatewayUnavailable:
            raise
        except GatewayError as e:  # declined, no payment method, ...
            payment_failed(invoice, reason=str(e), attempt=failures + 1)
            return invoice
        if remote["status"] == "open":  # attempted, not paid: declined
            payment_failed(invoice, reason="The payment was declined.", attempt=failures + 1)
            return invoice
    return invoice_apply(invoice, remote)


def _invoice_create_in_stripe(invoice: Invoice, customer: str) -> None:
    """The draft invoice, then its items on it by id. Objects a lost response made are
    found by our ids in their metadata and adopted, never made twice."""
    if not invoice.stripe_invoice_id:
        adopted = [
            found
            for found in gateway.invoices_of(customer)
            if found["metadata"].get("mm_invoice") == invoice.public_id
        ]
        found = (
            adopted[0]
            if adopted
            else gateway.invoice_create(
                customer=customer,
                currency=invoice.currency,
                description=f"Modelmarket usage, {invoice.period:%B %Y}",
                metadata={"mm_invoice": invoice.public_id, "mm_tenant": invoice.consumer.slug},
                idempotency_key=f"invoice-{invoice.public_id}",
            )
        )
        Invoice.objects.filter(pk=invoice.pk, stripe_invoice_id="").update(
            stripe_invoice_id=found["id"], status=Invoice.Status.DRAFT
        )
        invoice.refresh_from_db()
    missing = list(invoice.lines.filter(stripe_item_id="").order_by("pk"))
    if not missing:
        return
    on_invoice = {
        line["metadata"].get("mm_line"): line["invoice_item"] or line["id"]
        for line in gateway.invoice_lines(invoice.stripe_invoice_id)
    }
    for line in missing:
        item = on_invoice.get(line.public_id) or gateway.invoice_item_create(
            customer=customer,
            invoice=invoice.stripe_invoice_id,
            amount_cents=line.amount_cents,
            currency=invoice.currency,
            description=line.description,
            metadata={"mm_line": line.public_id, "mm_invoice": invoice.public_id},
            idempotency_key=f"item-{line.public_id}",
        )
        InvoiceLine.objects.filter(pk=line.pk).update(stripe_item_id=item)


STRIPE_STATUS = {
    "draft": Invoice.Status.DRAFT,
    "open": Invoice.Status.OPEN,
    "paid": Invoice.Status.PAID,
    "void": Invoice.Status.VOID,
    "uncollectible": Invoice.Status.UNCOLLECTIBLE,
}


def invoice_apply(invoice: Invoice, remote: dict) -> Invoice:
    """Bring our invoice to Stripe's state. Idempotent and safe in any order: a paid or
    refunded invoice never goes back, and the side effects of paying run once."""
    status = STRIPE_STATUS.get(remote["status"])
    if status is None:
        return invoice
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if invoice.status in Invoice.SETTLED:
            return invoice
        invoice.number = remote["number"] or invoice.number
        invoice.hosted_url = remote["hosted_invoice_url"] or invoice.hosted_url
        invoice.status = status
        fields = ["status", "number", "hosted_url"]
        if status == Invoice.Status.PAID:
            invoice.paid_at = timezone.now()
            invoice.payment_error = ""
            fields += ["paid_at", "payment_error"]
        invoice.save(update_fields=fields)
        if status == Invoice.Status.PAID:
            transaction.on_commit(partial(_enqueue, "billing.invoice_paid", invoice.public_id))
        if status in (Invoice.Status.PAID, Invoice.Status.VOID):  # settled, or forgiven
            _standing_refresh(invoice.consumer)
    return invoice


STRIPE_DECLINED = "Stripe could not collect the payment."


def invoice_sync(invoice: Invoice, *, payment_failed_event: bool = False) -> Invoice:
    """Apply Stripe's current state of the invoice (webhooks re-read it, so duplicates and
    any order of events end in the same place). A payment failure counts only while the
    invoice is still unpaid when we look."""
    remote = gateway.invoice_retrieve(invoice.stripe_invoice_id)
    if payment_failed_event and remote["status"] == "open":
        payment_failed(invoice, reason=STRIPE_DECLINED, attempt=remote.get("attempt_count") or None)
    return invoice_apply(invoice, remote)


@transaction.atomic
def payment_failed(invoice: Invoice, *, reason: str, attempt: int | None = None) -> None:
    """Count a failed payment and start the grace period; after it, the consumer's paid
    calls answer 402. ``attempt``: which of Stripe's attempts on the invoice failed (its
    ``attempt_count``), where known. The collector sees a decline first, with the card's own
    reason, and Stripe's invoice.payment_failed event then reports the same attempt: that is
    counted once, with the collector's reason (they may come in either order)."""
    unpaid = Invoice.objects.filter(pk=invoice.pk).exclude(status__in=Invoice.SETTLED)
    if attempt is None:
        unpaid.update(
            status=Invoice.Status.OPEN,
            payment_error=reason[:500],
            payment_failures=F("payment_failures") + 1,
        )
    else:
        counted = unpaid.filter(payment_failures__lt=attempt).update(
            status=Invoice.Status.OPEN, payment_error=reason[:500], payment_failures=attempt
        )
        if not counted and reason != STRIPE_DECLINED:
            unpaid.filter(payment_failures=attempt).update(payment_error=reason[:500])
    account = BillingAccount.objects.select_for_update().get(tenant=invoice.consumer)
    if account.state != BillingAccount.State.PAST_DUE:
        account.state = BillingAccount.State.PAST_DUE
        account.grace_until = timezone.now() + settings.BILLING_GRACE_PERIOD
        account.save(update_fields=["state", "grace_until", "updated_at"])


def _standing_refresh(tenant: Tenant) -> None:
    unpaid = Invoice.objects.filter(consumer=tenant, status=Invoice.Status.OPEN).exclude(
        payment_error=""
    )
    if not unpaid.exists():
        BillingAccount.objects.filter(tenant=tenant).update(
            state=BillingAccount.State.OK, grace_until=None
        )


# --- publishers' shares ----------------------------------------------------------------------


@transaction.atomic
def transfers_create(invoice: Invoice) -> list[Transfer]:
    """One transfer per publisher on a paid invoice, made once; sent when the publisher has a
    connected account that can receive payouts, else kept until it has."""
    if (
        not Invoice.objects.select_for_update()
        .filter(pk=invoice.pk, status=Invoice.Status.PAID)
        .exists()
    ):
        return []  # a refund started meanwhile: nothing is owed
    if not invoice.stripe_charge_id:
        charge = gateway.invoice_charge(invoice.stripe_invoice_id)
        Invoice.objects.filter(pk=invoice.pk).update(stripe_charge_id=charge)
        invoice.stripe_charge_id = charge
    shares = (
        invoice.lines.filter(publisher__isnull=False, publisher_cents__gt=0)
        .values("publisher")
        .annotate(total=Sum("publisher_cents"))
        .order_by("publisher")
    )
    transfers = []
    for share in shares:
        transfer, _ = Transfer.objects.get_or_create(
            invoice=invoice,
            publisher_id=share["publisher"],
            defaults={"amount_cents": share["total"], "currency": invoice.currency},
        )
        transfers.append(transfer)
    for transfer in transfers:
        if transfer.status == Transfer.Status.PENDING and not transfer.stripe_transfer_id:
            transaction.on_commit(partial(_enqueue, "billing.send_transfer", transfer.public_id))
    return transfers


def transfer_send(transfer: Transfer) -> Transfer:
    if transfer.stripe_transfer_id or transfer.status != Transfer.Status.PENDING:
        return transfer
    account = account_for(transfer.publisher)
    if not (account.connect_account_id and account.payouts_enabled):
        Transfer.objects.filter(pk=transfer.pk, status=Transfer.Status.PENDING).update(
            status=Transfer.Status.AWAITING_ACCOUNT
        )
        transfer.refresh_from_db()
        return transfer
    invoice = transfer.invoice
    # Tied to the invoice's charge, unless a credit made the charge smaller than the shares
    # (Stripe sends no more from a charge than it took): then the platform's balance pays.
    shares = invoice.transfers.aggregate(total=Sum("amount_cents"))["total"] or 0
    source = invoice.stripe_charge_id if shares <= invoice.amount_cents else ""
    stripe_id = gateway.transfer_create(
        amount_cents=transfer.amount_cents,
        currency=transfer.currency,
        destination=account.connect_account_id,
        source_transaction=source,
        transfer_group=invoice.public_id,
        metadata={"mm_transfer": transfer.public_id, "mm_invoice": invoice.public_id},
        idempotency_key=f"transfer-{transfer.public_id}",
    )
    sent = Transfer.objects.filter(
        pk=transfer.pk, stripe_transfer_id="", status=Transfer.Status.PENDING
    ).update(stripe_transfer_id=stripe_id, status=Transfer.Status.PAID)
    transfer.refresh_from_db()
    if not sent and transfer.status == Transfer.Status.REVERSED and not transfer.stripe_transfer_id:
        # The invoice was refunded while this was being sent: the refund found nothing to
        # reverse, so the money just sent comes back here (the same key as a refund's).
        gateway.transfer_reverse(
            transfer=stripe_id,
            amount_cents=transfer.amount_cents,
            idempotency_key=f"reverse-{transfer.public_id}",
        )
        Transfer.objects.filter(pk=transfer.pk, stripe_transfer_id="").update(
            stripe_transfer_id=stripe_id
        )
        transfer.refresh_from_db()
    return transfer


def connect_onboarding_start(*, tenant: Tenant, actor: Actor) -> str:
    """The Stripe-hosted onboarding page for the publisher's Express account."""
    account = account_for(tenant)
    if not account.connect_account_id:
        created = gateway.connect_account_create(
            email=_owner_email(tenant),
            metadata={"mm_tenant": tenant.slug},
            idempotency_key=f"connect-{tenant.pk}-{tenant.slug}",
        )
        BillingAccount.objects.filter(pk=account.pk, connect_account_id="").update(
            connect_account_id=created
        )
        account.refresh_from_db(fields=["connect_account_id"])
        audit_record(action="billing.connect", actor=actor, tenant=tenant)
    page = f"{settings.SITE_URL}/dashboard/billing/"
    return gateway.connect_onboarding_link(
        account=account.connect_account_id, refresh_url=page, return_url=page
    )


def connect_account_sync(connect_account_id: str) -> BillingAccount | None:
    """Read whether a connected account can receive payouts; send what waited for it."""
    account = BillingAccount.objects.filter(connect_account_id=connect_account_id).first()
    if account is None:
        return None
    enabled = gateway.connect_account_payouts_enabled(connect_account_id)
    BillingAccount.objects.filter(pk=account.pk).update(payouts_enabled=enabled)
    if enabled:
        waiting = Transfer.objects.filter(
            publisher=account.tenant, status=Transfer.Status.AWAITING_ACCOUNT
        )
        for transfer in waiting:
            Transfer.objects.filter(pk=transfer.pk).update(status=Transfer.Status.PENDING)
            _enqueue("billing.send_transfer", transfer.public_id)
    account.refresh_from_db()
    return account


def invoice_refund(*, invoice: Invoice, actor: Actor) -> Invoice:
    """Refund a paid invoice in full and reverse the publishers' transfers. An invoice of 0
    (credits paid for it) charged nothing: only its transfers are reversed.

    The invoice is marked ``refunding`` (and the refund audited) before Stripe is asked, so a
    refund that stops half-way (a reversal Stripe refuses, an outage) is visible as such, to
    reconcile too, and refunding it again finishes it: the charge's refund counts as done
    when Stripe says it already is, and only the transfers not yet reversed are reversed."""
    with transaction.atomic():
        started = Invoice.objects.filter(pk=invoice.pk, status=Invoice.Status.PAID).update(
            status=Invoice.Status.REFUNDING
        )
        invoice.refresh_from_db()
        if not started and invoice.status != Invoice.Status.REFUNDING:
            raise Conflict(
                f"Only a paid invoice can be refunded; {invoice.public_id} is {invoice.status}."
            )
        if started:
            audit_record(
                action="billing.refund",
                actor=actor,
                tenant=invoice.consumer,
                target=invoice,
                data={"amount_cents": invoice.amount_cents},
            )
    if invoice.amount_cents > 0:
        # AlreadyRefunded: by this refund's first run, past Stripe's idempotency window.
        with suppress(gateway.AlreadyRefunded):
            gateway.refund_create(
                charge=invoice.stripe_charge_id
                or gateway.invoice_charge(invoice.stripe_invoice_id),
                amount_cents=invoice.amount_cents,
                metadata={"mm_invoice": invoice.public_id},
                idempotency_key=f"refund-{invoice.public_id}",
            )
    for transfer in invoice.transfers.exclude(status=Transfer.Status.REVERSED).order_by("pk"):
        if transfer.stripe_transfer_id:
            gateway.transfer_reverse(
                transfer=transfer.stripe_transfer_id,
                amount_cents=transfer.amount_cents,
                idempotency_key=f"reverse-{transfer.public_id}",
            )
        Transfer.objects.filter(pk=transfer.pk).update(
            status=Transfer.Status.REVERSED, reversed_cents=transfer.amount_cents
        )
    Invoice.objects.filter(pk=invoice.pk, status=Invoice.Status.REFUNDING).update(
        status=Invoice.Status.REFUNDED
    )
    invoice.refresh_from_db()
    return invoice


# --- webhooks ------------------------------------------------------------------------------


def stripe_event_record(event: dict) -> StripeEvent | None:
    """Store a verified event once; None for a duplicate delivery."""
    obj = (event.get("data") or {}).get("object") or {}
    try:
        with transaction.atomic():
            stored = StripeEvent.objects.create(
                event_id=event["id"],
                type=event.get("type", ""),
                object_id=str(obj.get("id") or ""),
                payload=event,
            )
            transaction.on_commit(
                partial(_enqueue, "billing.process_stripe_event", stored.event_id)
            )
            return stored
    except IntegrityError:
        return None


EVENT_MAX_ATTEMPTS = 5


def stripe_event_process(event: StripeEvent) -> None:
    """Act on an event by re-reading the object it names, so a stale or repeated event
    cannot move anything backwards. A failure is recorded on the event (its error and one
    more attempt) and raised; after ``EVENT_MAX_ATTEMPTS`` the resume sweep stops sending it
    again and an operator decides (the admin's "process again")."""
    if event.processed_at is not None:
        return
    try:
        _stripe_event_act(event)
    except GatewayUnavailable:
        raise  # Stripe is down: the task retries it, and that is not the event's fault
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:2000]
        StripeEvent.objects.filter(pk=event.pk).update(error=error, attempts=F("attempts") + 1)
        raise
    StripeEvent.objects.filter(pk=event.pk).update(processed_at=timezone.now(), error="")


@transaction.atomic
def stripe_events_retry(*, events, actor: Actor) -> int:
    """An operator's "process again": the unprocessed ``events`` get their attempts back, each
    with an audit row saying who sent it again and why it had stopped, and are queued once
    that commits. How many were."""
    retried = list(events.filter(processed_at__isnull=True).order_by("pk"))
    StripeEvent.objects.filter(pk__in=[event.pk for event in retried]).update(attempts=0)
    for event in retried:
        audit_record(
            action="stripe_event.retry",
            actor=actor,
            tenant=None,
            target=event,
            data={
                "event_id": event.event_id,
                "type": event.type,
                "attempts": event.attempts,
                "error": event.error[:500],
            },
        )
        transaction.on_commit(partial(_enqueue, "billing.process_stripe_event", event.event_id))
    return len(retried)


def _stripe_event_act(event: StripeEvent) -> None:
    kind, object_id = event.type, event.object_id
    if kind.startswith("invoice.") and object_id:
        invoice = Invoice.objects.filter(stripe_invoice_id=object_id).first()
        if invoice is not None:
            invoice_sync(invoice, payment_failed_event=kind == "invoice.payment_failed")
    elif kind == "setup_intent.succeeded" and object_id:
        customer = (event.payload.get("data") or {}).get("object", {}).get("customer")
        account = BillingAccount.objects.filter(stripe_customer_id=customer or "-").first()
        if account is not None and not account.payment_method_id:
            payment_method_confirm(tenant=account.tenant, setup_intent=object_id, actor=SYSTEM)
    elif kind == "account.updated" and object_id:
        connect_account_sync(object_id)


def _enqueue(task: str, *args) -> None:
    tasks.send(task, *args)


def billing_resume() -> dict:
    """Queue what a crash or an outage left half-way for the workers."""
    from django.db.models import Exists, OuterRef

    run = _enqueue
    stale = timezone.now() - RESUME_AFTER
    counts = {"invoices": 0, "paid": 0, "transfers": 0, "events": 0}
    unfinished = Invoice.objects.filter(
        Q(status__in=[Invoice.Status.PENDING, Invoice.Status.DRAFT])
        | Q(status=Invoice.Status.OPEN, payment_error=""),
        created_at__lt=stale,
    )
    for invoice_id in unfinished.values_list("public_id", flat=True):
        run("billing.collect_invoice", invoice_id)
        counts["invoices"] += 1
    shared = InvoiceLine.objects.filter(invoice=OuterRef("pk"), publisher_cents__gt=0)
    without_transfers = Invoice.objects.filter(
        Exists(shared), status=Invoice.Status.PAID, transfers__isnull=True
    )
    for invoice_id in without_transfers.values_list("public_id", flat=True):
        run("billing.invoice_paid", invoice_id)
        counts["paid"] += 1
    unsent = Transfer.objects.filter(
        status=Transfer.Status.PENDING, stripe_transfer_id="", created_at__lt=stale
    )
    for transfer_id in unsent.values_list("public_id", flat=True):
        run("billing.send_transfer", transfer_id)
        counts["transfers"] += 1
    # Parked for an account that was enabled meanwhile (its account.updated webhook ran
    # between the send's read of the account and the parking): send them now.
    ready = Transfer.objects.filter(
        status=Transfer.Status.AWAITING_ACCOUNT,
        publisher__billing__payouts_enabled=True,
        created_at__lt=stale,
    ).exclude(publisher__billing__connect_account_id="")
    for transfer in ready:
        if Transfer.objects.filter(pk=transfer.pk, status=Transfer.Status.AWAITING_ACCOUNT).update(
            status=Transfer.Status.PENDING
        ):
            run("billing.send_transfer", transfer.public_id)
            counts["transfers"] += 1
    waiting = StripeEvent.objects.filter(
        processed_at__isnull=True, received_at__lt=stale, attempts__lt=EVENT_MAX_ATTEMPTS
    )
    for event_id in waiting.values_list("event_id", flat=True):
        run("billing.process_stripe_event", event_id)
        counts["events"] += 1
    return counts
