"""Ingest: when the telemetry stream stored each batch of the ledger.

Revision ID: ingest_0004
Revises: ingest_0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ingest_0004"
down_revision = "ingest_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Unknown (NULL) for the batches archived before.
    op.add_column("telemetry_batches", sa.Column("received_at_us", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("telemetry_batches") as batch:
        batch.drop_column("received_at_us")
