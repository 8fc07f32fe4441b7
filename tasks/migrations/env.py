"""Alembic's environment for the seqcast tables: migrates the connection `tasks.store` hands over, never a URL.

`tasks.store.ensure_schema` opens the transaction (and holds the migration lock); this only runs the revisions in it.
"""

from __future__ import annotations

from alembic import context

from tasks import store


def run_migrations() -> None:
    """Run the pending revisions on `config.attributes["connection"]`, inside the caller's transaction."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "seqcast migrations run on a connection: use tasks.store.ensure_schema, or "
            "tasks.store.alembic_config(connection) with Alembic's command API"
        )
    context.configure(
        connection=connection,
        target_metadata=store.metadata,
        version_table=store.VERSION_TABLE,
        render_as_batch=True,  # autogenerate writes batch operations, which SQLite needs for most changes
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
