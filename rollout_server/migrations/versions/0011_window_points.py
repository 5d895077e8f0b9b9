"""window points and fleet snapshots: what the console reads instead of every report

The controller stores each rollout arm per analysis window as it analyses it
(``rollout_server/window_points.py``): the rollout page then reads two rows per window instead
of every device's report (6 s per poll at 10,000 devices before). Rollouts analysed before this
revision have no points: their charts start at the upgrade. It also takes the fleet page's
"what runs / who fails" once per window (``rollout_server/fleet_activity.py``).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 23:30:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "window_points",
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("window_end", sa.BigInteger(), nullable=False),
        sa.Column("arm", sa.String(length=8), nullable=False),
        sa.Column("inferences", sa.BigInteger(), nullable=False),
        sa.Column("labelled", sa.BigInteger(), nullable=False),
        sa.Column("correct", sa.BigInteger(), nullable=False),
        sa.Column("load_failures", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("devices", sa.Integer(), nullable=False),
        sa.Column("p50_ms", sa.Float(), nullable=True),
        sa.Column("p95_ms", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollouts.id"]),
        sa.PrimaryKeyConstraint("rollout_id", "window_end", "arm"),
    )


    op.create_table(
        "fleet_snapshots",
        sa.Column("name", sa.String(length=16), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("fleet_snapshots")
    op.drop_table("window_points")
