"""Lives of any asset type: readings on the type's time base, cut at failures, censored at the end.

A *life* is one stretch of an asset's operation that training treats as a unit: from the
asset's first reading (or the repair after its previous failure) up to a confirmed failure,
or up to its last reading when it has not failed since (a *censored* life: it lasted at
least that long, which is all that is known).

Readings are put on the asset type's time base first:

* a type whose horizon counts cycles steps once per reading (a row is a cycle, as in the
  NASA C-MAPSS files);
* any other type steps every ``step_seconds`` (its channels' expected interval): readings are
  averaged into bins of that width, a missing bin carries the last value forward for up to
  ``gap_fill_steps`` steps and stays missing (NaN) beyond that, which the model sees as the
  training mean, as the serving path does for a gap.

The result is a frame in the training layout (``unit``, ``cycle``, the operating settings,
the condition channels), with ``rul`` (steps left to the failure, or to the end of
observation for a censored life) and ``failed`` (1 when the life ended in a failure).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from prognos.registry.training.data import CYCLE, RUL, UNIT

FAILED = "failed"
MODE = "failure_mode"
_DIGITS = re.compile(r"(\d+)")


class LivesError(ValueError):
    """The readings and labels give no life to learn from, or too many steps."""


@dataclass(frozen=True)
class Layout:
    """How one asset type's readings become training rows.

    Attributes:
        features: Condition channels, the model's inputs.
        settings: Operating-setting channels that define operating regimes (may be empty).
        step_seconds: Width of one step of wall time; ``None`` when a reading is a cycle.
        horizon_steps: The type's failure horizon in steps.
        gap_fill_steps: Steps a missing value is carried forward before it counts as missing.
        min_steps: Fewest steps a life needs to be kept.
        max_steps: Most steps kept of one life (its newest); guards memory.
        failure_modes: The modes the type declares; a failed life's mode is its index here
            in the ``failure_mode`` column (-1: censored, or a mode the type does not name).
    """

    features: tuple[str, ...]
    settings: tuple[str, ...]
    step_seconds: float | None
    horizon_steps: float
    gap_fill_steps: int = 3
    min_steps: int = 2
    max_steps: int = 100_000
    failure_modes: tuple[str, ...] = ()

    @property
    def channels(self) -> tuple[str, ...]:
        """Every channel training reads: settings first, then features."""
        return (*self.settings, *self.features)


def assemble(
    readings: pd.DataFrame, failures: pd.DataFrame, layout: Layout
) -> tuple[pd.DataFrame, dict[int, str]]:
    """Cut every asset's readings into lives.

    Args:
        readings: ``time`` (UTC timestamps), ``asset_id`` and one column per channel.
        failures: Confirmed failures: ``time``, ``asset_id`` and optionally ``repaired_at``
            (NaT when unknown); a failure's life ends at its time, the next starts after the
            repair (or after the failure when the repair time is unknown).
        layout: The asset type's channels and time base.

    Returns:
        ``(frame, assets)``: training rows, and the asset id of each unit. Units are numbered
        in the natural order of asset ids (``p1-2`` before ``p1-10``) and of lives within.

    Raises:
        LivesError: No life has ``min_steps`` steps.
    """
    missing = [c for c in layout.channels if c not in readings.columns]
    if missing:
        raise LivesError("the readings lack the channels " + ", ".join(missing))
    readings = readings.sort_values(["asset_id", "time"], kind="stable")
    readings = readings.drop_duplicates(["asset_id", "time"], keep="last")
    ends = _failures_by_asset(failures)
    pieces: list[pd.DataFrame] = []
    assets: dict[int, str] = {}
    groups = dict(list(readings.groupby("asset_id", sort=False)))
    for asset in sorted(groups, key=natural_key):
        rows = groups[asset]
        for life in _lives(rows, ends.get(asset, []), layout):
            unit = len(assets) + 1
            life.insert(0, UNIT, unit)
            pieces.append(life)
            assets[unit] = str(asset)
    if not pieces:
        raise LivesError(
            f"no asset has a life of at least {layout.min_steps} steps on the type's time base"
        )
    frame = pd.concat(pieces, ignore_index=True)
    columns = [UNIT, CYCLE, *layout.settings, *layout.features, RUL, FAILED]
    if layout.failure_modes:
        columns.append(MODE)
    frame = frame[columns]
    frame[UNIT] = frame[UNIT].astype(np.int64)
    return frame.reset_index(drop=True), assets


_Failure = tuple[pd.Timestamp, pd.Timestamp | None, str]


def _failures_by_asset(failures: pd.DataFrame) -> dict[str, list[_Failure]]:
    out: dict[str, list[_Failure]] = {}
    if failures.empty:
        return out
    times = pd.to_datetime(failures["time"], utc=True)
    repaired = (
        pd.to_datetime(failures["repaired_at"], utc=True)
        if "repaired_at" in failures.columns
        else pd.Series(pd.NaT, index=failures.index, dtype="datetime64[ns, UTC]")
    )
    modes = (
        failures["failure_mode"].fillna("").astype(str)
        if "failure_mode" in failures.columns
        else pd.Series("", index=failures.index)
    )
    for asset, at, back, mode in zip(failures["asset_id"], times, repaired, modes, strict=True):
        out.setdefault(str(asset), []).append((at, None if pd.isna(back) else back, mode))
    for asset in out:
        out[asset].sort(key=lambda pair: pair[0])
    return out


def _lives(
    rows: pd.DataFrame,
    failures: Sequence[_Failure],
    layout: Layout,
) -> list[pd.DataFrame]:
    """One asset's lives, each in the training layout without ``unit``."""
    times = rows["time"]
    lives: list[pd.DataFrame] = []
    start: pd.Timestamp | None = None
    for failed_at, repaired_at, mode in failures:
        mask = times <= failed_at
        if start is not None:
            mask &= times > start
        life = _on_time_base(rows.loc[mask], layout, failed_at, mode)
        if life is not None:
            lives.append(life)
        start = max(failed_at, repaired_at) if repaired_at is not None else failed_at
    rest = rows if start is None else rows.loc[times > start]
    life = _on_time_base(rest, layout, None, "")
    if life is not None:
        lives.append(life)
    return lives


