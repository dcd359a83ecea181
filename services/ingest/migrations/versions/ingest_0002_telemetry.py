"""Ingest: assets, labels, the batch ledger, the archive catalog, quarantine and snapshots.

Revision ID: ingest_0002
Revises: ingest_0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ingest_0002"
down_revision = "ingest_0001"
branch_labels = None
depends_on = None

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "assets",
        sa.Column("asset_id", sa.String(200), nullable=False),
        sa.Column("plant", sa.String(200), nullable=False),
        sa.Column("asset_type", sa.String(128), nullable=False),
        sa.Column("erp_id", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("registered_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("asset_id", name="pk_assets"),
    )
    op.create_index("ix_assets_asset_type", "assets", ["asset_type"])
    op.create_table(
        "labels",
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("asset_id", sa.String(200), nullable=False),
        sa.Column("asset_type", sa.String(128), nullable=False),
        sa.Column("time_us", sa.BigInteger, nullable=False),
        sa.Column("failure_confirmed", sa.Boolean, nullable=False),
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("failure_mode", sa.String(128), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("archived_path", sa.String(512), nullable=True),
        sa.PrimaryKeyConstraint("event_id", name="pk_labels"),
    )
    op.create_index("ix_labels_archived_path", "labels", ["archived_path"])
    op.create_table(
        "telemetry_batches",
        sa.Column("asset_id", sa.String(200), nullable=False),
        sa.Column("batch_id", sa.String(200), nullable=False),
        sa.Column("stream_sequence", sa.BigInteger, nullable=False),
        sa.Column("accepted_count", sa.Integer, nullable=False),
        sa.Column("quarantined_count", sa.Integer, nullable=False),
        sa.Column("first_time_us", sa.BigInteger, nullable=False),
        sa.Column("last_time_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("asset_id", "batch_id", name="pk_telemetry_batches"),
    )
    op.create_table(
        "archive_files",
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("asset_type", sa.String(128), nullable=False),
        sa.Column("asset_id", sa.String(200), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("min_time_us", sa.BigInteger, nullable=False),
        sa.Column("max_time_us", sa.BigInteger, nullable=False),
        sa.Column("row_count", sa.BigInteger, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("content_hash", sa.String(80), nullable=False),
        sa.Column("first_sequence", sa.BigInteger, nullable=False),
        sa.Column("last_sequence", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("path", name="pk_archive_files"),
    )
    op.create_index(
        "ix_archive_files_asset_type", "archive_files", ["asset_type", "kind", "asset_id"]
    )
    op.create_table(
        "follower_positions",
        sa.Column("follower", sa.String(128), nullable=False),
        sa.Column("stream_sequence", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("follower", name="pk_follower_positions"),
    )
    op.create_table(
        "quarantine",
        sa.Column("id", _Id, nullable=False, autoincrement=True),
        sa.Column("asset_id", sa.String(200), nullable=False),
        sa.Column("batch_id", sa.String(200), nullable=False),
        sa.Column("time_us", sa.BigInteger, nullable=True),
        sa.Column("channel", sa.String(200), nullable=False),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("reason", sa.Integer, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("quarantined_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_quarantine"),
    )
    op.create_index("ix_quarantine_asset_reason", "quarantine", ["asset_id", "reason", "id"])
    op.create_index("ix_quarantine_reason", "quarantine", ["reason", "id"])
    op.create_table(
        "quarantine_counts",
        sa.Column("asset_id", sa.String(200), nullable=False),
        sa.Column("reason", sa.Integer, nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("last_at_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("asset_id", "reason", name="pk_quarantine_counts"),
    )
    op.create_table(
        "dataset_snapshots",
        sa.Column("snapshot_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("asset_type", sa.String(128), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("snapshot_id", name="pk_dataset_snapshots"),
        sa.UniqueConstraint("name", name="uq_dataset_snapshots_name"),
    )


def downgrade() -> None:
    for table in (
        "dataset_snapshots",
        "quarantine_counts",
        "quarantine",
        "follower_positions",
        "archive_files",
        "telemetry_batches",
        "labels",
        "assets",
    ):
        op.drop_table(table)
