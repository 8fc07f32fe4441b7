"""forecast_scores: the realised errors of past forecasts once their actuals arrive, keyed like forecasts.

A new table, so no existing row is touched; tasks/scores.py fills it (from the forecasts whose actuals are already
stored, on the monitor's first run). The index serves the monitor's read (one model version's scores by origin) and,
holding the whole key, the scorer's join with forecasts: without the last two columns, PostgreSQL planned that join on
a freshly filled table (no statistics yet) as one probe of a partial match per row, 54 s instead of 0.6 s.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create forecast_scores (timestamps with time zone, stored as naive UTC on SQLite) and its index."""
    op.create_table(
        "forecast_scores",
        sa.Column("series_id", sa.Text, primary_key=True),
        sa.Column("origin_ts", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("target_ts", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("model_name", sa.Text, primary_key=True),
        sa.Column("model_version", sa.Text, primary_key=True),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("point", sa.Double, nullable=False),
        sa.Column("actual", sa.Double, nullable=False),
        sa.Column("abs_error", sa.Double, nullable=False),
        sa.Column("scaled_error", sa.Double, nullable=True),
        sa.Column("inside", sa.Boolean, nullable=True),
        sa.Column("lower", sa.Double, nullable=True),
        sa.Column("upper", sa.Double, nullable=True),
        sa.Column("level", sa.Double, nullable=True),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_forecast_scores_model_origin",
        "forecast_scores",
        ["model_name", "model_version", "origin_ts", "series_id", "target_ts"],
    )


def downgrade() -> None:
    """Drop forecast_scores (and so every score: they are recomputed from forecasts and observations)."""
    op.drop_index("ix_forecast_scores_model_origin", table_name="forecast_scores")
    op.drop_table("forecast_scores")
