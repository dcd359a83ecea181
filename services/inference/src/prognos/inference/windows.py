"""Live windows: the newest readings of every asset, in one bounded array per asset type.

An asset type's ``WindowTable`` holds, for each asset it scores, the newest ``capacity``
rows (readings of every channel at one time) in time order, right-aligned: row
``capacity - 1`` is the newest. Memory is fixed per asset (``capacity x channels`` float32
values, plus a timestamp and a stream sequence per row), whatever the asset sends.

Applying a batch is idempotent and order-insensitive: rows are merged by timestamp (a row
already held is updated with the batch's non-missing values), so replaying the stream
after the asset moved to this replica, or a late batch, leaves the same window as
in-order delivery. ``apply`` says whether the window changed, which is what makes an
asset due for scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

VALUE_DTYPE = np.float32
_GROW = 2


@dataclass(frozen=True)
class WindowStats:
    """Memory and contents of one asset's window."""

    asset_id: str
    asset_type: str
    rows: int
    capacity_rows: int
    bytes: int
    last_reading_us: int | None


class WindowTable:
    """The live windows of the assets of one asset type.

    Args:
        asset_type: The asset type.
        capacity: Rows kept per asset.
    """

    def __init__(self, asset_type: str, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a window keeps at least one row")
        self.asset_type = asset_type
        self.capacity = capacity
        self.channels: list[str] = []
        self._channel_index: dict[str, int] = {}
        self._column_cache: dict[tuple[str, ...], np.ndarray] = {}
        self._slots: dict[str, int] = {}
        self._assets: list[str | None] = []
        self._free: list[int] = []
        self._values = np.full((0, capacity, 0), np.nan, VALUE_DTYPE)
        self._times = np.zeros((0, capacity), np.int64)
        self._counts = np.zeros(0, np.int64)
        #: Rows added to each asset since ``take_new_rows`` last asked.
        self._new_rows = np.zeros(0, np.int64)
        #: Id of the newest telemetry message applied to each asset.
        self.last_message: list[str] = []
        #: W3C trace context of that message ("" when it carried none), which the asset's
        #: next prediction continues.
        self.last_trace: list[str] = []

    # -- assets ---------------------------------------------------------------------------

    def __contains__(self, asset_id: object) -> bool:
        return asset_id in self._slots

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def asset_ids(self) -> list[str]:
        """Every asset held, in slot order."""
        return [a for a in self._assets if a is not None]

    def slot(self, asset_id: str) -> int:
        """The asset's row in the arrays, allocating one for a new asset."""
        slot = self._slots.get(asset_id)
        if slot is not None:
            return slot
        if not self._free:
            self._grow_assets()
        slot = self._free.pop()
        self._slots[asset_id] = slot
        self._assets[slot] = asset_id
        return slot

    def slot_of(self, asset_id: str) -> int | None:
        """The asset's slot, or None when it is not held."""
        return self._slots.get(asset_id)

    def asset_at(self, slot: int) -> str:
        """The asset held in ``slot``."""
        asset = self._assets[slot]
        if asset is None:
            raise KeyError(slot)
        return asset

    def drop(self, asset_id: str) -> None:
        """Forget an asset (it moved to another replica)."""
        slot = self._slots.pop(asset_id, None)
        if slot is None:
            return
        self._assets[slot] = None
        self._values[slot] = np.nan
        self._times[slot] = 0
        self._counts[slot] = 0
        self._new_rows[slot] = 0
        self.last_message[slot] = ""
        self.last_trace[slot] = ""
        self._free.append(slot)

    def _grow_assets(self) -> None:
        old = len(self._assets)
        new = max(16, old * _GROW)
        values = np.full((new, self.capacity, len(self.channels)), np.nan, VALUE_DTYPE)
        values[:old] = self._values
        self._values = values
        self._times = _grown(self._times, new)
        self._counts = _grown(self._counts, new)
        self._new_rows = _grown(self._new_rows, new)
        self._assets.extend([None] * (new - old))
        self.last_message.extend([""] * (new - old))
        self.last_trace.extend([""] * (new - old))
        self._free.extend(range(new - 1, old - 1, -1))

    def _column(self, channel: str) -> int:
        index = self._channel_index.get(channel)
        if index is None:
            index = len(self.channels)
            self.channels.append(channel)
            self._channel_index[channel] = index
            pad = np.full((*self._values.shape[:2], 1), np.nan, VALUE_DTYPE)
            self._values = np.concatenate([self._values, pad], axis=2)
        return index

    def ensure_capacity(self, rows: int) -> None:
        """Keep at least ``rows`` rows per asset from now on (a model with a longer window)."""
        if rows <= self.capacity:
            return
        extra = rows - self.capacity
        assets = self._values.shape[0]
        self._values = np.concatenate(
            [np.full((assets, extra, len(self.channels)), np.nan, VALUE_DTYPE), self._values],
            axis=1,
        )
        self._times = np.concatenate([np.zeros((assets, extra), np.int64), self._times], axis=1)
        self.capacity = rows

    # -- writing --------------------------------------------------------------------------

    def _columns(self, channels: tuple[str, ...]) -> np.ndarray:
        index = self._column_cache.get(channels)
        if index is None:
            index = np.asarray([self._column(c) for c in channels], np.int64)
            self._column_cache[channels] = index
        return index

    def apply(
        self,
        asset_id: str,
        times_us: np.ndarray,
        channels: Sequence[str],
        values: np.ndarray,
        *,
        message_id: str = "",
        traceparent: str = "",
    ) -> bool:
        """Merge a batch of readings into the asset's window.

        Args:
            asset_id: The asset.
            times_us: Reading times (microseconds), strictly ascending.
            channels: Channel name of each column of ``values``.
            values: ``(rows, channels)`` readings; NaN is "no reading".
            message_id: Id of that message (the newest one is remembered).
            traceparent: Its W3C trace context, remembered with its id.

        Returns:
            Whether the window changed.
        """
        n = len(times_us)
        if n == 0:
            return False
        columns = self._columns(tuple(channels))
        slot = self.slot(asset_id)
        count = int(self._counts[slot])
        cap = self.capacity
        if message_id:
            self.last_message[slot] = message_id
            self.last_trace[slot] = traceparent
        if count == 0 or times_us[0] > self._times[slot, cap - 1]:
            # The common case: rows after everything held; shift left and append.
            keep = min(n, cap)
            shift = cap - keep
            block = self._values[slot]
            if shift:
                block[:shift] = block[keep:]
                self._times[slot, :shift] = self._times[slot, keep:]
            block[shift:] = np.nan
            block[shift:, columns] = values[n - keep :]
            self._times[slot, shift:] = times_us[n - keep :]
            self._counts[slot] = min(cap, count + keep)
            self._new_rows[slot] = min(cap, int(self._new_rows[slot]) + keep)
            return True
        return self._merge(slot, times_us, columns, values)

    def _merge(
        self,
        slot: int,
        times_us: np.ndarray,
        columns: np.ndarray,
        values: np.ndarray,
    ) -> bool:
        """Merge rows that are not all newer than the window (late or replayed data)."""
        cap = self.capacity
        count = int(self._counts[slot])
        held_times = self._times[slot, cap - count :]
        held = self._values[slot, cap - count :]
        incoming = np.full((len(times_us), len(self.channels)), np.nan, VALUE_DTYPE)
        incoming[:, columns] = values
        times = np.concatenate([held_times, times_us])
        rows = np.concatenate([held, incoming])
        order = np.argsort(times, kind="stable")
        times, rows = times[order], rows[order]
        unique, first = np.unique(times, return_index=True)
        if len(unique) != len(times):
            # Same time twice: the later (incoming) values fill in or replace the held ones.
            merged = rows[first].copy()
            group = np.searchsorted(unique, times)
            for i in np.flatnonzero(np.r_[False, times[1:] == times[:-1]]):
                present = ~np.isnan(rows[i])
                merged[group[i], present] = rows[i, present]
            times, rows = unique, merged
        keep = min(len(times), cap)
        times, rows = times[-keep:], rows[-keep:]
        before = self._values[slot, cap - count :]
        if (
            keep == count
            and np.array_equal(times, held_times)
            and np.array_equal(rows, before, equal_nan=True)
        ):
            return False
        new_rows = int(np.count_nonzero(~np.isin(times, held_times)))
        self._values[slot] = np.nan
        self._values[slot, cap - keep :] = rows
        self._times[slot] = 0
        self._times[slot, cap - keep :] = times
        self._counts[slot] = keep
        self._new_rows[slot] = min(cap, int(self._new_rows[slot]) + new_rows)
        return True

    # -- reading --------------------------------------------------------------------------

    def count(self, slot: int) -> int:
        """Rows held for the asset in ``slot``."""
        return int(self._counts[slot])

    def newest_time(self, slot: int) -> int:
        """Time (us) of the newest row of ``slot``; 0 when empty."""
        return int(self._times[slot, self.capacity - 1]) if self._counts[slot] else 0

    def windows(
        self, slots: Sequence[int] | np.ndarray, length: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The newest ``length`` rows of each slot, front-padded with its oldest row.

        Args:
            slots: Slots of assets that hold at least one row.
            length: Rows per window.

        Returns:
            ``(values, start_us, end_us)``: ``(len(slots), length, channels)`` float32 raw
            values (NaN: no reading), and each window's first and last reading time.
        """
        cap = self.capacity
        if len(slots) == 1 and length <= cap:
            # One asset (Predict): slices instead of index arrays, when it holds enough rows.
            slot = int(slots[0])
            if self._counts[slot] >= length:
                first = cap - length
                return (
                    self._values[slot : slot + 1, first:].copy(),
                    self._times[slot, first : first + 1].copy(),
                    self._times[slot, cap - 1 :].copy(),
                )
        slots = np.asarray(slots, np.int64)
        counts = self._counts[slots]
        if np.any(counts < 1):
            raise ValueError("a window needs at least one row")
        if length > cap:
            raise ValueError(f"windows of {length} rows need a capacity of {length}")
        first = cap - np.minimum(counts, length)
        rows = np.maximum(np.arange(cap - length, cap)[None, :], first[:, None])
        values = self._values[slots[:, None], rows]
        return values, self._times[slots, first], self._times[slots, cap - 1]

    def window_before(
        self, slot: int, length: int, start_us: int | None, end_us: int | None
    ) -> tuple[np.ndarray, int, int] | None:
        """The newest ``length`` rows of one asset with ``start_us <= time < end_us``.

        Returns:
            ``(values (length, channels), start_us, end_us)`` front-padded like ``windows``,
            or None when no held row is in the range.
        """
        cap = self.capacity
        count = int(self._counts[slot])
        times = self._times[slot, cap - count :]
        mask = np.ones(count, bool)
        if start_us is not None:
            mask &= times >= start_us
        if end_us is not None:
            mask &= times < end_us
        picked = np.flatnonzero(mask)
        if len(picked) == 0:
            return None
        picked = picked[-length:]
        rows = self._values[slot, cap - count :][picked]
        if len(rows) < length:
            rows = np.concatenate([np.repeat(rows[:1], length - len(rows), axis=0), rows])
        return rows, int(times[picked[0]]), int(times[picked[-1]])

    def oldest_time(self, slot: int) -> int:
        """Time (us) of the oldest row held for ``slot``; 0 when empty."""
        count = int(self._counts[slot])
        return int(self._times[slot, self.capacity - count]) if count else 0

    def take_new_rows(self, slots: np.ndarray) -> np.ndarray:
        """Rows added to each slot since the last call, and reset the counts."""
        taken = self._new_rows[slots].copy()
        self._new_rows[slots] = 0
        return taken

    def asset_bytes(self) -> int:
        """Memory reserved per asset, in bytes."""
        per_row = len(self.channels) * np.dtype(VALUE_DTYPE).itemsize + 8  # values, time
        return self.capacity * per_row

    def stats(self) -> list[WindowStats]:
        """Memory and contents of every asset's window."""
        size = self.asset_bytes()
        out = []
        for asset, slot in sorted(self._slots.items()):
            count = int(self._counts[slot])
            out.append(
                WindowStats(
                    asset_id=asset,
                    asset_type=self.asset_type,
                    rows=count,
                    capacity_rows=self.capacity,
                    bytes=size,
                    last_reading_us=self.newest_time(slot) if count else None,
                )
            )
        return out


def _grown(array: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows, *array.shape[1:]), array.dtype)
    out[: len(array)] = array
    return out
