"""Registry read models: model versions, alias holders, training runs, snapshots, schedule.

Revision ID: registry_0002
Revises: registry_0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "registry_0002"
down_revision = "registry_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("asset_type", sa.String(128), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stream_version", sa.Integer, nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_model_versions"),
        sa.UniqueConstraint("idempotency_key", name="uq_model_versions_idempotency_key"),
    )
    op.create_index(
        "ix_model_versions_asset_type_number",
        "model_versions",
        ["asset_type", "number"],
        unique=True,
    )
    op.create_table(
        "alias_holders",
        sa.Column("asset_type", sa.String(128), nullable=False),
        sa.Column("alias", sa.String(32), nullable=False),
        sa.Column("model_version_id", sa.String(200), nullable=False),
        sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("asset_type", "alias", name="pk_alias_holders"),
    )
    op.create_table(
        "training_runs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("asset_type", sa.String(128), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("dataset_content_hash", sa.String(80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("stream_version", sa.Integer, nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_training_runs"),
        sa.UniqueConstraint("idempotency_key", name="uq_training_runs_idempotency_key"),
    )
    op.create_index("ix_training_runs_state_created_at", "training_runs", ["state", "created_at"])
    op.create_table(
        "dataset_snapshots",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("asset_type", sa.String(128), nullable=False),
        sa.Column("content_hash", sa.String(80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dataset_snapshots"),
    )
    op.create_index(
        "ix_dataset_snapshots_asset_type_created_at",
        "dataset_snapshots",
        ["asset_type", "created_at"],
    )
    op.create_table(
        "retrain_schedule",
        sa.Column("asset_type", sa.String(128), nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("asset_type", name="pk_retrain_schedule"),
    )


def downgrade() -> None:
    op.drop_table("retrain_schedule")
    op.drop_index("ix_dataset_snapshots_asset_type_created_at", "dataset_snapshots")
    op.drop_table("dataset_snapshots")
    op.drop_index("ix_training_runs_state_created_at", "training_runs")
    op.drop_table("training_runs")
    op.drop_table("alias_holders")
    op.drop_index("ix_model_versions_asset_type_number", "model_versions")
    op.drop_table("model_versions")
