"""Failure histories: a plant's record of failures, read, screened and recorded as labels.

A failure history is an export of a historian or a maintenance management system, CSV or
JSON lines, one failure (or one finding that an asset was healthy) per row. The upload is
spooled like a telemetry file, read in a worker thread, and each row is screened against
the catalog: a row whose asset is missing or unknown, whose time cannot be read or lies in
the future, or whose failure mode its asset type does not declare is quarantined with its
reason. Every good row becomes an outcome label through the same handler as the labels of
a telemetry file, with the file's content hash as its source, so the same file uploaded
again records nothing new.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from prognos.api.ingest.v1 import events_pb2, ingest_pb2
from prognos.core.errors import ConcurrencyError, InvalidArgumentError
from prognos.ingest import adapters, handlers
from prognos.ingest.domain import Outcome
from prognos.ingest.intake import MSG_ID, now_us, quarantine_subject

if TYPE_CHECKING:
    from prognos.core.store import EventStore
    from prognos.ingest.domain import AssetTypeSpec
    from prognos.ingest.files import FileImporter
    from prognos.ingest.intake import Intake

__all__ = [
    "MAX_HISTORY_BYTES",
    "MAX_HISTORY_ROWS",
    "MAX_LINE_BYTES",
    "FailureHistoryImporter",
    "HistoryPlan",
    "HistoryResult",
    "HistoryRow",
    "ParsedHistory",
    "Rejection",
    "plan_of",
    "read_history",
    "screen",
]

MAX_HISTORY_BYTES = 64 << 20
MAX_HISTORY_ROWS = 100_000
MAX_LINE_BYTES = 64 << 10
MAX_NAME = 200
MAX_FREE_FAILURE_MODE = 128
SOURCE_PREFIX = "failure-history:"
_SAMPLES = 10
#: Rejections listed per asset on the QUARANTINE stream (all are counted); keeps each
#: message well below the NATS payload limit.
_LISTED_PER_ASSET = 1_000
_LABELS_PER_TRANSACTION = 2_000
_ATTEMPTS = 3
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_UNIX_S = 253_402_300_799  # 9999-12-31T23:59:59Z
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})
_FORMAT = ingest_pb2.FailureHistoryFormat
_KIND = ingest_pb2.TimeColumnKind
MALFORMED = ingest_pb2.QUARANTINE_REASON_MALFORMED
UNKNOWN_ASSET = ingest_pb2.QUARANTINE_REASON_UNKNOWN_ASSET
FUTURE = ingest_pb2.QUARANTINE_REASON_FUTURE
UNKNOWN_FAILURE_MODE = ingest_pb2.QUARANTINE_REASON_UNKNOWN_FAILURE_MODE


# --- the header ------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryPlan:
    """What an import's header asks for, checked."""

    file_name: str
    jsonl: bool
    asset_column: str
    time_column: str
    mode_column: str
    unix_seconds: bool = False
    delimiter: str = ","
    asset_prefix: str = ""
    confirmed_column: str = ""
    repaired_column: str = ""

    def where(self, line: int) -> str:
        return f"{self.file_name or 'file'} line {line}"


