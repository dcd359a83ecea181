"""The training runner after a crash: runs its dead process left running are failed."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import text

from prognos.core.config import Settings
from prognos.core.migrate import sync_url, upgrade
from prognos.core.store import EventStore, create_engine
from prognos.registry import handlers
from prognos.registry.artifacts import LocalArtifactStore
from prognos.registry.domain import RunState, TrainingSource, Trigger
from prognos.registry.runner import RunChanges, TrainingRunner

PG_URL = os.environ.get("PROGNOS_TEST_PG_URL")
MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "registry" / "migrations"


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


def _dead_pid() -> int:
    pid = os.getpid() + 1
    while Path(f"/proc/{pid}").exists():
        pid += 1
    return pid


async def _running(store: EventStore, owner: str) -> str:
    async with store.transaction() as uow:
        run = await handlers.start_training(
            uow,
            handlers.StartTraining(
                asset_type="pump",
                source=TrainingSource(dataset_snapshot_id="s", dataset_content_hash="sha256:0"),
                hyperparameters={},
                trigger=Trigger.MANUAL,
                requested_by="user:alice",
            ),
        )
        await handlers.claim_training_run(uow, run.id, owner)
    return run.id


async def _state(store: EventStore, run_id: str) -> tuple[RunState, str]:
    async with store.transaction() as uow:
        run = await handlers.load_training_run(uow, run_id)
    return run.state, run.error


async def test_runs_of_a_dead_registry_process_on_this_host_are_failed(
    store: EventStore, tmp_path: Path
) -> None:
    host = socket.gethostname()
    orphaned = await _running(store, f"{host}:{_dead_pid()}")
    alive = await _running(store, f"{host}:{os.getpid()}")
    elsewhere = await _running(store, f"another-host:{_dead_pid()}")
    settings = Settings.load("registry", data_dir=tmp_path)
    runner = TrainingRunner(store, LocalArtifactStore(tmp_path / "a"), settings, RunChanges())

    await runner.recover_interrupted()

    state, error = await _state(store, orphaned)
    assert state is RunState.FAILED and "interrupted" in error
    assert (await _state(store, alive))[0] is RunState.RUNNING
    assert (await _state(store, elsewhere))[0] is RunState.RUNNING
