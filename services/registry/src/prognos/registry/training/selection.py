"""Which model family fits an asset type: grouped cross-validation over its lives.

Every life (a unit) lands in exactly one of ``folds`` folds; each candidate family is
trained on the other folds and scored on every step of the lives of the fold it did not
see, so no life is ever both trained and validated on. The out-of-fold predictions of all
folds are pooled and scored as the fleet would see them live (every step, not a few cuts),
with 95% intervals from resampling whole lives. The family with the lowest Brier score of
the failure probability within the horizon (the figure that opens work orders) is chosen.

A censored life only says it lasted at least so long: its last ``horizon`` steps have no
known "fails within the horizon" label, and its RUL is known only where at least
``rul_clip`` steps followed, as in training (``lives.censoring_weights``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from prognos.registry.training.data import CYCLE, UNIT
from prognos.registry.training.lives import FAILED, censoring_weights, mode_targets
from prognos.registry.training.metrics import binary_metrics, brier_score, rmse, roc_auc

CRITERION = "brier"
#: Resamples of whole lives behind each interval.
BOOTSTRAP = 200
_SCALARS = ("brier", "auc", "precision", "recall", "f1", "rmse")


class SelectionError(ValueError):
    """The lives cannot be cross-validated (too few, or no failure within the horizon)."""


def fold_of_units(units: Sequence[Any], folds: int, seed: int) -> dict[Any, int]:
    """Assign each unit to one of ``folds`` folds, shuffled by ``seed``, sizes within one."""
    order = np.random.default_rng(seed).permutation(len(units))
    return {units[i]: k for k, part in enumerate(np.array_split(order, folds)) for i in part}


def _scored(trained: Any, lives: pd.DataFrame, modes: int) -> pd.DataFrame:
    """Every step of ``lives`` with the model's predictions and what is known of the truth."""
    ordered = lives.sort_values([UNIT, CYCLE], kind="stable")
    windows, rul, _ = trained.preprocessing.training_windows(ordered)
    config = trained.config
    rul_weight, probability_weight, failing = censoring_weights(
        ordered, config.rul_clip, config.horizon_cycles
    )
    predicted_rul, probability = trained.predict_windows(windows)
    out = pd.DataFrame(
        {
            UNIT: ordered[UNIT].to_numpy(),
            "known": probability_weight > 0,
            "failing": failing > 0,
            "probability": probability,
            "rul_known": rul_weight > 0,
            "rul": rul,
            "predicted_rul": predicted_rul,
        }
    )
    if modes:
        truth = mode_targets(ordered, modes, config.horizon_cycles)
        predicted = trained.predict_modes(windows)
        for m in range(modes):
            out[f"mode_{m}"] = truth[:, m] > 0
            out[f"mode_{m}_probability"] = predicted[:, m]
    return out


def _figures(rows: pd.DataFrame, names: Sequence[str]) -> dict[str, Any]:
    known = rows[rows["known"]]
    failing = known["failing"].to_numpy()
    probability = known["probability"].to_numpy()
    binary = binary_metrics(probability >= 0.5, failing)
    with_rul = rows[rows["rul_known"]]
    figures: dict[str, Any] = {
        "brier": brier_score(probability, failing),
        "auc": roc_auc(probability, failing),
        "precision": binary["precision"],
        "recall": binary["recall"],
        "f1": binary["f1"],
        "rmse": rmse(with_rul["predicted_rul"], with_rul["rul"]) if len(with_rul) else np.nan,
        "steps": float(len(known)),
        "positives": float(failing.sum()),
    }
    modes = {}
    for m, name in enumerate(names):
        actual = known[f"mode_{m}"].to_numpy()
        scores = known[f"mode_{m}_probability"].to_numpy()
        mode = binary_metrics(scores >= 0.5, actual)
        modes[name] = {
            "precision": mode["precision"],
            "recall": mode["recall"],
            "f1": mode["f1"],
            "auc": roc_auc(scores, actual),
            "positives": mode["positives"],
        }
    if modes:
        figures["modes"] = modes
    return figures


