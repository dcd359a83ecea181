"""Inference: drift alerts, one per asset type, model version and drift check period.

Revision ID: inference_0002
Revises: inference_0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "inference_0002"
down_revision = "inference_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """The drift alerts table; its key lets only one replica alert per period."""
    op.create_table(
        "drift_alerts",
        sa.Column("asset_type", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column(
            "period_start", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("replica_id", sa.String(length=200), nullable=False),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("features", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint(
            "asset_type", "model_version", "period_start", name=op.f("pk_drift_alerts")
        ),
    )


def downgrade() -> None:
    """Drop the drift alerts."""
    op.drop_table("drift_alerts")
