"""index reports by rollout and window end (the console's reads)

``ix_reports_rollout_id_window_end`` replaces ``ix_reports_rollout_id`` (its prefix): a rollout's
charts (its last 240 windows), the controller's stage reads and the fleet page's recent reports
(one range per rollout, and one for reports outside any) are ranges of it instead of scans of
the table. No index on ``window_end`` alone: PostgreSQL without statistics would then read a
device's baseline along it instead of ``ix_reports_device_id_window_end``.

Building it reads the table once (on SQLite ~15 s per 3.5 million reports,
``benchmarks/console_bench.py``); on PostgreSQL report inserts wait until it is built.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 21:30:00

"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_index("ix_reports_rollout_id_window_end", "reports", ["rollout_id", "window_end"], unique=False)
    op.drop_index("ix_reports_rollout_id", table_name="reports")


def downgrade() -> None:
    """Downgrade schema."""
    op.create_index("ix_reports_rollout_id", "reports", ["rollout_id"], unique=False)
    op.drop_index("ix_reports_rollout_id_window_end", table_name="reports")
