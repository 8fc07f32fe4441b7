"""The schema as it was before migrations: observations, forecasts and its index, `seqcast_schema` at version 1.

A database made by seqcast before Alembic has exactly these tables; `tasks.store.ensure_schema` stamps it with this
revision instead of running it. Frozen: later changes go in later revisions.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create the version-1 tables (timestamps with time zone, stored as naive UTC on SQLite)."""
    op.create_table(
        "observations",
        sa.Column("series_id", sa.Text, primary_key=True),
        sa.Column("ts", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("value", sa.Double, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "forecasts",
        sa.Column("series_id", sa.Text, primary_key=True),
        sa.Column("origin_ts", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("target_ts", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("model_name", sa.Text, primary_key=True),
        sa.Column("model_version", sa.Text, primary_key=True),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("point", sa.Double, nullable=False),
        sa.Column("lower", sa.Double, nullable=True),
        sa.Column("upper", sa.Double, nullable=True),
        sa.Column("mlflow_run_id", sa.Text, nullable=False),
        sa.Column("flow_run_id", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_forecasts_series_target", "forecasts", ["series_id", "target_ts"])
    schema = op.create_table("seqcast_schema", sa.Column("version", sa.Integer, nullable=False))
    op.bulk_insert(schema, [{"version": 1}])


def downgrade() -> None:
    """Drop every seqcast table (and so every row)."""
    op.drop_table("seqcast_schema")
    op.drop_index("ix_forecasts_series_target", table_name="forecasts")
    op.drop_table("forecasts")
    op.drop_table("observations")
