"""config.sql's hot-path statements store and read what the ORM would for the same values."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction
from django.db.transaction import TransactionManagementError
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


def test_a_read_gives_the_values_the_orm_gives(tenant):
    record = _record(tenant, "pred_d")
    sql.insert(record)

    read = sql.get(UsageRecord, where={"source_id": "pred_d"})
    some = sql.get(UsageRecord, where={"consumer": tenant.pk}, fields=["period", "amount"])
    orm = UsageRecord.objects.get(source_id="pred_d")

    assert {f: getattr(read, f) for f in FIELDS} == {f: getattr(orm, f) for f in FIELDS}
    assert (read.pk, read.public_id) == (orm.pk, orm.public_id)
    assert (some.pk, some.amount, some.period) == (orm.pk, Decimal("1524.166670"), orm.period)
    assert some.get_deferred_fields() >= {"currency", "created_at"}
    assert sql.get(UsageRecord, where={"source_id": "pred_none"}) is None


@pytest.mark.django_db(transaction=True)
def test_a_locking_read_outside_a_transaction_does_what_the_orm_does():
    """PostgreSQL refuses it; SQLite, which takes no row locks, reads."""

    def outcome(read):
        try:
            return read()
        except TransactionManagementError:
            return "refused"

    orm = outcome(lambda: UsageRecord.objects.select_for_update().filter(source_id="x").first())
    hand = outcome(lambda: sql.get(UsageRecord, where={"source_id": "x"}, for_update=True))

    assert hand == orm


def test_an_update_in_an_empty_set_changes_nothing_as_in_the_orm(tenant):
    record = _record(tenant, "pred_f")
    sql.insert(record)

    changed = sql.update(UsageRecord, record.pk, where={"kind": ()}, values={"free": True})

    assert changed == UsageRecord.objects.filter(pk=record.pk, kind__in=()).update(free=True) == 0
    record.refresh_from_db()
    assert not record.free


def test_an_insert_of_a_row_that_has_a_key_is_refused(tenant):
    record = _record(tenant, "pred_g")
    sql.insert(record)

    with pytest.raises(ValueError, match="has a primary key already"):
        sql.insert(record)


def test_a_duplicate_insert_fails_as_save_does_and_spoils_only_its_savepoint(tenant):
    sql.insert(_record(tenant, "pred_h"))

    with transaction.atomic():
        with pytest.raises(IntegrityError):
            sql.insert(_record(tenant, "pred_h"))
        spoiled = transaction.get_rollback()

    assert spoiled  # the savepoint rolls back, as after a failed save()
    assert UsageRecord.objects.filter(source_id="pred_h").count() == 1


def test_an_update_where_a_field_is_none_matches_only_rows_where_it_is_null(tenant):
    """An upload chunk's row is linked to its stored part only if no retry linked one first."""
    record = _record(tenant, "pred_i")
    sql.insert(record)

    linked = sql.update(UsageRecord, record.pk, where={"listing": None}, values={"model": None})
    first = sql.update(UsageRecord, record.pk, where={"publisher": None}, values={"free": True})
    orm = UsageRecord.objects.filter(pk=record.pk, publisher__isnull=True).update(free=True)
    # The same field with a value, then None again: each its own statement, not the other's.
    valued = sql.update(UsageRecord, record.pk, where={"publisher": tenant.pk}, values={"calls": 5})
    again = sql.update(UsageRecord, record.pk, where={"publisher": None}, values={"free": True})

    assert (linked, first, valued, again) == (1, orm, 1, 0) == (1, 0, 1, 0)
    record.refresh_from_db()
    assert not record.free
