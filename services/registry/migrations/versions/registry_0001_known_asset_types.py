"""Registry read models: asset types learned from the ingest service.

Revision ID: registry_0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "registry_0001"
down_revision = None
branch_labels = ("registry",)
depends_on = "core_0001"


def upgrade() -> None:
    op.create_table(
        "known_asset_types",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("source_version", sa.Integer, nullable=False),
        sa.Column("definition", sa.LargeBinary, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_known_asset_types"),
    )


def downgrade() -> None:
    op.drop_table("known_asset_types")
