"""Telemetry files to columnar batches: CSV, JSON lines and NASA C-MAPSS, read as streams."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json

from prognos.ingest.domain import AssetTypeSpec, FailureHorizon, SensorChannel
from prognos.ingest.units import UnknownUnitError, check_unit

__all__ = [
    "CMAPSS_ASSET_TYPE",
    "DEFAULT_BATCH_ROWS",
    "DEFAULT_CYCLE_INTERVAL",
    "BatchReader",
    "ChannelColumn",
    "ColumnMapping",
    "FailureLabel",
    "FileBatch",
    "FileFormatError",
    "LineError",
    "ProgressCallback",
    "TimeFormat",
    "cmapss_asset_id",
    "cmapss_asset_type",
    "field_count",
    "read_cmapss",
    "read_csv",
    "read_json_lines",
]

DEFAULT_BATCH_ROWS = 10_000
CMAPSS_ASSET_TYPE = "turbofan"
_BLOCK_SIZE = 1 << 20
_MAX_ERRORS_KEPT = 1_000
_NULL_TOKENS = ("", "NA", "N/A", "null", "NULL")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_ABS_US = 2**63 - 1
# A space-delimited line's spaces at either end, and each space that another one follows.
_EXTRA_SPACES = re.compile(rb"(?m)^ +| +(?=\r?$)| (?= )")

ProgressCallback = Callable[[int, int | None], None]
Source = str | os.PathLike[str] | IO[bytes]


class TimeFormat(StrEnum):
    """How a file writes its timestamps."""

    ISO_8601 = "iso8601"
    """``2024-05-01T12:00:00.5+02:00``; without an offset the time is taken as UTC."""
    UNIX_S = "unix_s"
    UNIX_MS = "unix_ms"
    UNIX_US = "unix_us"


_UNIX_FACTOR = {TimeFormat.UNIX_S: 1e6, TimeFormat.UNIX_MS: 1e3, TimeFormat.UNIX_US: 1.0}


class FileFormatError(ValueError):
    """A file or its mapping is unusable as a whole; ``field`` names what is wrong."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


@dataclass(frozen=True)
class ChannelColumn:
    """A file column (CSV header name or JSON key) holding one channel, in one unit."""

    column: str
    channel: str
    unit: str


@dataclass(frozen=True)
class ColumnMapping:
    """Which columns of a file hold the time, the asset and each channel.

    Exactly one of ``asset_column`` (a column naming the asset of each row) and
    ``asset_id`` (one asset for the whole file) is given.
    """

    timestamp: str
    channels: tuple[ChannelColumn, ...]
    time_format: TimeFormat = TimeFormat.ISO_8601
    asset_column: str | None = None
    asset_id: str | None = None

    def __post_init__(self) -> None:
        if (self.asset_column is None) == (self.asset_id is None):
            raise FileFormatError("mapping.asset", "give either asset_column or asset_id")
        if self.asset_id is not None and not self.asset_id.strip():
            raise FileFormatError("mapping.asset_id", "must not be empty")
        if not self.channels:
            raise FileFormatError("mapping.channels", "map at least one column to a channel")
        TimeFormat(self.time_format)
        seen: set[str] = set()
        for i, ch in enumerate(self.channels):
            if ch.channel in seen:
                raise FileFormatError(
                    f"mapping.channels[{i}].channel", f"channel {ch.channel!r} mapped twice"
                )
            seen.add(ch.channel)
            try:
                check_unit(ch.unit)
            except UnknownUnitError as e:
                raise FileFormatError(f"mapping.channels[{i}].unit", str(e)) from None

    @property
    def units(self) -> dict[str, str]:
        return {ch.channel: ch.unit for ch in self.channels}


@dataclass(frozen=True)
class LineError:
    """A line of a file that was skipped, and why."""

    line: int
    reason: str


@dataclass(frozen=True)
class FailureLabel:
    """An asset failed at this time (for C-MAPSS: the last cycle of a run-to-failure unit)."""

    asset_id: str
    timestamp_us: int
    cycle: int | None = None


@dataclass(frozen=True, eq=False)
class FileBatch:
    """Readings of one asset from a file, ready for ``validate_batch``.

    ``columns`` maps each channel to ``(unit, values)``; ``lines`` gives the file line of
    each row; ``failure`` is set on the batch that holds the asset's failure, if the file
    says so.
    """

    asset_id: str
    timestamps_us: np.ndarray
    columns: dict[str, tuple[str, np.ndarray]]
    lines: np.ndarray
    failure: FailureLabel | None = None

    def __len__(self) -> int:
        return int(self.timestamps_us.size)


