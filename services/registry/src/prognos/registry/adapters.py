"""The registry's read models: tables projected from its own and other services' events."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Column, DateTime, Integer, LargeBinary, String, Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from prognos.core.store import new_metadata, utcnow

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

metadata = new_metadata()

#: Asset types as announced by the ingest service; the registry trains one model per type.
known_asset_types = Table(
    "known_asset_types",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("source_version", Integer, nullable=False),
    Column("definition", LargeBinary, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


async def upsert_asset_type(
    conn: AsyncConnection, name: str, source_version: int, definition: bytes
) -> bool:
    """Store an asset type's definition unless a newer version is already known.

    Returns:
        True when the row changed.
    """
    current = await conn.scalar(
        select(known_asset_types.c.source_version).where(known_asset_types.c.name == name)
    )
    if current is not None and current >= source_version:
        return False
    upsert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    statement = upsert(known_asset_types).values(
        name=name, source_version=source_version, definition=definition, updated_at=utcnow()
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["name"],
            set_={k: statement.excluded[k] for k in ("source_version", "definition", "updated_at")},
        )
    )
    return True


async def list_asset_types(conn: AsyncConnection) -> list[tuple[str, int, bytes]]:
    rows = await conn.execute(select(known_asset_types).order_by(known_asset_types.c.name))
    return [(r.name, r.source_version, r.definition) for r in rows]
