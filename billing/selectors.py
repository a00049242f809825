"""Reads over the ledger: spend, rollups per period, and the series the dashboard charts."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

from django.db.models import Count, Max, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.models import ApiKey, Tenant
from billing.models import UsageRecord
from billing.money import MICRO, from_minor_units

ZERO = Decimal(0)
SUMMED = (
    *("amount", "platform_fee", "publisher_share", "compute_seconds", "seconds"),
    *("revenue", "platform_fees", "publisher_shares", "credits"),  # platform_money's
)


def _exact(value):
    """A sum of ledger decimals, exact again: SQLite (the default outside production) adds
    them as floating point (46.7799999999997 for 46.78, which a budget check then compared),
    where PostgreSQL's numeric is exact. Six places hold every amount the ledger writes."""
    return value.quantize(MICRO) if isinstance(value, Decimal) else value


def _exact_rows(rows) -> list[dict]:
    rows = list(rows)
    for row in rows:
        for field in SUMMED:
            if field in row:
                row[field] = _exact(row[field])
    return rows


def period_of(moment: datetime | None = None) -> date:
    """The billing month (its first day) that ``moment`` falls in, in UTC; now by default."""
    return (moment or timezone.now()).date().replace(day=1)


def last_period() -> date:
    """The month before the current one: the one a close normally closes."""
    return (period_of() - timedelta(days=1)).replace(day=1)


def month_spend(
    *, consumer: Tenant, period: date, api_key: ApiKey | None = None, currency: str | None = None
) -> Decimal:
    """What ``consumer`` (or one of its keys) spent in ``period``; in one ``currency`` when
    given (amounts in different currencies do not add up)."""
    records = UsageRecord.objects.filter(consumer=consumer, period=period)
    if api_key is not None:
        records = records.filter(api_key=api_key)
    if currency is not None:
        records = records.filter(currency=currency)
    return _exact(records.aggregate(total=Sum("amount"))["total"]) or ZERO


def free_calls_used(*, consumer: Tenant, model, period: date, at_most: int | None = None) -> int:
    """How many of a listing's free calls ``consumer`` has used in ``period``, counted up to
    ``at_most`` (the allowance: past it, how far past does not matter, and the count would
    grow with the month's calls)."""
    used = UsageRecord.objects.filter(consumer=consumer, model=model, period=period, free=True)
    return (used[:at_most] if at_most is not None else used).count()


def rollup(*, consumer: Tenant, period: date, currency: str) -> list[dict]:
    """The period's ledger for one consumer, per listing (credits have no model): calls,
    compute seconds, amount, platform fee and publisher share, exact to the micro-unit."""
    return _exact_rows(
        UsageRecord.objects.filter(consumer=consumer, period=period, currency=currency)
        .values("model", "publisher")
        .annotate(
            calls=Sum("calls"),
            compute_seconds=Sum("compute_seconds"),
            amount=Sum("amount"),
            platform_fee=Sum("platform_fee"),
            publisher_share=Sum("publisher_share"),
            model_ref=Max("model_ref"),
        )
        .order_by("model", "publisher")
    )


def usage_records_of(source_ids) -> dict[str, UsageRecord]:
    """The usage records of these predictions or compression jobs (their public ids), by id,
    read in one query: a page of them read one each."""
    records = UsageRecord.objects.filter(source_id__in=list(source_ids))
    return {r.source_id: r for r in records.only("source_id", "amount", "currency", "free")}


def consumer_summary(*, consumer: Tenant, period: date) -> dict:
    """The period's calls, compute seconds and free calls, and its ``spend`` per currency
    (``[{"currency", "amount"}]``, by currency): amounts in different currencies do not add
    up."""
    records = UsageRecord.objects.filter(consumer=consumer, period=period)
    row = records.aggregate(
        calls=Sum("calls"),
        compute_seconds=Sum("compute_seconds"),
        free_calls=Count("pk", filter=Q(free=True)),
    )
    summary = {key: value or 0 for key, value in row.items()}
    summary["compute_seconds"] = _exact(summary["compute_seconds"])
    summary["spend"] = _exact_rows(
        list(records.values("currency").annotate(amount=Sum("amount")).order_by("currency"))
    )
    return summary


USAGE_CHART_DAYS = 30