def _intervals(rows: pd.DataFrame, names: Sequence[str], seed: int) -> dict[str, Any]:
    """95% percentile intervals of the figures over lives resampled with replacement."""
    rng = np.random.default_rng(seed)
    groups = [g for _, g in rows.groupby(UNIT, sort=True)]
    samples: dict[str, list[float]] = {}
    for _ in range(BOOTSTRAP):
        pick = rng.integers(0, len(groups), len(groups))
        figures = _figures(pd.concat([groups[i] for i in pick], ignore_index=True), names)
        for key in _SCALARS:
            samples.setdefault(key, []).append(float(figures[key]))
        for name, mode in figures.get("modes", {}).items():
            for key in ("precision", "recall", "f1", "auc"):
                samples.setdefault(f"mode.{name}.{key}", []).append(float(mode[key]))
    out = {}
    for key, values in samples.items():
        finite = np.asarray([v for v in values if np.isfinite(v)])
        if len(finite):
            out[key] = [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))]
    return out


def cross_validate(
    frame: pd.DataFrame,
    config: Any,
    families: Sequence[str],
    *,
    folds: int,
    seed: int,
    train: Callable[..., Any],
    columns: dict[str, Any],
    progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Cross-validate each family over the lives of ``frame`` and choose one.

    Args:
        frame: Lives in the training layout (``lives.assemble``).
        config: The run's ``TrainConfig``; each family is trained with it, its
            ``architecture`` replaced.
        families: Candidate architectures (e.g. ``cnn``, ``gbt``).
        folds: Number of folds (at most the number of lives).
        seed: Fold assignment and resampling seed.
        train: ``trainer.train``.
        columns: ``sensors``, ``settings`` and ``failure_modes`` passed to ``train``.
        progress: Called with the fraction of fits done.

    Returns:
        ``{"folds", "lives", "criterion", "chosen", "families": {family: {"figures",
        "intervals", "fold_figures"}}}``.

    Raises:
        SelectionError: fewer than two lives, or no step fails within the horizon.
    """
    units = sorted(frame[UNIT].unique())
    folds = min(int(folds), len(units))
    if folds < 2:
        raise SelectionError(f"{len(units)} life or lives: cross-validation needs two")
    if FAILED in frame.columns and not frame[FAILED].any():
        raise SelectionError("no life ended in a failure: nothing to validate a risk against")
    names = tuple(columns.get("failure_modes", ()))
    fold_of = frame[UNIT].map(fold_of_units(units, folds, seed)).to_numpy()
    results: dict[str, Any] = {}
    fits, done = len(families) * folds, 0
    for family in families:
        family_config = replace(config, architecture=family)
        pooled = []
        fold_figures = []
        for k in range(folds):
            trained = train(frame[fold_of != k], family_config, **columns)
            scored = _scored(trained, frame[fold_of == k], len(names))
            pooled.append(scored)
            if scored["known"].any():
                fold_figures.append(_figures(scored, names))
            done += 1
            if progress is not None:
                progress(done / fits)
        rows = pd.concat(pooled, ignore_index=True)
        if not rows.loc[rows["known"], "failing"].any():
            raise SelectionError("no held-out step fails within the horizon")
        results[family] = {
            "figures": _figures(rows, names),
            "intervals": _intervals(rows, names, seed),
            "fold_figures": [{k: f[k] for k in _SCALARS} for f in fold_figures],
        }
    chosen = min(
        results,
        key=lambda f: (np.nan_to_num(results[f]["figures"][CRITERION], nan=np.inf), f),
    )
    return {
        "folds": folds,
        "lives": len(units),
        "criterion": CRITERION,
        "chosen": chosen,
        "families": results,
    }


def headline(selection: dict[str, Any]) -> dict[str, float]:
    """The registry's flat metrics: the chosen family's cross-validated figures.

    ``cv.<figure>`` and ``cv.mode.<mode>.<figure>`` for the chosen family, and
    ``cv.<family>.brier`` for every candidate, so the choice can be checked.
    """
    chosen = selection["families"][selection["chosen"]]["figures"]
    out = {f"cv.{k}": float(chosen[k]) for k in _SCALARS}
    for name, mode in chosen.get("modes", {}).items():
        for key in ("precision", "recall", "f1", "auc"):
            out[f"cv.mode.{name}.{key}"] = float(mode[key])
    for family, result in selection["families"].items():
        out[f"cv.{family}.{CRITERION}"] = float(result["figures"][CRITERION])
    return {k: v for k, v in out.items() if np.isfinite(v)}
