"""Preprocessing of sensor history: operating regimes, per-regime scaling and windows.

Everything a server needs to turn raw readings into the model's input is in
``Preprocessing`` and survives a round trip through JSON, so a process that does not import
this package can reproduce it from the JSON alone:

1. assign each row to the nearest regime centroid, distances measured in units of the
   rounding step of each operating setting (``10 ** -decimals``);
2. keep the ``features`` columns and z-score them with that regime's mean and std;
3. when ``age_column`` is set, append it (the row's cycle: cycles since the unit's life
   began) z-scored with ``age_mean`` and ``age_std``, the same for every regime;
4. a window is the last ``window`` rows of a unit, oldest first; a unit with fewer rows is
   padded at the front by repeating its first (normalised) row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from scipy.cluster.hierarchy import fcluster, linkage

from prognos.registry.training.data import CYCLE, RUL, SENSORS, SETTINGS, UNIT

FORMAT_VERSION = 1
#: Documents that use ``age_column`` are version 2, so a version-1 reader refuses them
#: instead of building windows one column short.
AGE_FORMAT_VERSION = 2
MAX_ROUNDED_SETTINGS = 5000


def detect_regimes(
    settings: np.ndarray, decimals: Sequence[int], *, min_fraction: float = 0.005
) -> np.ndarray:
    """Find operating regimes by clustering rounded operating settings.

    Settings are rounded to ``decimals`` (one per column); the distinct rounded points are
    grouped by single linkage, so points one rounding step apart (noise that straddles a
    rounding boundary) join one regime. Regimes holding fewer than ``min_fraction`` of the
    rows are treated as outliers and folded into the nearest larger regime.

    Args:
        settings: ``(rows, n_settings)`` operating settings.
        decimals: Rounding of each setting; it sets the scale that separates regimes.
        min_fraction: Smallest share of rows that makes a regime.

    Returns:
        ``(n_regimes, n_settings)`` centroids (mean raw settings of each regime), sorted
        lexicographically so the numbering is stable.
    """
    settings = np.asarray(settings, dtype=np.float64)
    step = _steps(decimals, settings.shape[1])
    rounded = np.round(settings / step)
    points, inverse = np.unique(rounded, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    if len(points) > MAX_ROUNDED_SETTINGS:
        raise ValueError(
            f"{len(points)} distinct rounded settings: round them more coarsely (fewer decimals)"
        )
    if len(points) == 1:
        labels = np.zeros(1, dtype=np.int64)
    else:
        tree = linkage(points, method="single", metric="chebyshev")
        labels = fcluster(tree, t=1.0, criterion="distance") - 1
    row_labels = labels[inverse]
    shares = np.bincount(row_labels) / len(settings)
    big = np.flatnonzero(shares >= min_fraction)
    if len(big) == 0:
        big = np.array([int(np.argmax(shares))])
    centroids = np.stack([settings[row_labels == k].mean(axis=0) for k in big])
    # Fold the rows of small clusters into the nearest big one, then recompute the centroids.
    row_labels = _nearest(settings, centroids, step)
    centroids = np.stack([settings[row_labels == k].mean(axis=0) for k in range(len(big))])
    order = np.lexsort(np.round(centroids / step).T[::-1])
    return centroids[order]


def assign_regimes(
    settings: np.ndarray, centroids: np.ndarray, decimals: Sequence[int]
) -> np.ndarray:
    """Index of the nearest regime centroid for each row, in rounding-step units."""
    settings = np.asarray(settings, dtype=np.float64)
    return _nearest(settings, np.asarray(centroids), _steps(decimals, settings.shape[1]))


def _steps(decimals: Sequence[int], columns: int) -> np.ndarray:
    if len(decimals) != columns:
        raise ValueError(f"need one rounding per setting: {len(decimals)} for {columns}")
    return 10.0 ** -np.asarray(decimals, dtype=np.float64)


def _nearest(settings: np.ndarray, centroids: np.ndarray, step: np.ndarray) -> np.ndarray:
    squares = ((settings[:, None, :] - centroids[None, :, :]) / step) ** 2
    # A missing setting (a gap on the time base) is left out of the distance, as in serving.
    distance = np.nansum(squares, axis=2) if np.isnan(squares).any() else squares.sum(axis=2)
    return np.argmin(distance, axis=1)


@dataclass(frozen=True)
class Preprocessing:
    """Fitted preprocessing of one asset type; see the module docstring for the recipe."""

    window: int
    rul_clip: float
    horizon_cycles: float
    setting_columns: tuple[str, ...]
    setting_decimals: tuple[int, ...]
    regime_centroids: tuple[tuple[float, ...], ...]
    features: tuple[str, ...]
    dropped: tuple[str, ...]
    means: tuple[tuple[float, ...], ...]
    stds: tuple[tuple[float, ...], ...]
    age_column: str | None = None
    age_mean: float = 0.0
    age_std: float = 1.0
    padding: str = "edge"
    format_version: int = FORMAT_VERSION
    #: The asset type's failure modes, in the order of the model's ``mode_probability``.
    failure_modes: tuple[str, ...] = ()

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        *,
        window: int,
        rul_clip: float,
        horizon_cycles: float,
        setting_decimals: Sequence[int] = (0, 2, 0),
        sensors: Sequence[str] = SENSORS,
        settings: Sequence[str] = SETTINGS,
        constant_fraction: float = 0.95,
        age_column: str | None = None,
    ) -> Self:
        """Fit regimes, kept sensors and per-regime statistics on training rows.

        A sensor is dropped as (near) constant when, within every regime, one value covers
        at least ``constant_fraction`` of the rows or the spread is zero: after per-regime
        scaling it would carry nothing but rounding noise. ``age_column`` (``"cycle"`` for
        C-MAPSS), when given, becomes the last input feature.
        """
        raw_settings = frame[list(settings)].to_numpy(np.float64)
        if settings:
            known = np.isfinite(raw_settings).all(axis=1)
            centroids = detect_regimes(raw_settings[known], setting_decimals)
            regimes = assign_regimes(raw_settings, centroids, setting_decimals)
        else:  # no operating settings: one regime
            setting_decimals = ()
            centroids = np.zeros((1, 0))
            regimes = np.zeros(len(frame), dtype=np.int64)
        kept: list[str] = []
        dropped: list[str] = []
        for sensor in sensors:
            values = frame[sensor].to_numpy(np.float64)
            informative = False
            for k in range(len(centroids)):
                part = values[regimes == k]
                part = part[np.isfinite(part)]  # a gap on the time base is NaN
                if len(part) < 2:
                    continue
                _, counts = np.unique(part, return_counts=True)
                if counts.max() / len(part) < constant_fraction and part.std() > 0:
                    informative = True
            (kept if informative else dropped).append(sensor)
        if not kept:
            raise ValueError("every sensor is constant within its regime: nothing to learn from")
        data = frame[kept].to_numpy(np.float64)
        means, stds = [], []
        for k in range(len(centroids)):
            part = data[regimes == k]
            gaps = np.isnan(part).any()
            mean = np.nanmean(part, axis=0) if gaps else part.mean(axis=0)
            std = np.nanstd(part, axis=0) if gaps else part.std(axis=0)
            means.append(tuple(float(v) for v in mean))
            stds.append(tuple(float(v) if v > 1e-12 else 1.0 for v in std))
        age_mean, age_std = 0.0, 1.0
        if age_column is not None:
            age = frame[age_column].to_numpy(np.float64)
            age_mean, age_std = float(age.mean()), float(age.std()) or 1.0
        return cls(
            window=int(window),
            rul_clip=float(rul_clip),
            horizon_cycles=float(horizon_cycles),
            setting_columns=tuple(settings),
            setting_decimals=tuple(int(d) for d in setting_decimals),
            regime_centroids=tuple(tuple(float(v) for v in c) for c in centroids),
            features=tuple(kept),
            dropped=tuple(dropped),
            means=tuple(means),
            stds=tuple(stds),
            age_column=age_column,
            age_mean=age_mean,
            age_std=age_std,
            format_version=FORMAT_VERSION if age_column is None else AGE_FORMAT_VERSION,
        )

    @property
    def input_columns(self) -> tuple[str, ...]:
        """The columns of a window row, in order: kept sensors, then the age if used."""
        return self.features if self.age_column is None else (*self.features, self.age_column)

    @property
    def n_regimes(self) -> int:
        """How many operating regimes were found in training."""
        return len(self.regime_centroids)

    def regimes(self, frame: pd.DataFrame) -> np.ndarray:
        """Regime index of every row."""
        return assign_regimes(
            frame[list(self.setting_columns)].to_numpy(np.float64),
            np.asarray(self.regime_centroids),
            self.setting_decimals,
        )

    def normalise(self, frame: pd.DataFrame) -> np.ndarray:
        """``(rows, input_columns)`` float32: sensors scaled with their row's regime statistics."""
        regimes = self.regimes(frame)
        data = frame[list(self.features)].to_numpy(np.float64)
        means = np.asarray(self.means)[regimes]
        stds = np.asarray(self.stds)[regimes]
        scaled = (data - means) / stds
        if self.age_column is not None:
            age = (frame[self.age_column].to_numpy(np.float64) - self.age_mean) / self.age_std
            scaled = np.column_stack([scaled, age])
        return scaled.astype(np.float32)

    def training_windows(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every window of every run-to-failure unit, with its labels.

        Returns:
            ``(windows, rul, failing)``: ``(n, window, input_columns)`` float32 inputs, the RUL at
            each window's last row clipped at ``rul_clip`` (float32), and whether the unit
            fails within ``horizon_cycles`` of that row (float32 0/1).
        """
        if RUL not in frame.columns:
            raise ValueError("training rows need the 'rul' column (see data.add_rul)")
        frame = frame.sort_values([UNIT, CYCLE], kind="stable")
        normalised = self.normalise(frame)
        # A value still missing after the gap fill reads as its regime's mean, as in serving.
        normalised[np.isnan(normalised)] = 0.0
        rul = frame[RUL].to_numpy(np.float64)
        windows = []
        for rows in _unit_slices(frame[UNIT].to_numpy()):
            windows.append(_all_windows(normalised[rows], self.window))
        clipped = np.minimum(rul, self.rul_clip).astype(np.float32)
        failing = (rul <= self.horizon_cycles).astype(np.float32)
        return np.concatenate(windows), clipped, failing

    def last_windows(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """The window ending at each unit's last row: ``(windows, unit ids)`` in unit order."""
        frame = frame.sort_values([UNIT, CYCLE], kind="stable")
        normalised = self.normalise(frame)
        normalised[np.isnan(normalised)] = 0.0
        units = frame[UNIT].to_numpy()
        windows = [pad_window(normalised[rows], self.window) for rows in _unit_slices(units)]
        return np.stack(windows), np.unique(units)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (without ``failure_modes`` when the type names none)."""
        data = asdict(self)
        if not self.failure_modes:
            del data["failure_modes"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Inverse of ``to_dict``."""
        version = data.get("format_version")
        expected = FORMAT_VERSION if data.get("age_column") is None else AGE_FORMAT_VERSION
        if version != expected:
            raise ValueError(f"unsupported preprocessing format {version} (expected {expected})")
        nested = {"regime_centroids", "means", "stds"}
        values = {
            key: tuple(tuple(row) for row in value)
            if key in nested
            else tuple(value)
            if isinstance(value, list)
            else value
            for key, value in data.items()
        }
        return cls(**values)

    def save(self, path: Path) -> None:
        """Write the JSON file."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Self:
        """Read the JSON file written by ``save``."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def pad_window(rows: np.ndarray, window: int) -> np.ndarray:
    """The last ``window`` rows; fewer rows are padded at the front with the first row."""
    if len(rows) == 0:
        raise ValueError("a window needs at least one row")
    if len(rows) >= window:
        return rows[-window:]
    pad = np.repeat(rows[:1], window - len(rows), axis=0)
    return np.concatenate([pad, rows])


def _all_windows(rows: np.ndarray, window: int) -> np.ndarray:
    """One window ending at every row (front-padded like ``pad_window``)."""
    padded = np.concatenate([np.repeat(rows[:1], window - 1, axis=0), rows])
    view = sliding_window_view(padded, window, axis=0)  # (rows, features, window)
    return np.ascontiguousarray(view.transpose(0, 2, 1))


def _unit_slices(units: np.ndarray) -> list[slice]:
    """Contiguous row ranges of each unit in a frame sorted by unit."""
    starts = np.flatnonzero(np.r_[True, units[1:] != units[:-1]])
    ends = np.r_[starts[1:], len(units)]
    return [slice(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


def reference_distributions(
    frame: pd.DataFrame,
    preprocessing: Preprocessing,
    *,
    quantiles: int = 101,
    sample_size: int = 512,
    seed: int = 0,
) -> dict[str, Any]:
    """Reference distribution of every kept feature in training, for drift detection.

    For each feature: quantiles at ``quantiles`` evenly spaced levels and a seeded random
    sample, both of the raw values and of the regime-normalised values (the latter is what
    the model sees and is comparable across regimes), plus the share of rows per regime.
    """
    rng = np.random.default_rng(seed)
    levels = np.linspace(0.0, 1.0, quantiles)
    normalised = preprocessing.normalise(frame).astype(np.float64)
    raw = frame[list(preprocessing.features)].to_numpy(np.float64)
    pick = rng.choice(len(frame), size=min(sample_size, len(frame)), replace=False)
    regimes = preprocessing.regimes(frame)
    features: dict[str, Any] = {}
    for i, name in enumerate(preprocessing.features):
        features[name] = {
            space: _distribution(values[:, i], values[pick, i], levels)
            for space, values in (("raw", raw), ("normalised", normalised))
        }
    return {
        "rows": len(frame),
        "quantile_levels": [float(v) for v in levels],
        "regime_shares": [
            float(v) for v in np.bincount(regimes, minlength=preprocessing.n_regimes) / len(frame)
        ],
        "features": features,
    }


def _distribution(values: np.ndarray, sample: np.ndarray, levels: np.ndarray) -> dict[str, Any]:
    """Mean, std, quantiles and a sample of one feature, over its readings (NaN: none)."""
    if np.isnan(values).any():
        values = values[~np.isnan(values)]
        sample = sample[~np.isnan(sample)]
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "quantiles": [float(v) for v in np.quantile(values, levels)],
        "sample": [float(v) for v in sample],
    }
