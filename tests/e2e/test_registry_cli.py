"""The model lifecycle through the `prognos` command line against the four real services.

`prognos train` trains a tiny model in the registry's worker and shows its progress; the
trainer cannot approve it; a second principal (a token from the development key) approves
and promotes it; `prognos models register` registers the same files again; the alias is
promoted and rolled back, and `prognos models history --at` names who set the champion.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pytest_asyncio

from prognos.api.common.v1 import audit_pb2, audit_pb2_grpc
from prognos.cli.client import open_channel, secrets_of
from prognos.cli.launcher import RunInfo
from prognos.core.auth import issue_token, load_private_key

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(900)]

TINY = [
    "epochs=1",
    "window=12",
    "architecture=cnn",
    "members=1",
    "batch=64",
    "holdout_units=2",
    "truncations=2",
    "verification_samples=16",
]


def _load(name: str) -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "helpers" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


data = _load("registry_data")


async def prognos(fleet: RunInfo, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the command line (in a thread: it runs its own event loop) against the fleet."""
    argv = [sys.executable, "-m", "prognos.cli.main", *args, "--data-dir", fleet.data_dir]
    done = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=600, check=False
    )
    if ok:
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def _copy_artifacts(version: dict, directory: Path) -> Path:
    directory.mkdir()
    for artifact in version["artifacts"]:
        if artifact["name"].startswith("evaluation"):
            continue
        shutil.copyfile(artifact["uri"].removeprefix("file://"), directory / artifact["name"])
    return directory


@dataclass(frozen=True)
class Trained:
    """What `prognos train` made of a training file: the file, what it printed, the version."""

    source: Path
    done: subprocess.CompletedProcess[str]
    version: dict[str, Any]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def trained(fleet: RunInfo, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """The module's first model version, trained once for every test that needs one."""
    source = data.write_cmapss(tmp_path_factory.mktemp("train") / "train_tiny.txt", 8, seed=3)
    params = [arg for p in TINY for arg in ("--param", p)]
    done = await prognos(
        fleet, "train", "--asset-type", "turbofan", "--cmapss", str(source), *params, "--json"
    )
    return Trained(source, done, json.loads(done.stdout))


async def test_train_approve_promote_register_roll_back_and_history(
    fleet: RunInfo, trained: Trained, tmp_path: Path
) -> None:
    source, first = trained.source, trained.version

    assert first["id"] == "turbofan-v1"
    assert first["lineage"]["dataset_content_hash"] == (
        "sha256:" + hashlib.sha256(source.read_bytes()).hexdigest()
    )
    assert first["lineage"]["source_uri"].startswith("train_tiny.txt file://")
    assert "training" in trained.done.stderr and "100%" in trained.done.stderr

    refused = await prognos(fleet, "models", "approve", first["id"], ok=False)
    assert refused.returncode == 1
    assert "PERMISSION_DENIED (SELF_APPROVAL)" in refused.stderr

    key = load_private_key(secrets_of(fleet).token_signing_key)
    bob = tmp_path / "bob.token"
    bob.write_text(issue_token(key, "user:bob", ["approver"], timedelta(hours=1)))
    as_bob = ["--token-file", str(bob)]
    await prognos(fleet, "models", "approve", first["id"], "--comment", "fine", *as_bob)
    await prognos(fleet, "models", "promote", first["id"], "--reason", "first", *as_bob)
    while_first = datetime.now(UTC)

    bundle = _copy_artifacts(first, tmp_path / "bundle")
    registered = await prognos(
        fleet, "models", "register", str(bundle), "--asset-type", "turbofan",
        "--metric", "rmse=1.5", "--description", "same files", "--json",
    )  # fmt: skip
    second = json.loads(registered.stdout)
    assert second["id"] == "turbofan-v2" and second["status"] == "MODEL_VERSION_STATUS_CANDIDATE"
    await prognos(fleet, "models", "approve", second["id"], *as_bob)
    promoted = await prognos(fleet, "models", "promote", second["id"], *as_bob)
    assert f"{first['id']} -> {second['id']} by user:bob" in promoted.stdout

    rolled = await prognos(
        fleet, "models", "rollback", "--asset-type", "turbofan", "--reason", "live error", *as_bob
    )
    assert f"rolled back: {second['id']} -> {first['id']}" in rolled.stdout

    at = await prognos(
        fleet, "models", "history", "--asset-type", "turbofan", "--alias", "champion",
        "--at", while_first.isoformat(), "--json",
    )  # fmt: skip
    [change] = json.loads(at.stdout)["changes"]
    assert (change["to_model_version_id"], change["actor"]) == (first["id"], "user:bob")
    history = await prognos(
        fleet, "models", "history", "--asset-type", "turbofan", "--alias", "champion", "--json"
    )
    whole = json.loads(history.stdout)
    assert [c["to_model_version_id"] for c in whole["changes"]] == [
        first["id"],
        second["id"],
        first["id"],
    ]
    listed = await prognos(fleet, "models", "list", "--asset-type", "turbofan", "--json")
    aliases = {v["id"]: v.get("aliases", []) for v in json.loads(listed.stdout)["model_versions"]}
    assert aliases[first["id"]] == ["MODEL_ALIAS_CHAMPION"]

    async with open_channel(fleet, "registry", role="auditor") as channel:
        reply = await audit_pb2_grpc.AuditServiceStub(channel).ListEntries(
            audit_pb2.ListEntriesRequest(), timeout=10
        )
    refusals = [e for e in reply.entries if e.action == "model_version.approve.refused"]
    assert [e.subject for e in refusals] == [f"model_version/{first['id']}"]


async def test_evaluate_prints_the_protocol_and_writes_the_report(
    fleet: RunInfo, trained: Trained, tmp_path: Path
) -> None:
    test, truth = data.write_nasa_test(tmp_path / "test.txt", tmp_path / "truth.txt", 6, seed=5)
    report = tmp_path / "report.png"

    done = await prognos(
        fleet, "evaluate", "--model", trained.version["id"], "--cmapss-test", str(test),
        "--cmapss-truth", str(truth), "--report", str(report),
    )  # fmt: skip

    evaluation = json.loads(done.stdout)
    assert evaluation["model_version"] == trained.version["id"] == "turbofan-v1"
    assert evaluation["units"] == 6 and len(evaluation["per_unit"]) == 6
    assert evaluation["rmse"] > 0 and {"precision", "recall", "f1"} <= set(evaluation["binary"])
    assert report.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
