"""Health model of an asset type that has not failed often enough to learn failures from.

Fitted on windows of normal operation only, it says how unusual a window is. A window,
normalised per operating regime as for the supervised model, is summarised by two vectors
of its features: their mean over the whole window and their mean over its newest
``recent_rows`` rows, so that both a level shift and its onset show. The *anomaly distance*
is the Mahalanobis distance of that summary from the normal windows of the training lives,
as the mean squared whitened deviation (about 1 for a typical normal window); the covariance
is shrunk toward its mean variance, so that a few lives do not give it zero variances.

The *anomaly score* calibrates the distance on lives held out of the fit: it is the share of
those lives' normal windows that lie closer, interpolated between quantiles. So 0.99 means
"rarer than 99 in 100 normal windows of assets the model has not seen", for every asset type
alike, and one policy threshold means the same everywhere.

The serving network is a Keras model of built-in layers with the supervised model's input
and the outputs inference reads from every model: ``rul`` (the clip, constant: a health
model does not estimate it) and ``failure_probability`` (0, constant: nor this), plus
``anomaly_score`` and ``anomaly_distance``. It goes through the same export as the
supervised model (SavedModel, LiteRT, the check that they agree), and
``verify_health_export`` checks the two anomaly outputs too.

Normal operation is every row except those of a life that ended in a failure, from a
horizon before that failure on: they may already degrade. Those windows, where there are
any, measure how well the score tells a failing asset from a normal one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import keras
import numpy as np
import pandas as pd
from keras import layers

from prognos.registry.training.data import CYCLE, RUL, UNIT, split_units
from prognos.registry.training.lives import FAILED
from prognos.registry.training.metrics import roc_auc
from prognos.registry.training.models import INPUT_NAME, PROBABILITY_OUTPUT, RUL_OUTPUT
from prognos.registry.training.preprocessing import Preprocessing, reference_distributions
from prognos.registry.training.trainer import TrainConfig, TrainedModel, TrainingCancelledError

HEALTH_KIND = "health"
SUPERVISED_KIND = "supervised"
ANOMALY_OUTPUT = "anomaly_score"
DISTANCE_OUTPUT = "anomaly_distance"
HEALTH_FILE = "health.json"
#: Weight of the mean variance in the shrunk covariance.
SHRINKAGE = 0.05
#: Calibration levels: every percent, and every permille above 99 %.
LEVELS = np.unique(np.r_[np.linspace(0.0, 1.0, 101), np.linspace(0.99, 1.0, 11)])
#: The score at which false alarms and recall are reported.
ALARM_LEVEL = 0.99
#: Knots closer than this share of the distance range are merged (keeps slopes in float32).
MIN_KNOT_GAP = 1e-3
DEFAULT_SCORE_TOLERANCE = 1e-4
DEFAULT_DISTANCE_TOLERANCE = 1e-4  # relative, above a distance of 1

ProgressCallback = Callable[[float, dict[str, Any]], None]
CancelledCheck = Callable[[], bool]


class HealthExportMismatchError(RuntimeError):
    """LiteRT's anomaly outputs differ from the SavedModel's beyond the tolerance."""


@dataclass(frozen=True)
class HealthFit:
    """The numbers of a health model: summary, whitening and calibration."""

    recent_rows: int
    center: np.ndarray
    whitening: np.ndarray
    knots: np.ndarray
    levels: np.ndarray

    def distance(self, windows: np.ndarray) -> np.ndarray:
        """Anomaly distance of ``(n, window, features)`` model inputs."""
        whitened = (summaries(windows, self.recent_rows) - self.center) @ self.whitening
        return np.mean(whitened**2, axis=1)

    def score(self, distance: np.ndarray) -> np.ndarray:
        """Anomaly score of distances: the calibrated share of normal windows lying closer."""
        return calibrated(distance, self.knots, self.levels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "kind": HEALTH_KIND,
            "recent_rows": self.recent_rows,
            "center": self.center.tolist(),
            "whitening": self.whitening.tolist(),
            "knots": self.knots.tolist(),
            "levels": self.levels.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Inverse of ``to_dict``."""
        return cls(
            recent_rows=int(data["recent_rows"]),
            center=np.asarray(data["center"], np.float64),
            whitening=np.asarray(data["whitening"], np.float64),
            knots=np.asarray(data["knots"], np.float64),
            levels=np.asarray(data["levels"], np.float64),
        )


