"""Migration operations of our own (docs/deploy.md, "Migrations")."""

from __future__ import annotations

from django.db import migrations


class AddIndexConcurrently(migrations.AddIndex):
    """``AddIndex`` that builds the index with ``CREATE INDEX CONCURRENTLY`` on PostgreSQL,
    so writes to a large table (usage records, predictions) go on while it builds; elsewhere
    (SQLite) a plain ``CREATE INDEX``. ``django.contrib.postgres``'s own refuses to run on
    any other database. Its migration sets ``atomic = False``: PostgreSQL builds concurrently
    only outside a transaction."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.add_index(model, self.index, **self._concurrently(schema_editor))

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.remove_index(model, self.index, **self._concurrently(schema_editor))

    @staticmethod
    def _concurrently(schema_editor) -> dict:
        return {"concurrently": True} if schema_editor.connection.vendor == "postgresql" else {}
