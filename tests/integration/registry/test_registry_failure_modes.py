"""Failure modes from labels to the work order: trained, evaluated per mode, served, named.

A pump type declares two failure modes; its pumps' failures carry them. The registry's
worker trains one model with a head per mode and reports precision, recall, F1 and AUC per
mode on held-out lives; inference loads the exported LiteRT model and gives each mode's
probability, most likely first; the scheduler opens the work order for the most likely mode.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from prognos.api.inference.v1 import inference_pb2
from prognos.inference.models import Artifact, ModelRunner, load_model
from prognos.inference.scoring import AssetInfo, predictions, score
from prognos.scheduler.translate import prediction_from_proto

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _load(name: str) -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "helpers" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


pumps = _load("pump_fleet")
models = _load("pump_models")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One small pump model with failure modes, trained as the registry's worker trains."""
    return models.train_pump_model(tmp_path_factory.mktemp("modes"))


def test_each_mode_is_scored_on_held_out_lives(trained: dict) -> None:
    metrics = trained["result"]["metrics"]

    for mode in pumps.MODES:
        for figure in ("precision", "recall", "f1", "positives"):
            assert f"mode.{mode}.{figure}" in metrics
    evaluation = json.loads((Path(trained["result"]["bundle"]) / "evaluation.json").read_text())
    assert set(evaluation["modes"]) == set(pumps.MODES)
    positives = sum(evaluation["modes"][m]["positives"] for m in pumps.MODES)
    # Every held-out cut within the horizon of a failure is a positive of exactly one mode.
    assert positives == evaluation["binary"]["positives"]


def test_the_model_family_is_chosen_by_grouped_cross_validation(trained: dict) -> None:
    result = trained["result"]
    selection = json.loads((Path(result["bundle"]) / "evaluation.json").read_text())[
        "cross_validation"
    ]

    assert set(selection["families"]) == {"cnn", "gbt"}
    assert selection["folds"] == 5 and selection["lives"] > 5
    briers = {f: r["figures"]["brier"] for f, r in selection["families"].items()}
    assert selection["chosen"] == min(briers, key=briers.__getitem__)
    assert result["hyperparameters"]["architecture"] == selection["chosen"]
    assert result["hyperparameters"]["families"] == "cnn,gbt"
    for mode in pumps.MODES:
        assert f"cv.mode.{mode}.auc" in result["metrics"]
        low, high = selection["families"][selection["chosen"]]["intervals"][f"mode.{mode}.f1"]
        assert 0.0 <= low <= high <= 1.0


def test_inference_gives_each_mode_most_likely_first_and_the_order_names_it(
    trained: dict,
) -> None:
    bundle = Path(trained["result"]["bundle"])
    artifacts = [
        Artifact(
            name,
            (bundle / name).resolve().as_uri(),
            "sha256:" + hashlib.sha256((bundle / name).read_bytes()).hexdigest(),
        )
        for name in ("model.tflite", "preprocessing.json")
    ]
    model = load_model("pump", "pump-v1", artifacts)
    assert model.preprocessing.failure_modes == pumps.MODES
    readings = trained["fleet"].readings
    channels = [name for name, *_ in pumps.CHANNELS]
    windows = np.stack(
        [
            rows[channels].to_numpy(np.float32)[-model.window :]
            for _, rows in readings.groupby("asset_id", sort=True)
        ]
    )
    assets = [
        AssetInfo(asset_id=a, asset_type="pump", plant="P1", horizon=None, row_interval_s=600.0)
        for a in sorted(readings["asset_id"].unique())
    ]
    now = np.full(len(assets), 1_800_000_000_000_000, np.int64)

    scores = score(ModelRunner(), model, windows, channels, explain_at=0.0)
    made = list(predictions(scores, assets, now, now))

    for prediction in made:
        risks = [(r.failure_mode, r.probability) for r in prediction.failure_modes]
        assert [m for m, _ in risks] and {m for m, _ in risks} == set(pumps.MODES)
        assert [p for _, p in risks] == sorted((p for _, p in risks), reverse=True)
        assert all(0.0 <= p <= 1.0 for _, p in risks)
        # Whatever family was chosen, the sensors that drove the score are named.
        assert prediction.top_sensors
        assert {s.channel for s in prediction.top_sensors} <= set(pumps.FEATURES)
        decided, _ = prediction_from_proto(prediction)
        assert decided.failure_mode == risks[0][0]
    plain = inference_pb2.Prediction(prediction_id="x", asset_id="a", failure_probability=0.9)
    assert prediction_from_proto(plain)[0].failure_mode == "any"
