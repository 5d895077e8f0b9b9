"""rollout gates

* ``rollouts.phase`` widened to 32 characters: ``awaiting_approval`` (manual approval gates) has 17.
* ``verdicts.dry_run``: the verdict of a dry-run guard, stored and shown but never acting.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 21:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("rollouts") as batch:
        batch.alter_column("phase", existing_type=sa.String(length=16), type_=sa.String(length=32),
                           existing_nullable=False)
    with op.batch_alter_table("verdicts") as batch:
        batch.add_column(sa.Column("dry_run", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    """Downgrade schema (a rollout awaiting approval must be resumed or ended first: its phase no
    longer fits)."""
    with op.batch_alter_table("verdicts") as batch:
        batch.drop_column("dry_run")
    with op.batch_alter_table("rollouts") as batch:
        batch.alter_column("phase", existing_type=sa.String(length=32), type_=sa.String(length=16),
                           existing_nullable=False)
