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
        """Runs again after a failure: its migration is not atomic, so the indexes built
        before one failed stayed, unrecorded, and every later ``migrate`` failed on "relation
        ... already exists". An index of this name that is there is kept; one an interrupted
        concurrent build left invalid is dropped and built again."""
        model = to_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        state = _index_state(schema_editor.connection, self.index.name)
        if state == "valid":
            # Taken for this one by its name alone: a migration edited after an index of its
            # name was built keeps the first definition.
            return
        if state == "invalid":
            name = schema_editor.quote_name(self.index.name)
            schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        schema_editor.add_index(model, self.index, **self._concurrently(schema_editor))

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.remove_index(model, self.index, **self._concurrently(schema_editor))

    @staticmethod
    def _concurrently(schema_editor) -> dict:
        return {"concurrently": True} if schema_editor.connection.vendor == "postgresql" else {}


def _index_state(connection, name: str) -> str | None:
    """``"valid"``, ``"invalid"`` (PostgreSQL: a concurrent build that did not finish), or
    None where there is no index of that name."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
                "WHERE c.relname = %s AND pg_catalog.pg_table_is_visible(c.oid)",
                [name],
            )
        else:
            cursor.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = %s", [name])
        row = cursor.fetchone()
    if row is None:
        return None
    return "valid" if row[0] in (True, 1) else "invalid"
