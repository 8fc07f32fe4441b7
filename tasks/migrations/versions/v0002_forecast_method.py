"""forecasts.method: what produced each row, the network's cell ("lstm", "gru") or a baseline fallback.

Rows written before this revision were all produced by the network: the server default 'network' fills them in
(PostgreSQL adds the column without rewriting the table; SQLite adds it in place too). `seqcast_schema` goes to 2, so
a seqcast from before migrations refuses this database instead of writing rows it cannot describe.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add forecasts.method (NOT NULL, default 'network') and mark the legacy schema version 2."""
    with op.batch_alter_table("forecasts") as batch:
        batch.add_column(sa.Column("method", sa.Text, nullable=False, server_default="network"))
    op.execute(sa.text("UPDATE seqcast_schema SET version = 2"))


def downgrade() -> None:
    """Drop forecasts.method (SQLite rebuilds the table, its index included) and go back to legacy version 1."""
    with op.batch_alter_table("forecasts") as batch:
        batch.drop_column("method")
    op.execute(sa.text("UPDATE seqcast_schema SET version = 1"))
