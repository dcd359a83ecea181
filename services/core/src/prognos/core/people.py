"""People's names, kept outside the audit chain so that they can be erased on request.

An audit entry never holds a person's name: it holds a reference, ``person/<id>``, into the
``people`` table of the same database. The table is not hashed, so erasing a name (the row
keeps its id, loses its name and records when it was erased) leaves every chain verifying,
while every trail that showed the name shows it no more. The erasure itself is audited,
naming only the reference.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import Column, DateTime, String, Table, select, update

from prognos.core.store import metadata

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["PERSON_PREFIX", "erase", "is_person_ref", "names_of", "people_table", "person_ref"]

PERSON_PREFIX = "person/"

people_table = Table(
    "people",
    metadata,
    Column("person_id", String(36), primary_key=True),
    Column("name", String(255), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("erased_at", DateTime(timezone=True), nullable=True),
)


def is_person_ref(value: object) -> bool:
    """Whether ``value`` is a ``person/<id>`` reference."""
    return isinstance(value, str) and value.startswith(PERSON_PREFIX)


async def person_ref(conn: AsyncConnection, name: str) -> str:
    """The reference of the person called ``name``, recorded on first use.

    Args:
        conn: a connection inside the writing transaction.
        name: the person's name as given (e.g. by the ERP).

    Returns:
        ``person/<id>``; the same id for the same name until the name is erased.
    """
    table = people_table
    known = await conn.scalar(
        select(table.c.person_id).where(table.c.name == name, table.c.erased_at.is_(None))
    )
    if known is None:
        known = str(uuid.uuid4())
        await conn.execute(
            table.insert().values(person_id=known, name=name, created_at=datetime.now(UTC))
        )
    return PERSON_PREFIX + known


async def names_of(conn: AsyncConnection, refs: Iterable[str]) -> dict[str, str | None]:
    """The names behind ``person/<id>`` references; ``None`` for an erased or unknown one."""
    ids = {r.removeprefix(PERSON_PREFIX) for r in refs if is_person_ref(r)}
    if not ids:
        return {}
    table = people_table
    rows = await conn.execute(
        select(table.c.person_id, table.c.name).where(table.c.person_id.in_(ids))
    )
    found = {row.person_id: row.name for row in rows}
    return {PERSON_PREFIX + i: found.get(i) for i in sorted(ids)}


async def erase(conn: AsyncConnection, person: str) -> list[str]:
    """Erase a person's name: ``person`` is a ``person/<id>`` reference or the name itself.

    Returns:
        The references whose names were erased (none when nobody matched).
    """
    table = people_table
    if is_person_ref(person):
        condition = table.c.person_id == person.removeprefix(PERSON_PREFIX)
    else:
        condition = table.c.name == person
    rows = await conn.execute(
        select(table.c.person_id).where(condition, table.c.erased_at.is_(None))
    )
    ids = [row.person_id for row in rows]
    if ids:
        await conn.execute(
            update(table)
            .where(table.c.person_id.in_(ids))
            .values(name=None, erased_at=datetime.now(UTC))
        )
    return [PERSON_PREFIX + i for i in ids]
