"""report totals for /metrics; drop the two report indexes no query uses

``report_totals`` holds running sums of the accepted reports per model, variant, cohort and
device class (see :class:`rollout_server.models.ReportTotal`), filled here from the reports
already stored (shard 0). ``ix_reports_device_id`` repeats the first column of the unique key
``(device_id, report_id)``, and nothing filters on ``received_at``: every report insert paid
for both.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 19:50:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: as in this revision (not imported from the models, which may change later).
ERROR_REASONS = ("load_failed", "runtime_error", "golden_mismatch", "timeout", "other")
BUCKETS = 15
KEY = ("model_id", "variant_id", "cohort", "device_class")
SUMMED = ("inferences", "labelled", "correct", "latency_sum_seconds",
          *(f"err_{reason}" for reason in ERROR_REASONS), *(f"lat_{i}" for i in range(BUCKETS)))


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "report_totals",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("variant_id", sa.String(length=64), nullable=False),
        sa.Column("cohort", sa.String(length=8), nullable=False),
        sa.Column("device_class", sa.String(length=32), nullable=False),
        sa.Column("shard", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("reports", sa.BigInteger(), nullable=False),
        sa.Column("inferences", sa.BigInteger(), nullable=False),
        sa.Column("labelled", sa.BigInteger(), nullable=False),
        sa.Column("correct", sa.BigInteger(), nullable=False),
        sa.Column("latency_sum_seconds", sa.Float(), nullable=False),
        *(sa.Column(name, sa.BigInteger(), nullable=False) for name in SUMMED[4:]),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"]),
        sa.PrimaryKeyConstraint(*KEY, "shard"),
    )
    sums = ", ".join(f"COALESCE(SUM({name}), 0)" for name in SUMMED)
    op.execute(
        f"INSERT INTO report_totals ({', '.join(KEY)}, shard, reports, {', '.join(SUMMED)}) "
        f"SELECT {', '.join(KEY)}, 0, COUNT(*), {sums} FROM reports GROUP BY {', '.join(KEY)}"
    )
    op.drop_index("ix_reports_device_id", table_name="reports")
    op.drop_index("ix_reports_received_at", table_name="reports")


def downgrade() -> None:
    """Downgrade schema."""
    op.create_index("ix_reports_received_at", "reports", ["received_at"], unique=False)
    op.create_index("ix_reports_device_id", "reports", ["device_id"], unique=False)
    op.drop_table("report_totals")
