"""Live windows: bounded per asset, merged by time, idempotent under replay."""

from __future__ import annotations

import numpy as np
import pytest

from prognos.inference.windows import WindowTable


def rows(times: list[int], *columns: list[float]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Times and one list of values per column, as ``(times, [column, ...])``."""
    return np.asarray(times, np.int64), [np.asarray(c, np.float64) for c in columns]


def apply(
    table: WindowTable,
    asset_id: str,
    times: np.ndarray,
    names: list[str],
    columns: list[np.ndarray],
    **kwargs: float,
) -> bool:
    """``table.apply`` with the columns given one by one."""
    return table.apply(asset_id, times, names, np.column_stack(columns), **kwargs)


def test_keeps_the_newest_rows_in_time_order_within_its_capacity() -> None:
    table = WindowTable("pump", capacity=4)
    times, (a, b) = rows([1, 2, 3], [10, 20, 30], [1, 2, 3])
    assert apply(table, "p1", times, ["a", "b"], [a, b])
    times, (a, b) = rows([4, 5, 6], [40, 50, 60], [4, 5, 6])
    assert apply(table, "p1", times, ["a", "b"], [a, b])

    slot = table.slot_of("p1")
    assert slot is not None
    values, start, end = table.windows([slot], 4)
    assert values[0, :, 0].tolist() == [30, 40, 50, 60]
    assert (int(start[0]), int(end[0])) == (3, 6)
    assert table.count(slot) == 4


def test_a_short_history_is_padded_at_the_front_with_its_oldest_row() -> None:
    table = WindowTable("pump", capacity=8)
    times, (a,) = rows([7, 8], [1.0, 2.0])
    apply(table, "p1", times, ["a"], [a])

    values, start, _ = table.windows([table.slot("p1")], 5)

    assert values[0, :, 0].tolist() == [1.0, 1.0, 1.0, 1.0, 2.0]
    assert int(start[0]) == 7


def test_replaying_the_same_batches_in_any_order_leaves_the_same_window() -> None:
    batches = [rows([t, t + 1], [t * 1.0, t + 1.0]) for t in range(0, 20, 2)]
    in_order = WindowTable("pump", capacity=6)
    for times, columns in batches:
        apply(in_order, "p1", times, ["a"], columns)
    replayed = WindowTable("pump", capacity=6)
    for times, columns in [*reversed(batches), *batches]:
        apply(replayed, "p1", times, ["a"], columns)

    expected = in_order.windows([in_order.slot("p1")], 6)[0]
    assert np.array_equal(replayed.windows([replayed.slot("p1")], 6)[0], expected)
    # Once merged, applying a batch again changes nothing.
    times, columns = batches[-1]
    assert not apply(in_order, "p1", times, ["a"], columns)


def test_a_late_row_is_merged_into_its_place_and_fills_missing_values() -> None:
    table = WindowTable("pump", capacity=5)
    times, (a, b) = rows([1, 2, 4], [1, 2, 4], [10, np.nan, 40])
    apply(table, "p1", times, ["a", "b"], [a, b])
    times, (a, b) = rows([2, 3], [np.nan, 3], [20, 30])
    assert apply(table, "p1", times, ["a", "b"], [a, b])

    values, _, _ = table.windows([table.slot("p1")], 4)
    assert values[0, :, 0].tolist() == [1, 2, 3, 4]
    assert values[0, :, 1].tolist() == [10, 20, 30, 40]


def test_new_channels_widen_the_table_and_old_rows_read_as_missing() -> None:
    table = WindowTable("pump", capacity=3)
    apply(table, "p1", *_one(1, "a", 1.0))
    apply(table, "p1", *_one(2, "b", 2.0))

    values, _, _ = table.windows([table.slot("p1")], 2)
    assert table.channels == ["a", "b"]
    assert np.isnan(values[0, 0, 1]) and values[0, 1, 1] == 2.0


def _one(t: int, channel: str, value: float) -> tuple[np.ndarray, list[str], list[np.ndarray]]:
    return np.asarray([t], np.int64), [channel], [np.asarray([value])]


def test_memory_per_asset_is_fixed_and_a_dropped_asset_frees_its_slot() -> None:
    table = WindowTable("pump", capacity=10)
    for i in range(40):
        apply(table, f"p{i}", *_one(1, "a", float(i)))
    per_asset = table.asset_bytes()
    for t in range(2, 200):
        apply(table, "p0", *_one(t, "a", float(t)))

    assert table.asset_bytes() == per_asset == 10 * (4 + 8)  # float32 value, int64 time
    stats = {s.asset_id: s for s in table.stats()}
    assert stats["p0"].rows == 10 and stats["p0"].last_reading_us == 199
    table.drop("p3")
    assert "p3" not in table and len(table) == 39
    apply(table, "new", *_one(5, "a", 5.0))
    assert table.slot_of("new") is not None and len(table) == 40


def test_a_longer_model_window_grows_the_capacity_and_keeps_the_rows() -> None:
    table = WindowTable("pump", capacity=3)
    times, (a,) = rows([1, 2, 3], [1, 2, 3])
    apply(table, "p1", times, ["a"], [a])
    table.ensure_capacity(5)
    times, (a,) = rows([4], [4])
    apply(table, "p1", times, ["a"], [a])

    values, _, _ = table.windows([table.slot("p1")], 5)
    assert values[0, :, 0].tolist() == [1, 1, 2, 3, 4]


def test_a_time_range_selects_the_newest_rows_before_its_end() -> None:
    table = WindowTable("pump", capacity=10)
    times, (a,) = rows(list(range(10)), list(range(10)))
    apply(table, "p1", times, ["a"], [a])
    slot = table.slot("p1")

    found = table.window_before(slot, 3, 2, 6)
    assert found is not None
    values, first, last = found
    assert values[:, 0].tolist() == [3, 4, 5] and (first, last) == (3, 5)
    assert table.window_before(slot, 3, None, 0) is None


def test_new_rows_are_counted_until_taken() -> None:
    table = WindowTable("pump", capacity=4)
    times, (a,) = rows([1, 2, 3], [1, 2, 3])
    apply(table, "p1", times, ["a"], [a])
    slot = np.asarray([table.slot("p1")])
    assert table.take_new_rows(slot).tolist() == [3]
    assert table.take_new_rows(slot).tolist() == [0]


def test_windows_need_rows() -> None:
    table = WindowTable("pump", capacity=4)
    slot = table.slot("p1")
    with pytest.raises(ValueError, match="at least one row"):
        table.windows([slot], 2)


@pytest.mark.parametrize("length", [3, 5, 8])
def test_one_asset_reads_the_same_window_as_a_batch_and_a_copy_of_it(length: int) -> None:
    table = WindowTable("pump", capacity=8)
    times, (a, b) = rows([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [5, 4, 3, 2, 1])
    apply(table, "p1", times, ["a", "b"], [a, b])
    apply(table, "p2", times[:2], ["a", "b"], [a[:2], b[:2]])
    one = table.slot("p1")

    alone = table.windows([one], length)
    together = table.windows([table.slot("p2"), one], length)

    for single, batched in zip(alone, together, strict=True):
        np.testing.assert_array_equal(single[0], batched[1])
        assert single.shape[0] == 1 and single.dtype == batched.dtype
    values = alone[0]
    times, (a, b) = rows([6], [60], [0])
    apply(table, "p1", times, ["a", "b"], [a, b])
    assert 60 not in values  # what was read stays as it was when the table moves on
