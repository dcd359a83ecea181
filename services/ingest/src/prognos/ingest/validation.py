"""Telemetry batch validation: reject malformed batches, quarantine bad readings, convert units."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

import numpy as np

from prognos.core.quoting import quote, shorten
from prognos.ingest.domain import AssetTypeSpec, SensorChannel
from prognos.ingest.units import Conversion, UnitMismatchError, UnknownUnitError, converter

__all__ = [
    "DEFAULT_MAX_ROWS",
    "BatchRejectedError",
    "BatchValidation",
    "FieldViolation",
    "Quarantine",
    "QuarantineReason",
    "QuarantinedReading",
    "validate_batch",
]

# 50,000 rows of 16 channels is 6.4 MB of float64, above gRPC's default 4 MiB message size;
# a gateway that sends more is misconfigured.
DEFAULT_MAX_ROWS = 50_000
_MAX_ASSET_ID_LENGTH = 200
_INT64_MIN = np.iinfo(np.int64).min
_INT64_MAX = np.iinfo(np.int64).max
_NO_INDEX = np.empty(0, dtype=np.intp)

ColumnsArg = Mapping[str, tuple[str, np.ndarray]] | Sequence[tuple[str, str, np.ndarray]]


class QuarantineReason(StrEnum):
    """Why one reading was kept out of the accepted telemetry."""

    NOT_A_NUMBER = "NOT_A_NUMBER"
    INFINITE = "INFINITE"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    """Outside the channel's valid range, compared in the channel's canonical unit."""
    FUTURE = "FUTURE"
    """Timestamped further ahead of the receiver's clock than the tolerance allows."""
    LATE = "LATE"
    """Older than the lateness bound behind the newest reading seen before it."""
    DUPLICATE_TIMESTAMP = "DUPLICATE_TIMESTAMP"
    """A second row with the same timestamp in one batch; the first is kept."""


# Internal uint8 codes: 0 is "good", reason i is code i + 1.
_REASONS = tuple(QuarantineReason)
_CODE = {reason: np.uint8(i + 1) for i, reason in enumerate(_REASONS)}


class FieldViolation(NamedTuple):
    """One thing wrong with a batch, and the field it is wrong in."""

    field: str
    description: str


class BatchRejectedError(ValueError):
    """A batch too malformed to look at reading by reading; nothing of it was accepted."""

    def __init__(self, violations: Sequence[tuple[str, str]]) -> None:
        self.violations = [FieldViolation(f, d) for f, d in violations]
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in self.violations))


class QuarantinedReading(NamedTuple):
    """One reading kept out, with its value as sent (in the sender's unit)."""

    reason: QuarantineReason
    channel: str
    timestamp_us: int
    raw_value: float


@dataclass(frozen=True, eq=False)
class Quarantine:
    """The quarantined readings of one batch, stored column-wise.

    Iterating yields ``QuarantinedReading`` tuples; the arrays serve bulk consumers
    (archiving, per-reason counters) without building a Python object per reading.
    """

    channels: tuple[str, ...]
    raw_units: Mapping[str, str]
    reason_codes: np.ndarray  # uint8, index into QuarantineReason plus one
    channel_index: np.ndarray  # intp, index into channels
    timestamps_us: np.ndarray  # int64
    raw_values: np.ndarray  # float64, in raw_units[channel]

    def __len__(self) -> int:
        return int(self.reason_codes.size)

    def __iter__(self) -> Iterator[QuarantinedReading]:
        for code, ch, ts, value in zip(
            self.reason_codes.tolist(),
            self.channel_index.tolist(),
            self.timestamps_us.tolist(),
            self.raw_values.tolist(),
            strict=True,
        ):
            yield QuarantinedReading(_REASONS[code - 1], self.channels[ch], ts, value)

    def reasons(self) -> list[QuarantineReason]:
        return [_REASONS[code - 1] for code in self.reason_codes.tolist()]


