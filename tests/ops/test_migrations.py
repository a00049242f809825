"""Migrations an operator can run while the release before still serves (docs/deploy.md,
"Migrations")."""

from __future__ import annotations

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
