"""The inference service's own table: drift alerts, one per asset type, model and period."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    insert,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from prognos.core.store import new_metadata

metadata = new_metadata()

drift_alerts = Table(
    "drift_alerts",
    metadata,
    Column("asset_type", String(128), nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("period_start", BigInteger().with_variant(Integer(), "sqlite"), nullable=False),
    Column("replica_id", String(200), nullable=False),
    Column("detected_at", DateTime(timezone=True), nullable=False),
    Column("message_id", String(64), nullable=False),
    Column("features", JSON, nullable=False),
    PrimaryKeyConstraint("asset_type", "model_version", "period_start"),
)


async def claim_drift_alert(
    conn: AsyncConnection,
    *,
    asset_type: str,
    model_version: str,
    period_start: int,
    replica_id: str,
    detected_at: datetime,
    message_id: str,
    features: list[dict[str, Any]],
) -> bool:
    """Record a drift alert unless one exists for the same asset type, model and period.

    Returns:
        Whether this call recorded it (False: another replica alerted first).
    """
    existing = await conn.scalar(
        select(drift_alerts.c.message_id).where(
            drift_alerts.c.asset_type == asset_type,
            drift_alerts.c.model_version == model_version,
            drift_alerts.c.period_start == period_start,
        )
    )
    if existing is not None:
        return False
    # The service's writer lock is held, so no other replica can insert between the two.
    await conn.execute(
        insert(drift_alerts).values(
            asset_type=asset_type,
            model_version=model_version,
            period_start=period_start,
            replica_id=replica_id,
            detected_at=detected_at,
            message_id=message_id,
            features=features,
        )
    )
    return True


async def drift_alert_count(conn: AsyncConnection, asset_type: str | None = None) -> int:
    """How many drift alerts were recorded (for one asset type)."""
    query = select(drift_alerts.c.message_id)
    if asset_type is not None:
        query = query.where(drift_alerts.c.asset_type == asset_type)
    return len((await conn.execute(query)).all())