def daily_usage(*, consumer: Tenant, days: int = USAGE_CHART_DAYS) -> list[dict]:
    """Calls, compute seconds and spend per day and currency, oldest first, for the charts."""
    since = timezone.now() - timedelta(days=days)
    return _exact_rows(
        UsageRecord.objects.filter(consumer=consumer, created_at__gte=since)
        .exclude(kind=UsageRecord.Kind.CREDIT)
        .annotate(day=TruncDate("created_at"))
        .values("day", "currency")
        .annotate(calls=Sum("calls"), seconds=Sum("compute_seconds"), amount=Sum("amount"))
        .order_by("day", "currency")
    )


def usage_by(*, consumer: Tenant, period: date, field: str) -> list[dict]:
    """This period's usage grouped by ``model_ref`` or by ``api_key``, and currency. By key,
    each row also names it (``api_key__name``, ``api_key__public_id``, ``api_key__prefix``;
    None for work started from the dashboard): grouped by name, two keys called alike were
    one row, which no key's budget could be checked against."""
    fields = (
        ("api_key", "api_key__name", "api_key__public_id", "api_key__prefix")
        if field == "api_key"
        else (field,)
    )
    return _exact_rows(
        UsageRecord.objects.filter(consumer=consumer, period=period)
        .exclude(kind=UsageRecord.Kind.CREDIT)
        .values(*fields, "currency")
        .annotate(calls=Sum("calls"), seconds=Sum("compute_seconds"), amount=Sum("amount"))
        .order_by("-amount", *fields, "currency")
    )


def earnings(*, publisher: Tenant) -> list[dict]:
    """What each listing earned per period: consumers' spend, the platform fee, the share."""
    return _exact_rows(
        UsageRecord.objects.filter(publisher=publisher)
        .exclude(consumer=publisher)
        .values("period", "model_ref", "currency")
        .annotate(
            calls=Sum("calls"),
            amount=Sum("amount"),
            platform_fee=Sum("platform_fee"),
            publisher_share=Sum("publisher_share"),
        )
        .order_by("-period", "model_ref")
    )


def platform_money(*, periods: int = 12) -> list[dict]:
    """The operators' view per period and currency, newest first: what consumers were charged
    for use (revenue), the platform's fees and the publishers' shares of it, credits given
    (negative), and what invoices collected and refunded."""
    from billing.models import Invoice

    recent = (UsageRecord.objects.values_list("period", flat=True).distinct().order_by("-period"))[
        :periods
    ]
    rows = list(
        UsageRecord.objects.filter(period__in=list(recent))
        .values("period", "currency")
        .annotate(
            calls=Sum("calls", filter=~Q(kind=UsageRecord.Kind.CREDIT)),
            revenue=Sum("amount", filter=~Q(kind=UsageRecord.Kind.CREDIT)),
            platform_fees=Sum("platform_fee", filter=~Q(kind=UsageRecord.Kind.CREDIT)),
            publisher_shares=Sum("publisher_share", filter=~Q(kind=UsageRecord.Kind.CREDIT)),
            credits=Sum("amount", filter=Q(kind=UsageRecord.Kind.CREDIT)),
        )
        .order_by("-period", "currency")
    )
    invoices = {
        (row["period"], row["currency"]): row
        for row in Invoice.objects.values("period", "currency").annotate(
            collected_cents=Sum("amount_cents", filter=Q(status__in=Invoice.SETTLED)),
            refunded_cents=Sum("amount_cents", filter=Q(status=Invoice.Status.REFUNDED)),
        )
    }
    for row in rows:
        billed = invoices.get((row["period"], row["currency"]), {})
        for key in ("calls", "revenue", "platform_fees", "publisher_shares", "credits"):
            row[key] = row[key] or (0 if key == "calls" else ZERO)
        row["collected"] = from_minor_units(billed.get("collected_cents") or 0, row["currency"])
        row["refunded"] = from_minor_units(billed.get("refunded_cents") or 0, row["currency"])
    return _exact_rows(rows)


def top_consumers(*, period: date, limit: int = 10) -> list[dict]:
    """The organisations that spent most in ``period``, per currency (the operators' page)."""
    return _exact_rows(
        UsageRecord.objects.filter(period=period)
        .exclude(kind=UsageRecord.Kind.CREDIT)
        .values("consumer__slug", "currency")
        .annotate(calls=Sum("calls"), amount=Sum("amount"))
        .order_by("-amount")[:limit]
    )
