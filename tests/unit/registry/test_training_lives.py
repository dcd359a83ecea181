"""Lives of any asset type: time bases, gaps, failures, repairs, censoring, and what they teach."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from prognos.registry.training.data import CYCLE, RUL, UNIT
from prognos.registry.training.lives import (
    FAILED,
    Layout,
    LivesError,
    assemble,
    censoring_weights,
    setting_decimals,
    truncations,
)
from prognos.registry.training.preprocessing import Preprocessing


def _load(name: str) -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "helpers" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


pumps = _load("pump_fleet")
T0 = pd.Timestamp("2026-03-01T00:00:00Z")
HOURLY = Layout(features=("temp",), settings=(), step_seconds=3600.0, horizon_steps=48.0)


def _readings(asset: str, hours: list[float], temps: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "time": [T0 + pd.Timedelta(hours=h) for h in hours],
            "asset_id": asset,
            "temp": temps,
        }
    )


def _failures(*rows: tuple[str, float, float | None]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "time": [T0 + pd.Timedelta(hours=h) for _, h, _ in rows],
            "asset_id": [a for a, _, _ in rows],
            "repaired_at": [
                pd.NaT if r is None else T0 + pd.Timedelta(hours=r) for _, _, r in rows
            ],
        }
    )


def test_wall_time_is_binned_at_the_step_and_short_gaps_are_carried_forward() -> None:
    hours = [0.1, 0.5, 1.2, 2.1] + [7.0 + i for i in range(3)]
    readings = _readings("a", hours, [10.0, 12.0, 20.0, 30.0, 70.0, 80.0, 90.0])

    frame, _ = assemble(readings, _failures(), HOURLY)

    # Hour 0 averages two readings; hours 3..5 carry hour 2 forward; hour 6 stays missing.
    assert frame["temp"].tolist()[:6] == [11.0, 20.0, 30.0, 30.0, 30.0, 30.0]
    assert np.isnan(frame["temp"][6])
    assert frame["temp"].tolist()[7:] == [70.0, 80.0, 90.0]
    assert frame[CYCLE].tolist() == list(range(1, 11))


def test_a_failure_ends_a_life_the_repair_starts_the_next_and_the_rest_is_censored() -> None:
    readings = _readings("a", list(range(20)), [float(h) for h in range(20)])
    failures = _failures(("a", 6.0, 9.0))

    frame, assets = assemble(readings, failures, HOURLY)

    first, second = (frame[frame[UNIT] == u] for u in (1, 2))
    assert assets == {1: "a", 2: "a"}
    assert first["temp"].tolist() == [float(h) for h in range(7)]
    assert first[RUL].tolist() == [6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0]
    assert first[FAILED].eq(1).all()
    # Readings between the failure and the repair belong to no life.
    assert second["temp"].tolist() == [float(h) for h in range(10, 20)]
    assert second[FAILED].eq(0).all()
    assert second[RUL].tolist() == [float(9 - i) for i in range(10)]


def test_a_type_that_counts_cycles_steps_once_per_reading() -> None:
    cycles = Layout(features=("temp",), settings=(), step_seconds=None, horizon_steps=5.0)
    readings = _readings("b", [0, 3, 4, 9], [1.0, 2.0, 3.0, 4.0])

    frame, _ = assemble(readings, _failures(("b", 9.0, None)), cycles)

    assert frame["temp"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert frame[RUL].tolist() == [3.0, 2.0, 1.0, 0.0]


def test_no_life_long_enough_is_an_error_naming_the_minimum() -> None:
    with pytest.raises(LivesError, match="at least 2 steps"):
        assemble(_readings("c", [0.0], [1.0]), _failures(), HOURLY)


def test_censored_rows_teach_only_what_their_bound_on_the_rul_tells() -> None:
    frame = pd.DataFrame({RUL: [300.0, 100.0, 10.0, 300.0, 100.0, 10.0]})
    frame[FAILED] = [0, 0, 0, 1, 1, 1]

    rul_weight, probability_weight, failing = censoring_weights(frame, 125.0, 48.0)

    assert rul_weight.tolist() == [1, 0, 0, 1, 1, 1]
    assert probability_weight.tolist() == [1, 1, 0, 1, 1, 1]
    assert failing.tolist() == [0, 0, 0, 0, 0, 1]


def test_set_points_stay_apart_as_regimes_and_gaps_do_not_break_the_scaling() -> None:
    fleet = pumps.pump_fleet(6, seed=2, days=4)
    layout = Layout(pumps.FEATURES, pumps.SETTINGS, pumps.STEP_SECONDS, 288.0)
    readings = fleet.readings.drop(index=fleet.readings.index[100:140])  # a gap of 40 readings
    frame, _ = assemble(readings, fleet.failures, layout)
    assert frame[list(pumps.FEATURES)].isna().any().any()

    preprocessing = Preprocessing.fit(
        frame,
        window=24,
        rul_clip=576.0,
        horizon_cycles=288.0,
        setting_decimals=setting_decimals(frame, pumps.SETTINGS),
        sensors=pumps.FEATURES,
        settings=pumps.SETTINGS,
    )
    windows, _, _ = preprocessing.training_windows(frame)

    assert preprocessing.n_regimes == 2
    np.testing.assert_allclose(
        sorted(c[0] for c in preprocessing.regime_centroids), [1450.0, 2900.0], atol=5.0
    )
    assert preprocessing.features == pumps.FEATURES
    assert np.isfinite(windows).all()
    assert np.isfinite(np.asarray(preprocessing.means)).all()


def test_a_type_without_settings_has_one_regime() -> None:
    fleet = pumps.pump_fleet(4, seed=5, days=3)
    layout = Layout(pumps.FEATURES, (), pumps.STEP_SECONDS, 288.0)
    frame, _ = assemble(fleet.readings, fleet.failures, layout)

    preprocessing = Preprocessing.fit(
        frame, window=12, rul_clip=576.0, horizon_cycles=288.0, sensors=pumps.FEATURES, settings=()
    )

    assert preprocessing.n_regimes == 1
    assert preprocessing.regimes(frame).max() == 0


def test_held_out_lives_are_cut_with_known_truth_for_failed_and_a_bound_for_censored() -> None:
    fleet = pumps.pump_fleet(6, failing=3, seed=4, days=4)
    layout = Layout(pumps.FEATURES, pumps.SETTINGS, pumps.STEP_SECONDS, 288.0)
    frame, _ = assemble(fleet.readings, fleet.failures, layout)

    cut, truth, failed = truncations(frame, seed=1, per_unit=3, rul_clip=200.0, min_steps=31)

    assert cut[UNIT].nunique() == len(truth) == len(failed) == 18
    assert failed.sum() == 9
    assert (truth[failed] >= 0).all() and (truth[failed] <= 232 + 1).all()
    for unit, rows in cut.groupby(UNIT):
        assert rows[RUL].iloc[-1] == truth[unit - 1]