class BatchReader(Iterator[FileBatch]):
    """Iterates a file's batches; collects the lines it skipped and the failures it saw.

    ``errors`` keeps the first bad lines (``error_count`` counts them all); ``rows`` counts
    rows yielded. Both are complete once iteration ends.
    """

    def __init__(self, max_errors: int = _MAX_ERRORS_KEPT) -> None:
        self.errors: list[LineError] = []
        self.error_count = 0
        self.rows = 0
        self.failures: list[FailureLabel] = []
        self._max_errors = max_errors
        self._batches: Iterator[FileBatch] = iter(())

    def __next__(self) -> FileBatch:
        batch = next(self._batches)
        self.rows += len(batch)
        return batch

    def error(self, line: int, reason: str) -> None:
        self.error_count += 1
        if len(self.errors) < self._max_errors:
            self.errors.append(LineError(line, reason))


# --- reading bytes -----------------------------------------------------------------------


class _Input:
    """A binary stream cut into blocks of whole lines, reporting progress."""

    def __init__(self, source: Source, on_progress: ProgressCallback | None) -> None:
        if isinstance(source, str | os.PathLike):
            path = Path(source)
            self.total: int | None = path.stat().st_size
            self._file: IO[bytes] = path.open("rb")
            self._owned = True
        else:
            self._file = source
            self._owned = False
            self.total = _remaining_size(source)
        self._on_progress = on_progress
        self.bytes_read = 0
        self._rest = b""
        self.next_line = 1  # file line number of the next line handed out

    def close(self) -> None:
        if self._owned:
            self._file.close()

    def _read(self, size: int) -> bytes:
        data = self._file.read(size)
        if not isinstance(data, bytes):
            raise FileFormatError("source", "must be a path or a stream opened in binary mode")
        self.bytes_read += len(data)
        return data

    def progress(self) -> None:
        if self._on_progress is not None:
            self._on_progress(self.bytes_read, self.total)

    def header(self) -> bytes | None:
        """The first line, without its line ending; None for an empty file."""
        while b"\n" not in self._rest:
            data = self._read(_BLOCK_SIZE)
            if not data:
                break
            self._rest += data
        if not self._rest:
            return None
        line, _, self._rest = self._rest.partition(b"\n")
        self.next_line = 2
        return line.rstrip(b"\r")

    def blocks(self) -> Iterator[tuple[int, bytes]]:
        """Yield ``(first line number, block)``; a block holds whole lines, newline-ended."""
        while True:
            fresh = self._read(_BLOCK_SIZE)
            data, self._rest = self._rest + fresh, b""
            if not fresh:
                if data:
                    yield from self._hand_out(data if data.endswith(b"\n") else data + b"\n")
                return
            cut = data.rfind(b"\n") + 1
            self._rest = data[cut:]
            if cut:
                yield from self._hand_out(data[:cut])

    def _hand_out(self, block: bytes) -> Iterator[tuple[int, bytes]]:
        first = self.next_line
        self.next_line += block.count(b"\n")
        yield first, block


def _remaining_size(stream: IO[bytes]) -> int | None:
    try:
        here = stream.tell()
        end = stream.seek(0, io.SEEK_END)
        stream.seek(here)
    except (OSError, AttributeError, ValueError):
        return None
    return end - here


# --- batching ----------------------------------------------------------------------------


@dataclass
class _Rows:
    """Parsed rows of one block: per row a line, a time and an asset; per channel values."""

    lines: np.ndarray
    timestamps_us: np.ndarray
    asset_codes: np.ndarray | None  # per row an index into asset_names; None: one asset
    values: list[np.ndarray]
    asset_names: list[str] = field(default_factory=list)


@dataclass
class _Pending:
    lines: list[np.ndarray] = field(default_factory=list)
    timestamps_us: list[np.ndarray] = field(default_factory=list)
    values: list[list[np.ndarray]] = field(default_factory=list)
    count: int = 0


class _Batcher:
    """Gathers rows per asset and cuts batches of at most ``max_rows`` rows."""

    def __init__(self, mapping: ColumnMapping, max_rows: int) -> None:
        self._channels = [(ch.channel, ch.unit) for ch in mapping.channels]
        self._fixed_asset = mapping.asset_id
        self._max_rows = max_rows
        self._pending: dict[str, _Pending] = {}

    def add(self, rows: _Rows) -> Iterator[FileBatch]:
        if rows.lines.size == 0:
            return
        if rows.asset_codes is None:
            assert self._fixed_asset is not None
            yield from self._add_one(self._fixed_asset, rows, slice(None))
            return
        codes = rows.asset_codes
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(rows.asset_names) + 1))
        for k, name in enumerate(rows.asset_names):
            if bounds[k + 1] > bounds[k]:
                yield from self._add_one(name, rows, order[bounds[k] : bounds[k + 1]])

    def _add_one(self, asset: str, rows: _Rows, pick: Any) -> Iterator[FileBatch]:
        pending = self._pending.setdefault(asset, _Pending())
        pending.lines.append(rows.lines[pick])
        pending.timestamps_us.append(rows.timestamps_us[pick])
        pending.values.append([v[pick] for v in rows.values])
        pending.count += int(pending.lines[-1].size)
        while pending.count >= self._max_rows:
            yield self._cut(asset, pending, self._max_rows)

    def _cut(self, asset: str, pending: _Pending, n: int) -> FileBatch:
        lines = np.concatenate(pending.lines)
        ts = np.concatenate(pending.timestamps_us)
        values = [np.concatenate(parts) for parts in zip(*pending.values, strict=True)]
        batch = FileBatch(
            asset_id=asset,
            timestamps_us=ts[:n],
            columns={
                name: (unit, v[:n]) for (name, unit), v in zip(self._channels, values, strict=True)
            },
            lines=lines[:n],
        )
        pending.lines, pending.timestamps_us = [lines[n:]], [ts[n:]]
        pending.values = [[v[n:] for v in values]]
        pending.count = int(lines.size) - n
        return batch

    def flush(self) -> Iterator[FileBatch]:
        for asset, pending in self._pending.items():
            if pending.count:
                yield self._cut(asset, pending, pending.count)
        self._pending.clear()


