"""Training, registration, four-eyes approval, promotion, rollback and cancellation over gRPC.

One registry serves the module; one tiny training run (one epoch of a small CNN on a
synthetic fleet, in a worker process) gives the first model version, whose files are
registered again from outside as the second.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
import pytest_asyncio

from prognos.api.inference.v1 import events_pb2 as inference_events
from prognos.api.registry.v1 import events_pb2, registry_pb2
from prognos.core.errors import from_grpc_error
from prognos.core.testing import assert_eventually

pytestmark = [
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(600),
]


def _load(name: str) -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "helpers" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


harness = _load("registry_harness")
data = _load("registry_data")

ASSET_TYPE = "turbofan"
REQUIRED = (
    "model.keras",
    "preprocessing.json",
    "reference.json",
    "training.json",
    "verification_windows.npy",
    "saved_model.tar",
    "model.tflite",
)


@dataclass
class Trained:
    upload: registry_pb2.ModelArtifact
    watched: list[registry_pb2.TrainingRun]
    run: registry_pb2.TrainingRun
    version: registry_pb2.ModelVersion


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def registry(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    directory = tmp_path_factory.mktemp("registry")
    async with harness.running_registry(directory, retrain_period_s=0) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def trained(registry: Any, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    alice = registry.stub("user:alice", "ml-engineer")
    source = data.write_cmapss(tmp_path_factory.mktemp("data") / "train.txt", units=8, seed=1)
    uploaded = await harness.upload(alice, source)
    started = await alice.StartTraining(
        registry_pb2.StartTrainingRequest(
            asset_type=ASSET_TYPE,
            source_content_hash=uploaded.content_hash,
            source_name="train.txt",
            hyperparameters=harness.TINY,
            reason="first model",
        ),
        timeout=10,
    )
    watched = [
        reply.run
        async for reply in alice.WatchTrainingRun(
            registry_pb2.WatchTrainingRunRequest(run_id=started.run.id), timeout=300
        )
    ]
    run = watched[-1]
    assert run.state == registry_pb2.TRAINING_RUN_STATE_SUCCEEDED, run.error_message
    version = await alice.GetModelVersion(
        registry_pb2.GetModelVersionRequest(model_version_id=run.model_version_id), timeout=10
    )
    return Trained(uploaded, watched, run, version.model_version)


def _code(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    return error.code(), from_grpc_error(error).reason


async def test_a_run_streams_its_progress_and_registers_a_candidate_with_its_lineage(
    registry: Any, trained: Trained
) -> None:
    progress = [run.progress for run in trained.watched]
    assert progress == sorted(progress)
    assert trained.watched[0].state in (
        registry_pb2.TRAINING_RUN_STATE_QUEUED,
        registry_pb2.TRAINING_RUN_STATE_RUNNING,
    )
    assert any(
        r.phase == "training" and r.epoch == 1 and r.total_epochs == 1 for r in trained.watched
    )
    version = trained.version
    assert version.id == f"{ASSET_TYPE}-v1"
    assert version.status == registry_pb2.MODEL_VERSION_STATUS_CANDIDATE
    assert version.trained_by == "user:alice"
    assert list(version.aliases) == [registry_pb2.MODEL_ALIAS_CHALLENGER]
    lineage = version.lineage
    assert lineage.training_run_id == trained.run.id
    assert lineage.dataset_content_hash == trained.upload.content_hash
    assert lineage.source_uri == f"train.txt {trained.upload.uri}"
    assert lineage.label_set == f"run-to-failure:{trained.upload.content_hash}"
    assert lineage.code_version.startswith("prognos-registry ")
    assert lineage.hyperparameters["epochs"] == "1"
    assert lineage.hyperparameters["holdout_units"] == "2"
    assert lineage.hyperparameters["horizon_cycles"] == "30.0"
    assert lineage.training_metrics["held_out_units"] == 2.0
    assert version.metrics["rmse"] > 0
    assert version.metrics["export_max_rul_diff"] <= version.metrics["export_rul_tolerance"]
    for name in ("precision", "recall", "f1", "phm08_score", "brier"):
        assert name in version.metrics


def _check_stored(artifact: registry_pb2.ModelArtifact) -> None:
    path = Path(artifact.uri.removeprefix("file://"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert artifact.content_hash == f"sha256:{digest}"
    assert path.parts[-3:] == ("sha256", digest[:2], digest)
    assert artifact.size_bytes == path.stat().st_size


async def test_artifacts_lie_in_the_content_addressed_store(trained: Trained) -> None:
    artifacts = {a.name: a for a in trained.version.artifacts}
    assert set(REQUIRED) <= set(artifacts)
    for artifact in artifacts.values():
        _check_stored(artifact)


async def test_the_run_is_published_and_audited(registry: Any, trained: Trained) -> None:
    registered = await registry.messages("REGISTRY", "registry.model_version.registered")
    versions = [_unpack(e, events_pb2.ModelVersionRegistered).model_version for e in registered]
    assert trained.version.id in [v.id for v in versions]
    progressed = await registry.messages("REGISTRY", "registry.training_run.progressed")
    epochs = [_unpack(e, events_pb2.TrainingRunProgressed) for e in progressed]
    assert any(p.run_id == trained.run.id and p.epoch == 1 for p in epochs)
    finished = await registry.messages("REGISTRY", "registry.training_run.finished")
    states = {
        _unpack(e, events_pb2.TrainingRunFinished).run_id: _unpack(
            e, events_pb2.TrainingRunFinished
        ).state
        for e in finished
    }
    assert states[trained.run.id] == registry_pb2.TRAINING_RUN_STATE_SUCCEEDED
    queued = await registry.audit_entries("training_run.queued")
    assert any(
        e.subject == f"training_run/{trained.run.id}" and e.actor == "user:alice" for e in queued
    )
    registered_entries = await registry.audit_entries("model_version.registered")
    entry = next(
        e for e in registered_entries if e.subject == f"model_version/{trained.version.id}"
    )
    assert entry.actor == "user:alice"
    assert entry.details["dataset_content_hash"] == trained.upload.content_hash


async def test_the_trainer_may_not_approve_and_the_refusal_is_audited(
    registry: Any, trained: Trained
) -> None:
    alice = registry.stub("user:alice", "approver")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await alice.ApproveModelVersion(
            registry_pb2.ApproveModelVersionRequest(model_version_id=trained.version.id), timeout=10
        )

    assert _code(refused.value) == (grpc.StatusCode.PERMISSION_DENIED, "SELF_APPROVAL")
    entries = await registry.audit_entries("model_version.approve.refused")
    assert [(e.actor, e.subject, e.details["rule"]) for e in entries] == [
        ("user:alice", f"model_version/{trained.version.id}", "SELF_APPROVAL")
    ]
    reply = await alice.GetModelVersion(
        registry_pb2.GetModelVersionRequest(model_version_id=trained.version.id), timeout=10
    )
    assert reply.model_version.status == registry_pb2.MODEL_VERSION_STATUS_CANDIDATE


async def test_champion_needs_an_approval_and_the_refusal_is_audited(
    registry: Any, trained: Trained
) -> None:
    bob = registry.stub("user:bob", "approver")

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await bob.PromoteModelVersion(
            registry_pb2.PromoteModelVersionRequest(
                model_version_id=trained.version.id, alias=registry_pb2.MODEL_ALIAS_CHAMPION
            ),
            timeout=10,
        )

    assert _code(refused.value) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_APPROVED")
    entries = await registry.audit_entries("alias.promote.refused")
    assert [(e.actor, e.details["rule"], e.details["alias"]) for e in entries] == [
        ("user:bob", "NOT_APPROVED", "champion")
    ]


async def test_register_approve_promote_roll_back_and_ask_who_was_champion_when(
    registry: Any, trained: Trained
) -> None:
    carol = registry.stub("user:carol", "ml-engineer")
    bob = registry.stub("user:bob", "approver")
    files = [a for a in trained.version.artifacts if a.name in REQUIRED]

    with pytest.raises(grpc.aio.AioRpcError) as incomplete:
        await carol.RegisterModelVersion(
            registry_pb2.RegisterModelVersionRequest(asset_type=ASSET_TYPE, artifacts=files[:-1]),
            timeout=10,
        )
    assert incomplete.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    request = registry_pb2.RegisterModelVersionRequest(
        asset_type=ASSET_TYPE,
        artifacts=files,
        metrics={"rmse": 99.0},
        lineage=registry_pb2.Lineage(code_version="notebook 3", dataset_snapshot_id="offline"),
        description="the same network, registered from outside",
        idempotency_key="carol-1",
    )
    second = (await carol.RegisterModelVersion(request, timeout=300)).model_version
    again = (await carol.RegisterModelVersion(request, timeout=30)).model_version
    assert second.id == again.id == f"{ASSET_TYPE}-v2"
    assert second.trained_by == "user:carol"
    assert second.metrics["export_max_rul_diff"] <= second.metrics["export_rul_tolerance"]

    first = trained.version.id
    await bob.ApproveModelVersion(
        registry_pb2.ApproveModelVersionRequest(model_version_id=first, comment="held-out RMSE ok"),
        timeout=10,
    )
    promoted = await bob.PromoteModelVersion(
        registry_pb2.PromoteModelVersionRequest(
            model_version_id=first, alias=registry_pb2.MODEL_ALIAS_CHAMPION, reason="first champion"
        ),
        timeout=10,
    )
    assert promoted.change.actor == "user:bob" and promoted.change.from_model_version_id == ""
    while_first = datetime.now(UTC)
    await _tick()
    approved = await bob.ApproveModelVersion(
        registry_pb2.ApproveModelVersionRequest(model_version_id=second.id), timeout=10
    )
    assert approved.model_version.approved_by == "user:bob"
    dana = registry.stub("user:dana", "approver")
    await dana.PromoteModelVersion(
        registry_pb2.PromoteModelVersionRequest(
            model_version_id=second.id, alias=registry_pb2.MODEL_ALIAS_CHAMPION, reason="newer"
        ),
        timeout=10,
    )
    while_second = datetime.now(UTC)
    await _tick()

    rolled = await bob.RollbackAlias(
        registry_pb2.RollbackAliasRequest(
            asset_type=ASSET_TYPE, alias=registry_pb2.MODEL_ALIAS_CHAMPION, reason="worse live"
        ),
        timeout=10,
    )

    assert (rolled.change.from_model_version_id, rolled.change.to_model_version_id) == (
        second.id,
        first,
    )
    assert rolled.change.kind == registry_pb2.ALIAS_CHANGE_KIND_ROLLED_BACK
    history = await bob.GetAliasHistory(
        registry_pb2.GetAliasHistoryRequest(
            asset_type=ASSET_TYPE, alias=registry_pb2.MODEL_ALIAS_CHAMPION
        ),
        timeout=10,
    )
    assert [(c.to_model_version_id, c.actor) for c in history.changes] == [
        (first, "user:bob"),
        (second.id, "user:dana"),
        (first, "user:bob"),
    ]
    for when, holder, setter in (
        (while_first, first, "user:bob"),
        (while_second, second.id, "user:dana"),
    ):
        request_at = registry_pb2.GetAliasHistoryRequest(
            asset_type=ASSET_TYPE, alias=registry_pb2.MODEL_ALIAS_CHAMPION
        )
        request_at.at.FromDatetime(when)
        at = await bob.GetAliasHistory(request_at, timeout=10)
        assert [(c.to_model_version_id, c.actor) for c in at.changes] == [(holder, setter)]

    moved = [
        _unpack(e, events_pb2.AliasMoved)
        for e in await registry.messages("REGISTRY", "registry.alias.moved")
    ]
    last = [m for m in moved if m.alias == registry_pb2.MODEL_ALIAS_CHAMPION][-1]
    assert last.to_model_version_id == first and last.actor == "user:bob"
    assert {a.content_hash for a in last.artifacts} == {
        a.content_hash for a in trained.version.artifacts
    }
    rolled_back = await registry.audit_entries("alias.rolled_back")
    assert [(e.actor, e.details["to"]) for e in rolled_back] == [("user:bob", first)]
    current = await bob.GetModelVersion(
        registry_pb2.GetModelVersionRequest(model_version_id=first), timeout=10
    )
    assert registry_pb2.MODEL_ALIAS_CHAMPION in current.model_version.aliases


async def test_a_run_on_a_file_that_is_not_c_mapss_fails_and_says_why(
    registry: Any, tmp_path: Path
) -> None:
    alice = registry.stub("user:alice", "ml-engineer")
    bad = tmp_path / "readings.txt"
    await asyncio.to_thread(bad.write_text, "1 1 20.5\n1 2 20.7\n")
    uploaded = await harness.upload(alice, bad)
    started = await alice.StartTraining(
        registry_pb2.StartTrainingRequest(
            asset_type=ASSET_TYPE,
            source_content_hash=uploaded.content_hash,
            hyperparameters=harness.TINY,
        ),
        timeout=10,
    )

    replies = alice.WatchTrainingRun(
        registry_pb2.WatchTrainingRunRequest(run_id=started.run.id), timeout=120
    )
    final = [reply.run async for reply in replies][-1]

    assert final.state == registry_pb2.TRAINING_RUN_STATE_FAILED
    assert "NasaFormatError" in final.error_message and "26 columns" in final.error_message
    failed = await registry.audit_entries("training_run.failed")
    assert [e.subject for e in failed] == [f"training_run/{final.id}"]


async def test_a_drift_alert_retrains_and_cancelling_stops_the_worker(
    registry: Any, trained: Trained
) -> None:
    alice = registry.stub("user:alice", "ml-engineer")
    drift = inference_events.DriftDetected(
        asset_type=ASSET_TYPE,
        model_version=trained.version.id,
        features=[inference_events.FeatureDrift(feature="s11", psi=0.6)],
    )
    await registry.publish("inference.drift.detected", drift, actor="service:inference")

    async def drift_run() -> registry_pb2.TrainingRun:
        runs = await alice.ListTrainingRuns(
            registry_pb2.ListTrainingRunsRequest(asset_type=ASSET_TYPE), timeout=10
        )
        found = [r for r in runs.runs if r.trigger == registry_pb2.TRAINING_TRIGGER_DRIFT]
        assert found
        return found[0]

    run = await assert_eventually(drift_run, timeout=30)
    assert run.requested_by == "service:registry"
    assert "s11" in run.reason
    assert run.hyperparameters["epochs"] == "1"  # the recipe of the last successful run
    assert run.dataset_content_hash == trained.upload.content_hash
    pids = await assert_eventually(lambda: harness.worker_pids(run.id), timeout=60)

    cancelled = await alice.CancelTraining(
        registry_pb2.CancelTrainingRequest(run_id=run.id, reason="not now"), timeout=10
    )

    assert cancelled.run.state == registry_pb2.TRAINING_RUN_STATE_CANCELLED
    await assert_eventually(lambda: not harness.worker_pids(run.id), timeout=30)
    assert not harness.any_alive(pids)
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await alice.CancelTraining(registry_pb2.CancelTrainingRequest(run_id=run.id), timeout=10)
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await registry.audit_entries("training_run.cancel.refused")

    await registry.publish("inference.drift.detected", drift, actor="service:inference")

    async def skipped() -> None:
        entries = await registry.audit_entries("retrain.skipped")
        assert any(e.details["trigger"] == "drift" and "less than" in e.reason for e in entries)

    await assert_eventually(skipped, timeout=30)
    final = await alice.GetTrainingRun(
        registry_pb2.GetTrainingRunRequest(run_id=run.id), timeout=10
    )
    assert final.run.state == registry_pb2.TRAINING_RUN_STATE_CANCELLED
    assert final.run.model_version_id == ""


def _unpack(envelope: Any, cls: Any) -> Any:
    message = cls()
    assert envelope.payload.Unpack(message)
    return message


async def _tick() -> None:
    """Let the clock move on, so that two alias moves get distinct times."""
    start = datetime.now(UTC)
    await assert_eventually(lambda: datetime.now(UTC) > start, timeout=1)
