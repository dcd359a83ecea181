"""The health model: fitted on normal operation, calibrated on held-out assets, served as Keras."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from prognos.registry.training.data import RUL, UNIT
from prognos.registry.training.health import (
    ALARM_LEVEL,
    ANOMALY_OUTPUT,
    DISTANCE_OUTPUT,
    HealthModel,
    calibrated,
    calibration,
    is_health_model,
    normal_rows,
    train_health,
    whiten,
)
from prognos.registry.training.lives import FAILED, Layout, assemble
from prognos.registry.training.models import PROBABILITY_OUTPUT, RUL_OUTPUT
from prognos.registry.training.trainer import TrainConfig, TrainedModel


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
HORIZON = pumps.HORIZON_HOURS * 3600 / pumps.STEP_SECONDS
LAYOUT = Layout(pumps.FEATURES, pumps.SETTINGS, pumps.STEP_SECONDS, HORIZON)
CONFIG = TrainConfig(window=24, rul_clip=2 * HORIZON, horizon_cycles=HORIZON)


def _lives(pumps_in_fleet: int, failing: int, seed: int, days: float = 4) -> pd.DataFrame:
    fleet = pumps.pump_fleet(pumps_in_fleet, failing=failing, days=days, seed=seed)
    frame, _ = assemble(fleet.readings, fleet.failures, LAYOUT)
    return frame


def _train(frame: pd.DataFrame, holdout_units: int = 3) -> HealthModel:
    return train_health(
        frame,
        CONFIG,
        sensors=LAYOUT.features,
        settings=LAYOUT.settings,
        holdout_units=holdout_units,
        split_seed=7,
    )


@pytest.fixture(scope="module")
def healthy() -> HealthModel:
    """A health model of nine pumps that never failed."""
    return _train(_lives(9, failing=0, seed=3))


def test_the_calibration_is_the_share_of_normal_distances_below() -> None:
    distances = np.random.default_rng(0).gamma(2.0, 1.0, 20_000)

    knots, levels = calibration(distances)
    probe = np.quantile(distances, [0.1, 0.5, 0.9, 0.99])
    share_below = [float(np.mean(distances < value)) for value in probe]

    assert np.all(np.diff(knots) > 0) and levels[0] == 0.0 and levels[-1] == 1.0
    assert calibrated(probe, knots, levels) == pytest.approx(share_below, abs=2e-3)
    assert calibrated(np.array([knots[0] - 1.0, knots[-1] + 1.0]), knots, levels).tolist() == [
        0.0,
        1.0,
    ]


def test_a_constant_summary_still_whitens_and_calibrates() -> None:
    summary = np.ones((50, 4))

    center, whitening = whiten(summary)
    knots, levels = calibration(np.zeros(50))

    assert np.isfinite(whitening).all() and center.tolist() == [1.0] * 4
    assert len(knots) == 2 and np.diff(knots)[0] > 0 and levels.tolist() == [0.0, 1.0]


def test_rows_within_a_horizon_of_a_failure_are_not_normal() -> None:
    frame = _lives(4, failing=2, seed=5)

    normal = normal_rows(frame, HORIZON)

    failing = frame[FAILED].astype(bool) & (frame[RUL] <= HORIZON)
    assert (~normal).sum() == failing.sum() > 0
    assert normal[frame[FAILED].eq(0).to_numpy()].all()


def test_the_serving_network_computes_the_fit_and_says_it_estimates_no_risk(
    healthy: HealthModel,
) -> None:
    windows = healthy.trained.verification_windows
    outputs = healthy.trained.model.predict(windows, verbose=0)
    distance = healthy.fit.distance(windows)

    assert is_health_model(healthy.trained.model)
    assert outputs[DISTANCE_OUTPUT].reshape(-1) == pytest.approx(distance, rel=1e-4, abs=1e-4)
    assert outputs[ANOMALY_OUTPUT].reshape(-1) == pytest.approx(
        healthy.fit.score(distance), abs=1e-4
    )
    assert set(outputs[RUL_OUTPUT].reshape(-1).tolist()) == {CONFIG.rul_clip}
    assert set(outputs[PROBABILITY_OUTPUT].reshape(-1).tolist()) == {0.0}


def test_unseen_healthy_pumps_rarely_pass_the_alarm_level(healthy: HealthModel) -> None:
    others = _lives(6, failing=0, seed=8)
    windows, _, _ = healthy.trained.preprocessing.training_windows(others)

    passing = float(np.mean(healthy.fit.score(healthy.fit.distance(windows)) >= ALARM_LEVEL))

    # The calibration promises 1 - ALARM_LEVEL of normal windows of assets it has not seen.
    assert passing < 5 * (1.0 - ALARM_LEVEL)
    assert healthy.evaluation["false_alarm_rate"] < 5 * (1.0 - ALARM_LEVEL)
    assert healthy.evaluation["failing_windows"] == 0 and "auc" not in healthy.evaluation


def test_a_wearing_pump_scores_rising_toward_the_alarm_and_its_wear_sensors_deviate(
    healthy: HealthModel,
) -> None:
    worn = _lives(2, failing=2, seed=13)
    windows, _, _ = healthy.trained.preprocessing.training_windows(worn)
    score = healthy.fit.score(healthy.fit.distance(windows))
    unit = worn[UNIT].to_numpy()
    rul = worn[RUL].to_numpy()
    # The defect sets in at 35 to 60 % of a pump's life (pump_fleet).
    fraction = worn["cycle"] / worn.groupby(UNIT)["cycle"].transform("max")
    healthy_phase = (fraction < 0.3).to_numpy()

    for life in (1, 2):
        early = score[(unit == life) & healthy_phase]
        last = score[(unit == life) & (rul <= 12)]
        assert len(early) > 50 and np.median(early) < 0.9
        assert np.all(last >= ALARM_LEVEL)
    # Odd pumps wear their bearing: occluding vibration or temperature lowers the distance
    # most; even ones leak at the seal, where pressure and flow fall.
    features = list(healthy.trained.preprocessing.features)
    wear = {1: {"vibration_rms", "bearing_temperature"}, 2: {"discharge_pressure", "flow_rate"}}
    for life, deviating in wear.items():
        window = windows[np.flatnonzero(unit == life)[-1:]]  # the last before failing
        drops = []
        for k in range(len(features)):
            occluded = window.copy()
            occluded[:, :, k] = 0.0
            drops.append(float(healthy.fit.distance(window)[0] - healthy.fit.distance(occluded)[0]))
        top = {features[int(k)] for k in np.argsort(drops)[::-1][:2]}
        assert top == deviating, (life, dict(zip(features, drops, strict=True)))


def test_failures_below_the_supervised_minimum_score_the_health_model() -> None:
    model = _train(_lives(9, failing=3, seed=21))

    figures = model.evaluation
    assert figures["failing_windows"] == 3 * HORIZON
    assert figures["auc"] > 0.7
    assert 0.0 < figures["alarm_recall"] <= 1.0


def test_a_saved_health_model_loads_as_a_trained_model(
    healthy: HealthModel, tmp_path: Path
) -> None:
    healthy.save(tmp_path)

    loaded = TrainedModel.load(tmp_path)

    assert is_health_model(loaded.model)
    windows = healthy.trained.verification_windows[:8]
    assert loaded.model.predict(windows, verbose=0)[ANOMALY_OUTPUT].reshape(-1) == pytest.approx(
        healthy.fit.score(healthy.fit.distance(windows)), abs=1e-4
    )
    assert (tmp_path / "health.json").is_file()
