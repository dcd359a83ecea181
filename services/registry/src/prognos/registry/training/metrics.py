"""Protocol metrics: RMSE, the PHM08 score, the binary view and probability calibration."""

from __future__ import annotations

import numpy as np


def rmse(predicted: np.ndarray, true: np.ndarray) -> float:
    """Root mean squared error."""
    d = np.asarray(predicted, np.float64) - np.asarray(true, np.float64)
    return float(np.sqrt(np.mean(d**2)))


def phm08_score(predicted: np.ndarray, true: np.ndarray) -> float:
    """PHM08 challenge score: with d = predicted - true, sum of exp(-d/13) - 1 for d < 0 and
    exp(d/10) - 1 otherwise, so late predictions (d > 0) cost more than early ones."""
    d = np.asarray(predicted, np.float64) - np.asarray(true, np.float64)
    return float(np.sum(np.where(d < 0, np.exp(-d / 13.0) - 1.0, np.exp(d / 10.0) - 1.0)))


def binary_metrics(predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of boolean predictions; 0 where a ratio is undefined."""
    predicted = np.asarray(predicted, bool)
    actual = np.asarray(actual, bool)
    tp = int(np.sum(predicted & actual))
    fp = int(np.sum(predicted & ~actual))
    fn = int(np.sum(~predicted & actual))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "true_positives": float(tp),
        "false_positives": float(fp),
        "false_negatives": float(fn),
        "positives": float(np.sum(actual)),
    }


def brier_score(probability: np.ndarray, actual: np.ndarray) -> float:
    """Mean squared difference between predicted probability and the 0/1 outcome."""
    p = np.asarray(probability, np.float64)
    return float(np.mean((p - np.asarray(actual, np.float64)) ** 2))


def reliability_bins(
    probability: np.ndarray, actual: np.ndarray, bins: int = 10
) -> list[dict[str, float]]:
    """Calibration table over ``bins`` equal-width probability bins (empty bins omitted).

    Each bin gives its bounds, count, mean predicted probability and observed failure rate.
    """
    p = np.asarray(probability, np.float64)
    y = np.asarray(actual, np.float64)
    edges = np.round(np.linspace(0.0, 1.0, bins + 1), 12)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    table = []
    for b in range(bins):
        inside = index == b
        if inside.any():
            table.append(
                {
                    "lower": float(edges[b]),
                    "upper": float(edges[b + 1]),
                    "count": float(inside.sum()),
                    "mean_predicted": float(p[inside].mean()),
                    "observed_rate": float(y[inside].mean()),
                }
            )
    return table


def expected_calibration_error(table: list[dict[str, float]]) -> float:
    """Count-weighted mean gap between predicted and observed rates of a reliability table."""
    total = sum(row["count"] for row in table)
    if total == 0:
        return 0.0
    gaps = sum(row["count"] * abs(row["mean_predicted"] - row["observed_rate"]) for row in table)
    return float(gaps / total)


def roc_auc(scores: np.ndarray, actual: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney U over positives and negatives); NaN when
    either class is absent."""
    from scipy.stats import mannwhitneyu

    scores = np.asarray(scores, np.float64)
    actual = np.asarray(actual, bool)
    positives, negatives = scores[actual], scores[~actual]
    if len(positives) == 0 or len(negatives) == 0:
        return float("nan")
    u = mannwhitneyu(positives, negatives, alternative="two-sided").statistic
    return float(u / (len(positives) * len(negatives)))


def mode_metrics(
    probabilities: np.ndarray, actual: np.ndarray, names: tuple[str, ...]
) -> dict[str, dict[str, float]]:
    """Per failure mode: precision, recall and F1 at 0.5, AUC, and how many positives.

    Args:
        probabilities: ``(n, modes)`` predicted probability of each mode within the horizon.
        actual: ``(n, modes)`` whether each case failed of that mode within the horizon.
        names: The modes, in column order.
    """
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(names):
        figures = binary_metrics(probabilities[:, k] >= 0.5, actual[:, k])
        figures["auc"] = roc_auc(probabilities[:, k], actual[:, k])
        out[name] = figures
    return out
