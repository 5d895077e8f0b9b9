"""index reports by device and window end (``ix_reports_device_id_window_end``)

The controller reads each stage device's baseline (``rollout_server/device_rows.py``): its
latest ``BASELINE_REPORTS`` reports of the stable release before the rollout was created. With
this index that is a short backward scan per device instead of a scan of the whole ``reports``
table. Every report insert updates one more index: ingestion over the API measured 0-5% slower
(``python -m benchmarks.baseline_bench``, on 2.2 million reports).

Building it reads the whole table once (~2 s per 2.2 million reports on both backends); on
PostgreSQL report inserts wait until it is built (``CREATE INDEX`` inside the migration's
transaction, not ``CONCURRENTLY``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 10:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_index("ix_reports_device_id_window_end", "reports", ["device_id", "window_end"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_reports_device_id_window_end", table_name="reports")