# --- parsing values ----------------------------------------------------------------------


def _iso_to_us(text: str) -> int:
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _number_to_us(value: float, time_format: TimeFormat) -> int:
    scaled = value * _UNIX_FACTOR[time_format]
    if not math.isfinite(scaled) or abs(scaled) >= _MAX_ABS_US:
        raise ValueError(f"timestamp {value!r} is out of range")
    return round(scaled)


def _time_to_us(value: object, time_format: TimeFormat) -> int:
    """One timestamp as written in a file (text or JSON value) to microseconds."""
    if time_format is TimeFormat.ISO_8601:
        if not isinstance(value, str):
            raise ValueError(f"timestamp {value!r} is not an ISO 8601 string")
        return _iso_to_us(value)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"timestamp {value!r} is not a number")
    return _number_to_us(float(value), time_format)


def _codes(assets: list[str], names: list[str]) -> np.ndarray:
    """Index each row's asset into ``names``, which this fills in order of first appearance."""
    index: dict[str, int] = {}
    codes = np.array([index.setdefault(a, len(index)) for a in assets], dtype=np.intp)
    names.extend(index)
    return codes


def _cell_to_float(text: str) -> float:
    text = text.strip()
    if text in _NULL_TOKENS:
        return math.nan
    return float(text)


def _to_us_array(values: np.ndarray, time_format: TimeFormat) -> tuple[np.ndarray, np.ndarray]:
    """Unix numbers to microseconds; returns the values and a mask of the usable ones."""
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = values * _UNIX_FACTOR[time_format]
        ok = np.isfinite(scaled) & (np.abs(scaled) < 9.2e18)
    return np.rint(np.where(ok, scaled, 0.0)).astype(np.int64), ok


# --- CSV ---------------------------------------------------------------------------------


def read_csv(
    source: Source,
    mapping: ColumnMapping,
    *,
    max_rows: int = DEFAULT_BATCH_ROWS,
    delimiter: str = ",",
    on_progress: ProgressCallback | None = None,
) -> BatchReader:
    """Read a CSV file with a header row as batches of one asset each.

    Lines that cannot be read (wrong number of fields, a value that is not a number, a bad
    timestamp, a missing asset, bytes that are not UTF-8) are skipped and reported on the
    reader's ``errors`` with their line number. An empty cell or ``NA``/``null`` is a
    missing reading (NaN). Values may be quoted but may not contain line breaks.

    Args:
        source: A path, or a binary stream.
        mapping: Which columns to read and what they mean.
        max_rows: The most rows in one batch.
        delimiter: The field separator; with ``" "``, repeated spaces count as one and
            spaces at the start or end of a line are ignored (NASA's aligned text files).
        on_progress: Called with ``(bytes_read, total_bytes)`` as the file is read;
            ``total_bytes`` is None for a stream of unknown length.

    Returns:
        An iterator of batches that also collects the skipped lines.

    Raises:
        FileFormatError: (on first iteration) the file is empty, its header is unreadable,
            or a mapped column is missing from it.
    """
    reader = BatchReader()
    reader._batches = _csv_batches(reader, source, mapping, max_rows, delimiter, on_progress)
    return reader


@dataclass(frozen=True)
class _CsvLayout:
    header: list[str]
    timestamp: int
    asset: int | None
    channels: list[int]


def _collapse_spaces(data: bytes) -> bytes:
    """Space-delimited text with repeated spaces counted as one and none at a line's ends."""
    return _EXTRA_SPACES.sub(b"", data)


def field_count(line: bytes, delimiter: str) -> int:
    """The number of fields of one CSV line, read as ``read_csv`` reads it (no quoting)."""
    line = line.rstrip(b"\r\n")
    if delimiter == " ":
        line = _collapse_spaces(line)
    return line.count(delimiter.encode()) + 1


