"""Ingest: the repair time of an outcome label.

Revision ID: ingest_0003
Revises: ingest_0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ingest_0003"
down_revision = "ingest_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("labels", sa.Column("repaired_at_us", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("labels") as batch:
        batch.drop_column("repaired_at_us")
