"""Scheduler: master data, work orders and their feed, decisions, idempotency, webhooks.

Revision ID: scheduler_0002
Revises: scheduler_0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "scheduler_0002"
down_revision = "scheduler_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """The scheduler's read models, decisions, idempotency keys and webhook outbox."""
    op.create_table(
        "assets",
        sa.Column("asset_id", sa.String(length=200), nullable=False),
        sa.Column("erp_id", sa.String(length=200), nullable=False),
        sa.Column("plant", sa.String(length=200), nullable=False),
        sa.Column("asset_type", sa.String(length=128), nullable=False),
        sa.Column("required_skill", sa.String(length=128), nullable=False),
        sa.Column("service_duration_h", sa.Float(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("criticality", sa.Float(), nullable=False),
        sa.Column("downtime_cost_per_h", sa.Float(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("asset_id", name=op.f("pk_assets")),
    )
    op.create_index("ix_assets_plant", "assets", ["plant"])

    op.create_table(
        "crews",
        sa.Column("crew_id", sa.String(length=200), nullable=False),
        sa.Column("plant", sa.String(length=200), nullable=False),
        sa.Column("skill", sa.String(length=128), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("crew_id", name=op.f("pk_crews")),
    )
    op.create_table(
        "decisions",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("prediction_id", sa.String(length=128), nullable=False),
        sa.Column("asset_id", sa.String(length=200), nullable=False),
        sa.Column("failure_mode", sa.String(length=128), nullable=False),
        sa.Column("asset_type", sa.String(length=128), nullable=False),
        sa.Column("prediction_us", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("risk", sa.Float(), nullable=False),
        sa.Column("due_us", sa.BigInteger(), nullable=False),
        sa.Column("work_order_id", sa.String(length=64), nullable=True),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("decided_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_decisions")),
    )
    op.create_index("ix_decisions_asset", "decisions", ["asset_id", "seq"])

    op.create_table(
        "idempotency_keys",
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("actor", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index("ix_idempotency_keys_created", "idempotency_keys", ["created_us"])

    op.create_table(
        "policies",
        sa.Column("asset_type", sa.String(length=128), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("asset_type", name=op.f("pk_policies")),
    )
    op.create_table(
        "policy_states",
        sa.Column("asset_id", sa.String(length=200), nullable=False),
        sa.Column("failure_mode", sa.String(length=128), nullable=False),
        sa.Column("armed", sa.Boolean(), nullable=False),
        sa.Column("last_opened_us", sa.BigInteger(), nullable=True),
        sa.Column("open_work_order_id", sa.String(length=64), nullable=True),
        sa.Column("last_prediction_us", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("asset_id", "failure_mode", name=op.f("pk_policy_states")),
    )
    op.create_table(
        "scheduler_cursors",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_scheduler_cursors")),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column(
            "delivery_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("endpoint_id", sa.String(length=100), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_us", sa.BigInteger(), nullable=False),
        sa.Column("delivered_us", sa.BigInteger(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("delivery_id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint(
            "endpoint_id", "position", name=op.f("uq_webhook_deliveries_endpoint_id_position")
        ),
    )
    op.create_index(
        "ix_webhook_deliveries_pending",
        "webhook_deliveries",
        ["endpoint_id", "delivered_us", "delivery_id"],
    )

    op.create_table(
        "webhook_endpoints",
        sa.Column("endpoint_id", sa.String(length=100), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("plants", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint_id", name=op.f("pk_webhook_endpoints")),
    )
    op.create_table(
        "windows",
        sa.Column("window_id", sa.String(length=255), nullable=False),
        sa.Column("plant", sa.String(length=200), nullable=False),
        sa.Column("start_us", sa.BigInteger(), nullable=False),
        sa.Column("end_us", sa.BigInteger(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("window_id", name=op.f("pk_windows")),
    )
    op.create_index("ix_windows_plant_end", "windows", ["plant", "end_us"])

    op.create_table(
        "work_order_feed",
        sa.Column(
            "position",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("work_order_id", sa.String(length=64), nullable=False),
        sa.Column("plant", sa.String(length=200), nullable=False),
        sa.Column("event_type", sa.String(length=128), nullable=False),
        sa.Column("recorded_us", sa.BigInteger(), nullable=False),
        sa.Column("snapshot", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("position", name=op.f("pk_work_order_feed")),
    )
    op.create_index("ix_work_order_feed_plant", "work_order_feed", ["plant", "position"])

    op.create_table(
        "work_orders",
        sa.Column("work_order_id", sa.String(length=64), nullable=False),
        sa.Column("asset_id", sa.String(length=200), nullable=False),
        sa.Column("failure_mode", sa.String(length=128), nullable=False),
        sa.Column("plant", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("risk", sa.Float(), nullable=False),
        sa.Column("due_us", sa.BigInteger(), nullable=False),
        sa.Column("window_id", sa.String(length=255), nullable=True),
        sa.Column("slot_start_us", sa.BigInteger(), nullable=True),
        sa.Column("slot_end_us", sa.BigInteger(), nullable=True),
        sa.Column("crew_id", sa.String(length=200), nullable=True),
        sa.Column("unplaced_reason", sa.String(length=64), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
        sa.Column("snapshot", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("work_order_id", name=op.f("pk_work_orders")),
    )
    op.create_index("ix_work_orders_asset", "work_orders", ["asset_id", "created_us"])
    op.create_index("ix_work_orders_created", "work_orders", ["created_us", "work_order_id"])
    op.create_index("ix_work_orders_state", "work_orders", ["state"])


def downgrade() -> None:
    """Drop them again."""
    op.drop_index("ix_work_orders_state", "work_orders")
    op.drop_index("ix_work_orders_created", "work_orders")
    op.drop_index("ix_work_orders_asset", "work_orders")

    op.drop_table("work_orders")
    op.drop_index("ix_work_order_feed_plant", "work_order_feed")

    op.drop_table("work_order_feed")
    op.drop_index("ix_windows_plant_end", "windows")

    op.drop_table("windows")
    op.drop_table("webhook_endpoints")
    op.drop_index("ix_webhook_deliveries_pending", "webhook_deliveries")

    op.drop_table("webhook_deliveries")
    op.drop_table("scheduler_cursors")
    op.drop_table("policy_states")
    op.drop_table("policies")
    op.drop_index("ix_idempotency_keys_created", "idempotency_keys")

    op.drop_table("idempotency_keys")
    op.drop_index("ix_decisions_asset", "decisions")

    op.drop_table("decisions")
    op.drop_table("crews")
    op.drop_index("ix_assets_plant", "assets")

    op.drop_table("assets")
