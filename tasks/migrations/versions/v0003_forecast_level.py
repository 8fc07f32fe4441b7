"""forecasts.level: the coverage the row's lower/upper bounds were made for (0.9 for a 90% interval).

Nullable: rows written before intervals existed have no bounds and no level, and keep NULL.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add forecasts.level (nullable Double)."""
    with op.batch_alter_table("forecasts") as batch:
        batch.add_column(sa.Column("level", sa.Double, nullable=True))


def downgrade() -> None:
    """Drop forecasts.level."""
    with op.batch_alter_table("forecasts") as batch:
        batch.drop_column("level")
