"""device attributes

* ``devices.attributes``: what a device claims of itself for canary targeting (``app_version``,
  ``os_version``, ``region``, custom tags; rollout_server/targeting.py). NULL for devices enrolled
  before: they report none, so a rollout with a target leaves them out until they send some.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 21:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema (a column added in place: no table copy, so SQLite keeps every foreign key
    that points at ``devices``)."""
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("attributes", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Downgrade schema (plain ``DROP COLUMN``, SQLite 3.35+ and PostgreSQL: a batch copy of
    ``devices`` would trip the foreign keys pointing at it, as in 0005)."""
    op.execute("ALTER TABLE devices DROP COLUMN attributes")
