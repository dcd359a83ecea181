"""Event-store fixtures: a freshly migrated database on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from prognos.core.config import Settings
from prognos.core.migrate import sync_url, upgrade
from prognos.core.store import EventStore
from prognos.core.store import create_engine as create_store_engine

PG_URL = os.environ.get("PROGNOS_TEST_PG_URL")


def _pg_schema_settings(tmp_path: Path) -> Iterator[Settings]:
    if not PG_URL:
        pytest.skip("PROGNOS_TEST_PG_URL is not set: no PostgreSQL to test against")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    settings = Settings.load("test", data_dir=tmp_path, database_url=PG_URL, db_schema=schema)
    upgrade(settings)
    yield settings
    engine = create_engine(sync_url(PG_URL))
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings of a migrated, empty service database of each kind."""
    if request.param == "sqlite":
        settings = Settings.load("test", data_dir=tmp_path)
        upgrade(settings)
        yield settings
    else:
        yield from _pg_schema_settings(tmp_path)


@pytest.fixture
async def store(store_settings: Settings) -> AsyncIterator[EventStore]:
    engine = create_store_engine(store_settings)
    yield EventStore(engine, "test")
    await engine.dispose()
