"""device admission, enrollment policies, credential rotation, artifacts per device

* ``tokens``: ``expires_at`` (any token); ``max_uses``/``uses``, ``device_classes`` and
  ``admission`` (enrollment tokens).
* ``devices``: ``admission`` (``pending``/``accepted``/``rejected``; existing devices are
  ``accepted``), the enrollment token that enrolled it, when its credential was issued (NULL for
  existing devices: their ``created_at``) and the previous credential kept through a rotation's
  grace.
* ``device_releases``: the releases assigned to each device, whose artifacts it may download.
  Devices enrolled before this revision have none until their next poll records them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 12:00:00

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema (columns added in place: no table is copied, so SQLite keeps every foreign
    key that points at ``devices``)."""
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("max_uses", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("uses", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("device_classes", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("admission", sa.String(length=16), nullable=True))
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("admission", sa.String(length=16), nullable=False,
                                   server_default="accepted"))
        batch.add_column(sa.Column("enrollment_token_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("credential_issued_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("previous_credential_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("previous_credential_expires_at", sa.DateTime(timezone=True),
                                   nullable=True))
    op.create_index("ix_devices_admission", "devices", ["admission"], unique=False)
    op.create_index("ix_devices_previous_credential_hash", "devices", ["previous_credential_hash"],
                    unique=True)
    op.create_table(
        "device_releases",
        sa.Column("device_id", sa.String(length=40), nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"]),
        sa.PrimaryKeyConstraint("device_id", "release_id"),
    )


#: the columns this revision adds, dropped with plain ``ALTER TABLE ... DROP COLUMN`` (SQLite
#: 3.35+ and PostgreSQL): a batch copy of ``devices`` would trip the foreign keys pointing at it.
ADDED = {"devices": ("previous_credential_expires_at", "previous_credential_hash", "credential_issued_at",
                     "enrollment_token_id", "admission"),
         "tokens": ("admission", "device_classes", "uses", "max_uses", "expires_at")}


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("device_releases")
    op.drop_index("ix_devices_previous_credential_hash", table_name="devices")
    op.drop_index("ix_devices_admission", table_name="devices")
    for table, columns in ADDED.items():
        for column in columns:
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
