"""report schema 2: latency sketches (``reports.latency_sketch``, ``latency_totals``), load time,
CPU temperature and throttling

Reports of schema 2 carry a latency sketch (``edgeship.contract.sketch``) instead of the v1
histogram: it is stored as JSON in ``reports.latency_sketch`` (NULL for schema-1 reports, whose
``lat_*`` columns keep what they sent), and its buckets are summed per report-totals key in
``latency_totals`` for ``/metrics``. ``load_seconds``, ``cpu_temp_celsius`` and ``throttled``
are NULL where a device did not say. ``report_totals`` gets the sums and counts of those and
of ``peak_rss_bytes`` (from this revision on: reports stored before it are not added). Stored
schema-1 data stays as it is: it is read at the resolution it was sent with.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 11:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


#: as in this revision: report_totals columns over optional values (sums are floats).
DEVICE_TOTALS = {"peak_rss_sum": True, "peak_rss_reports": False, "load_seconds_sum": True,
                 "load_reports": False, "cpu_temp_sum": True, "cpu_temp_reports": False,
                 "throttled_reports": False, "throttle_known_reports": False}


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("report_totals") as batch:
        for name, is_sum in DEVICE_TOTALS.items():
            batch.add_column(sa.Column(name, sa.Float() if is_sum else sa.BigInteger(), nullable=False,
                                       server_default="0"))
    with op.batch_alter_table("reports") as batch:
        batch.add_column(sa.Column("latency_sketch", sa.Text(), nullable=True))
        batch.add_column(sa.Column("load_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("cpu_temp_celsius", sa.Float(), nullable=True))
        batch.add_column(sa.Column("throttled", sa.Boolean(), nullable=True))
    op.create_table(
        "latency_totals",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("variant_id", sa.String(length=64), nullable=False),
        sa.Column("cohort", sa.String(length=8), nullable=False),
        sa.Column("device_class", sa.String(length=32), nullable=False),
        sa.Column("shard", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("bucket", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"]),
        sa.PrimaryKeyConstraint("model_id", "variant_id", "cohort", "device_class", "shard", "bucket"),
    )


def downgrade() -> None:
    """Downgrade schema (schema-2 reports lose their latencies: the v1 columns never had them)."""
    op.drop_table("latency_totals")
    with op.batch_alter_table("report_totals") as batch:
        for name in DEVICE_TOTALS:
            batch.drop_column(name)
    with op.batch_alter_table("reports") as batch:
        for column in ("throttled", "cpu_temp_celsius", "load_seconds", "latency_sketch"):
            batch.drop_column(column)
