"""Evaluation by the C-MAPSS last-cycle protocol, and the PNG report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prognos.registry.training.data import UNIT, load_cmapss, load_truth
from prognos.registry.training.lives import MODE
from prognos.registry.training.metrics import (
    binary_metrics,
    brier_score,
    expected_calibration_error,
    mode_metrics,
    phm08_score,
    reliability_bins,
    rmse,
    roc_auc,
)
from prognos.registry.training.trainer import TrainedModel, predict_last_cycle


def evaluate_predictions(
    predicted_rul: np.ndarray,
    probability: np.ndarray,
    true_rul: np.ndarray,
    *,
    rul_clip: float,
    horizon_cycles: float,
    units: np.ndarray | None = None,
) -> dict[str, Any]:
    """Protocol metrics of last-cycle predictions against the truth.

    RMSE and score compare with the truth clipped at ``rul_clip`` (the standard C-MAPSS
    protocol); the binary view asks "fails within ``horizon_cycles``" of the unclipped
    truth, answered once by the probability head (>= 0.5) and once by the RUL head.
    """
    predicted_rul = np.asarray(predicted_rul, np.float64)
    probability = np.asarray(probability, np.float64)
    true_rul = np.asarray(true_rul, np.float64)
    if not len(predicted_rul) == len(probability) == len(true_rul):
        raise ValueError("predictions and truth must have one value per unit")
    clipped = np.minimum(true_rul, rul_clip)
    failing = true_rul <= horizon_cycles
    table = reliability_bins(probability, failing)
    unit_ids = np.arange(1, len(true_rul) + 1) if units is None else np.asarray(units)
    return {
        "units": len(true_rul),
        "rul_clip": rul_clip,
        "horizon_cycles": horizon_cycles,
        "rmse": rmse(predicted_rul, clipped),
        "phm08_score": phm08_score(predicted_rul, clipped),
        "mean_error": float(np.mean(predicted_rul - clipped)),
        "binary": binary_metrics(probability >= 0.5, failing),
        "binary_from_rul": binary_metrics(predicted_rul <= horizon_cycles, failing),
        "brier": brier_score(probability, failing),
        "expected_calibration_error": expected_calibration_error(table),
        "calibration": table,
        "per_unit": [
            {
                "unit": int(u),
                "true_rul": float(t),
                "true_rul_clipped": float(c),
                "predicted_rul": float(p),
                "failure_probability": float(q),
            }
            for u, t, c, p, q in zip(
                unit_ids, true_rul, clipped, predicted_rul, probability, strict=True
            )
        ],
    }


def evaluate_cmapss(
    model_bundle: TrainedModel | str | Path, test_file: str | Path, truth_file: str | Path
) -> dict[str, Any]:
    """Evaluate a model on any NASA-format test/truth pair by the last-cycle protocol.

    Args:
        model_bundle: A trained model or a directory written by ``TrainedModel.save``.
        test_file: Truncated trajectories (``test_FD00x.txt`` layout).
        truth_file: One true RUL per line, in the test file's unit order.

    Returns:
        The metrics of ``evaluate_predictions`` (RMSE, PHM08 score, binary view,
        calibration, per-unit rows).
    """
    trained = (
        model_bundle if isinstance(model_bundle, TrainedModel) else TrainedModel.load(model_bundle)
    )
    test = load_cmapss(test_file)
    truth = load_truth(truth_file)
    predictions = predict_last_cycle(trained, test)
    if len(predictions) != len(truth):
        raise ValueError(f"{len(predictions)} test units but {len(truth)} truth values")
    return evaluate_predictions(
        predictions["rul"].to_numpy(),
        predictions["failure_probability"].to_numpy(),
        truth,
        rul_clip=trained.preprocessing.rul_clip,
        horizon_cycles=trained.preprocessing.horizon_cycles,
        units=predictions["unit"].to_numpy(),
    )


def evaluate_lives(
    trained: TrainedModel, cut: pd.DataFrame, truth: np.ndarray, failed: np.ndarray
) -> dict[str, Any]:
    """The last-cycle protocol on held-out lives of any asset type (``lives.truncations``).

    RMSE, score and the per-unit rows use the cuts of lives that ended in a failure; the
    binary view and calibration also use the cuts of censored lives whose label is known
    (more than a horizon observed after the cut: the asset did not fail within it).

    Returns:
        The keys of ``evaluate_predictions`` over the failed cuts, with the binary and
        calibration figures over every cut with a known label, and ``censored_cuts``.
    """
    predictions = predict_last_cycle(trained, cut)
    rul = predictions["rul"].to_numpy()
    probability = predictions["failure_probability"].to_numpy()
    units = predictions["unit"].to_numpy()
    clip, horizon = trained.preprocessing.rul_clip, trained.preprocessing.horizon_cycles
    failed = np.asarray(failed, bool)
    if not failed.any():
        raise ValueError("no held-out life ended in a failure: nothing to score RUL against")
    result = evaluate_predictions(
        rul[failed],
        probability[failed],
        truth[failed],
        rul_clip=clip,
        horizon_cycles=horizon,
        units=units[failed],
    )
    known = failed | (truth > horizon)
    failing = failed & (truth <= horizon)
    table = reliability_bins(probability[known], failing[known])
    names = trained.preprocessing.failure_modes
    if names:
        windows, _ = trained.preprocessing.last_windows(cut)
        modes = trained.predict_modes(windows)
        mode_of = cut.groupby(UNIT)[MODE].first().to_numpy()
        actual = np.zeros_like(modes, dtype=bool)
        rows = np.flatnonzero(failing & (mode_of >= 0))
        actual[rows, mode_of[rows]] = True
        result["modes"] = mode_metrics(modes[known], actual[known], names)
    result["auc"] = roc_auc(probability[known], failing[known])
    result.update(
        {
            "units": int(known.sum()),
            "failed_cuts": int(failed.sum()),
            "censored_cuts": int((known & ~failed).sum()),
            "binary": binary_metrics(probability[known] >= 0.5, failing[known]),
            "binary_from_rul": binary_metrics(rul[known] <= horizon, failing[known]),
            "brier": brier_score(probability[known], failing[known]),
            "expected_calibration_error": expected_calibration_error(table),
            "calibration": table,
        }
    )
    return result


def render_report(evaluation: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Draw predicted vs true RUL per unit, the error histogram and the calibration curve.

    Args:
        evaluation: The dict returned by ``evaluate_cmapss`` or ``evaluate_predictions``.
        path: Where to write the PNG.
        title: Shown above the panels, before the headline metrics.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = sorted(evaluation["per_unit"], key=lambda r: (r["true_rul_clipped"], r["predicted_rul"]))
    true = np.array([r["true_rul_clipped"] for r in rows])
    predicted = np.array([r["predicted_rul"] for r in rows])
    errors = predicted - true
    horizon = evaluation["horizon_cycles"]

    figure = plt.figure(figsize=(15, 9), dpi=110, layout="constrained")
    grid = figure.add_gridspec(2, 2, height_ratios=(1.15, 1))
    units_axis = figure.add_subplot(grid[0, :])
    x = np.arange(1, len(rows) + 1)
    units_axis.plot(x, true, color="black", linewidth=2, label="true RUL (clipped)")
    units_axis.scatter(x, predicted, s=18, color="tab:blue", label="predicted RUL", zorder=3)
    units_axis.vlines(x, true, predicted, color="tab:blue", alpha=0.35, linewidth=1)
    units_axis.axhline(
        horizon, color="tab:red", linestyle="--", linewidth=1, label=f"horizon ({horizon:g} cycles)"
    )
    units_axis.set_xlabel("test unit, sorted by true RUL")
    units_axis.set_ylabel("RUL at last observed cycle (cycles)")
    units_axis.set_title("Predicted vs true RUL per unit")
    units_axis.grid(alpha=0.3)
    units_axis.legend(loc="upper left")

    histogram = figure.add_subplot(grid[1, 0])
    limit = max(5.0, float(np.ceil(np.abs(errors).max() / 5.0) * 5.0)) if len(errors) else 5.0
    histogram.hist(
        errors, bins=np.arange(-limit, limit + 5.0, 5.0), color="tab:blue", edgecolor="white"
    )
    histogram.axvline(0, color="black", linewidth=1)
    histogram.set_xlabel("error = predicted - true (cycles); > 0 is late")
    histogram.set_ylabel("units")
    histogram.yaxis.set_major_locator(MaxNLocator(integer=True))
    histogram.set_title(f"Error histogram (mean {errors.mean():+.1f} cycles)")
    histogram.grid(alpha=0.3)

    calibration = figure.add_subplot(grid[1, 1])
    table = evaluation["calibration"]
    calibration.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    if table:
        mean_predicted = [row["mean_predicted"] for row in table]
        observed = [row["observed_rate"] for row in table]
        counts = [row["count"] for row in table]
        calibration.plot(mean_predicted, observed, marker="o", color="tab:orange", label="model")
        for px, py, n in zip(mean_predicted, observed, counts, strict=True):
            calibration.annotate(
                f"n={n:g}",
                (px, py),
                textcoords="offset points",
                xytext=(-6 if px > 0.85 else 6, -14 if py > 0.5 else 8),
                ha="right" if px > 0.85 else "left",
                fontsize=8,
            )
    calibration.set_xlim(-0.02, 1.02)
    calibration.set_ylim(-0.02, 1.02)
    calibration.set_xlabel(f"predicted probability of failure within {horizon:g} cycles")
    calibration.set_ylabel("observed failure rate")
    brier, ece = evaluation["brier"], evaluation["expected_calibration_error"]
    calibration.set_title(f"Calibration (Brier {brier:.3f}, ECE {ece:.3f})")
    calibration.grid(alpha=0.3)
    calibration.legend(loc="upper left")

    binary = evaluation["binary"]
    headline = (
        f"{evaluation['units']} units   RMSE {evaluation['rmse']:.2f}   "
        f"PHM08 score {evaluation['phm08_score']:.1f}   "
        f"fails within {horizon:g}: precision {binary['precision']:.2f}  "
        f"recall {binary['recall']:.2f}  F1 {binary['f1']:.2f}"
    )
    figure.suptitle(f"{title}\n{headline}" if title else headline, fontsize=13)
    out = Path(path)
    figure.savefig(out)
    plt.close(figure)
    return out
