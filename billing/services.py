"""The usage ledger: what a unit of work costs, recorded exactly once."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import ApiKey, Tenant
from billing.models import UsageRecord
from marketplace.models import Listing, Model

MICRO = Decimal("0.000001")


def _money(value: Decimal) -> Decimal:
    return value.quantize(MICRO, rounding=ROUND_HALF_UP)


@transaction.atomic
def usage_record_create(
    *,
    kind: str,
    source_id: str,
    consumer: Tenant,
    model: Model,
    compute_seconds: Decimal,
    api_key: ApiKey | None = None,
) -> UsageRecord:
    """Record one unit of work at the listing's current price. Call it in the same
    transaction as the work's result; a second call for the same source returns the first
    record instead of billing again.

    A publisher running its own model pays nothing; the listing's free calls per month are
    free for each consumer. A compression job is billed to the model's owner at the
    platform's compression price per compute-second, all of it platform fee.
    """
    if kind == UsageRecord.Kind.COMPRESSION:
        return _compression_record_create(
            source_id=source_id, consumer=consumer, model=model, compute_seconds=compute_seconds
        )
    # No read-before-write: the unique source_id makes a second call fall through to the
    # IntegrityError branch below and return the first record.
    # Locked, so concurrent calls cannot all see a free call left (the caller's transaction).
    listing = Listing.objects.select_for_update().filter(model=model).first()
    now = timezone.now()
    period = now.date().replace(day=1)
    own = consumer.pk == model.tenant_id
    per_call = Decimal(0) if own or listing is None else listing.price_per_call
    per_second = Decimal(0) if own or listing is None else listing.price_per_second
    fee_percent = listing.platform_fee_percent if listing else Decimal(0)
    free = False
    if listing is not None and not own and listing.free_calls_per_month:
        used = UsageRecord.objects.filter(
            consumer=consumer, model=model, period=period, free=True
        ).count()
        free = used < listing.free_calls_per_month
    compute_seconds = compute_seconds.quantize(MICRO)
    amount = Decimal(0) if free else _money(per_call + per_second * compute_seconds)
    fee = _money(amount * fee_percent / 100)
    try:
        with transaction.atomic():
            return UsageRecord.objects.create(
                kind=kind,
                source_id=source_id,
                consumer=consumer,
                publisher=model.tenant,
                model=model,
                model_ref=model.ref,
                listing=listing,
                api_key=api_key,
                calls=1,
                compute_seconds=compute_seconds,
                price_per_call=per_call,
                price_per_second=per_second,
                currency=listing.currency if listing else "usd",
                free=free,
                amount=amount,
                platform_fee=fee,
                publisher_share=amount - fee,
                period=period,
                created_at=now,
            )
    except IntegrityError:  # the same source recorded concurrently: exactly once
        return UsageRecord.objects.get(source_id=source_id)


def _compression_record_create(
    *, source_id: str, consumer: Tenant, model: Model, compute_seconds: Decimal
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
                compute_seconds=compute_seconds,
                price_per_call=Decimal(0),
                price_per_second=per_second,
                currency=settings.PLATFORM_CURRENCY,
                amount=amount,
                platform_fee=amount,
                publisher_share=Decimal(0),
                period=now.date().replace(day=1),
                created_at=now,
            )
    except IntegrityError:
        return UsageRecord.objects.get(source_id=source_id)
