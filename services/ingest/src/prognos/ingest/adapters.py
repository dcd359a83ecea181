"""The ingest service's read models: tables projected from its events."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from sqlalchemy import JSON, Column, DateTime, Integer, String, Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from prognos.core.events import DomainEvent
from prognos.core.store import new_metadata, utcnow
from prognos.ingest.domain import AssetTypeRegistered, AssetTypeSpec, AssetTypeUpdated

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

metadata = new_metadata()

asset_types = Table(
    "asset_types",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("spec", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


def asset_type_stream(name: str) -> str:
    return f"asset_type-{name}"


async def project(conn: AsyncConnection, event: DomainEvent, version: int) -> None:
    """Apply one asset-type event to the read model, in the writer's transaction."""
    if not isinstance(event, AssetTypeRegistered | AssetTypeUpdated):
        return
    from prognos.core.events import encode

    _, _, data = encode(event)
    values = {
        "name": event.spec.name,
        "version": version,
        "spec": data["spec"],
        "updated_at": utcnow(),
    }
    upsert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = upsert(asset_types).values(**values)
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["name"],
            set_={k: statement.excluded[k] for k in ("version", "spec", "updated_at")},
        )
    )


async def list_asset_types(conn: AsyncConnection) -> list[tuple[AssetTypeSpec, int]]:
    """Every asset type with its stream version, by name."""
    from pydantic import TypeAdapter

    adapter = TypeAdapter(AssetTypeSpec)
    rows = await conn.execute(select(asset_types).order_by(asset_types.c.name))
    return [
        (
            adapter.validate_python(r.spec if isinstance(r.spec, dict) else json.loads(r.spec)),
            r.version,
        )
        for r in rows
    ]
