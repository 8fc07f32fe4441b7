"""Alembic migrations of the seqcast tables, one revision per schema change, run by `tasks.store.ensure_schema`.

Adding a change: edit the tables in `tasks/store.py`, then add `versions/vNNNN_<what>.py` with `revision = "NNNN"`
and `down_revision` the previous one (copy the latest file). Use `op.batch_alter_table` for anything SQLite cannot
ALTER in place, and keep each revision's table definitions frozen (never import them from `tasks.store`).
`tests/test_store.py` checks that the migrated tables match `tasks.store.metadata` on SQLite and PostgreSQL.
"""
