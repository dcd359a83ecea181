"""C-MAPSS files: reading, run-to-failure labels, unit splits and NASA-format test sets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

UNIT = "unit"
CYCLE = "cycle"
SETTINGS: tuple[str, ...] = ("setting_1", "setting_2", "setting_3")
SENSORS: tuple[str, ...] = tuple(f"s{i}" for i in range(1, 22))
COLUMNS: tuple[str, ...] = (UNIT, CYCLE, *SETTINGS, *SENSORS)
RUL = "rul"


class NasaFormatError(ValueError):
    """A file is not in the NASA C-MAPSS text format."""


def load_cmapss(path: str | Path) -> pd.DataFrame:
    """Read a C-MAPSS train or test file into a frame.

    The NASA files separate values by single spaces and end each line with trailing spaces;
    the result has the 26 named columns of ``COLUMNS`` (``unit`` and ``cycle`` as integers,
    the rest as float64), sorted by unit then cycle.

    Args:
        path: A ``train_FD00x.txt`` or ``test_FD00x.txt`` file.

    Returns:
        One row per unit and cycle.

    Raises:
        NasaFormatError: When a line does not hold 26 numbers.
    """
    raw = pd.read_csv(path, sep=r"\s+", header=None, dtype=np.float64, engine="c")
    if raw.shape[1] != len(COLUMNS):
        raise NasaFormatError(f"{path}: expected {len(COLUMNS)} columns, found {raw.shape[1]}")
    raw.columns = list(COLUMNS)
    raw[UNIT] = raw[UNIT].astype(np.int64)
    raw[CYCLE] = raw[CYCLE].astype(np.int64)
    return raw.sort_values([UNIT, CYCLE], kind="stable").reset_index(drop=True)


def load_truth(path: str | Path) -> np.ndarray:
    """Read a NASA ``RUL_FD00x.txt`` truth file: one remaining useful life per line.

    Args:
        path: The truth file; line ``i`` belongs to the ``i``-th unit of the test file.

    Returns:
        The true remaining useful lives as float64.
    """
    values = pd.read_csv(path, sep=r"\s+", header=None, dtype=np.float64, engine="c")
    if values.shape[1] != 1:
        raise NasaFormatError(f"{path}: expected one value per line, found {values.shape[1]}")
    return values.iloc[:, 0].to_numpy()


def add_rul(frame: pd.DataFrame) -> pd.DataFrame:
    """Return a copy with the run-to-failure label ``rul`` = last cycle of the unit - cycle."""
    out = frame.copy()
    out[RUL] = out.groupby(UNIT)[CYCLE].transform("max") - out[CYCLE]
    return out


def split_units(
    frame: pd.DataFrame, holdout: int | float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a frame by whole units into a training part and a held-out part.

    Args:
        frame: Rows of many units.
        holdout: Number of units to hold out, or a fraction of the units when below 1.
        seed: Seed of the shuffle; the same seed always holds out the same units.

    Returns:
        ``(train, held_out)``, each with its rows in the original order.
    """
    units = np.sort(frame[UNIT].unique())
    count = round(holdout * len(units)) if isinstance(holdout, float) else int(holdout)
    if not 0 < count < len(units):
        raise ValueError(f"holdout must leave units on both sides, got {count} of {len(units)}")
    held = np.random.default_rng(seed).choice(units, size=count, replace=False)
    mask = frame[UNIT].isin(held)
    return frame.loc[~mask].reset_index(drop=True), frame.loc[mask].reset_index(drop=True)


def make_nasa_test(
    run_to_failure: pd.DataFrame,
    seed: int,
    *,
    truncations_per_unit: int = 1,
    min_cycles: int = 31,
    rul_range: tuple[int, int] = (7, 145),
) -> tuple[pd.DataFrame, np.ndarray]:
    """Build a test set the NASA way from units that run to failure.

    Each unit is cut at a random cycle: the cycles left after the cut (its true RUL) are
    drawn uniformly from ``rul_range``, reduced where needed so that at least
    ``min_cycles`` cycles stay observed. The defaults match NASA's own FD001 test set, whose
    100 true RULs run from 7 to 145 roughly uniformly (mean 75.5, std 41.6) over histories of
    at least 31 cycles. Test units are numbered 1..N in the order of the source units (and
    of the cuts within a unit).

    Args:
        run_to_failure: Rows of units whose last cycle is the failure.
        seed: Seed of the cuts.
        truncations_per_unit: How many independent cuts to make of every unit.
        min_cycles: Fewest cycles a test unit keeps (at most its own length minus one).
        rul_range: Inclusive bounds of the true RUL drawn for a cut.

    Returns:
        ``(test_frame, truth)``: the truncated rows with ``COLUMNS`` only, and one true RUL
        per test unit. ``test_frame.attrs["source_unit"]`` maps each test unit to its source.
    """
    low_rul, high_rul = rul_range
    if not 1 <= low_rul <= high_rul:
        raise ValueError(f"rul_range must satisfy 1 <= low <= high, got {rul_range}")
    rng = np.random.default_rng(seed)
    pieces: list[pd.DataFrame] = []
    truth: list[int] = []
    sources: dict[int, int] = {}
    next_unit = 1
    for unit, rows in run_to_failure.groupby(UNIT, sort=True):
        rows = rows.sort_values(CYCLE)
        last = len(rows)
        keep_at_least = min(min_cycles, last - 1)
        for _ in range(truncations_per_unit):
            rul = int(rng.integers(low_rul, high_rul + 1))
            cut = max(last - rul, keep_at_least)
            piece = rows.iloc[:cut][list(COLUMNS)].copy()
            piece[UNIT] = next_unit
            pieces.append(piece)
            truth.append(last - cut)
            sources[next_unit] = int(unit)
            next_unit += 1
    test = pd.concat(pieces, ignore_index=True)
    test.attrs["source_unit"] = sources
    return test, np.asarray(truth, dtype=np.float64)


def write_nasa_files(
    test_frame: pd.DataFrame, truth: Sequence[float] | np.ndarray, test_path: Path, truth_path: Path
) -> None:
    """Write a test frame and its truth in the NASA text format.

    The test file holds the 26 columns separated by single spaces with two trailing spaces,
    as NASA's files do; the truth file holds one integer RUL per line.
    """
    if len(truth) != test_frame[UNIT].nunique():
        raise ValueError("truth needs exactly one value per test unit")
    lines = []
    for row in test_frame[list(COLUMNS)].itertuples(index=False):
        values = [str(int(row[0])), str(int(row[1]))]
        values += [_number(v) for v in row[2:]]
        lines.append(" ".join(values) + "  \n")
    Path(test_path).write_text("".join(lines))
    Path(truth_path).write_text("".join(f"{round(float(v))}\n" for v in truth))


def _number(value: float) -> str:
    """Shortest text that reads back as the same float64 (``repr``), without a needless '.0'."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text
