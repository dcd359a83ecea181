"""Serve-time preprocessing reproduces the registry's training preprocessing from its JSON."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest

from prognos.inference.preprocessing import (
    MissingChannelError,
    PreprocessingFormatError,
    ServingPreprocessing,
    fill_gaps,
)
from prognos.inference.windows import WindowTable
from prognos.registry.training.preprocessing import Preprocessing

WINDOW = 12


@pytest.fixture(scope="module")
def fitted(sim: ModuleType) -> tuple[Preprocessing, ServingPreprocessing]:
    frame = sim.simulate_units(8, seed=4)
    trained = Preprocessing.fit(frame, window=WINDOW, rul_clip=125.0, horizon_cycles=30.0)
    return trained, ServingPreprocessing.from_json(trained.to_dict())


def test_live_windows_match_the_training_windows_of_the_same_rows(
    sim: ModuleType, fitted: tuple[Preprocessing, ServingPreprocessing]
) -> None:
    trained, serving = fitted
    frame = sim.simulate_units(5, seed=9, life=(8, 40))  # some units shorter than a window
    expected, units = trained.last_windows(frame)

    table = WindowTable("turbofan", capacity=WINDOW)
    channels = [sim.COLUMN_TO_CHANNEL[c] for c in (*sim.SETTINGS, *sim.SENSORS)]
    for unit in units:
        rows = frame[frame["unit"] == unit]
        columns = [rows[c].to_numpy() for c in (*sim.SETTINGS, *sim.SENSORS)]
        table.apply(
            f"u{unit}", rows["cycle"].to_numpy(np.int64), channels, np.column_stack(columns)
        )
    raw, _, _ = table.windows([table.slot(f"u{u}") for u in units], WINDOW)
    got = serving.inputs(raw, serving.resolve(table.channels))

    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-4)


def test_training_names_find_the_turbofan_channels_and_an_explicit_mapping_wins(
    fitted: tuple[Preprocessing, ServingPreprocessing],
) -> None:
    _, serving = fitted
    assert serving.channel_for("s7", ["sensor_7", "s7x"]) == "sensor_7"
    assert serving.channel_for("setting_2", ["op_setting_2"]) == "op_setting_2"
    assert serving.channel_for("s7", ["s7", "sensor_7"]) == "s7"
    mapped = ServingPreprocessing.from_json(
        {**_document(fitted[0]), "channels": {"s7": "hpc_outlet_pressure"}}
    )
    assert mapped.channel_for("s7", ["sensor_7", "hpc_outlet_pressure"]) == "hpc_outlet_pressure"


def _document(trained: Preprocessing) -> dict:
    return trained.to_dict()


def test_a_missing_channel_is_named(fitted: tuple[Preprocessing, ServingPreprocessing]) -> None:
    _, serving = fitted
    available = ["op_setting_1", "op_setting_2", "op_setting_3", "sensor_2"]
    with pytest.raises(MissingChannelError) as raised:
        serving.resolve(available)
    assert "s3" in raised.value.names and "s2" not in raised.value.names


def test_gaps_are_filled_from_the_last_reading_and_at_the_start_from_the_first() -> None:
    values = np.array([[[np.nan, 1.0], [2.0, np.nan], [np.nan, np.nan], [4.0, 5.0]]])
    filled = fill_gaps(values)
    assert filled[0, :, 0].tolist() == [2.0, 2.0, 2.0, 4.0]
    assert filled[0, :, 1].tolist() == [1.0, 1.0, 1.0, 5.0]
    assert np.isnan(fill_gaps(np.full((1, 3, 1), np.nan))).all()


def test_an_unknown_format_is_refused(fitted: tuple[Preprocessing, ServingPreprocessing]) -> None:
    document = {**fitted[0].to_dict(), "format_version": 99}
    with pytest.raises(PreprocessingFormatError, match="99"):
        ServingPreprocessing.from_json(document)
    aged = {**fitted[0].to_dict(), "age_column": "cycle", "format_version": 2}
    with pytest.raises(PreprocessingFormatError, match="age"):
        ServingPreprocessing.from_json(aged)
    broken = {k: v for k, v in fitted[0].to_dict().items() if k != "means"}
    with pytest.raises(PreprocessingFormatError, match="means"):
        ServingPreprocessing.from_json(broken)


def _serving(**fields: Any) -> ServingPreprocessing:
    """A serving preprocessing document of format 1 with these fields, read back."""
    return ServingPreprocessing.from_json(
        {"format_version": 1, "rul_clip": 125.0, "horizon_cycles": 30.0, **fields}
    )


def test_each_row_takes_the_nearest_regime_ignoring_missing_settings() -> None:
    serving = _serving(
        window=4,
        setting_columns=["setting_1", "setting_2", "setting_3"],
        setting_decimals=[0, 2, 0],
        regime_centroids=[[0.0, 0.0, 100.0], [20.0, 0.7, 100.0], [42.0, 0.84, 60.0]],
        features=["s2"],
        means=[[1.0], [2.0], [3.0]],
        stds=[[1.0], [1.0], [1.0]],
    )
    rng = np.random.default_rng(5)
    settings = serving.regime_centroids[rng.integers(0, 3, (6, 40))] + rng.normal(
        0, [3.0, 0.03, 5.0], (6, 40, 3)
    )
    settings[0, :5, 1] = np.nan  # a missing setting does not count
    settings[1, 0, :] = np.nan  # nothing to go by: the first regime

    steps = serving.setting_steps
    gaps = (settings[..., None, :] - serving.regime_centroids) / steps
    expected = np.argmin(np.nansum(gaps * gaps, axis=-1), axis=-1)

    assert serving.regimes(settings).tolist() == expected.tolist()
    assert serving.regimes(settings)[1, 0] == 0
    complete = np.nan_to_num(settings, nan=0.0)
    gaps = (complete[..., None, :] - serving.regime_centroids) / steps
    assert serving.regimes(complete).tolist() == np.argmin((gaps * gaps).sum(-1), -1).tolist()
    assert len(set(serving.regimes(complete).ravel().tolist())) == 3


def test_a_feature_with_no_spread_at_its_mean_reads_as_the_mean_not_as_missing() -> None:
    serving = _serving(
        window=3,
        setting_columns=["setting_1"],
        setting_decimals=[0],
        regime_centroids=[[0.0]],
        features=["s2", "s3"],
        means=[[5.0, 1.0]],
        stds=[[0.0, 2.0]],  # s2 never varied in training: no scale for it
    )
    channels = ("setting_1", "s2", "s3")
    raw = np.asarray([[[0.0, 5.0, 1.0], [0.0, 5.0, 3.0], [0.0, 5.0, 5.0]]], np.float32)

    inputs = serving.inputs(raw, serving.resolve(channels))

    assert not np.isnan(inputs).any()
    assert inputs[0, :, 0].tolist() == [0.0, 0.0, 0.0]  # at the mean: the regime's mean
    assert inputs[0, :, 1].tolist() == [0.0, 1.0, 2.0]
