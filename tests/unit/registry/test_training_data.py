"""C-MAPSS files: reading, unit splits, NASA-style truncation and the file round trip."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prognos.registry.training.data import (
    COLUMNS,
    NasaFormatError,
    add_rul,
    load_cmapss,
    load_truth,
    make_nasa_test,
    split_units,
    write_nasa_files,
)

DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "cmapss"

Fleet = Callable[..., pd.DataFrame]


def test_nasa_files_round_trip(tmp_path: Path, fleet: Fleet) -> None:
    test, truth = make_nasa_test(fleet(4, seed=1), seed=2, truncations_per_unit=2)
    write_nasa_files(test, truth, tmp_path / "test.txt", tmp_path / "truth.txt")

    first_line = (tmp_path / "test.txt").read_text().splitlines()[0]
    assert first_line.endswith("  ") and len(first_line.split()) == 26
    again = load_cmapss(tmp_path / "test.txt")
    pd.testing.assert_frame_equal(again, test[list(COLUMNS)].reset_index(drop=True))
    np.testing.assert_array_equal(load_truth(tmp_path / "truth.txt"), truth)


def test_truncation_keeps_history_and_labels_the_cycles_left(fleet: Fleet) -> None:
    units = fleet(6, seed=3, life=(40, 200))
    test, truth = make_nasa_test(units, seed=4, truncations_per_unit=3, min_cycles=31)

    assert sorted(test["unit"].unique()) == list(range(1, 19))
    lengths = units.groupby("unit")["cycle"].max()
    for unit, rows in test.groupby("unit"):
        source = test.attrs["source_unit"][unit]
        observed = len(rows)
        assert observed >= min(31, lengths[source] - 1)
        assert truth[unit - 1] == lengths[source] - observed
        assert list(rows["cycle"]) == list(range(1, observed + 1))
    assert truth.min() >= 1 and truth.max() <= 145


def test_truncation_is_reproducible_from_its_seed(fleet: Fleet) -> None:
    units = fleet(5, seed=5)
    _, first = make_nasa_test(units, seed=9)
    _, again = make_nasa_test(units, seed=9)
    _, other = make_nasa_test(units, seed=10)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_split_holds_out_whole_units_reproducibly(fleet: Fleet) -> None:
    units = fleet(10, seed=6)
    train, held = split_units(units, 3, seed=1)
    assert held["unit"].nunique() == 3
    assert set(train["unit"]).isdisjoint(held["unit"])
    assert len(train) + len(held) == len(units)
    _, again = split_units(units, 3, seed=1)
    assert set(again["unit"]) == set(held["unit"])
    with pytest.raises(ValueError):
        split_units(units, 10, seed=1)


def test_rul_counts_down_to_zero_at_the_last_cycle(fleet: Fleet) -> None:
    units = add_rul(fleet(2, seed=7))
    for _, rows in units.groupby("unit"):
        assert list(rows["rul"]) == list(range(len(rows) - 1, -1, -1))


def test_a_file_with_the_wrong_columns_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_text("1 2 3  \n4 5 6  \n")
    with pytest.raises(NasaFormatError):
        load_cmapss(tmp_path / "bad.txt")


@pytest.mark.skipif(not (DATA / "train_FD001.txt").exists(), reason="C-MAPSS data not present")
def test_reads_the_nasa_fd001_training_file() -> None:
    frame = load_cmapss(DATA / "train_FD001.txt")
    assert frame.shape == (20631, 26)
    assert frame["unit"].nunique() == 100
    assert frame.groupby("unit")["cycle"].max().max() == 362