def _csv_layout(header_bytes: bytes | None, mapping: ColumnMapping, delimiter: str) -> _CsvLayout:
    if header_bytes is None:
        raise FileFormatError("file", "is empty: expected a header row")
    try:
        text = header_bytes.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise FileFormatError("file.header", "line 1 is not UTF-8 text") from None
    try:
        header = [name.strip() for name in next(csv.reader([text], delimiter=delimiter))]
    except (csv.Error, StopIteration) as e:
        raise FileFormatError("file.header", f"line 1 is not a CSV header ({e})") from None

    def position(name: str, where: str) -> int:
        hits = [i for i, h in enumerate(header) if h == name]
        if not hits:
            raise FileFormatError(where, f"column {name!r} is not in the header")
        if len(hits) > 1:
            raise FileFormatError(where, f"column {name!r} appears {len(hits)} times in the header")
        return hits[0]

    return _CsvLayout(
        header=header,
        timestamp=position(mapping.timestamp, "mapping.timestamp"),
        asset=(
            position(mapping.asset_column, "mapping.asset_column")
            if mapping.asset_column is not None
            else None
        ),
        channels=[
            position(ch.column, f"mapping.channels[{i}].column")
            for i, ch in enumerate(mapping.channels)
        ],
    )


def _csv_batches(
    reader: BatchReader,
    source: Source,
    mapping: ColumnMapping,
    max_rows: int,
    delimiter: str,
    on_progress: ProgressCallback | None,
) -> Iterator[FileBatch]:
    if max_rows < 1:
        raise FileFormatError("max_rows", "must be at least 1")
    stream = _Input(source, on_progress)
    # A space-delimited file (NASA's text files) may align its columns with several spaces.
    spaced = delimiter == " "
    try:
        header = stream.header()
        if spaced and header is not None:
            header = _collapse_spaces(header)
        layout = _csv_layout(header, mapping, delimiter)
        batcher = _Batcher(mapping, max_rows)
        for first_line, raw_block in stream.blocks():
            block = _collapse_spaces(raw_block) if spaced else raw_block
            rows = _csv_block_fast(reader, first_line, block, layout, mapping, delimiter)
            if rows is None:
                rows = _csv_block_slow(reader, first_line, block, layout, mapping, delimiter)
            yield from batcher.add(rows)
            stream.progress()
        yield from batcher.flush()
        stream.progress()
    finally:
        stream.close()


def _is_utf8(block: bytes) -> bool:
    if block.isascii():
        return True
    try:
        block.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _fast_path_possible(block: bytes) -> bool:
    if b'"' in block or b"\n\n" in block or b"\n\r\n" in block or block.startswith((b"\n", b"\r")):
        return False
    return _is_utf8(block)


