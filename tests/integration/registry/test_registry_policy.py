"""Automatic promotion by policy, on the real event store (SQLite): no training needed.

A version the registry trained carries the champion's metrics on the same held-out
evaluation; the asset type's policy promotes it without an approval only when it beats that
champion by the margin, and only while that champion still holds the alias.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import text

from prognos.core import audit
from prognos.core.config import Settings
from prognos.core.migrate import sync_url, upgrade
from prognos.core.store import EventStore, create_engine
from prognos.registry import adapters, handlers
from prognos.registry.domain import Alias, Artifact, Lineage

PG_URL = os.environ.get("PROGNOS_TEST_PG_URL")
MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "registry" / "migrations"
ASSET_TYPE = "pump"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    """A migrated registry database on SQLite, and on PostgreSQL when one is configured."""
    schema = f"registry_{uuid.uuid4().hex[:12]}"
    if request.param == "sqlite":
        settings = Settings.load("registry", data_dir=tmp_path)
    elif PG_URL:
        settings = Settings.load(
            "registry", data_dir=tmp_path, database_url=PG_URL, db_schema=schema
        )
    else:
        pytest.skip("PROGNOS_TEST_PG_URL is not set: no PostgreSQL to test against")
    upgrade(settings, MIGRATIONS)
    engine = create_engine(settings)
    yield EventStore(engine, "registry")
    await engine.dispose()
    if request.param == "postgresql":
        sync = create_sync_engine(sync_url(PG_URL or ""))
        with sync.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        sync.dispose()


async def _register(
    store: EventStore,
    rmse: float,
    *,
    champion: tuple[str, float] | None = None,
    evaluated_here: bool = True,
) -> str:
    async with store.transaction() as uow:
        version = await handlers.register_model_version(
            uow,
            handlers.RegisterModelVersion(
                asset_type=ASSET_TYPE,
                metrics={"rmse": rmse},
                lineage=Lineage(training_run_id="run-x"),
                artifacts=(Artifact("model.tflite", "file:///m", "sha256:" + "0" * 64, 1),),
                trained_by="service:registry",
                compared_with_model_version_id=champion[0] if champion else "",
                champion_metrics={"rmse": champion[1]} if champion else {},
                evaluated_here=evaluated_here,
            ),
        )
    return version.id


async def _holders(store: EventStore) -> dict[str, str]:
    async with store.reader() as conn:
        return await adapters.alias_holders_of(conn, ASSET_TYPE)


async def _entries(store: EventStore, action: str) -> list[audit.AuditEntry]:
    async with store.reader() as conn:
        return [e async for e in audit.entries(conn) if e.action == action]


async def _first_champion(store: EventStore) -> str:
    first = await _register(store, 12.0)
    async with store.transaction() as uow:
        await handlers.approve_model_version(uow, first, "user:bob", "", 0)
        await handlers.promote_model_version(uow, first, Alias.CHAMPION, "user:bob", "start")
    async with store.transaction() as uow:
        await handlers.set_promotion_policy(
            uow,
            ASSET_TYPE,
            auto_promote=True,
            metric="rmse",
            margin=1.0,
            manual_challenger=False,
            actor="user:bob",
            reason="trust the held-out RMSE",
        )
    return first


async def test_a_candidate_that_beats_the_champion_by_the_margin_is_promoted(
    store: EventStore,
) -> None:
    first = await _first_champion(store)

    second = await _register(store, 10.5, champion=(first, 12.0))

    assert await _holders(store) == {"champion": second, "challenger": second}
    moves = await _entries(store, "alias.promoted")
    automatic = [e for e in moves if e.details["to"] == second and e.details["alias"] == "champion"]
    assert [e.actor for e in automatic] == ["service:registry"]
    assert "10.500" in automatic[0].reason and "12.000" in automatic[0].reason


async def test_a_candidate_within_the_margin_waits_for_an_approval(store: EventStore) -> None:
    first = await _first_champion(store)

    second = await _register(store, 11.5, champion=(first, 12.0))

    assert await _holders(store) == {"champion": first, "challenger": second}
    declined = await _entries(store, "alias.automatic_promotion_declined")
    assert [e.subject for e in declined] == [f"model_version/{second}"]
    assert "does not beat" in declined[0].reason


async def test_a_comparison_with_a_former_champion_promotes_nothing(store: EventStore) -> None:
    first = await _first_champion(store)
    second = await _register(store, 10.0, champion=(first, 12.0))

    third = await _register(store, 5.0, champion=(first, 12.0))

    assert (await _holders(store))["champion"] == second
    declined = await _entries(store, "alias.automatic_promotion_declined")
    assert [e.subject for e in declined] == [f"model_version/{third}"]
    assert "changed" in declined[0].reason


async def test_numbers_sent_from_outside_never_promote(store: EventStore) -> None:
    first = await _first_champion(store)

    await _register(store, 1.0, champion=(first, 12.0), evaluated_here=False)

    assert (await _holders(store))["champion"] == first


async def test_without_a_policy_nothing_is_promoted_and_the_challenger_follows(
    store: EventStore,
) -> None:
    first = await _register(store, 12.0)
    second = await _register(store, 1.0, champion=(first, 12.0))

    assert await _holders(store) == {"challenger": second}
