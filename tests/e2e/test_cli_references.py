"""Versions named by alias, and tables that fit 80 columns, through the `prognos` command line.

One tiny model is trained in the registry's worker, approved as `turbofan@challenger` and
promoted as `challenger` by a second principal; then `prognos evaluate --model champion`
evaluates it, and `COLUMNS=80 prognos models list` (and the other registry listings) show
its id whole.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pytest_asyncio

from prognos.cli.client import secrets_of
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


async def prognos(
    fleet: RunInfo, *args: str, ok: bool = True, columns: int = 200
) -> subprocess.CompletedProcess[str]:
    """Run the command line (in a thread: it runs its own event loop) at a terminal width."""
    argv = [sys.executable, "-m", "prognos.cli.main", *args, "--data-dir", fleet.data_dir]
    env = {**os.environ, "COLUMNS": str(columns)}
    done = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=600, check=False, env=env
    )
    if ok:
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def champion(fleet: RunInfo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A trained turbofan model, approved and promoted to champion by its alias references."""
    directory = tmp_path_factory.mktemp("champion")
    source = data.write_cmapss(directory / "train_tiny.txt", units=8, seed=3)
    params = [arg for p in TINY for arg in ("--param", p)]
    trained = await prognos(
        fleet, "train", "--asset-type", "turbofan", "--cmapss", str(source), *params, "--json"
    )
    version: dict[str, Any] = json.loads(trained.stdout)
    bob = directory / "bob.token"
    key = load_private_key(secrets_of(fleet).token_signing_key)
    bob.write_text(issue_token(key, "user:bob", ["approver"], timedelta(hours=1)))
    as_bob = ("--token-file", str(bob))

    approved = await prognos(fleet, "models", "approve", "turbofan@challenger", *as_bob)
    assert f"{version['id']} approved by user:bob" in approved.stdout
    promoted = await prognos(fleet, "models", "promote", "challenger", "--reason", "x", *as_bob)
    assert f"(none) -> {version['id']} by user:bob" in promoted.stdout
    return version


async def test_evaluate_takes_the_champion_by_its_alias(
    fleet: RunInfo, champion: dict[str, Any], tmp_path: Path
) -> None:
    test, truth = data.write_nasa_test(tmp_path / "test.txt", tmp_path / "truth.txt", 4, seed=5)
    report = tmp_path / "report.png"

    done = await prognos(
        fleet, "evaluate", "--model", "champion", "--cmapss-test", str(test),
        "--cmapss-truth", str(truth), "--report", str(report),
    )  # fmt: skip

    evaluation = json.loads(done.stdout)
    assert evaluation["model_version"] == champion["id"]
    assert evaluation["units"] == 4
    assert report.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_show_takes_each_kind_of_reference(fleet: RunInfo, champion: dict[str, Any]) -> None:
    for reference in (champion["id"], "champion", "turbofan@champion", "turbofan@challenger"):
        shown = await prognos(fleet, "models", "show", reference)
        assert json.loads(shown.stdout)["id"] == champion["id"], reference

    refused = await prognos(fleet, "models", "show", "turbofan@chief", ok=False)

    assert refused.returncode == 1
    assert "INVALID_ARGUMENT" in refused.stderr
    assert "model_version_id: 'chief' is not an alias" in refused.stderr


def _fits(output: str, width: int = 80) -> list[str]:
    lines = output.splitlines()
    assert lines and max(len(line) for line in lines) <= width, output
    return lines


async def test_registry_listings_at_80_columns_show_whole_ids(
    fleet: RunInfo, champion: dict[str, Any]
) -> None:
    listed = await prognos(fleet, "models", "list", columns=80)

    row = next(line for line in _fits(listed.stdout) if champion["id"] in line.split())
    assert "champion" in row and "approved" in row

    runs = await prognos(fleet, "training", "list", columns=80)
    row = next(line for line in _fits(runs.stdout) if champion["id"] in line.split())
    assert any(word.startswith("run-") and len(word) == 16 for word in row.split()), row

    history = await prognos(fleet, "models", "history", "--asset-type", "turbofan", columns=80)
    row = next(line for line in _fits(history.stdout) if champion["id"] in line.split())
    assert "promotion" in row and "user:bob" in row

    wide = await prognos(fleet, "models", "list", "--wide", columns=80)
    assert any("approved by" in line and "trained by" in line for line in wide.stdout.splitlines())
    as_json = await prognos(fleet, "training", "list", "--json", columns=80)
    assert json.loads(as_json.stdout)["runs"][0]["model_version_id"] == champion["id"]
