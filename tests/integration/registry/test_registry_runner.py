"""The training runner after a crash: runs its dead process left running are failed."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from prognos.core.config import Settings
from prognos.core.migrate import upgrade
from prognos.core.store import EventStore, create_engine
from prognos.registry import handlers
from prognos.registry.artifacts import LocalArtifactStore
from prognos.registry.domain import RunState, TrainingSource, Trigger
from prognos.registry.runner import RunChanges, TrainingRunner

MIGRATIONS = Path(__file__).resolve().parents[3] / "services" / "registry" / "migrations"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EventStore]:
    settings = Settings.load("registry", data_dir=tmp_path)
    upgrade(settings, MIGRATIONS)
    engine = create_engine(settings)
    yield EventStore(engine, "registry")
    await engine.dispose()


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