def plan_of(header: ingest_pb2.FailureHistoryHeader) -> HistoryPlan:
    """Check an import's header.

    Raises:
        InvalidArgumentError: naming every header field that is wrong.
    """
    violations: list[tuple[str, str]] = []
    if header.format not in (
        _FORMAT.FAILURE_HISTORY_FORMAT_CSV,
        _FORMAT.FAILURE_HISTORY_FORMAT_JSONL,
    ):
        violations.append(("header.format", "choose CSV or JSONL"))
    if header.time_kind not in (
        _KIND.TIME_COLUMN_KIND_RFC3339,
        _KIND.TIME_COLUMN_KIND_UNIX_SECONDS,
    ):
        violations.append(("header.time_kind", "choose RFC3339 or UNIX_SECONDS"))
    if len(header.delimiter) > 1 or header.delimiter in ('"', "\n", "\r"):
        violations.append(("header.delimiter", "one character other than a quote or newline"))
    if len(header.file_name) > 255:
        violations.append(("header.file_name", "at most 255 characters"))
    if len(header.asset_id_prefix) > MAX_NAME:
        violations.append(("header.asset_id_prefix", f"at most {MAX_NAME} characters"))
    required = ("asset_id_column", "time_column", "failure_mode_column")
    for name in (*required, "confirmed_column", "repaired_at_column"):
        value = getattr(header, name)
        if name in required and not value:
            violations.append((f"header.{name}", "name the column"))
        elif len(value) > MAX_NAME:
            violations.append((f"header.{name}", f"at most {MAX_NAME} characters"))
    if violations:
        raise InvalidArgumentError(violations, reason="FAILURE_HISTORY_HEADER_INVALID")
    return HistoryPlan(
        file_name=header.file_name,
        jsonl=header.format == _FORMAT.FAILURE_HISTORY_FORMAT_JSONL,
        asset_column=header.asset_id_column,
        time_column=header.time_column,
        mode_column=header.failure_mode_column,
        unix_seconds=header.time_kind == _KIND.TIME_COLUMN_KIND_UNIX_SECONDS,
        delimiter=header.delimiter or ",",
        asset_prefix=header.asset_id_prefix,
        confirmed_column=header.confirmed_column,
        repaired_column=header.repaired_at_column,
    )


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryRow:
    """One readable row: a failure (or a healthy finding) of an asset."""

    line: int
    asset_id: str
    time_us: int
    failure_mode: str
    failure_confirmed: bool
    repaired_at_us: int | None


@dataclass(frozen=True)
class Rejection:
    """One row kept out, with its reason (a QuarantineReason number) and a detail."""

    line: int
    asset_id: str
    time_us: int | None
    reason: int
    detail: str


@dataclass
class ParsedHistory:
    """The readable rows of a file and the rows that could not be read."""

    rows: list[HistoryRow] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def row_count(self) -> int:
        return len(self.rows) + len(self.rejections)


class _RowError(ValueError):
    """A row cannot be read; the message says why, naming the column."""


def _records(source: IO[bytes], csv_quotes: bool) -> Iterator[tuple[int, bytes | None]]:
    """``(first line number, record)``; a record over ``MAX_LINE_BYTES`` comes as None.

    In CSV a record goes on over a newline inside a quoted field (an odd number of quotes
    so far), as RFC 4180 allows; its length is bounded all the same.
    """
    line = 0
    while True:
        start = line + 1
        record = b""
        too_long = False
        while True:
            piece = source.readline(MAX_LINE_BYTES + 1)
            if not piece:
                break
            line += 1
            if len(record) + len(piece) > MAX_LINE_BYTES:
                too_long = True
                while piece and not piece.endswith(b"\n"):  # skip the rest of the line
                    piece = source.readline(MAX_LINE_BYTES + 1)
                break
            record += piece
            if not csv_quotes or record.count(b'"') % 2 == 0:
                break
        if too_long:
            yield start, None
        elif record:
            yield start, record
        else:
            return


