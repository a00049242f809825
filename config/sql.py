"""One-row statements for the prediction hot path, without the ORM's per-call query building.

Building the query is most of what the ORM costs for a one-row statement: on the 2-vCPU
reference VM an UPDATE by primary key took 247 µs of CPU through ``QuerySet.update`` and 24 µs
as the same SQL through Django's cursor, and every prediction makes several (its record, the
claim, the result, the usage record, the reads of the prediction and the listing's price) on
cores its model needs. ``insert``, ``update`` and ``get`` build each statement once per model,
shape and database from the model's metadata, adapt every value with its field's
``get_db_prep_save``/``get_db_prep_value`` and convert what is read with the ORM's converters:
the same SQL and values through the same cursor (query logging and
``django_assert_num_queries`` see them).

They send no signals, resolve no expressions and validate nothing: they are for models with
no signal receivers, written by code that already holds valid values. Everywhere else the ORM
stays (``docs/decisions/0010-hot-path-sql.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from django.db import connections, models, transaction
from django.db.transaction import TransactionManagementError

M = TypeVar("M", bound=models.Model)

# Per database alias (the converters a read keeps are that database's); a race only builds the
# same statement twice.
_statements: dict[tuple, tuple] = {}


def _statement(key: tuple, build: Callable[[], tuple]) -> tuple:
    statement = _statements.get(key)
    if statement is None:
        statement = _statements[key] = build()
    return statement


def insert(obj: models.Model, *, using: str = "default") -> None:
    """INSERT ``obj`` as ``obj.save()`` would a new row, and set its primary key (which the
    database chooses: ``obj`` must not have one)."""
    if obj.pk is not None:
        raise ValueError(f"{obj!r} has a primary key already: insert() writes new rows only")
    connection = connections[using]
    opts = obj._meta
    sql, fields = _statement(("insert", type(obj), using), lambda: _insert_sql(opts, connection))
    params = [field.get_db_prep_save(field.pre_save(obj, True), connection) for field in fields]
    # As save() does: a failed write spoils the transaction it is in.
    with transaction.mark_for_rollback_on_error(using), connection.cursor() as cursor:
        cursor.execute(sql, params)
        if connection.features.can_return_columns_from_insert:
            pk = cursor.fetchone()[0]
        else:
            pk = connection.ops.last_insert_id(cursor, opts.db_table, opts.pk.column)
    obj.pk = pk
    obj._state.adding, obj._state.db = False, using


def _insert_sql(opts, connection) -> tuple[str, list[models.Field]]:
    qn = connection.ops.quote_name
    fields = [f for f in opts.local_concrete_fields if f is not opts.auto_field and not f.generated]
    # Names from the model's metadata, quoted; every value is a parameter.
    columns = ", ".join(qn(f.column) for f in fields)
    sql = (
        f"INSERT INTO {qn(opts.db_table)} ({columns}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(fields))})"
    )
    if connection.features.can_return_columns_from_insert:
        returning, _ = connection.ops.return_insert_columns([opts.pk])
        sql += f" {returning}"
    return sql, fields


def get(
    model: type[M],
    *,
    where: Mapping[str, Any],
    fields: Sequence[str] | None = None,
    for_update: bool = False,
    using: str = "default",
) -> M | None:
    """``model.objects.filter(**where).only(*fields)[:1]`` (every field when ``fields`` is
    None; ``select_for_update()`` too with ``for_update``, where the database locks rows): the
    instance, its values converted as the ORM converts them, or None. For a lookup that
    matches at most one row: there is no ORDER BY."""
    connection = connections[using]
    opts = model._meta
    lock = for_update and connection.features.has_select_for_update
    if lock and connection.get_autocommit():  # as the ORM: only where it would lock
        raise TransactionManagementError("for_update needs a transaction, as in the ORM.")
    sql, columns, where_fields = _statement(
        ("get", model, using, tuple(where), tuple(fields or ()), lock),
        lambda: _select_sql(opts, connection, where, fields, lock),
    )
    params = [
        field.get_db_prep_value(value, connection)
        for field, value in zip(where_fields, where.values(), strict=True)
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    values = []
    for (column, converters), value in zip(columns, row, strict=True):
        for converter in converters:
            value = converter(value, column, connection)
        values.append(value)
    return model.from_db(using, [c.target.attname for c, _ in columns], values)


def _select_sql(opts, connection, where, fields, lock) -> tuple[str, list, list]:
    qn = connection.ops.quote_name
    # In the model's order, which Model.from_db reads them in; the primary key always, as
    # only() keeps it.
    wanted = {opts.get_field(name) for name in fields or ()} | {opts.pk}
    chosen = [f for f in opts.concrete_fields if not fields or f in wanted]
    columns = []
    for field in chosen:
        column = field.get_col(opts.db_table)
        # What SQLCompiler.get_converters applies: the backend's, then the field's.
        converters = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        columns.append((column, converters))
    where_fields = [opts.get_field(name) for name in where]
    conditions = " AND ".join(f"{qn(f.column)} = %s" for f in where_fields)
    # Names from the model's metadata, quoted; every value is a parameter.
    sql = (
        f"SELECT {', '.join(qn(f.column) for f in chosen)} FROM {qn(opts.db_table)} "  # noqa: S608
        f"WHERE {conditions} LIMIT 1"
    )
    if lock:
        sql += " FOR UPDATE"
    return sql, columns, where_fields


def update(
    model: type[models.Model],
    pk: Any,
    *,
    where: Mapping[str, Any],
    values: Mapping[str, Any],
    increment: Iterable[str] = (),
    using: str = "default",
) -> int:
    """``model.objects.filter(pk=pk, **where).update(**values)`` with each field named in
    ``increment`` also raised by one: how many rows it changed (0 or 1). A ``where`` value
    that is a tuple, list or set is an ``IN``, None is ``IS NULL``; the others are
    equalities."""
    where = {k: tuple(v) if isinstance(v, list | set | frozenset) else v for k, v in where.items()}
    if any(v == () for v in where.values()):
        return 0  # IN of nothing matches nothing (and is not SQL)
    connection = connections[using]
    opts = model._meta
    increment = tuple(increment)
    shape = tuple(
        (name, len(v) if isinstance(v, tuple) else "null" if v is None else "=")
        for name, v in where.items()
    )
    sql, fields, where_fields = _statement(
        ("update", model, using, shape, tuple(values), increment),
        lambda: _update_sql(opts, connection, where, values, increment),
    )
    params = [
        field.get_db_prep_save(value, connection)
        for field, value in zip(fields, values.values(), strict=True)
    ]
    params.append(opts.pk.get_db_prep_value(pk, connection))
    for field, value in zip(where_fields, where.values(), strict=True):
        for item in value if isinstance(value, tuple) else () if value is None else (value,):
            params.append(field.get_db_prep_value(item, connection))
    with transaction.mark_for_rollback_on_error(using), connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def _update_sql(opts, connection, where, values, increment) -> tuple[str, list, list]:
    qn = connection.ops.quote_name
    fields = [opts.get_field(name) for name in values]
    assignments = [f"{qn(f.column)} = %s" for f in fields]
    for name in increment:
        column = qn(opts.get_field(name).column)
        assignments.append(f"{column} = {column} + 1")
    where_fields = [opts.get_field(name) for name in where]
    conditions = [f"{qn(opts.pk.column)} = %s"]
    for field, value in zip(where_fields, where.values(), strict=True):
        column = qn(field.column)
        if isinstance(value, tuple):
            conditions.append(f"{column} IN ({', '.join(['%s'] * len(value))})")
        elif value is None:
            conditions.append(f"{column} IS NULL")
        else:
            conditions.append(f"{column} = %s")
    # Names from the model's metadata, quoted; every value is a parameter.
    sql = (
        f"UPDATE {qn(opts.db_table)} SET {', '.join(assignments)} "  # noqa: S608
        f"WHERE {' AND '.join(conditions)}"
    )
    return sql, fields, where_fields
