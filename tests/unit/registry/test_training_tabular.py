"""Gradient-boosted trees compiled into a serving model, and the family chosen by grouped CV."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import keras
import lightgbm
import numpy as np
import pandas as pd
import pytest

from prognos.registry.training import tabular
from prognos.registry.training.data import CYCLE, RUL, UNIT
from prognos.registry.training.lives import FAILED
from prognos.registry.training.selection import (
    SelectionError,
    cross_validate,
    fold_of_units,
    headline,
)
from prognos.registry.training.trainer import TrainConfig, train

WINDOW = 12


def _windows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Windows whose failure depends on the last row of channel 0 and the trend of channel 1."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, WINDOW, 4)).astype(np.float32)
    x[:, :, 1] += np.linspace(-1, 1, WINDOW, dtype=np.float32) * rng.normal(size=(n, 1))
    failing = ((x[:, -1, 0] > 0.8) | (x[:, -1, 1] - x[:, 0, 1] > 2.0)).astype(np.float32)
    rul = np.clip(40 + 15 * x[:, -1, 2], 0, 60).astype(np.float32)
    modes = np.stack([failing * (x[:, -1, 3] > 0), failing * (x[:, -1, 3] <= 0)], 1)
    return x, rul, failing, modes.astype(np.float32)


def test_the_compiled_trees_give_lightgbms_own_scores() -> None:
    x, _, failing, _ = _windows(1500, seed=1)
    features = tabular.window_features(WINDOW, x)
    booster = lightgbm.train(
        {"objective": "binary", "num_leaves": 15, "max_depth": 5, "verbosity": -1, "seed": 0},
        lightgbm.Dataset(features, label=failing),
        num_boost_round=60,
    )
    trees = tabular.trees_of(booster.dump_model())
    layer = tabular.TreeEnsemble(*trees.feature.shape, trees.depth, link="sigmoid")
    layer.set_trees(trees)

    ours = np.asarray(layer(features)).reshape(-1)

    assert trees.depth <= 5 and trees.feature.shape[0] == 60
    np.testing.assert_allclose(ours, booster.predict(features), atol=1e-5)


def test_window_summaries_are_last_mean_spread_trend_low_and_high_with_gaps_as_zero() -> None:
    window = np.array([[[1.0], [np.nan], [3.0], [4.0]]], np.float32)

    summary = tabular.window_features(4, window)[0]

    filled = np.array([1.0, 0.0, 3.0, 4.0])
    slope = np.polyfit(np.arange(4), filled, 1)[0]
    expected = [4.0, filled.mean(), filled.std(), slope, 0.0, 4.0]
    np.testing.assert_allclose(summary, expected, atol=0.5 / tabular.FEATURE_GRID)
    np.testing.assert_array_equal(summary * tabular.FEATURE_GRID, np.round(summary * 1024))


def test_the_tree_model_learns_serves_in_litert_and_survives_a_save(tmp_path: Path) -> None:
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    x, rul, failing, modes = _windows(3000, seed=2)
    model = tabular.fit_serving_model(
        x, rul, failing, modes, rul_clip=60.0, options=tabular.TreeOptions(trees=80)
    )
    test_x, test_rul, test_failing, test_modes = _windows(500, seed=3)
    # Slow columns far from their mean, as a machine's temperature and tool wear are: their
    # spread is a small difference of large numbers, which runtimes round differently.
    slow = np.random.default_rng(4).normal(size=(200, 1, 4)).astype(np.float32) * 3
    slow = slow + np.arange(WINDOW, dtype=np.float32)[None, :, None] * np.float32(1e-3)
    slow[:, :, 1] = slow[:, :1, 1]

    out = model.predict(test_x, verbose=0)

    assert set(out) == {"rul", "failure_probability", "mode_probability"}
    assert out["mode_probability"].shape == (500, 2)
    assert np.mean((out["failure_probability"][:, 0] >= 0.5) == test_failing) > 0.9
    assert np.mean(np.abs(out["rul"][:, 0] - test_rul)) < 5.0
    assert np.all((out["rul"] >= 0) & (out["rul"] <= 60))
    chosen = out["mode_probability"].argmax(1)[test_failing > 0]
    assert np.mean(chosen == test_modes[test_failing > 0].argmax(1)) > 0.8

    model.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    flat = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved")).convert()
    (tmp_path / "model.tflite").write_bytes(flat)
    runner = Interpreter(str(tmp_path / "model.tflite")).get_signature_runner()
    both = np.concatenate([test_x, slow])
    expected = model.predict(both, verbose=0)
    for i in range(len(both)):
        got = runner(window=both[i : i + 1])
        for name in out:
            np.testing.assert_allclose(got[name][0], expected[name][i], atol=1e-5, err_msg=name)

    model.save(tmp_path / "model.keras")
    again = keras.models.load_model(tmp_path / "model.keras", compile=False)
    reloaded = again.predict(test_x, verbose=0)
    for name in out:
        np.testing.assert_array_equal(reloaded[name], out[name])


def _lives(count: int, seed: int) -> pd.DataFrame:
    """Short lives of one channel that climbs before a failure; every third is censored."""
    rng = np.random.default_rng(seed)
    frames = []
    for unit in range(1, count + 1):
        steps = int(rng.integers(30, 50))
        rul = np.arange(steps - 1, -1, -1, dtype=np.float64)
        failed = unit % 3 != 0
        level = np.where(failed & (rul < 10), 3.0 - 0.2 * rul, 0.0)
        frames.append(
            pd.DataFrame(
                {
                    UNIT: unit,
                    CYCLE: np.arange(1, steps + 1),
                    "heat": level + rng.normal(0, 0.3, steps),
                    "noise": rng.normal(0, 1, steps),
                    RUL: rul,
                    FAILED: int(failed),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


CONFIG = TrainConfig(
    window=8,
    epochs=1,
    members=1,
    architecture="gbt",
    horizon_cycles=5.0,
    rul_clip=20.0,
    trees=40,
    verification_samples=8,
)
COLUMNS: dict[str, Any] = {"sensors": ("heat", "noise"), "settings": ()}


def test_every_life_lands_in_one_fold_and_folds_differ_by_at_most_one() -> None:
    units = list(range(1, 24))

    folds = fold_of_units(units, 5, seed=3)

    assert set(folds) == set(units)
    sizes = np.bincount(list(folds.values()))
    assert len(sizes) == 5 and sizes.max() - sizes.min() <= 1
    assert folds == fold_of_units(units, 5, seed=3)
    assert folds != fold_of_units(units, 5, seed=4)


def test_no_life_is_both_trained_on_and_validated_and_every_life_is_validated_once() -> None:
    frame = _lives(15, seed=5)
    trained_on: list[set[int]] = []

    def recording(part: pd.DataFrame, config: TrainConfig, **kwargs: Any) -> Any:
        trained_on.append(set(part[UNIT].unique()))
        return train(part, config, **kwargs)

    selection = cross_validate(
        frame, CONFIG, ("gbt",), folds=3, seed=1, train=recording, columns=COLUMNS
    )

    everyone = set(frame[UNIT].unique())
    validated = [everyone - units for units in trained_on]
    assert len(validated) == 3 and all(validated)
    assert set().union(*validated) == everyone
    assert sum(len(v) for v in validated) == len(everyone)
    figures = selection["families"]["gbt"]["figures"]
    # The failing steps climb out of the noise: the trees find them on lives they never saw.
    assert figures["auc"] > 0.9 and figures["f1"] > 0.6
    low, high = selection["families"]["gbt"]["intervals"]["brier"]
    assert low <= figures["brier"] <= high
    # Only steps whose label is known count: the censored lives' last horizon is not.
    censored_unknown = frame[(frame[FAILED] == 0) & (frame[RUL] <= CONFIG.horizon_cycles)]
    assert figures["steps"] == len(frame) - len(censored_unknown)


def test_the_family_with_the_lower_brier_score_is_chosen_and_reported() -> None:
    frame = _lives(12, seed=6)
    # A stump that can barely split against trees that can: the second must win.
    weak = replace(CONFIG, trees=1, leaves=2, depth=1, min_leaf=1000)

    def by_family(part: pd.DataFrame, config: TrainConfig, **kwargs: Any) -> Any:
        settings = weak if config.architecture == "stump" else CONFIG
        return train(part, replace(settings, architecture="gbt"), **kwargs)

    selection = cross_validate(
        frame, CONFIG, ("stump", "gbt"), folds=3, seed=2, train=by_family, columns=COLUMNS
    )

    briers = {f: r["figures"]["brier"] for f, r in selection["families"].items()}
    assert selection["chosen"] == "gbt" and briers["gbt"] < briers["stump"]
    flat = headline(selection)
    assert flat["cv.brier"] == briers["gbt"] and flat["cv.stump.brier"] == briers["stump"]


def test_lives_without_a_failure_cannot_be_cross_validated() -> None:
    frame = _lives(6, seed=7).assign(**{FAILED: 0})

    with pytest.raises(SelectionError, match="no life ended in a failure"):
        cross_validate(frame, CONFIG, ("gbt",), folds=3, seed=1, train=train, columns=COLUMNS)