@dataclass(frozen=True, eq=False)
class BatchValidation:
    """What became of a batch: the good readings in canonical units, and the quarantine.

    ``timestamps_us`` is sorted ascending, without duplicates. ``columns`` holds, per
    channel sent, a float64 array aligned with it, in the channel's canonical unit; NaN
    marks a reading of that row that was quarantined (a row is kept while any of its
    readings is good). ``counts`` has one entry per reason that occurred, counting readings.
    """

    asset_id: str
    timestamps_us: np.ndarray
    columns: Mapping[str, np.ndarray]
    quarantine: Quarantine
    counts: Mapping[QuarantineReason, int]
    received_values: int
    accepted_values: int
    reordered_rows: int = 0
    """Rows that arrived behind a newer one but within the lateness bound, and were sorted in."""
    units: Mapping[str, str] = field(default_factory=dict)
    """The canonical unit of each channel in ``columns``."""

    @property
    def accepted_rows(self) -> int:
        return int(self.timestamps_us.size)

    @property
    def quarantined_values(self) -> int:
        return len(self.quarantine)


def _as_timestamps(raw: object, violations: list[FieldViolation]) -> np.ndarray | None:
    try:
        ts = np.asarray(raw)
    except (ValueError, TypeError) as e:
        violations.append(FieldViolation("timestamps_us", f"not an array: {e}"))
        return None
    if ts.ndim != 1:
        violations.append(FieldViolation("timestamps_us", f"must be 1-D, got shape {ts.shape}"))
        return None
    if ts.size == 0:
        violations.append(FieldViolation("timestamps_us", "empty batch: no timestamps"))
        return None
    if ts.dtype.kind not in "iu":
        violations.append(
            FieldViolation("timestamps_us", f"must be integer microseconds, got {ts.dtype}")
        )
        return None
    if ts.dtype == np.uint64 and bool((ts > _INT64_MAX).any()):
        violations.append(FieldViolation("timestamps_us", "values beyond the int64 range"))
        return None
    return ts.astype(np.int64, copy=False)


def _column(name: object) -> str:
    """The field path of one column; the sender chose the name, so a long one is cut."""
    return f"columns[{shorten(str(name))}]"


def _as_values(name: str, raw: object, violations: list[FieldViolation]) -> np.ndarray | None:
    where = f"{_column(name)}.values"
    try:
        values = np.asarray(raw)
    except (ValueError, TypeError) as e:
        violations.append(FieldViolation(where, f"not an array: {e}"))
        return None
    if values.ndim != 1:
        violations.append(FieldViolation(where, f"must be 1-D, got shape {values.shape}"))
        return None
    if values.dtype.kind not in "biuf":
        violations.append(FieldViolation(where, f"must be real numbers, got {values.dtype}"))
        return None
    return values


def _column_items(columns: ColumnsArg, violations: list[FieldViolation]) -> list[tuple]:
    items: list[tuple] = []
    try:
        if isinstance(columns, Mapping):
            for name, pair in columns.items():
                unit, values = pair
                items.append((name, unit, values))
        else:
            for entry in columns:
                name, unit, values = entry
                items.append((name, unit, values))
    except (TypeError, ValueError):
        violations.append(
            FieldViolation("columns", "each channel needs a name, a unit and an array of values")
        )
        return []
    if not items:
        violations.append(FieldViolation("columns", "empty batch: no channels"))
    return items


