"""Migrations an operator can run while the release before still serves (docs/deploy.md,
"Migrations")."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.operations import AddField
from django.db.models import NOT_PROVIDED

OURS = ("accounts", "marketplace", "inference", "billing", "workers")
# Added before this check, and left as they are: relations (no default a database could
# give), and JSON columns of uploads in progress, which a release two months old wrote.
SHIPPED = {
    ("accounts", "apikey", "tenant"),
    ("marketplace", "alias", "version"),
    ("marketplace", "uploadsession", "artifact_id"),
    ("marketplace", "artifact", "chunk_blobs"),
    ("marketplace", "uploadpart", "layout"),
    ("marketplace", "uploadsession", "header"),
}


def test_every_column_added_to_a_table_has_a_database_default():
    """Django's AddField fills the column, then drops its default: the code still serving
    (which does not name the column) failed every insert. Predictions answered 500
    (NOT NULL constraint failed: inference_prediction.request_id) through the release step
    of any upgrade, and a compression job ran to its end and failed storing its version."""
    loader = MigrationLoader(None, ignore_no_migrations=True)
    missing = []
    for (app, name), migration in sorted(loader.disk_migrations.items()):
        if app not in OURS:
            continue
        for operation in migration.operations:
            if not isinstance(operation, AddField) or operation.field.null:
                continue
            if (app, operation.model_name, operation.name) in SHIPPED:
                continue
            model = apps.get_model(app, operation.model_name)
            names = {f.name for f in model._meta.get_fields()}
            if operation.name not in names:
                continue  # dropped since
            if model._meta.get_field(operation.name).db_default is NOT_PROVIDED:
                missing.append(f"{app}.{operation.model_name}.{operation.name} ({name})")
    assert not missing, "add db_default= to: " + ", ".join(missing)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_concurrent_index_migration_runs_again_after_failing_half_way():
    """billing 0006 builds four indexes outside a transaction: one failing (a timeout, a lost
    connection) left the others built and the migration unrecorded, and every later migrate
    failed on "relation ... already exists" until someone dropped them by hand."""
    from io import StringIO

    from django.core.management import call_command
    from django.db import connection

    quiet = {"stdout": StringIO(), "verbosity": 0}
    call_command("migrate", "billing", "0005", **quiet)
    with connection.cursor() as cursor:  # as if the run had built the second one, then died
        cursor.execute(
            "CREATE INDEX billing_usa_api_key_cc1454_idx ON billing_usagerecord "
            "(api_key_id, period, currency, consumer_id, amount)"
        )
        if connection.vendor == "postgresql":
            # And had been cancelled while building the first concurrently: PostgreSQL keeps
            # such an index, marked invalid, which no query uses until it is built again.
            cursor.execute(
                "CREATE INDEX billing_usa_consume_fa3f1d_idx ON billing_usagerecord "
                "(consumer_id, period, currency, amount)"
            )
            cursor.execute(
                "UPDATE pg_index SET indisvalid = false "
                "WHERE indexrelid = 'billing_usa_consume_fa3f1d_idx'::regclass"
            )

    call_command("migrate", "billing", **quiet)

    with connection.cursor() as cursor:
        table = connection.introspection.get_constraints(cursor, "billing_usagerecord")
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT indisvalid FROM pg_index "
                "WHERE indexrelid = 'billing_usa_consume_fa3f1d_idx'::regclass"
            )
            assert cursor.fetchone() == (True,)  # built again, not kept invalid
    for name in ("billing_usa_consume_fa3f1d_idx", "billing_usa_api_key_cc1454_idx"):
        assert table[name]["index"], name