def _on_time_base(
    rows: pd.DataFrame, layout: Layout, failed_at: pd.Timestamp | None, mode: str
) -> pd.DataFrame | None:
    """A life's rows as steps, with ``cycle``, ``rul`` and ``failed``; ``None`` if too short."""
    values = rows[list(layout.channels)].astype(np.float64)
    if layout.step_seconds is None:
        # One reading is one cycle: a gap is a missing value of a reading that exists.
        life = values.ffill(limit=layout.gap_fill_steps).reset_index(drop=True)
        steps = len(life)
        rul = np.arange(steps - 1, -1, -1, dtype=np.float64)
    else:
        step = pd.Timedelta(seconds=layout.step_seconds)
        if rows.empty:
            return None
        origin = rows["time"].iloc[0].floor(step)
        bins = ((rows["time"] - origin) // step).to_numpy(np.int64)
        binned = values.groupby(bins).mean()
        full = np.arange(int(bins.min()), int(bins.max()) + 1)
        life = binned.reindex(full).ffill(limit=layout.gap_fill_steps).reset_index(drop=True)
        steps = len(life)
        step_times = origin + pd.to_timedelta(full * layout.step_seconds, unit="s")
        end = failed_at if failed_at is not None else step_times[-1]
        rul = np.maximum(np.asarray((end - step_times) / step, np.float64), 0.0)
    if steps < layout.min_steps:
        return None
    if steps > layout.max_steps:
        life = life.iloc[-layout.max_steps :].reset_index(drop=True)
        rul = rul[-layout.max_steps :]
        steps = layout.max_steps
    life.insert(0, CYCLE, np.arange(1, steps + 1, dtype=np.int64))
    life[RUL] = rul
    life[FAILED] = np.int64(failed_at is not None)
    if layout.failure_modes:
        known = failed_at is not None and mode in layout.failure_modes
        life[MODE] = np.int64(layout.failure_modes.index(mode) if known else -1)
    return life


def natural_key(asset_id: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that puts ``p1-unit-2`` before ``p1-unit-10``."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in _DIGITS.split(asset_id)
    )


def censoring_weights(
    frame: pd.DataFrame, rul_clip: float, horizon: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What each row can teach, given that censored lives only bound the RUL from below.

    For a row of a failed life both targets are known. For a row of a censored life with
    ``rul`` steps observed after it, the clipped RUL is known (it is ``rul_clip``) only when
    ``rul >= rul_clip``, and "fails within the horizon" is known to be false only when
    ``rul > horizon``; otherwise the row teaches nothing about that target.

    Args:
        frame: Training rows with ``rul`` and ``failed``, in the order the windows are made.

    Returns:
        ``(rul_weight, probability_weight, failing)`` as float32 arrays.
    """
    rul = frame[RUL].to_numpy(np.float64)
    failed = frame[FAILED].to_numpy(np.int64).astype(bool) if FAILED in frame else None
    if failed is None:
        ones = np.ones(len(frame), np.float32)
        return ones, ones, (rul <= horizon).astype(np.float32)
    rul_weight = (failed | (rul >= rul_clip)).astype(np.float32)
    probability_weight = (failed | (rul > horizon)).astype(np.float32)
    failing = (failed & (rul <= horizon)).astype(np.float32)
    return rul_weight, probability_weight, failing


def setting_decimals(frame: pd.DataFrame, settings: Sequence[str], *, levels: int = 20) -> tuple:
    """A rounding per operating setting that splits its observed range into about ``levels``.

    Regimes are found by clustering rounded settings (``preprocessing.detect_regimes``):
    distinct set points stay apart, while a setting that varies continuously chains into one
    regime, which is what per-regime scaling should do with it.
    """
    out: list[int] = []
    for name in settings:
        values = frame[name].to_numpy(np.float64)
        values = values[np.isfinite(values)]
        spread = float(values.max() - values.min()) if len(values) else 0.0
        if spread <= 0:
            out.append(0)
            continue
        out.append(int(np.clip(-np.floor(np.log10(spread / levels)), -6, 9)))
    return tuple(out)


def truncations(
    lives: pd.DataFrame,
    seed: int,
    *,
    per_unit: int,
    rul_clip: float,
    min_steps: int,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Cut held-out lives at random steps, the way the NASA test sets are made.

    A failed life is cut so that its true RUL is uniform in ``[1, 1.16 * rul_clip]`` (NASA's
    FD001 test set: 7..145 for a clip of 125), keeping at least ``min_steps`` observed; a
    censored life is cut uniformly, and its truth is a lower bound.

    Returns:
        ``(frame, truth, failed)``: the cut rows renumbered 1..N, the steps left after each
        cut, and whether that life ended in a failure.
    """
    rng = np.random.default_rng(seed)
    high = max(2, round(1.16 * rul_clip))
    pieces: list[pd.DataFrame] = []
    truth: list[float] = []
    failed: list[bool] = []
    for _, rows in lives.groupby(UNIT, sort=True):
        rows = rows.sort_values(CYCLE)
        last = len(rows)
        ended = bool(rows[FAILED].iloc[0]) if FAILED in rows else True
        keep = min(min_steps, last - 1)
        for _ in range(per_unit):
            if ended:
                cut = max(last - int(rng.integers(1, high + 1)), keep)
            else:
                cut = int(rng.integers(keep, last)) if last - 1 > keep else keep
            cut = max(cut, 1)
            piece = rows.iloc[:cut].copy()
            piece[UNIT] = len(truth) + 1
            pieces.append(piece)
            truth.append(float(rows[RUL].iloc[cut - 1]))
            failed.append(ended)
    return (
        pd.concat(pieces, ignore_index=True),
        np.asarray(truth, np.float64),
        np.asarray(failed, bool),
    )


def mode_targets(frame: pd.DataFrame, modes: int, horizon: float) -> np.ndarray:
    """``(rows, modes)`` float32: whether each row's life fails of that mode within the horizon.

    A failed life of a mode the type does not name fails within the horizon of no mode; its
    rows still teach the overall failure probability.
    """
    out = np.zeros((len(frame), modes), np.float32)
    if MODE not in frame.columns or modes == 0:
        return out
    rul = frame[RUL].to_numpy(np.float64)
    failed = frame[FAILED].to_numpy(np.int64).astype(bool) if FAILED in frame else True
    mode = frame[MODE].to_numpy(np.int64)
    rows = np.flatnonzero(failed & (rul <= horizon) & (mode >= 0))
    out[rows, mode[rows]] = 1.0
    return out
