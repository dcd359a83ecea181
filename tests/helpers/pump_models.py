"""A small pump model with failure modes, trained as the registry's worker trains one.

``train_pump_model`` writes a seeded pump fleet as a snapshot, hands it to the registry's
training worker with the pump type (two failure modes, a 48-hour horizon) and returns the
worker's result and the fleet. Small settings keep it to seconds.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from prognos.registry import worker


def _load(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


pumps = _load("pump_fleet")
data = _load("registry_data")

#: The worker's settings for a model trained in seconds.
SMALL = {
    "epochs": "2",
    "members": "1",
    "window": "24",
    "units": "16",
    "holdout_units": "3",
    "truncations": "3",
    "verification_samples": "16",
}


def train_pump_model(
    work: Path, *, pumps_in_fleet: int = 10, failing: int = 8, days: float = 5, seed: int = 21
) -> dict[str, Any]:
    """``{"result": worker result, "fleet": PumpFleet, "bundle": Path}`` of one small model."""
    fleet = pumps.pump_fleet(pumps_in_fleet, failing=failing, days=days, seed=seed)
    snapshot = data.write_frames(
        work / "archive",
        name="pumps",
        asset_type="pump",
        readings=fleet.readings,
        failures=fleet.failures,
    )
    (work / "snapshot.pb").write_bytes(snapshot.SerializeToString())
    (work / "type.pb").write_bytes(pumps.asset_type().SerializeToString())
    spec = {
        "run_id": "r1",
        "asset_type": "pump",
        "hyperparameters": dict(SMALL),
        "horizon_cycles": None,
        "asset_type_file": str(work / "type.pb"),
        "source": {"kind": "snapshot", "snapshot_file": str(work / "snapshot.pb")},
        "champion_bundle": "",
        "out": str(work / "bundle"),
    }
    result = worker.train_command(spec, lambda _: None, threading.Event())
    return {"result": result, "fleet": fleet, "bundle": Path(result["bundle"])}
