"""Regimes, per-regime scaling, constant sensors and windows of the RUL model's input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prognos.registry.training.data import add_rul
from prognos.registry.training.preprocessing import (
    Preprocessing,
    assign_regimes,
    detect_regimes,
    pad_window,
    reference_distributions,
)

Fleet = Callable[..., pd.DataFrame]


def _fit(frame: pd.DataFrame, window: int = 10) -> Preprocessing:
    return Preprocessing.fit(frame, window=window, rul_clip=50.0, horizon_cycles=15.0)


def test_detects_six_regimes_from_jittered_settings(
    fleet: Fleet, six_regimes: tuple[tuple[float, float, float], ...]
) -> None:
    frame = fleet(8, seed=1, regimes=six_regimes)
    settings = frame[["setting_1", "setting_2", "setting_3"]].to_numpy()

    centroids = detect_regimes(settings, (0, 2, 0))

    np.testing.assert_allclose(centroids, np.asarray(six_regimes), atol=0.01)
    labels = assign_regimes(settings, centroids, (0, 2, 0))
    truth = np.argmin(np.abs(settings[:, None, 0] - np.asarray(six_regimes)[None, :, 0]), axis=1)
    np.testing.assert_array_equal(labels, truth)


def test_noise_straddling_a_rounding_boundary_stays_one_regime() -> None:
    rng = np.random.default_rng(0)
    # 0.845 rounds to 0.84 or 0.85 depending on the noise: still one regime.
    settings = np.column_stack(
        [np.full(500, 42.0), 0.845 + rng.normal(0, 0.001, 500), np.full(500, 100.0)]
    )
    assert len(detect_regimes(settings, (0, 2, 0))) == 1


def test_single_regime_data_gives_one_regime(fleet: Fleet) -> None:
    preprocessing = _fit(fleet(4, seed=2))
    assert preprocessing.n_regimes == 1


def test_each_regime_is_scaled_by_its_own_statistics(
    fleet: Fleet, six_regimes: tuple[tuple[float, float, float], ...]
) -> None:
    frame = fleet(8, seed=3, regimes=six_regimes)
    preprocessing = _fit(frame)
    normalised = preprocessing.normalise(frame)
    regimes = preprocessing.regimes(frame)
    for k in range(6):
        part = normalised[regimes == k]
        np.testing.assert_allclose(part.mean(axis=0), 0.0, atol=1e-4)
        np.testing.assert_allclose(part.std(axis=0), 1.0, atol=1e-4)


def test_sensors_constant_within_every_regime_are_dropped(
    fleet: Fleet,
    six_regimes: tuple[tuple[float, float, float], ...],
    constant_sensors: tuple[str, ...],
) -> None:
    # With six regimes these sensors change with the regime but not within one.
    frame = fleet(6, seed=4, regimes=six_regimes)
    preprocessing = _fit(frame)
    assert set(preprocessing.dropped) == set(constant_sensors)
    assert not set(preprocessing.features) & set(constant_sensors)
    assert len(preprocessing.features) == 21 - len(constant_sensors)


def test_a_short_unit_is_padded_at_the_front_with_its_first_row() -> None:
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    window = pad_window(rows, 5)
    np.testing.assert_array_equal(window, [[0, 1], [0, 1], [0, 1], [2, 3], [4, 5]])
    np.testing.assert_array_equal(pad_window(rows, 2), rows[1:])
    with pytest.raises(ValueError):
        pad_window(rows[:0], 3)


def test_training_windows_end_at_every_row_with_clipped_labels(fleet: Fleet) -> None:
    frame = add_rul(fleet(3, seed=5, life=(60, 80)))
    preprocessing = _fit(frame, window=10)
    windows, rul, failing = preprocessing.training_windows(frame)

    assert windows.shape == (len(frame), 10, len(preprocessing.features))
    assert rul.max() == 50.0 and rul.min() == 0.0
    np.testing.assert_array_equal(failing, (frame["rul"] <= 15).to_numpy())
    normalised = preprocessing.normalise(frame)
    # the first window of a unit is its first row repeated; the 12th ends at row 12
    np.testing.assert_array_equal(windows[0], np.repeat(normalised[:1], 10, axis=0))
    np.testing.assert_array_equal(windows[11], normalised[2:12])


def test_last_windows_are_one_per_unit_even_for_short_units(fleet: Fleet) -> None:
    frame = fleet(3, seed=6)
    preprocessing = _fit(frame, window=30)
    short = frame[frame["cycle"] <= 4]
    windows, units = preprocessing.last_windows(short)
    assert windows.shape == (3, 30, len(preprocessing.features))
    assert list(units) == [1, 2, 3]
    np.testing.assert_array_equal(windows[0, :27], np.repeat(windows[0, 26:27], 27, axis=0))


def test_preprocessing_survives_json(
    tmp_path: Path, fleet: Fleet, six_regimes: tuple[tuple[float, float, float], ...]
) -> None:
    frame = fleet(4, seed=7, regimes=six_regimes)
    preprocessing = _fit(frame)
    preprocessing.save(tmp_path / "p.json")
    again = Preprocessing.load(tmp_path / "p.json")
    assert again == preprocessing
    np.testing.assert_array_equal(again.normalise(frame), preprocessing.normalise(frame))


def test_reference_distributions_describe_every_kept_feature(
    fleet: Fleet, six_regimes: tuple[tuple[float, float, float], ...]
) -> None:
    frame = fleet(4, seed=8, regimes=six_regimes)
    preprocessing = _fit(frame)
    reference = reference_distributions(frame, preprocessing, quantiles=11, sample_size=50)
    assert set(reference["features"]) == set(preprocessing.features)
    feature = reference["features"][preprocessing.features[0]]
    raw = frame[preprocessing.features[0]]
    assert feature["raw"]["quantiles"][0] == raw.min()
    assert feature["raw"]["quantiles"][-1] == raw.max()
    assert len(feature["normalised"]["sample"]) == 50
    assert sum(reference["regime_shares"]) == pytest.approx(1.0)


def test_the_age_feature_is_the_last_input_and_ignores_the_regime(
    fleet: Fleet, six_regimes: tuple[tuple[float, float, float], ...]
) -> None:
    frame = fleet(4, seed=9, regimes=six_regimes)
    preprocessing = Preprocessing.fit(
        frame, window=10, rul_clip=50.0, horizon_cycles=15.0, age_column="cycle"
    )
    assert preprocessing.input_columns == (*preprocessing.features, "cycle")
    normalised = preprocessing.normalise(frame)
    cycles = frame["cycle"].to_numpy(np.float64)
    np.testing.assert_allclose(
        normalised[:, -1], (cycles - cycles.mean()) / cycles.std(), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(normalised[:, :-1], _fit(frame).normalise(frame))
    document = preprocessing.to_dict()
    assert document["format_version"] == 2 and _fit(frame).to_dict()["format_version"] == 1
    assert Preprocessing.from_dict(document) == preprocessing
    with pytest.raises(ValueError, match="format"):
        Preprocessing.from_dict({**document, "format_version": 1})