def validate_batch(
    spec: AssetTypeSpec,
    asset_id: str,
    timestamps_us: np.ndarray,
    columns: ColumnsArg,
    *,
    now_us: int,
    last_seen_us: int | None,
    max_lateness_us: int,
    max_future_us: int,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> BatchValidation:
    """Check one asset's batch of readings and normalise it to canonical units.

    First the batch's shape: any structural fault rejects the whole batch, with every
    fault found named by field. Then each row and each reading, vectorised: a bad reading
    is quarantined with its reason and the rest of the batch is kept.

    Row checks, in order of precedence: ``FUTURE`` (``ts > now_us + max_future_us``),
    ``LATE`` (``ts < watermark - max_lateness_us``, where the watermark is the newest of
    ``last_seen_us`` and the batch's earlier, not future, rows), ``DUPLICATE_TIMESTAMP``
    (a later row repeating a timestamp). Rows out of order but within the lateness bound
    are sorted in. Reading checks: ``NOT_A_NUMBER``, ``INFINITE``, then ``OUT_OF_RANGE``
    against the channel's ``[min_value, max_value]`` after conversion to its unit.

    Args:
        spec: The asset type the asset belongs to.
        asset_id: The asset the batch is about.
        timestamps_us: Integer microseconds since the Unix epoch, one per row.
        columns: Per channel, its unit and its values (as many as timestamps):
            ``{"bearing_temp": ("degF", array)}``, or a sequence of
            ``(channel, unit, values)`` when the sender's list may repeat a channel.
            A channel of the asset type may be absent; none may be unknown.
        now_us: The receiver's clock.
        last_seen_us: The newest timestamp accepted for this asset before, if any.
        max_lateness_us: How far behind the watermark a reading may still arrive.
        max_future_us: How far ahead of ``now_us`` a timestamp may be (clock skew).
        max_rows: The most rows one batch may carry.

    Returns:
        The accepted readings, sorted by time in canonical units, and the quarantine.

    Raises:
        BatchRejectedError: the batch is malformed; ``violations`` names each field.
    """
    violations: list[FieldViolation] = []
    if not isinstance(asset_id, str) or not asset_id.strip():
        violations.append(FieldViolation("asset_id", "must name an asset"))
    elif len(asset_id) > _MAX_ASSET_ID_LENGTH or not asset_id.isprintable():
        violations.append(
            FieldViolation("asset_id", f"at most {_MAX_ASSET_ID_LENGTH} printable characters")
        )
    ts = _as_timestamps(timestamps_us, violations)
    if ts is not None and ts.size > max_rows:
        violations.append(
            FieldViolation("timestamps_us", f"{ts.size} rows exceed the limit of {max_rows}")
        )
        ts = None

    by_name = {channel.name: channel for channel in spec.channels}
    names: list[str] = []
    channels: list[SensorChannel] = []
    conversions: list[Conversion] = []
    arrays: list[np.ndarray] = []
    raw_units: dict[str, str] = {}
    seen: set[str] = set()
    for name, unit, raw_values in _column_items(columns, violations):
        where = _column(name)
        channel = by_name.get(name) if isinstance(name, str) else None
        if channel is None:
            violations.append(
                FieldViolation(where, f"unknown channel for asset type {spec.name!r}")
            )
            continue
        if name in seen:
            violations.append(FieldViolation(where, "channel given more than once"))
            continue
        seen.add(name)
        conversion: Conversion | None = None
        try:
            conversion = converter(unit, channel.unit)  # type: ignore[assignment]
        except UnknownUnitError as e:
            violations.append(FieldViolation(f"{where}.unit", f"{quote(e.unit)} {e.description}"))
        except UnitMismatchError as e:
            violations.append(
                FieldViolation(
                    f"{where}.unit",
                    f"cannot convert {quote(e.from_unit)} to {quote(e.to_unit)}: {e.description}",
                )
            )
        values = _as_values(name, raw_values, violations)
        if values is not None and ts is not None and values.size != ts.size:
            violations.append(
                FieldViolation(f"{where}.values", f"{values.size} values for {ts.size} timestamps")
            )
            continue
        if conversion is None or values is None:
            continue
        names.append(name)
        channels.append(channel)
        conversions.append(conversion)
        arrays.append(values)
        raw_units[name] = unit
    if violations or ts is None:
        raise BatchRejectedError(violations)

    clean = _accept_if_clean(
        asset_id,
        ts,
        names,
        channels,
        conversions,
        arrays,
        raw_units,
        newest_allowed_us=_clamp(now_us + max_future_us),
        last_seen_us=last_seen_us,
    )
    if clean is not None:
        return clean

    row_codes = _row_checks(
        ts,
        now_us=now_us,
        last_seen_us=last_seen_us,
        max_lateness_us=max_lateness_us,
        max_future_us=max_future_us,
    )
    reordered = _count_reordered(ts, row_codes, last_seen_us)

    raw = np.empty((len(arrays), ts.size), dtype=np.float64)
    for i, values in enumerate(arrays):
        raw[i] = values
    canonical = _convert(raw, conversions)
    low = np.array([channel.min_value for channel in channels])[:, None]
    high = np.array([channel.max_value for channel in channels])[:, None]

    codes = np.zeros(raw.shape, dtype=np.uint8)
    with np.errstate(invalid="ignore"):
        codes[~((canonical >= low) & (canonical <= high))] = _CODE[QuarantineReason.OUT_OF_RANGE]
    codes[np.isinf(raw)] = _CODE[QuarantineReason.INFINITE]
    codes[np.isnan(raw)] = _CODE[QuarantineReason.NOT_A_NUMBER]
    bad_rows = row_codes != 0
    codes[:, bad_rows] = row_codes[bad_rows]

    any_bad = bool(codes.any())
    channel_idx, row_idx = np.nonzero(codes) if any_bad else (_NO_INDEX, _NO_INDEX)
    quarantine = Quarantine(
        channels=tuple(names),
        raw_units=raw_units,
        reason_codes=codes[channel_idx, row_idx],
        channel_index=channel_idx,
        timestamps_us=ts[row_idx],
        raw_values=raw[channel_idx, row_idx],
    )
    per_code = np.bincount(quarantine.reason_codes, minlength=len(_REASONS) + 1)
    counts = {r: int(per_code[i + 1]) for i, r in enumerate(_REASONS) if per_code[i + 1]}

    order = np.argsort(ts, kind="stable")
    accepted_values = int(raw.size)
    if any_bad:
        good = codes == 0
        canonical[~good] = np.nan
        keep = good.any(axis=0)
        order = order[keep[order]]
        accepted_values = int(np.count_nonzero(good))
    if order.size != ts.size or np.any(order[1:] < order[:-1]):
        accepted = canonical[:, order]
        timestamps = ts[order]
    else:  # already in order: no copy
        accepted = canonical
        timestamps = ts.copy()
    return BatchValidation(
        asset_id=asset_id,
        timestamps_us=timestamps,
        columns={name: accepted[i] for i, name in enumerate(names)},
        quarantine=quarantine,
        counts=counts,
        received_values=int(raw.size),
        accepted_values=accepted_values,
        reordered_rows=reordered,
        units={name: channel.unit for name, channel in zip(names, channels, strict=True)},
    )


def _accept_if_clean(
    asset_id: str,
    ts: np.ndarray,
    names: list[str],
    channels: list[SensorChannel],
    conversions: list[Conversion],
    arrays: list[np.ndarray],
    raw_units: dict[str, str],
    *,
    newest_allowed_us: int,
    last_seen_us: int | None,
) -> BatchValidation | None:
    """The whole batch accepted, if it is clean; None when any check needs the full path.

    Clean means: timestamps strictly increasing, all after ``last_seen_us`` and none in the
    future (so no row is late, future or repeated), and every reading finite and within its
    channel's range. That is the common case, and it needs a few passes instead of a dozen.
    """
    if ts.size > 1 and not bool((ts[1:] > ts[:-1]).all()):
        return None
    if last_seen_us is not None and int(ts[0]) <= last_seen_us:
        return None
    if int(ts[-1]) > newest_allowed_us:
        return None
    low = np.array([channel.min_value for channel in channels])
    high = np.array([channel.max_value for channel in channels])
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        return None  # an infinite reading could pass the range check; let the full path judge
    raw = np.empty((len(arrays), ts.size), dtype=np.float64)
    for i, values in enumerate(arrays):
        raw[i] = values
    canonical = raw if all(c.identity for c in conversions) else _convert(raw, conversions)
    # NaN fails both comparisons, infinity one of them: neither passes as clean.
    with np.errstate(invalid="ignore"):
        if not bool(((canonical >= low[:, None]) & (canonical <= high[:, None])).all()):
            return None
    return BatchValidation(
        asset_id=asset_id,
        timestamps_us=ts.copy(),
        columns={name: canonical[i] for i, name in enumerate(names)},
        quarantine=Quarantine(
            channels=tuple(names),
            raw_units=raw_units,
            reason_codes=np.empty(0, dtype=np.uint8),
            channel_index=_NO_INDEX,
            timestamps_us=np.empty(0, dtype=np.int64),
            raw_values=np.empty(0, dtype=np.float64),
        ),
        counts={},
        received_values=int(raw.size),
        accepted_values=int(raw.size),
        reordered_rows=0,
        units={name: channel.unit for name, channel in zip(names, channels, strict=True)},
    )


def _clamp(value: int) -> int:
    return max(int(_INT64_MIN), min(int(_INT64_MAX), int(value)))


def _previous_max(ts: np.ndarray, eligible: np.ndarray, last_seen_us: int | None) -> np.ndarray:
    """Per row, the newest eligible timestamp before it (or last_seen_us); INT64_MIN if none."""
    running = np.maximum.accumulate(np.where(eligible, ts, _INT64_MIN))
    previous = np.empty_like(ts)
    previous[0] = _INT64_MIN
    previous[1:] = running[:-1]
    if last_seen_us is not None:
        np.maximum(previous, _clamp(last_seen_us), out=previous)
    return previous


def _row_checks(
    ts: np.ndarray,
    *,
    now_us: int,
    last_seen_us: int | None,
    max_lateness_us: int,
    max_future_us: int,
) -> np.ndarray:
    codes = np.zeros(ts.size, dtype=np.uint8)
    future = ts > _clamp(now_us + max_future_us)
    codes[future] = _CODE[QuarantineReason.FUTURE]

    # A far-future row must not move the watermark, or every row after it would be late.
    previous = _previous_max(ts, ~future, last_seen_us)
    lateness = max(0, int(max_lateness_us))
    # Saturating subtraction: where previous - lateness would wrap, there is no bound.
    has_bound = previous >= _INT64_MIN + lateness
    bound = np.where(has_bound, previous - np.int64(min(lateness, _INT64_MAX)), _INT64_MIN)
    late = ~future & has_bound & (ts < bound)
    codes[late] = _CODE[QuarantineReason.LATE]

    candidates = np.flatnonzero(codes == 0)
    if candidates.size > 1:
        order = candidates[np.argsort(ts[candidates], kind="stable")]
        sorted_ts = ts[order]
        repeats = np.flatnonzero(sorted_ts[1:] == sorted_ts[:-1]) + 1
        codes[order[repeats]] = _CODE[QuarantineReason.DUPLICATE_TIMESTAMP]
    return codes


def _count_reordered(ts: np.ndarray, row_codes: np.ndarray, last_seen_us: int | None) -> int:
    ok = row_codes == 0
    previous = _previous_max(ts, ok, last_seen_us)
    return int(np.count_nonzero(ok & (ts < previous)))


def _convert(raw: np.ndarray, conversions: list[Conversion]) -> np.ndarray:
    if all(c.affine for c in conversions):
        scale = np.array([c.scale for c in conversions])[:, None]
        offset = np.array([c.offset for c in conversions])[:, None]
        with np.errstate(over="ignore", invalid="ignore"):
            return raw * scale + offset
    out = np.empty_like(raw)
    with np.errstate(all="ignore"):
        for i, conversion in enumerate(conversions):
            out[i] = conversion(raw[i])
    return out
