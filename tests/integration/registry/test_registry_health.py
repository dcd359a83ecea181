"""A model from day one: a pump type with no failures gets a health model, served in LiteRT.

The registry's worker finds no confirmed failure in the snapshot and fits a health model on
the pumps' normal operation; inference loads its exported LiteRT file like any model and
gives each window an anomaly score, names the deviating sensors, and estimates no risk and
no remaining life; the scheduler's policy opens an inspection from the anomaly score.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from prognos.inference.models import Artifact, ModelRunner, load_model
from prognos.inference.scoring import AssetInfo, predictions, score
from prognos.registry.training.lives import natural_key
from prognos.scheduler.policy import (
    DecisionKind,
    DecisionReason,
    PolicyState,
    WorkOrderPolicy,
    decide,
)
from prognos.scheduler.translate import prediction_from_proto

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _load(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[2] / "helpers" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


pumps = _load("pump_fleet")
models = _load("pump_models")
CHANNELS = [name for name, *_ in pumps.CHANNELS]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A health model of eight pumps that never failed, as the registry's worker trains it."""
    return models.train_pump_model(
        tmp_path_factory.mktemp("health"), pumps_in_fleet=8, failing=0, seed=5
    )


def _served(bundle: Path) -> Any:
    artifacts = [
        Artifact(
            name,
            (bundle / name).resolve().as_uri(),
            "sha256:" + hashlib.sha256((bundle / name).read_bytes()).hexdigest(),
        )
        for name in ("model.tflite", "preprocessing.json", "reference.json")
    ]
    return load_model("pump", "pump-v1", artifacts)


def _last_windows(readings: Any, rows: int) -> tuple[np.ndarray, list[str]]:
    groups = sorted(readings.groupby("asset_id"), key=lambda pair: natural_key(pair[0]))
    windows = np.stack([group[CHANNELS].to_numpy(np.float32)[-rows:] for _, group in groups])
    return windows, [asset for asset, _ in groups]


def test_the_worker_trains_a_health_model_when_no_pump_has_failed(trained: dict) -> None:
    result = trained["result"]

    assert result["hyperparameters"]["model_kind"] == "health"
    assert result["hyperparameters"]["supervised_min_failures"] == "5"
    assert result["training_metrics"]["failed_units"] == 0.0
    assert result["training_metrics"]["censored_units"] == 8.0
    assert "health.json" in result["artifacts"] and "model.tflite" in result["artifacts"]
    metrics = result["metrics"]
    assert metrics["alarm_level"] == 0.99 and 0.0 <= metrics["false_alarm_rate"] < 0.05
    assert metrics["export_max_anomaly_score_diff"] <= 1e-4
    assert "rmse" not in metrics and "auc" not in metrics  # nothing failed to score it on
    evaluation = json.loads((Path(result["bundle"]) / "evaluation.json").read_text())
    assert evaluation["normal_windows"] == metrics["normal_windows"]


def test_inference_scores_anomalies_names_the_deviating_sensors_and_estimates_no_risk(
    trained: dict,
) -> None:
    model = _served(Path(trained["result"]["bundle"]))
    assert model.health
    healthy, healthy_ids = _last_windows(trained["fleet"].readings, model.window)
    worn_fleet = pumps.pump_fleet(4, failing=4, days=5, seed=31, prefix="worn-")
    worn, worn_ids = _last_windows(worn_fleet.readings, model.window)
    windows = np.concatenate([healthy, worn])
    assets = [
        AssetInfo(asset_id=a, asset_type="pump", plant="P1", row_interval_s=600.0)
        for a in [*healthy_ids, *worn_ids]
    ]
    now = np.full(len(assets), 1_800_000_000_000_000, np.int64)

    scores = score(ModelRunner(), model, windows, CHANNELS, explain_at=0.99)
    made = {p.asset_id: p for p in predictions(scores, assets, now, now)}

    for asset in worn_ids:  # each at the end of its life, just before the failure
        p = made[asset]
        assert p.anomaly_score >= 0.99
        assert p.failure_probability == 0.0 and not p.HasField("rul") and not p.failure_modes
        top = [s.channel for s in p.top_sensors[:2]]
        # pump_fleet: odd pumps wear their bearing, even ones leak at the seal.
        wear = (
            {"vibration_rms", "bearing_temperature"}
            if int(asset.rsplit("-", 1)[1]) % 2
            else {"discharge_pressure", "flow_rate"}
        )
        assert set(top) == wear, (asset, top)
        assert p.top_sensors[0].contribution > 0
    healthy_scores = [made[a].anomaly_score for a in healthy_ids]
    assert np.median(healthy_scores) < 0.99
    for asset in healthy_ids:
        assert made[asset].HasField("anomaly_score")
        assert bool(made[asset].top_sensors) == (made[asset].anomaly_score >= 0.99)


def test_the_policy_opens_an_inspection_from_the_anomaly_score(trained: dict) -> None:
    model = _served(Path(trained["result"]["bundle"]))
    worn_fleet = pumps.pump_fleet(1, failing=1, days=5, seed=31, prefix="worn-")
    worn, ids = _last_windows(worn_fleet.readings, model.window)
    assets = [AssetInfo(asset_id=ids[0], asset_type="pump", plant="P1", row_interval_s=600.0)]
    now = np.full(1, 1_800_000_000_000_000, np.int64)
    (made,) = predictions(
        score(ModelRunner(), model, worn, CHANNELS, explain_at=0.99), assets, now, now
    )
    policy = WorkOrderPolicy(anomaly_open=0.99, anomaly_close=0.9, horizon=timedelta(hours=48))

    prediction, cause = prediction_from_proto(made)
    decision = decide(policy, PolicyState(), prediction)

    assert prediction.failure_mode == "inspection" and cause.anomaly_score == made.anomaly_score
    assert decision.kind is DecisionKind.OPEN
    assert decision.reason is DecisionReason.ANOMALY_ABOVE_OPEN
    assert decision.risk == made.anomaly_score
    assert decision.due_at - prediction.at == timedelta(hours=48)
    # A supervised policy alone opens nothing from a health model's prediction.
    assert decide(WorkOrderPolicy(p_open=1e-9, p_close=0.0), PolicyState(), prediction).kind is (
        DecisionKind.NONE
    )