@dataclass
class HealthModel:
    """A trained health model: the serving model and its fit, with the held-out figures."""

    trained: TrainedModel
    fit: HealthFit
    evaluation: dict[str, Any]

    def save(self, directory: str | Path) -> Path:
        """Write the bundle files of ``TrainedModel.save`` and ``health.json``."""
        path = self.trained.save(directory)
        document = {**self.fit.to_dict(), "evaluation": self.evaluation}
        (path / HEALTH_FILE).write_text(json.dumps(document, indent=2) + "\n")
        return path


def summaries(windows: np.ndarray, recent_rows: int) -> np.ndarray:
    """``(n, 2 * features)``: each window's feature means, over all rows and the newest."""
    windows = np.asarray(windows, np.float64)
    return np.concatenate([windows.mean(axis=1), windows[:, -recent_rows:].mean(axis=1)], axis=1)


def whiten(summary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Center and whitening matrix of summaries: ``(x - center) @ W`` has unit covariance.

    The covariance is shrunk toward its mean variance (``SHRINKAGE``) and its eigenvalues
    floored, so the matrix exists for any data, a constant summary included.
    """
    center = summary.mean(axis=0)
    covariance = np.atleast_2d(np.cov(summary, rowvar=False, bias=True))
    scale = float(np.mean(np.diag(covariance))) or 1.0
    shrunk = (1.0 - SHRINKAGE) * covariance + SHRINKAGE * scale * np.eye(len(covariance))
    values, vectors = np.linalg.eigh(shrunk)
    values = np.maximum(values, 1e-6 * scale)
    return center, vectors / np.sqrt(values)


def calibration(distance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots (distances) and levels of the calibration on normal distances.

    The knots are the distances' quantiles at ``LEVELS``; knots closer than
    ``MIN_KNOT_GAP`` of the range to the one before are dropped, so the curve stays
    increasing and its slopes representable in float32.
    """
    knots = np.quantile(np.asarray(distance, np.float64), LEVELS)
    gap = MIN_KNOT_GAP * max(float(knots[-1] - knots[0]), 1e-9)
    keep = [0]
    for i in range(1, len(knots)):
        if knots[i] - knots[keep[-1]] >= gap:
            keep.append(i)
    if len(keep) == 1:  # every normal window at one distance
        return np.array([knots[0], knots[0] + 1e-6]), np.array([0.0, 1.0])
    keep[-1] = len(knots) - 1  # the top knot is the largest normal distance, level 1
    return knots[keep], LEVELS[keep]


def calibrated(distance: np.ndarray, knots: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Piecewise-linear calibration: ``levels[0]`` below the first knot, 1 above the last."""
    return np.interp(np.asarray(distance, np.float64), knots, levels, left=levels[0], right=1.0)


def serving_network(fit: HealthFit, window: int, features: int, rul_clip: float) -> keras.Model:
    """The health model as a Keras model of built-in layers (fixed weights, nothing trained).

    The calibration is a sum of clipped ramps, one per knot interval, which equals
    ``calibrated`` exactly: ``levels[0] + sum_k (levels[k+1] - levels[k]) *
    clip((d - knots[k]) / (knots[k+1] - knots[k]), 0, 1)``.
    """
    width = len(fit.center)
    fixed = keras.initializers.Constant
    inputs = keras.Input(shape=(window, features), name=INPUT_NAME)
    whole = layers.GlobalAveragePooling1D(name="window_mean")(inputs)
    newest = layers.Cropping1D((window - fit.recent_rows, 0), name="newest_rows")(inputs)
    newest = layers.GlobalAveragePooling1D(name="newest_mean")(newest)
    summary = layers.Concatenate(name="summary")([whole, newest])
    whitened = layers.Dense(
        width,
        kernel_initializer=fixed(fit.whitening.astype(np.float32)),
        bias_initializer=fixed((-fit.center @ fit.whitening).astype(np.float32)),
        trainable=False,
        name="whitened",
    )(summary)
    squares = layers.Multiply(name="squares")([whitened, whitened])
    distance = layers.Dense(
        1,
        use_bias=False,
        kernel_initializer=fixed(np.full((width, 1), 1.0 / width, np.float32)),
        trainable=False,
        name=DISTANCE_OUTPUT,
    )(squares)
    slopes = 1.0 / np.diff(fit.knots)
    ramps = layers.Dense(
        len(slopes),
        kernel_initializer=fixed(slopes[None, :].astype(np.float32)),
        bias_initializer=fixed((-fit.knots[:-1] * slopes).astype(np.float32)),
        trainable=False,
        name="calibration_ramps",
    )(distance)
    ramps = layers.ReLU(max_value=1.0, name="calibration_clip")(ramps)
    score = layers.Dense(
        1,
        kernel_initializer=fixed(np.diff(fit.levels)[:, None].astype(np.float32)),
        bias_initializer=fixed(np.array([fit.levels[0]], np.float32)),
        trainable=False,
        name=ANOMALY_OUTPUT,
    )(ramps)
    rul = layers.Dense(
        1,
        kernel_initializer="zeros",
        bias_initializer=fixed(np.array([rul_clip], np.float32)),
        trainable=False,
        name=RUL_OUTPUT,
    )(distance)
    probability = layers.Dense(
        1,
        kernel_initializer="zeros",
        bias_initializer="zeros",
        trainable=False,
        name=PROBABILITY_OUTPUT,
    )(distance)
    outputs = {
        RUL_OUTPUT: rul,
        PROBABILITY_OUTPUT: probability,
        ANOMALY_OUTPUT: score,
        DISTANCE_OUTPUT: distance,
    }
    return keras.Model(inputs, outputs, name=HEALTH_KIND)


def is_health_model(model: keras.Model) -> bool:
    """Whether a serving model is a health model (it has the anomaly output)."""
    return isinstance(model.output, dict) and ANOMALY_OUTPUT in model.output


def normal_rows(frame: pd.DataFrame, horizon: float) -> np.ndarray:
    """Rows of normal operation: all but those within a horizon of a failure."""
    if FAILED not in frame.columns:
        return np.ones(len(frame), bool)
    failing = frame[FAILED].to_numpy(bool) & (frame[RUL].to_numpy(np.float64) <= horizon)
    return ~failing


def train_health(
    frame: pd.DataFrame,
    config: TrainConfig,
    *,
    sensors: tuple[str, ...],
    settings: tuple[str, ...],
    holdout_units: int,
    split_seed: int,
    progress: ProgressCallback | None = None,
    cancelled: CancelledCheck | None = None,
) -> HealthModel:
    """Fit the health model of one asset type on the lives of ``lives.assemble``.

    Args:
        frame: Training rows with ``rul`` and ``failed``.
        config: ``window``, ``rul_clip``, ``horizon_cycles``, ``setting_decimals``,
            ``seed`` and ``verification_samples`` apply; the rest is the supervised model's.
        sensors: The condition channels.
        settings: The operating-setting channels.
        holdout_units: Units held out of the fit to calibrate the score on (at most a third
            of them, at least one).
        split_seed: Seed of the choice of held-out units.
        progress: Called with the fraction done and figures after each step.
        cancelled: Polled between steps.

    Raises:
        TrainingCancelledError: When ``cancelled`` returned true.
        ValueError: Too few units, or no normal operation to learn from.
    """
    from prognos.registry.training.lives import setting_decimals

    started = time.perf_counter()

    def step(fraction: float, figures: dict[str, Any]) -> None:
        if cancelled is not None and cancelled():
            raise TrainingCancelledError("cancelled while fitting the health model")
        if progress is not None:
            progress(fraction, figures)

    frame = frame.sort_values([UNIT, CYCLE], kind="stable").reset_index(drop=True)
    units = int(frame[UNIT].nunique())
    if units < 2:
        raise ValueError(f"{units} unit(s): a health model needs two, one to calibrate on")
    held = max(1, min(holdout_units, units // 3))
    normal = normal_rows(frame, config.horizon_cycles)
    fitting, calibrating = split_units(frame[normal], held, seed=split_seed)
    if fitting.empty or calibrating.empty:
        raise ValueError("no normal operation left on one side of the held-out split")
    decimals = config.setting_decimals
    if len(decimals) != len(settings):
        decimals = setting_decimals(fitting, settings)
    preprocessing = Preprocessing.fit(
        fitting,
        window=config.window,
        rul_clip=config.rul_clip,
        horizon_cycles=config.horizon_cycles,
        setting_decimals=decimals,
        sensors=sensors,
        settings=settings,
    )
    recent = max(1, config.window // 5)
    fit_windows, _, _ = preprocessing.training_windows(fitting)
    step(0.3, {"windows": float(len(fit_windows)), "units": float(units - held)})
    center, whitening = whiten(summaries(fit_windows, recent))
    partial = HealthFit(recent, center, whitening, np.zeros(2), np.zeros(2))
    calibration_windows, _, _ = preprocessing.training_windows(calibrating)
    calibration_distance = partial.distance(calibration_windows)
    knots, levels = calibration(calibration_distance)
    fit = HealthFit(recent, center, whitening, knots, levels)
    step(0.6, {"calibration_windows": float(len(calibration_windows))})

    evaluation = _evaluate(fit, preprocessing, frame, normal, calibrating, calibration_distance)
    evaluation.update(
        {
            "fit_windows": len(fit_windows),
            "fit_units": units - held,
            "units": held,
            "fit_distance_median": float(np.median(partial.distance(fit_windows))),
        }
    )
    network = serving_network(fit, config.window, len(preprocessing.features), config.rul_clip)
    rng = np.random.default_rng(config.seed)
    pool = np.concatenate([fit_windows, calibration_windows, evaluation.pop("_failing_windows")])
    pick = rng.choice(len(pool), size=min(config.verification_samples, len(pool)), replace=False)
    trained = TrainedModel(
        model=network,
        preprocessing=preprocessing,
        config=config,
        history=[],
        train_seconds=time.perf_counter() - started,
        reference=reference_distributions(fitting, preprocessing, seed=config.seed),
        verification_windows=pool[np.sort(pick)],
    )
    step(1.0, {})
    return HealthModel(trained, fit, evaluation)


def _evaluate(
    fit: HealthFit,
    preprocessing: Preprocessing,
    frame: pd.DataFrame,
    normal: np.ndarray,
    calibrating: pd.DataFrame,
    calibration_distance: np.ndarray,
) -> dict[str, Any]:
    """Held-out figures: false alarms under cross-calibration, and failures told apart.

    False alarms: the held-out units are split in two; each half's normal windows are scored
    with the calibration of the other half, and the share at or above ``ALARM_LEVEL`` is
    counted, which is what the calibration promises (1 - ``ALARM_LEVEL``) on units it has not
    seen. Failures: windows that end within a horizon of a failure against the held-out
    normal windows (AUC of the score, and the share of them at or above ``ALARM_LEVEL``).
    """
    out: dict[str, Any] = {"normal_windows": len(calibration_distance), "alarm_level": ALARM_LEVEL}
    ordered = calibrating.sort_values([UNIT, CYCLE], kind="stable")
    unit_of_window = ordered[UNIT].to_numpy()
    held = np.unique(unit_of_window)
    if len(held) >= 2:
        half = np.isin(unit_of_window, held[::2])
        alarms = 0
        for side in (half, ~half):
            knots, levels = calibration(calibration_distance[~side])
            alarms += int(
                np.sum(calibrated(calibration_distance[side], knots, levels) >= ALARM_LEVEL)
            )
        out["false_alarm_rate"] = alarms / len(calibration_distance)
    else:
        out["false_alarm_rate"] = float("nan")
    failing_rows = ~normal
    failing_windows = np.zeros((0, preprocessing.window, len(preprocessing.features)), np.float32)
    if failing_rows.any():
        failed_units = frame.loc[failing_rows, UNIT].unique()
        lives = frame[frame[UNIT].isin(failed_units)]
        windows, _, _ = preprocessing.training_windows(lives)
        failing_windows = windows[failing_rows[frame[UNIT].isin(failed_units).to_numpy()]]
    out["failing_windows"] = len(failing_windows)
    if len(failing_windows):
        # AUC on the distance: the score ranks alike but ties everything beyond the
        # calibration's top.
        failing_distance = fit.distance(failing_windows)
        actual = np.r_[
            np.ones(len(failing_distance), bool), np.zeros(len(calibration_distance), bool)
        ]
        out["auc"] = roc_auc(np.r_[failing_distance, calibration_distance], actual)
        out["alarm_recall"] = float(np.mean(fit.score(failing_distance) >= ALARM_LEVEL))
    out["_failing_windows"] = failing_windows
    return out


def headline(evaluation: dict[str, Any]) -> dict[str, float]:
    """The numbers of a health model's evaluation that its model version records."""
    names = (
        "units",
        "normal_windows",
        "alarm_level",
        "false_alarm_rate",
        "failing_windows",
        "auc",
        "alarm_recall",
    )
    values = {name: float(evaluation[name]) for name in names if name in evaluation}
    return {k: v for k, v in values.items() if np.isfinite(v)}


@dataclass(frozen=True)
class HealthExportCheck:
    """Largest differences of the anomaly outputs between LiteRT and the SavedModel."""

    windows: int
    max_score_diff: float
    max_distance_diff: float


def verify_health_export(
    saved_model: str | Path,
    tflite: str | Path,
    windows: np.ndarray,
    *,
    score_tolerance: float = DEFAULT_SCORE_TOLERANCE,
    distance_tolerance: float = DEFAULT_DISTANCE_TOLERANCE,
) -> HealthExportCheck:
    """Compare the anomaly outputs of the two runtimes, window by window as served.

    Raises:
        HealthExportMismatchError: When a difference exceeds its tolerance (the distance's
            relative to the distance, above 1).
    """
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    windows = np.asarray(windows, np.float32)
    signature = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    _, kwargs = signature.structured_input_signature
    (name,) = kwargs
    expected = signature(**{name: tf.constant(windows)})
    want_score = expected[ANOMALY_OUTPUT].numpy().reshape(-1).astype(np.float64)
    want_distance = expected[DISTANCE_OUTPUT].numpy().reshape(-1).astype(np.float64)
    runner = Interpreter(model_path=str(tflite), num_threads=1).get_signature_runner()
    got_score = np.empty(len(windows))
    got_distance = np.empty(len(windows))
    for i, window in enumerate(windows):
        outputs = runner(**{next(iter(runner.get_input_details())): window[None]})
        got_score[i] = float(outputs[ANOMALY_OUTPUT].reshape(-1)[0])
        got_distance[i] = float(outputs[DISTANCE_OUTPUT].reshape(-1)[0])
    relative = np.abs(got_distance - want_distance) / np.maximum(1.0, np.abs(want_distance))
    check = HealthExportCheck(
        windows=len(windows),
        max_score_diff=float(np.max(np.abs(got_score - want_score))),
        max_distance_diff=float(np.max(relative)),
    )
    if check.max_score_diff > score_tolerance or check.max_distance_diff > distance_tolerance:
        raise HealthExportMismatchError(
            f"LiteRT differs from the SavedModel: anomaly score by {check.max_score_diff:.3g} "
            f"(tolerance {score_tolerance:g}), distance by {check.max_distance_diff:.3g} "
            f"relative (tolerance {distance_tolerance:g})"
        )
    return check
