"""config.sql's hot-path writes store what the ORM would store for the same values."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import UsageRecord
from config import sql

pytestmark = pytest.mark.postgres  # the SQL differs by database: CI runs these on both

FIELDS = [
    f.attname
    for f in UsageRecord._meta.concrete_fields
    if f.attname not in ("id", "public_id", "source_id")
]


def _record(tenant, source_id: str) -> UsageRecord:
    return UsageRecord(
        kind=UsageRecord.Kind.PREDICTION,
        source_id=source_id,
        consumer=tenant,
        publisher=tenant,
        model_ref="acme/digits",
        compute_seconds=Decimal("0.012345"),
        price_per_call=Decimal("0.000001"),
        price_per_second=Decimal("123456.789012"),
        currency="eur",
        amount=Decimal("1524.166670"),
        platform_fee=Decimal("304.833334"),
        publisher_share=Decimal("1219.333336"),
        period=date(2026, 11, 1),
        created_at=timezone.now(),
    )


def test_an_insert_stores_what_save_stores(tenant):
    saved, inserted = _record(tenant, "pred_a"), _record(tenant, "pred_b")
    inserted.created_at = saved.created_at
    saved.save()

    sql.insert(inserted)

    assert inserted.pk is not None and not inserted._state.adding
    first, second = (UsageRecord.objects.get(pk=r.pk) for r in (saved, inserted))
    assert {f: getattr(second, f) for f in FIELDS} == {f: getattr(first, f) for f in FIELDS}
    assert second.public_id.startswith("use") and second.public_id != first.public_id


def test_an_update_changes_only_a_row_its_conditions_match(tenant):
    record = _record(tenant, "pred_c")
    sql.insert(record)

    missed = sql.update(
        UsageRecord,
        record.pk,
        where={"kind": UsageRecord.Kind.COMPRESSION},
        values={"amount": Decimal("2")},
    )
    changed = sql.update(
        UsageRecord,
        record.pk,
        where={"kind": (UsageRecord.Kind.COMPRESSION, UsageRecord.Kind.PREDICTION)},
        values={"amount": Decimal("0.000001"), "free": True},
        increment=["calls"],
    )

    assert (missed, changed) == (0, 1)
    record.refresh_from_db()
    assert (record.amount, record.free, record.calls) == (Decimal("0.000001"), True, 2)
