"""The retraining schedule, with a two-second period, on dataset snapshots from ingest.

Snapshot A arrives and a model is trained on it. The schedule then finds no newer data and
trains nothing (audited). Snapshot B arrives; at its next turn the schedule trains on B, and
the new candidate's lineage points at B.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from prognos.api.ingest.v1 import events_pb2 as ingest_events
from prognos.api.registry.v1 import registry_pb2
from prognos.core.testing import assert_eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ASSET_TYPE = "turbofan"
PERIOD_S = 2.0


def _load(name: str) -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "helpers" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


harness = _load("registry_harness")
data = _load("registry_data")


async def _runs(stub: Any) -> list[registry_pb2.TrainingRun]:
    reply = await stub.ListTrainingRuns(
        registry_pb2.ListTrainingRunsRequest(asset_type=ASSET_TYPE), timeout=10
    )
    return list(reply.runs)


async def _finished(stub: Any, run_id: str) -> registry_pb2.TrainingRun:
    async def done() -> registry_pb2.TrainingRun:
        reply = await stub.GetTrainingRun(registry_pb2.GetTrainingRunRequest(run_id=run_id))
        assert reply.run.state not in (
            registry_pb2.TRAINING_RUN_STATE_QUEUED,
            registry_pb2.TRAINING_RUN_STATE_RUNNING,
        )
        return reply.run

    run: registry_pb2.TrainingRun = await assert_eventually(done, timeout=300, interval=0.5)
    assert run.state == registry_pb2.TRAINING_RUN_STATE_SUCCEEDED, run.error_message
    return run


async def test_the_schedule_retrains_on_the_newer_snapshot(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    snapshot_a = data.write_snapshot(
        archive, name="fleet-a", asset_type=ASSET_TYPE, units=6, seed=1
    )
    snapshot_b = data.write_snapshot(
        archive, name="fleet-b", asset_type=ASSET_TYPE, units=8, seed=2
    )

    async with harness.running_registry(
        tmp_path / "registry", retrain_period_s=PERIOD_S
    ) as registry:
        alice = registry.stub("user:alice", "ml-engineer")
        await registry.publish(
            "ingest.dataset_snapshot.created",
            ingest_events.DatasetSnapshotCreated(snapshot=snapshot_a),
            actor="user:ingest",
        )

        async def knows_a() -> None:
            # Starting a run on the snapshot by name works once the registry has learned it.
            started = await alice.StartTraining(
                registry_pb2.StartTrainingRequest(
                    asset_type=ASSET_TYPE,
                    dataset_snapshot_id="fleet-a",
                    hyperparameters=harness.TINY,
                    idempotency_key="first-on-a",
                ),
                timeout=10,
            )
            assert started.run.dataset_snapshot_id == snapshot_a.id

        await assert_eventually(knows_a, timeout=30, retry_on=(AssertionError, Exception))
        [first] = await _runs(alice)
        first = await _finished(alice, first.id)
        v1 = (
            await alice.GetModelVersion(
                registry_pb2.GetModelVersionRequest(model_version_id=first.model_version_id)
            )
        ).model_version
        assert v1.lineage.dataset_snapshot_id == snapshot_a.id
        assert v1.lineage.dataset_content_hash == snapshot_a.content_hash
        assert v1.lineage.label_set.startswith("sha256:")
        assert (
            v1.lineage.training_metrics["train_units"]
            + v1.lineage.training_metrics["held_out_units"]
            == 6
        )

        async def skipped_for_want_of_new_data() -> None:
            entries = await registry.audit_entries("retrain.skipped")
            assert any(
                e.details["trigger"] == "schedule"
                and f"no new data since run {first.id}" in e.reason
                for e in entries
            )

        await assert_eventually(skipped_for_want_of_new_data, timeout=30)
        assert len(await _runs(alice)) == 1

        await registry.publish(
            "ingest.dataset_snapshot.created",
            ingest_events.DatasetSnapshotCreated(snapshot=snapshot_b),
            actor="user:ingest",
        )

        async def scheduled_run() -> registry_pb2.TrainingRun:
            runs = [r for r in await _runs(alice) if r.id != first.id]
            assert runs
            return runs[0]

        scheduled = await assert_eventually(scheduled_run, timeout=60, interval=0.2)
        assert scheduled.trigger == registry_pb2.TRAINING_TRIGGER_SCHEDULE
        assert scheduled.requested_by == "service:registry"
        assert scheduled.hyperparameters["epochs"] == "1"
        scheduled = await _finished(alice, scheduled.id)
        v2 = (
            await alice.GetModelVersion(
                registry_pb2.GetModelVersionRequest(model_version_id=scheduled.model_version_id)
            )
        ).model_version

    assert v2.id == f"{ASSET_TYPE}-v2" and v2.status == registry_pb2.MODEL_VERSION_STATUS_CANDIDATE
    assert v2.lineage.dataset_snapshot_id == snapshot_b.id
    assert v2.lineage.dataset_content_hash == snapshot_b.content_hash
    assert v2.lineage.training_run_id == scheduled.id
    assert v2.trained_by == "service:registry"
    assert (
        v2.lineage.training_metrics["train_units"] + v2.lineage.training_metrics["held_out_units"]
        == 8
    )
    assert list(v2.aliases) == [registry_pb2.MODEL_ALIAS_CHALLENGER]
