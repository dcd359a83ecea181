"""Drift: live feature distributions against the training reference of the serving model.

Features are compared as the model sees them (normalised per operating regime), so a fleet
that runs in other regimes than in training is not drift, but a sensor that reads off is.
Per feature:

- PSI (population stability index) on ten bins cut at the reference's deciles, each holding
  a tenth of the training rows, with the live shares from ``numpy.histogram``;
- the two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``) against the
  reference's random sample;
- the Wasserstein distance (``scipy.stats.wasserstein_distance``) to that sample, in
  training standard deviations.

A feature drifts when its PSI reaches the threshold and its KS p-value is below alpha:
PSI alone flags small samples too eagerly, KS alone flags harmless shifts in big ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

PSI_BINS = 10
_EPSILON = 1e-4


@dataclass(frozen=True, eq=False)
class FeatureReference:
    """Training distribution of one feature (normalised space)."""

    name: str
    edges: np.ndarray = field(repr=False)
    expected: np.ndarray = field(repr=False)
    sample: np.ndarray = field(repr=False)


@dataclass(frozen=True, eq=False)
class Reference:
    """Training distributions of a model version's features."""

    features: Mapping[str, FeatureReference]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reference:
        """Read the registry's ``reference.json`` (its ``normalised`` distributions)."""
        levels = np.asarray(data["quantile_levels"], np.float64)
        targets = np.linspace(0.0, 1.0, PSI_BINS + 1)[1:-1]
        picks = [int(np.argmin(np.abs(levels - t))) for t in targets]
        features = {}
        for name, spaces in data["features"].items():
            space = spaces["normalised"]
            quantiles = np.asarray(space["quantiles"], np.float64)
            edges, expected = _bins(quantiles, levels, picks)
            features[name] = FeatureReference(
                name=name,
                edges=edges,
                expected=expected,
                sample=np.asarray(space["sample"], np.float64),
            )
        return cls(features=features)


def _bins(
    quantiles: np.ndarray, levels: np.ndarray, picks: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Inner bin edges at the picked quantiles, and the share of training rows per bin.

    Bins are ``[edge, next edge)``. The share below an edge is the level of the first
    quantile equal to it, so tied quantiles (a feature that often takes one value) merge
    their bins and keep the right shares.
    """
    edges = np.unique(quantiles[picks])
    below = levels[np.searchsorted(quantiles, edges, side="left")]
    return edges, np.diff(np.concatenate([[0.0], below, [1.0]]))


@dataclass(frozen=True)
class FeatureDriftResult:
    """Drift statistics of one feature."""

    feature: str
    psi: float
    ks_statistic: float
    ks_pvalue: float
    wasserstein: float
    drifted: bool


def psi(reference: FeatureReference, live: np.ndarray) -> float:
    """Population stability index of ``live`` on the reference's decile bins."""
    counts, _ = np.histogram(live, bins=np.concatenate([[-np.inf], reference.edges, [np.inf]]))
    actual = np.clip(counts / max(len(live), 1), _EPSILON, None)
    expected = np.clip(reference.expected, _EPSILON, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def feature_drift(
    reference: FeatureReference,
    live: np.ndarray,
    *,
    psi_threshold: float,
    ks_alpha: float,
) -> FeatureDriftResult:
    """Compare one feature's live values with its reference."""
    live = live[np.isfinite(live)]
    score = psi(reference, live)
    ks = stats.ks_2samp(live, reference.sample)
    distance = stats.wasserstein_distance(live, reference.sample)
    return FeatureDriftResult(
        feature=reference.name,
        psi=score,
        ks_statistic=float(ks.statistic),
        ks_pvalue=float(ks.pvalue),
        wasserstein=float(distance),
        drifted=bool(score >= psi_threshold and ks.pvalue < ks_alpha),
    )


def evaluate(
    reference: Reference,
    features: Sequence[str],
    live: np.ndarray,
    *,
    psi_threshold: float,
    ks_alpha: float,
) -> list[FeatureDriftResult]:
    """Drift of every feature that has a reference.

    Args:
        reference: The model's training reference.
        features: Name of each column of ``live``.
        live: ``(rows, features)`` normalised live values.
        psi_threshold: PSI at which a feature drifts (with a small enough p-value).
        ks_alpha: KS p-value below which a feature drifts (with a big enough PSI).
    """
    results = []
    for j, name in enumerate(features):
        ref = reference.features.get(name)
        if ref is None:
            continue
        results.append(
            feature_drift(ref, live[:, j], psi_threshold=psi_threshold, ks_alpha=ks_alpha)
        )
    return results


class LiveSample:
    """The newest rows an asset type's model saw, in a ring of fixed size.

    Args:
        model_version: The model whose inputs these are (a new champion starts afresh).
        features: Number of feature columns.
        capacity: Rows kept.
    """

    def __init__(self, model_version: str, features: int, capacity: int) -> None:
        self.model_version = model_version
        self._rows = np.zeros((capacity, features), np.float32)
        self._times = np.zeros(capacity, np.int64)
        self._next = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, rows: np.ndarray, times_us: np.ndarray) -> None:
        """Keep ``rows`` (``(n, features)``) read at ``times_us``."""
        capacity = len(self._rows)
        if len(rows) >= capacity:
            rows, times_us = rows[-capacity:], times_us[-capacity:]
        n = len(rows)
        end = self._next + n
        if end <= capacity:
            self._rows[self._next : end] = rows
            self._times[self._next : end] = times_us
        else:
            first = capacity - self._next
            self._rows[self._next :] = rows[:first]
            self._times[self._next :] = times_us[:first]
            self._rows[: n - first] = rows[first:]
            self._times[: n - first] = times_us[first:]
        self._next = end % capacity
        self._count = min(capacity, self._count + n)

    def snapshot(self) -> tuple[np.ndarray, int, int]:
        """``(rows, oldest time, newest time)`` of what is kept (a copy)."""
        rows = self._rows[: self._count].copy()
        times = self._times[: self._count]
        if len(times) == 0:
            return rows, 0, 0
        return rows, int(times.min()), int(times.max())