def _text(value: Any, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        raise _RowError(f"{column}: expected text, got {json.dumps(value)}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value.strip()
    raise _RowError(f"{column}: expected text, got {type(value).__name__}")


def _cut(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_time(value: Any, column: str, unix_seconds: bool) -> int | None:
    """Microseconds since the epoch of a cell; None when it is empty.

    Raises:
        _RowError: the cell is not a time of the declared kind.
    """
    if value is None or value == "":
        return None
    if unix_seconds:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise _RowError(f"{column}: not Unix seconds: {_cut(str(value))}")
        try:
            seconds = float(value)
        except ValueError:
            raise _RowError(f"{column}: not Unix seconds: {_cut(str(value))}") from None
        if not math.isfinite(seconds) or abs(seconds) > _MAX_UNIX_S:
            raise _RowError(f"{column}: {_cut(str(value))} is not a time in years 1 to 9999")
        return round(seconds * 1_000_000)
    if not isinstance(value, str):
        raise _RowError(f"{column}: expected RFC 3339 text, got {json.dumps(value)}")
    text = value.strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _RowError(f"{column}: not an RFC 3339 time: {_cut(text)}") from None
    if moment.tzinfo is None:
        raise _RowError(f"{column}: {_cut(text)} has no UTC offset (write e.g. 'Z' or '+01:00')")
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _confirmed(value: Any, column: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    shown = _cut(value) if isinstance(value, str) else json.dumps(value)
    raise _RowError(f"{column}: {shown} is not true/false, yes/no or 1/0")


def _row(plan: HistoryPlan, line: int, cells: Mapping[str, Any]) -> HistoryRow | Rejection:
    asset_id = ""
    time_us: int | None = None
    try:
        raw_asset = _text(cells.get(plan.asset_column), plan.asset_column)
        if not raw_asset:
            raise _RowError(f"{plan.asset_column}: no asset id")
        asset_id = plan.asset_prefix + raw_asset
        if len(asset_id) > MAX_NAME or not asset_id.isprintable():
            shown = _cut(asset_id)
            asset_id = ""
            raise _RowError(
                f"{plan.asset_column}: {shown} is not an asset id "
                f"(at most {MAX_NAME} printable characters)"
            )
        time_us = parse_time(cells.get(plan.time_column), plan.time_column, plan.unix_seconds)
        if time_us is None:
            raise _RowError(f"{plan.time_column}: no time")
        mode = _text(cells.get(plan.mode_column), plan.mode_column)
        if len(mode) > MAX_FREE_FAILURE_MODE or not mode.isprintable():
            raise _RowError(
                f"{plan.mode_column}: {_cut(mode)} is not a failure mode name "
                f"(at most {MAX_FREE_FAILURE_MODE} printable characters)"
            )
        confirmed = True
        if plan.confirmed_column:
            value = cells.get(plan.confirmed_column)
            if value is None or value == "":
                raise _RowError(f"{plan.confirmed_column}: empty; say true or false")
            confirmed = _confirmed(value, plan.confirmed_column)
        repaired = None
        if plan.repaired_column:
            repaired = parse_time(
                cells.get(plan.repaired_column), plan.repaired_column, plan.unix_seconds
            )
            if repaired is not None and repaired < time_us:
                raise _RowError(f"{plan.repaired_column}: before the failure's {plan.time_column}")
    except _RowError as e:
        return Rejection(line, asset_id, time_us, MALFORMED, f"{plan.where(line)}: {e}")
    return HistoryRow(line, asset_id, time_us, mode, confirmed, repaired)


def read_history(source: IO[bytes], plan: HistoryPlan) -> ParsedHistory:
    """Read every row of a failure history (blocking; run it in a worker thread).

    Raises:
        InvalidArgumentError: the file cannot be read at all (no header line, a column of
            the header missing from it, more than ``MAX_HISTORY_ROWS`` rows).
    """
    parsed = ParsedHistory()
    columns: list[str] | None = None
    for line, record in _records(source, csv_quotes=not plan.jsonl):
        if record is None:
            if columns is None and not plan.jsonl:
                raise InvalidArgumentError([("file", f"line 1 is over {MAX_LINE_BYTES} bytes")])
            parsed.rejections.append(
                Rejection(
                    line, "", None, MALFORMED, f"{plan.where(line)}: over {MAX_LINE_BYTES} bytes"
                )
            )
        else:
            try:
                text = record.decode("utf-8")
            except UnicodeDecodeError:
                parsed.rejections.append(
                    Rejection(line, "", None, MALFORMED, f"{plan.where(line)}: not UTF-8")
                )
                continue
            if line == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                continue
            if plan.jsonl:
                cells = _json_cells(text)
            elif columns is None:
                columns = _header_line(text, plan)
                continue
            else:
                cells = _csv_cells(text, plan.delimiter, columns)
            if isinstance(cells, str):
                parsed.rejections.append(
                    Rejection(line, "", None, MALFORMED, f"{plan.where(line)}: {cells}")
                )
            else:
                item = _row(plan, line, cells)
                if isinstance(item, HistoryRow):
                    parsed.rows.append(item)
                else:
                    parsed.rejections.append(item)
        if parsed.row_count > MAX_HISTORY_ROWS:
            raise InvalidArgumentError(
                [("file", f"more than {MAX_HISTORY_ROWS} rows; split the history into files")]
            )
    if columns is None and not plan.jsonl:
        raise InvalidArgumentError([("file", "no header line naming the columns")])
    return parsed


def _header_line(text: str, plan: HistoryPlan) -> list[str]:
    names = [n.strip() for n in next(csv.reader([text], delimiter=plan.delimiter), [])]
    violations = [
        (f"header.{field_name}", f"no column {_cut(column)} in the file's header line")
        for field_name, column in (
            ("asset_id_column", plan.asset_column),
            ("time_column", plan.time_column),
            ("failure_mode_column", plan.mode_column),
            ("confirmed_column", plan.confirmed_column),
            ("repaired_at_column", plan.repaired_column),
        )
        if column and column not in names
    ]
    if violations:
        raise InvalidArgumentError(violations, reason="FAILURE_HISTORY_HEADER_INVALID")
    return names


def _csv_cells(text: str, delimiter: str, columns: Sequence[str]) -> dict[str, str] | str:
    try:
        values = next(csv.reader([text], delimiter=delimiter, strict=True), [])
    except csv.Error as e:
        return f"not CSV ({e})"
    if len(values) != len(columns):
        return f"{len(values)} fields, the header line has {len(columns)}"
    return dict(zip(columns, values, strict=True))


def _json_cells(text: str) -> dict[str, Any] | str:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        return f"not JSON ({str(e)[:100]})"
    if not isinstance(value, dict):
        return "not a JSON object"
    return value


# --- screening -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Screened:
    """The rows to record (each with its asset's type) and the rows kept out."""

    accepted: list[tuple[str, HistoryRow]]
    rejections: list[Rejection]


def _iso(time_us: int) -> str:
    return (_EPOCH + timedelta(microseconds=time_us)).isoformat().replace("+00:00", "Z")


def screen(
    plan: HistoryPlan,
    rows: Sequence[HistoryRow],
    types_of_assets: Mapping[str, AssetTypeSpec],
    *,
    now_us: int,
    max_future_us: int,
) -> Screened:
    """Check readable rows against the catalog and the clock.

    Args:
        plan: the import (for the file name in details).
        rows: the readable rows.
        types_of_assets: the asset type of every registered asset among the rows.
        now_us: the server's clock.
        max_future_us: how far ahead of the clock a time may be (clock skew).
    """
    accepted: list[tuple[str, HistoryRow]] = []
    rejections: list[Rejection] = []
    latest = now_us + max_future_us
    for row in rows:
        spec = types_of_assets.get(row.asset_id)

        def reject(reason: int, detail: str, row: HistoryRow = row) -> None:
            rejections.append(
                Rejection(
                    row.line, row.asset_id, row.time_us, reason, f"{plan.where(row.line)}: {detail}"
                )
            )

        if spec is None:
            reject(
                UNKNOWN_ASSET, f"{plan.asset_column}: asset {_cut(row.asset_id)} is not registered"
            )
        elif row.time_us > latest:
            reject(
                FUTURE,
                f"{plan.time_column}: {_iso(row.time_us)} is in the future "
                f"(more than {max_future_us / 1e6:g} s ahead of the server's clock)",
            )
        elif row.repaired_at_us is not None and row.repaired_at_us > latest:
            reject(
                FUTURE,
                f"{plan.repaired_column}: {_iso(row.repaired_at_us)} is in the future "
                f"(more than {max_future_us / 1e6:g} s ahead of the server's clock)",
            )
        elif not _mode_accepted(spec, row):
            declared = ", ".join(m.name for m in spec.failure_modes)
            shown = _cut(row.failure_mode) if row.failure_mode else "no failure mode"
            reject(
                UNKNOWN_FAILURE_MODE,
                f"{plan.mode_column}: {shown} is not declared by asset type "
                f"{spec.name!r} (declared: {declared})",
            )
        else:
            accepted.append((spec.name, row))
    return Screened(accepted, rejections)


def _mode_accepted(spec: AssetTypeSpec, row: HistoryRow) -> bool:
    # A healthy finding names no failure mode.
    if not row.failure_mode and not row.failure_confirmed:
        return True
    return spec.accepts_failure_mode(row.failure_mode)


# --- the import ------------------------------------------------------------------------------


@dataclass
class HistoryResult:
    """What became of an imported failure history."""

    content_hash: str
    row_count: int = 0
    recorded_count: int = 0
    duplicate_count: int = 0
    counts: dict[tuple[str, int], int] = field(default_factory=dict)
    samples: list[ingest_pb2.QuarantinedReading] = field(default_factory=list)

    @property
    def quarantined_count(self) -> int:
        return sum(self.counts.values())

    def by_reason(self) -> dict[str, int]:
        totals: dict[str, int] = defaultdict(int)
        for (_, reason), count in self.counts.items():
            totals[ingest_pb2.QuarantineReason.Name(reason)] += count  # type: ignore[arg-type]
        return dict(sorted(totals.items()))

    def to_proto(self) -> ingest_pb2.ImportFailureHistoryResponse:
        response = ingest_pb2.ImportFailureHistoryResponse(
            content_hash=self.content_hash,
            row_count=self.row_count,
            recorded_count=self.recorded_count,
            quarantined_count=self.quarantined_count,
            duplicate_count=self.duplicate_count,
            sample_rejections=self.samples[:_SAMPLES],
        )
        for (asset_id, reason), count in sorted(self.counts.items()):
            response.counts.add(asset_id=asset_id, reason=reason, count=count)  # type: ignore[arg-type]
        return response


async def _bounded(chunks: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise InvalidArgumentError([("chunk", f"the failure history exceeds {limit} bytes")])
        yield chunk


def _read_file(path: Path, plan: HistoryPlan) -> ParsedHistory:
    with path.open("rb") as source:
        return read_history(source, plan)


class FailureHistoryImporter:
    """Imports failure histories: labels through the asset handler, bad rows to quarantine.

    Args:
        store: the event store (the assets and their labels).
        intake: the intake (its catalog, and the QUARANTINE stream it publishes to).
        files: the telemetry file importer, whose spool an upload goes through.
        max_future_s: how far ahead of the server's clock a time may be.
        stall_timeout_s: how long JetStream may take to store the quarantined rows.
        on_labels: told when labels were recorded (the archive writes them).
    """

    def __init__(
        self,
        store: EventStore,
        intake: Intake,
        files: FileImporter,
        *,
        max_future_s: float,
        stall_timeout_s: float,
        on_labels: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._intake = intake
        self._files = files
        self._max_future_us = int(max_future_s * 1e6)
        self._stall = stall_timeout_s
        self._on_labels = on_labels

    async def spool(self, chunks: AsyncIterator[bytes]) -> tuple[Path, str, int]:
        """Spool the upload (at most ``MAX_HISTORY_BYTES``); returns path, hash and size."""
        # Long lines are quarantined row by row (MAX_LINE_BYTES), not refused at the spool.
        return await self._files.spool(_bounded(chunks, MAX_HISTORY_BYTES), check_lines=False)

    async def run(self, plan: HistoryPlan, path: Path, content_hash: str) -> HistoryResult:
        """Read, screen and record the spooled history; returns the import's counts."""
        parsed = await asyncio.to_thread(_read_file, path, plan)
        result = HistoryResult(content_hash, row_count=parsed.row_count)
        types = await self._types_of({row.asset_id for row in parsed.rows})
        screened = screen(
            plan, parsed.rows, types, now_us=now_us(), max_future_us=self._max_future_us
        )
        await self._record(screened.accepted, f"{SOURCE_PREFIX}{content_hash}", result)
        rejections = sorted([*parsed.rejections, *screened.rejections], key=lambda r: r.line)
        await self._quarantine(rejections, types, content_hash, result)
        return result

    async def _types_of(self, asset_ids: set[str]) -> dict[str, AssetTypeSpec]:
        catalog = self._intake.catalog
        async with self._store.reader() as conn:
            rows = await adapters.get_assets(conn, asset_ids)
        if any(catalog.type_of(r.spec.asset_type) is None for r in rows.values()):
            await catalog.refresh_types()
        found: dict[str, AssetTypeSpec] = {}
        for asset_id, row in rows.items():
            spec = catalog.type_of(row.spec.asset_type)
            if spec is not None:
                found[asset_id] = spec
        return found

    async def _record(
        self, accepted: list[tuple[str, HistoryRow]], source: str, result: HistoryResult
    ) -> None:
        by_asset: dict[str, list[Outcome]] = defaultdict(list)
        for _, row in accepted:
            by_asset[row.asset_id].append(
                Outcome(
                    time_us=row.time_us,
                    failure_confirmed=row.failure_confirmed,
                    source=source,
                    failure_mode=row.failure_mode,
                    repaired_at_us=row.repaired_at_us,
                )
            )
        for asset_id, outcomes in sorted(by_asset.items()):
            for start in range(0, len(outcomes), _LABELS_PER_TRANSACTION):
                part = outcomes[start : start + _LABELS_PER_TRANSACTION]
                added = await self._record_part(asset_id, part)
                result.recorded_count += sum(added)
                result.duplicate_count += len(added) - sum(added)
        if result.recorded_count:
            self._on_labels()

    async def _record_part(self, asset_id: str, outcomes: list[Outcome]) -> list[bool]:
        # Labels are idempotent: when another import of the same file appended meanwhile,
        # reading the asset again finds its labels known.
        for attempt in range(_ATTEMPTS):
            try:
                async with self._store.transaction() as uow:
                    return await handlers.record_outcomes(uow, asset_id, outcomes)
            except ConcurrencyError:
                if attempt == _ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def _quarantine(
        self,
        rejections: list[Rejection],
        types: Mapping[str, AssetTypeSpec],
        content_hash: str,
        result: HistoryResult,
    ) -> None:
        if not rejections:
            return
        at_us = now_us()
        batch_id = f"{SOURCE_PREFIX}{content_hash.removeprefix('sha256:')[:32]}"
        by_asset: dict[str, list[Rejection]] = defaultdict(list)
        for rejection in rejections:
            by_asset[rejection.asset_id].append(rejection)
        futures = []
        for asset_id, kept_out in sorted(by_asset.items()):
            spec = types.get(asset_id)
            asset_type = spec.name if spec else ""
            message = events_pb2.QuarantinedBatch(
                asset_id=asset_id,
                asset_type=asset_type,
                batch_id=batch_id,
                unlisted_count=max(0, len(kept_out) - _LISTED_PER_ASSET),
            )
            message.quarantined_at.FromMicroseconds(at_us)
            counts: dict[int, int] = defaultdict(int)
            for rejection in kept_out:
                counts[rejection.reason] += 1
            for reason, count in sorted(counts.items()):
                message.counts.add(asset_id=asset_id, reason=reason, count=count)  # type: ignore[arg-type]
                result.counts[(asset_id, reason)] = count
            for rejection in kept_out[:_LISTED_PER_ASSET]:
                reading = message.column_rejections.add(
                    asset_id=asset_id,
                    batch_id=batch_id,
                    reason=rejection.reason,  # type: ignore[arg-type]
                    detail=rejection.detail[:500],
                    value=float("nan"),
                )
                if rejection.time_us is not None:
                    reading.time.FromMicroseconds(rejection.time_us)
                reading.quarantined_at.FromMicroseconds(at_us)
            # The intake's publisher turns a JetStream outage into UNAVAILABLE.
            futures.append(
                await self._intake._publish(
                    quarantine_subject(asset_type, asset_id or "file"),
                    message.SerializeToString(),
                    {MSG_ID: f"{asset_id}:{batch_id}"},
                )
            )
        await asyncio.wait_for(asyncio.gather(*futures), self._stall)
        for rejection in rejections[:_SAMPLES]:
            sample = ingest_pb2.QuarantinedReading(
                asset_id=rejection.asset_id,
                batch_id=batch_id,
                reason=rejection.reason,  # type: ignore[arg-type]
                detail=rejection.detail[:500],
                value=float("nan"),
            )
            if rejection.time_us is not None:
                sample.time.FromMicroseconds(rejection.time_us)
            sample.quarantined_at.FromMicroseconds(at_us)
            result.samples.append(sample)