def _csv_block_fast(
    reader: BatchReader,
    first_line: int,
    block: bytes,
    layout: _CsvLayout,
    mapping: ColumnMapping,
    delimiter: str,
) -> _Rows | None:
    """Parse a block with Arrow; None when the block needs the line-by-line parser."""
    if not _fast_path_possible(block):
        return None
    names = [f"c{i}" for i in range(len(layout.header))]
    iso = mapping.time_format is TimeFormat.ISO_8601
    types: dict[str, pa.DataType] = {names[i]: pa.float64() for i in layout.channels}
    types[names[layout.timestamp]] = pa.string() if iso else pa.float64()
    if layout.asset is not None:
        types[names[layout.asset]] = pa.string()
    skipped: list[tuple[int, str]] = []

    def on_invalid(row: Any) -> str:
        skipped.append(
            (row.number, f"expected {row.expected_columns} fields, found {row.actual_columns}")
        )
        return "skip"

    try:
        table = pa_csv.read_csv(
            io.BytesIO(block),
            read_options=pa_csv.ReadOptions(
                column_names=names, use_threads=False, block_size=len(block) + 1
            ),
            parse_options=pa_csv.ParseOptions(
                delimiter=delimiter,
                quote_char=False,
                ignore_empty_lines=False,
                invalid_row_handler=on_invalid,
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types=types,
                include_columns=list(types),
                null_values=list(_NULL_TOKENS),
                strings_can_be_null=True,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if any(number is None for number, _ in skipped):
        return None
    n_lines = block.count(b"\n")
    dropped = np.array(sorted(number for number, _ in skipped), dtype=np.int64)
    kept = np.setdiff1d(np.arange(1, n_lines + 1, dtype=np.int64), dropped, assume_unique=True)
    lines = kept + (first_line - 1)
    if lines.size != table.num_rows:
        return None  # the parser and our line count disagree; take the careful path
    problems = [(first_line + number - 1, reason) for number, reason in skipped]

    asset = names[layout.asset] if layout.asset is not None else None
    channels = [names[i] for i in layout.channels]
    return _rows_from_table(
        reader,
        table,
        lines,
        names[layout.timestamp],
        mapping.time_format,
        asset,
        channels,
        problems,
    )


def _rows_from_table(
    reader: BatchReader,
    table: pa.Table,
    lines: np.ndarray,
    timestamp: str,
    time_format: TimeFormat,
    asset: str | None,
    channels: list[str],
    problems: list[tuple[int, str]] | None = None,
) -> _Rows:
    """Rows parsed by Arrow to ``_Rows``; reports, in line order, ``problems`` found while
    parsing and the rows without a usable time or asset."""
    problems = [] if problems is None else problems
    ok = np.ones(table.num_rows, dtype=bool)
    ts_column = table.column(timestamp)
    if time_format is TimeFormat.ISO_8601:
        ts, ts_ok = _iso_column(ts_column)
    else:
        ts, ts_ok = _to_us_array(_floats(ts_column), time_format)
    for row in np.flatnonzero(~ts_ok).tolist():
        value = ts_column[row].as_py()
        reason = "missing timestamp" if value is None else f"bad timestamp {value!r}"
        problems.append((int(lines[row]), reason))
    ok &= ts_ok

    asset_codes: np.ndarray | None = None
    asset_names: list[str] = []
    if asset is not None:
        asset_column = pc.utf8_trim_whitespace(table.column(asset))
        encoded = pc.dictionary_encode(asset_column).combine_chunks()
        asset_names = encoded.dictionary.to_pylist()
        asset_codes = np.asarray(pc.coalesce(encoded.indices, 0).to_numpy(), dtype=np.intp)
        blank = pc.coalesce(pc.equal(asset_column, ""), pa.scalar(True))
        missing = np.asarray(blank.to_numpy(), dtype=bool)
        for row in np.flatnonzero(missing & ok).tolist():
            problems.append((int(lines[row]), "missing asset id"))
        ok &= ~missing
    for line, reason in sorted(problems, key=lambda problem: problem[0]):
        reader.error(line, reason)
    values = [_floats(table.column(name)) for name in channels]
    if not ok.all():
        lines, ts = lines[ok], ts[ok]
        asset_codes = asset_codes[ok] if asset_codes is not None else None
        values = [v[ok] for v in values]
    return _Rows(lines, ts, asset_codes, values, asset_names)


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    filled = pc.coalesce(column, pa.scalar(math.nan, pa.float64()))
    return np.asarray(filled.to_numpy(), dtype=np.float64)


def _iso_column(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """ISO 8601 strings to microseconds, with Arrow where it can, else one by one."""
    for target in (pa.timestamp("us", tz="UTC"), pa.timestamp("us")):
        try:
            parsed = pc.cast(column, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        ok = np.asarray(parsed.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        ts = np.asarray(
            pc.coalesce(parsed.cast(pa.int64()), pa.scalar(0, pa.int64())).to_numpy(),
            dtype=np.int64,
        )
        return ts, ok
    texts = column.to_pylist()
    ts = np.zeros(len(texts), dtype=np.int64)
    ok = np.zeros(len(texts), dtype=bool)
    for i, text in enumerate(texts):
        if text is None:
            continue
        try:
            ts[i] = _iso_to_us(text)
            ok[i] = True
        except (ValueError, OverflowError):
            pass
    return ts, ok


def _csv_block_slow(
    reader: BatchReader,
    first_line: int,
    block: bytes,
    layout: _CsvLayout,
    mapping: ColumnMapping,
    delimiter: str,
) -> _Rows:
    """Parse a block line by line, reporting each bad line."""
    width = len(layout.header)
    lines: list[int] = []
    stamps: list[int] = []
    assets: list[str] = []
    asset_names: list[str] = []
    values: list[list[float]] = [[] for _ in layout.channels]
    for offset, raw in enumerate(block.split(b"\n")[:-1]):
        number = first_line + offset
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
            fields = next(csv.reader([text], delimiter=delimiter, strict=True))
        except UnicodeDecodeError:
            reader.error(number, "not UTF-8 text")
            continue
        except csv.Error as e:
            reader.error(number, f"not a CSV row ({e})")
            continue
        if len(fields) != width:
            reader.error(number, f"expected {width} fields, found {len(fields)}")
            continue
        try:
            stamp = _time_to_us(fields[layout.timestamp], mapping.time_format)
        except (ValueError, OverflowError):
            cell = fields[layout.timestamp]
            reader.error(
                number, "missing timestamp" if not cell.strip() else f"bad timestamp {cell!r}"
            )
            continue
        asset = ""
        if layout.asset is not None:
            asset = fields[layout.asset].strip()
            if not asset:
                reader.error(number, "missing asset id")
                continue
        row: list[float] = []
        for k, i in enumerate(layout.channels):
            try:
                row.append(_cell_to_float(fields[i]))
            except ValueError:
                reader.error(
                    number, f"column {mapping.channels[k].column!r}: {fields[i]!r} is not a number"
                )
                break
        else:
            lines.append(number)
            stamps.append(stamp)
            assets.append(asset)
            for column, value in zip(values, row, strict=True):
                column.append(value)
    return _Rows(
        lines=np.array(lines, dtype=np.int64),
        timestamps_us=np.array(stamps, dtype=np.int64),
        asset_codes=_codes(assets, asset_names) if layout.asset is not None else None,
        asset_names=asset_names,
        values=[np.array(v, dtype=np.float64) for v in values],
    )


# --- JSON lines --------------------------------------------------------------------------


def read_json_lines(
    source: Source,
    mapping: ColumnMapping,
    *,
    max_rows: int = DEFAULT_BATCH_ROWS,
    on_progress: ProgressCallback | None = None,
) -> BatchReader:
    """Read a JSON lines file (one object per line) as batches of one asset each.

    ``mapping`` names keys instead of columns. A missing key or ``null`` is a missing
    reading (NaN); a line that is not a JSON object, lacks its timestamp or asset, or holds
    a value that is not a number is skipped and reported with its line number. Blank
    lines are ignored.

    Args:
        source: A path, or a binary stream.
        mapping: Which keys to read and what they mean.
        max_rows: The most rows in one batch.
        on_progress: Called with ``(bytes_read, total_bytes)`` as the file is read.

    Returns:
        An iterator of batches that also collects the skipped lines.
    """
    reader = BatchReader()
    reader._batches = _json_batches(reader, source, mapping, max_rows, on_progress)
    return reader


def _json_batches(
    reader: BatchReader,
    source: Source,
    mapping: ColumnMapping,
    max_rows: int,
    on_progress: ProgressCallback | None,
) -> Iterator[FileBatch]:
    if max_rows < 1:
        raise FileFormatError("max_rows", "must be at least 1")
    stream = _Input(source, on_progress)
    try:
        batcher = _Batcher(mapping, max_rows)
        for first_line, block in stream.blocks():
            if first_line == 1 and block.startswith(b"\xef\xbb\xbf"):
                block = block[3:]
            rows = _json_block_fast(reader, first_line, block, mapping)
            if rows is None:
                rows = _json_block(reader, first_line, block, mapping)
            yield from batcher.add(rows)
            stream.progress()
        yield from batcher.flush()
        stream.progress()
    finally:
        stream.close()


def _json_value(value: object) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


def _json_block_fast(
    reader: BatchReader, first_line: int, block: bytes, mapping: ColumnMapping
) -> _Rows | None:
    """Parse a block with Arrow; None when the block needs the line-by-line parser."""
    keys = [mapping.timestamp, *(ch.column for ch in mapping.channels)]
    if mapping.asset_column is not None:
        keys.append(mapping.asset_column)
    if len(set(keys)) != len(keys) or not _is_utf8(block):
        return None
    iso = mapping.time_format is TimeFormat.ISO_8601
    fields = [(mapping.timestamp, pa.string() if iso else pa.float64())]
    fields += [(ch.column, pa.float64()) for ch in mapping.channels]
    if mapping.asset_column is not None:
        fields.append((mapping.asset_column, pa.string()))
    try:
        table = pa_json.read_json(
            io.BytesIO(block),
            read_options=pa_json.ReadOptions(use_threads=False, block_size=len(block) + 1),
            parse_options=pa_json.ParseOptions(
                explicit_schema=pa.schema(fields), unexpected_field_behavior="ignore"
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    n_lines = block.count(b"\n")
    if table.num_rows != n_lines:
        return None  # blank lines, which Arrow skips: take the careful path to number lines
    lines = np.arange(first_line, first_line + n_lines, dtype=np.int64)
    return _rows_from_table(
        reader,
        table,
        lines,
        mapping.timestamp,
        mapping.time_format,
        mapping.asset_column,
        [ch.column for ch in mapping.channels],
    )


def _json_block(
    reader: BatchReader, first_line: int, block: bytes, mapping: ColumnMapping
) -> _Rows:
    lines: list[int] = []
    stamps: list[int] = []
    assets: list[str] = []
    asset_names: list[str] = []
    values: list[list[float]] = [[] for _ in mapping.channels]
    for offset, raw in enumerate(block.split(b"\n")[:-1]):
        number = first_line + offset
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except UnicodeDecodeError:
            reader.error(number, "not UTF-8 text")
            continue
        except ValueError as e:
            reader.error(number, f"not JSON ({e})")
            continue
        except RecursionError:
            reader.error(number, "JSON nested too deeply")
            continue
        if not isinstance(record, dict):
            reader.error(number, f"expected a JSON object, found {type(record).__name__}")
            continue
        if record.get(mapping.timestamp) is None:
            reader.error(number, "missing timestamp")
            continue
        try:
            stamp = _time_to_us(record[mapping.timestamp], mapping.time_format)
        except (ValueError, OverflowError):
            reader.error(number, f"bad timestamp {record[mapping.timestamp]!r}")
            continue
        asset = ""
        if mapping.asset_column is not None:
            asset_value = record.get(mapping.asset_column)
            if isinstance(asset_value, int) and not isinstance(asset_value, bool):
                asset_value = str(asset_value)
            if not isinstance(asset_value, str) or not asset_value.strip():
                reader.error(number, "missing asset id")
                continue
            asset = asset_value.strip()
        row: list[float] = []
        for ch in mapping.channels:
            try:
                row.append(_json_value(record.get(ch.column)))
            except ValueError as e:
                reader.error(number, f"key {ch.column!r}: {e}")
                break
        else:
            lines.append(number)
            stamps.append(stamp)
            assets.append(asset)
            for column, value in zip(values, row, strict=True):
                column.append(value)
    return _Rows(
        lines=np.array(lines, dtype=np.int64),
        timestamps_us=np.array(stamps, dtype=np.int64),
        asset_codes=_codes(assets, asset_names) if mapping.asset_column is not None else None,
        asset_names=asset_names,
        values=[np.array(v, dtype=np.float64) for v in values],
    )


# --- NASA C-MAPSS ------------------------------------------------------------------------

# Saxena et al. 2008, table 2. The operational settings are altitude (kft), Mach number and
# throttle resolver angle; sensor 19 (demanded corrected fan speed) is given in percent in the
# data (100.0) although the table lists rpm.
_CMAPSS_CHANNELS: tuple[tuple[str, str, float, float], ...] = (
    ("op_setting_1", "kft", -5.0, 60.0),
    ("op_setting_2", "1", -1.0, 2.0),
    ("op_setting_3", "1", 0.0, 150.0),
    ("sensor_1", "degR", 300.0, 1000.0),  # T2, fan inlet temperature
    ("sensor_2", "degR", 300.0, 1500.0),  # T24, LPC outlet temperature
    ("sensor_3", "degR", 500.0, 3000.0),  # T30, HPC outlet temperature
    ("sensor_4", "degR", 500.0, 3000.0),  # T50, LPT outlet temperature
    ("sensor_5", "psi", 0.0, 100.0),  # P2, fan inlet pressure
    ("sensor_6", "psi", 0.0, 100.0),  # P15, bypass-duct pressure
    ("sensor_7", "psi", 0.0, 1500.0),  # P30, HPC outlet pressure
    ("sensor_8", "rpm", 0.0, 5000.0),  # Nf, physical fan speed
    ("sensor_9", "rpm", 0.0, 20000.0),  # Nc, physical core speed
    ("sensor_10", "1", 0.0, 10.0),  # epr, engine pressure ratio
    ("sensor_11", "psi", 0.0, 200.0),  # Ps30, HPC outlet static pressure
    ("sensor_12", "lb/s/psi", 0.0, 2000.0),  # phi, fuel flow to Ps30
    ("sensor_13", "rpm", 0.0, 5000.0),  # NRf, corrected fan speed
    ("sensor_14", "rpm", 0.0, 20000.0),  # NRc, corrected core speed
    ("sensor_15", "1", 0.0, 50.0),  # BPR, bypass ratio
    ("sensor_16", "1", 0.0, 1.0),  # farB, burner fuel-air ratio
    ("sensor_17", "1", 0.0, 1000.0),  # htBleed, bleed enthalpy
    ("sensor_18", "rpm", 0.0, 5000.0),  # Nf_dmd, demanded fan speed
    ("sensor_19", "percent", 0.0, 200.0),  # PCNfR_dmd, demanded corrected fan speed
    ("sensor_20", "lb/s", 0.0, 200.0),  # W31, HPT coolant bleed
    ("sensor_21", "lb/s", 0.0, 200.0),  # W32, LPT coolant bleed
)
_CMAPSS_FIELDS = 2 + len(_CMAPSS_CHANNELS)
DEFAULT_CYCLE_INTERVAL = timedelta(hours=1)


def cmapss_asset_type(cycle_interval: timedelta = DEFAULT_CYCLE_INTERVAL) -> AssetTypeSpec:
    """The turbofan asset type of the NASA C-MAPSS data: 3 settings, 21 sensors, 30 cycles.

    Args:
        cycle_interval: The time one operating cycle stands for; each channel expects a
            reading per cycle.
    """
    interval_s = cycle_interval.total_seconds()
    return AssetTypeSpec(
        name=CMAPSS_ASSET_TYPE,
        display_name="Turbofan engine (NASA C-MAPSS)",
        channels=tuple(
            SensorChannel(name, unit, low, high, interval_s)
            for name, unit, low, high in _CMAPSS_CHANNELS
        ),
        horizon=FailureHorizon(30, "cycles"),
        description="Run-to-failure turbofan engines simulated with NASA C-MAPSS (Saxena 2008).",
    )


def cmapss_asset_id(plant: str, unit: int) -> str:
    return f"{plant}-unit-{unit}"


def read_cmapss(
    source: Source,
    *,
    plant: str,
    start_time: datetime,
    cycle_interval: timedelta = DEFAULT_CYCLE_INTERVAL,
    max_rows: int = DEFAULT_BATCH_ROWS,
    on_progress: ProgressCallback | None = None,
) -> BatchReader:
    """Read a C-MAPSS text file (``train_FD001.txt`` and kin) as batches, one engine each.

    Engine ``n`` becomes asset ``<plant>-unit-<n>`` of ``cmapss_asset_type()``; cycle ``c``
    becomes the time ``start_time + c * cycle_interval``. Every engine runs to failure, so
    its last cycle is its failure: the engine's last batch carries it as ``failure``, and
    the reader's ``failures`` lists them all. Lines with the wrong number of fields, values
    that are not numbers, a cycle not after the one before, or an engine that reappears
    after another are skipped and reported.

    Args:
        source: A path, or a binary stream.
        plant: The plant the engines belong to, the prefix of their asset ids.
        start_time: The time of cycle 0; a naive time is taken as UTC.
        cycle_interval: The time one cycle stands for.
        max_rows: The most rows in one batch.
        on_progress: Called with ``(bytes_read, total_bytes)`` as the file is read.

    Returns:
        An iterator of batches that also collects the skipped lines and the failures.
    """
    reader = BatchReader()
    if start_time.tzinfo is None:
        start_time = start_time.replace(tzinfo=UTC)
    start_us = (start_time - _EPOCH) // timedelta(microseconds=1)
    interval_us = cycle_interval // timedelta(microseconds=1)
    if interval_us <= 0:
        raise FileFormatError("cycle_interval", "must be positive")
    if max_rows < 1:
        raise FileFormatError("max_rows", "must be at least 1")
    reader._batches = _cmapss_batches(
        reader, source, plant, start_us, interval_us, max_rows, on_progress
    )
    return reader


@dataclass
class _Engine:
    unit: int
    lines: list[int] = field(default_factory=list)
    cycles: list[int] = field(default_factory=list)
    values: list[list[float]] = field(default_factory=list)


def _cmapss_batches(
    reader: BatchReader,
    source: Source,
    plant: str,
    start_us: int,
    interval_us: int,
    max_rows: int,
    on_progress: ProgressCallback | None,
) -> Iterator[FileBatch]:
    stream = _Input(source, on_progress)
    units = {name: unit for name, unit, _, _ in _CMAPSS_CHANNELS}
    finished: set[int] = set()
    engine: _Engine | None = None

    def emit(current: _Engine, n: int, failed: bool) -> FileBatch:
        matrix = np.array(current.values[:n], dtype=np.float64).reshape(n, len(units))
        cycles = np.array(current.cycles[:n], dtype=np.int64)
        timestamps = start_us + cycles * interval_us
        asset = cmapss_asset_id(plant, current.unit)
        failure = None
        if failed:
            failure = FailureLabel(asset, int(timestamps[-1]), int(cycles[-1]))
            reader.failures.append(failure)
        batch = FileBatch(
            asset_id=asset,
            timestamps_us=timestamps,
            columns={name: (units[name], matrix[:, j].copy()) for j, name in enumerate(units)},
            lines=np.array(current.lines[:n], dtype=np.int64),
            failure=failure,
        )
        del current.lines[:n], current.cycles[:n], current.values[:n]
        return batch

    try:
        for first_line, block in stream.blocks():
            for offset, raw in enumerate(block.split(b"\n")[:-1]):
                number = first_line + offset
                parsed = _cmapss_line(reader, number, raw)
                if parsed is None:
                    continue
                unit, cycle, values = parsed
                if unit in finished:
                    reader.error(number, f"unit {unit} appears again after other units")
                    continue
                if engine is not None and unit != engine.unit:
                    if engine.lines:
                        yield emit(engine, len(engine.lines), failed=True)
                    finished.add(engine.unit)
                    engine = None
                if engine is None:
                    engine = _Engine(unit)
                if engine.cycles and cycle <= engine.cycles[-1]:
                    reader.error(number, f"cycle {cycle} is not after cycle {engine.cycles[-1]}")
                    continue
                if not 0 < cycle < 10**9:
                    reader.error(number, f"cycle {cycle} is out of range")
                    continue
                engine.lines.append(number)
                engine.cycles.append(cycle)
                engine.values.append(values)
                if len(engine.lines) > max_rows:
                    yield emit(engine, max_rows, failed=False)
            stream.progress()
        if engine is not None and engine.lines:
            yield emit(engine, len(engine.lines), failed=True)
        stream.progress()
    finally:
        stream.close()


def _cmapss_line(
    reader: BatchReader, number: int, raw: bytes
) -> tuple[int, int, list[float]] | None:
    if not raw.strip():
        return None
    try:
        fields = raw.decode("ascii").split()
    except UnicodeDecodeError:
        reader.error(number, "not ASCII text")
        return None
    if len(fields) != _CMAPSS_FIELDS:
        reader.error(number, f"expected {_CMAPSS_FIELDS} fields, found {len(fields)}")
        return None
    try:
        unit, cycle = int(fields[0]), int(fields[1])
    except ValueError:
        reader.error(number, f"unit {fields[0]!r} and cycle {fields[1]!r} must be integers")
        return None
    if unit < 1:
        reader.error(number, f"unit {unit} must be positive")
        return None
    try:
        values = [float(f) for f in fields[2:]]
    except ValueError as e:
        reader.error(number, f"not a number ({e})")
        return None
    return unit, cycle, values
