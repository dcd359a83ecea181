"""Telemetry files: a CSV, JSON-lines or C-MAPSS upload, read as batches through the intake.

An upload is spooled to a temporary file while its SHA-256 is computed; the file is then
read in a worker thread, batch by batch, and each batch goes through the same intake as a
streamed one, with a bounded number in flight. Batch ids derive from the content hash
(``file:<hash>:<n>``), so uploading the same file twice stores nothing twice. Assets
missing from the catalog are registered when the header names a plant; failures that
the file records become outcome labels.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import io
import logging
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from prognos.api.ingest.v1 import events_pb2, ingest_pb2
from prognos.core.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from prognos.ingest import handlers
from prognos.ingest.domain import AssetSpec, AssetTypeSpec, Outcome
from prognos.ingest.formats import (
    CMAPSS_ASSET_TYPE,
    BatchReader,
    ChannelColumn,
    ColumnMapping,
    FileBatch,
    FileFormatError,
    TimeFormat,
    cmapss_asset_type,
    field_count,
    read_cmapss,
    read_csv,
    read_json_lines,
)
from prognos.ingest.intake import MSG_ID, Pending, RawBatch, now_us, quarantine_subject
from prognos.ingest.units import UnknownUnitError, check_unit

if TYPE_CHECKING:
    from prognos.core.store import EventStore
    from prognos.ingest.intake import Intake

__all__ = [
    "LIMIT_REASON",
    "MAX_UPLOAD_BYTES",
    "FileImport",
    "FileImporter",
    "ImportResult",
    "UploadLimits",
]

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 4 << 30
LIMIT_REASON = "UPLOAD_LIMIT_EXCEEDED"
"""``ErrorInfo.reason`` of an upload refused for one of its ``UploadLimits``."""
CMAPSS_ORIGIN = datetime(2020, 1, 1, tzinfo=UTC)
_FORMAT = ingest_pb2.TelemetryFileFormat
_KIND = ingest_pb2.TimeColumnKind
_MALFORMED = ingest_pb2.QUARANTINE_REASON_MALFORMED
_SAMPLES = 10


@dataclass(frozen=True)
class FileImport:
    """What an upload's header asks for, checked."""

    header: ingest_pb2.TelemetryFileHeader
    asset_type: AssetTypeSpec | None
    mapping: ColumnMapping | None
    cycle_origin_us: int
    cycle_us: int


@dataclass
class ImportResult:
    """What became of an uploaded file."""

    content_hash: str
    row_count: int = 0
    accepted_count: int = 0
    quarantined_count: int = 0
    asset_ids: set[str] = field(default_factory=set)
    label_count: int = 0
    samples: list[ingest_pb2.QuarantinedReading] = field(default_factory=list)
    duplicates: int = 0
    duplicate_count: int = 0
    batches: int = 0

    def to_proto(self) -> ingest_pb2.UploadTelemetryFileResponse:
        return ingest_pb2.UploadTelemetryFileResponse(
            content_hash=self.content_hash,
            row_count=self.row_count,
            accepted_count=self.accepted_count,
            quarantined_count=self.quarantined_count,
            asset_ids=sorted(self.asset_ids),
            label_count=self.label_count,
            sample_rejections=self.samples[:_SAMPLES],
            duplicate_count=self.duplicate_count,
        )


@dataclass(frozen=True)
class UploadLimits:
    """What one uploaded file may hold (the ``upload_*`` settings).

    Attributes:
        max_line_bytes: The longest line, in bytes without its newline.
        max_lines: The most lines (a header line counts).
        max_assets: The most distinct assets.
    """

    max_line_bytes: int = 64 << 10
    max_lines: int = 20_000_000
    max_assets: int = 10_000


class _LineScan:
    """Counts lines and checks their length as chunks arrive, before anything is parsed.

    An endless line (no newline at all) is refused once it passes the limit, so the spool
    never grows a line the parser would have to hold whole.
    """

    def __init__(self, limits: UploadLimits) -> None:
        self._limits = limits
        self.lines = 0  # lines ended by a newline so far
        self._run = 0  # bytes since the last newline

    def add(self, chunk: bytes) -> None:
        newlines = np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10)
        limit = self._limits.max_line_bytes
        if newlines.size == 0:
            self._run += len(chunk)
            if self._run > limit:
                self._too_long(self.lines + 1)
            return
        # Length of every line that ends in this chunk; the first began in earlier chunks.
        ends = np.concatenate(([-1 - self._run], newlines))
        lengths = np.diff(ends) - 1
        longest = int(np.argmax(lengths))
        if lengths[longest] > limit:
            self._too_long(self.lines + longest + 1)
        self.lines += int(newlines.size)
        self._run = len(chunk) - int(newlines[-1]) - 1
        if self.lines > self._limits.max_lines:
            self._too_many()

    def finish(self) -> None:
        if self._run and self.lines + 1 > self._limits.max_lines:
            self._too_many()

    def _too_long(self, line: int) -> None:
        limit = self._limits.max_line_bytes
        raise InvalidArgumentError(
            [("file", f"line {line} is longer than {limit} bytes (upload_max_line_bytes)")],
            reason=LIMIT_REASON,
            metadata={"limit": "upload_max_line_bytes", "line": str(line)},
        )

    def _too_many(self) -> None:
        limit = self._limits.max_lines
        raise InvalidArgumentError(
            [("file", f"more than {limit} lines (upload_max_lines); split the file")],
            reason=LIMIT_REASON,
            metadata={"limit": "upload_max_lines"},
        )


class _Prefixed(io.RawIOBase):
    """A file with a line put in front (a header for a file that has none)."""

    def __init__(self, first: bytes, rest: IO[bytes]) -> None:
        self._first = memoryview(first)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        if self._first.nbytes:
            n = min(self._first.nbytes, target.nbytes)
            target[:n] = self._first[:n]
            self._first = self._first[n:]
            return n
        data = self._rest.read(target.nbytes)
        target[: len(data)] = data
        return len(data)


class FileImporter:
    """Imports uploaded files through the intake.

    Args:
        store: the event store (asset registration, labels).
        intake: the intake shared with the streams.
        spool_dir: where uploads are spooled.
        window: batches in flight to JetStream.
        stall_timeout_s: how long a receipt may take.
        on_labels: told when labels were recorded (the archive writes them).
        limits: what one file may hold.
    """

    def __init__(
        self,
        store: EventStore,
        intake: Intake,
        spool_dir: Path,
        *,
        window: int,
        stall_timeout_s: float,
        on_labels: Callable[[], None] = lambda: None,
        limits: UploadLimits | None = None,
    ) -> None:
        self._store = store
        self._limits = limits or UploadLimits()
        self._intake = intake
        self._spool = spool_dir
        self._window = window
        self._stall = stall_timeout_s
        self._on_labels = on_labels

    # -- the header -----------------------------------------------------------------------

    def plan(self, header: ingest_pb2.TelemetryFileHeader) -> FileImport:
        """Check the header against the catalog.

        Raises:
            InvalidArgumentError: naming the header field that is wrong.
            NotFoundError: the asset type is not registered.
        """
        origin = CMAPSS_ORIGIN
        if header.HasField("cycle_origin"):
            origin = header.cycle_origin.ToDatetime(tzinfo=UTC)
        cycle = timedelta(hours=1)
        if header.HasField("cycle_duration"):
            cycle = header.cycle_duration.ToTimedelta()
        cycle_us = cycle // timedelta(microseconds=1)
        if cycle_us <= 0:
            raise InvalidArgumentError([("header.cycle_duration", "must be positive")])
        origin_us = (origin - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        if header.format == _FORMAT.TELEMETRY_FILE_FORMAT_CMAPSS:
            if not header.register_in_plant:
                raise InvalidArgumentError(
                    [("header.register_in_plant", "name the plant of the C-MAPSS engines")]
                )
            if header.asset_type and header.asset_type != CMAPSS_ASSET_TYPE:
                raise InvalidArgumentError(
                    [("header.asset_type", f"C-MAPSS files hold {CMAPSS_ASSET_TYPE!r} assets")]
                )
            return FileImport(
                header, self._intake.catalog.type_of(CMAPSS_ASSET_TYPE), None, origin_us, cycle_us
            )
        if header.format not in (
            _FORMAT.TELEMETRY_FILE_FORMAT_CSV,
            _FORMAT.TELEMETRY_FILE_FORMAT_JSONL,
        ):
            raise InvalidArgumentError([("header.format", "choose CSV, JSONL or CMAPSS")])
        spec = self._intake.catalog.type_of(header.asset_type)
        if spec is None and header.asset_type == CMAPSS_ASSET_TYPE:
            # The built-in type: registered on first use whatever the file's syntax (a
            # NASA test file goes as CSV, its engines having not failed yet).
            spec = cmapss_asset_type(cycle)
        if spec is None:
            raise NotFoundError("asset_type", header.asset_type)
        violations: list[tuple[str, str]] = []
        if not header.time_column:
            violations.append(("header.time_column", "name the column holding the time"))
        if bool(header.asset_id_column) == bool(header.asset_id) and not header.asset_id_column:
            violations.append(("header.asset_id", "name the asset, or the column holding it"))
        if not header.columns:
            violations.append(("header.columns", "map at least one column to a channel"))
        if header.failure_column:
            violations.append(("header.failure_column", "failure columns are not supported yet"))
        if len(header.delimiter) > 1:
            violations.append(("header.delimiter", "must be one character"))
        channels = []
        for i, column in enumerate(header.columns):
            channel = spec.channel(column.channel)
            if channel is None:
                violations.append(
                    (f"header.columns[{i}].channel", f"not a channel of {spec.name!r}")
                )
                continue
            if column.unit:
                try:
                    check_unit(column.unit)
                except UnknownUnitError as e:
                    violations.append((f"header.columns[{i}].unit", str(e)))
                    continue
            channels.append(
                ChannelColumn(column.column, column.channel, column.unit or channel.unit)
            )
        kinds = {
            _KIND.TIME_COLUMN_KIND_RFC3339: TimeFormat.ISO_8601,
            _KIND.TIME_COLUMN_KIND_UNIX_SECONDS: TimeFormat.UNIX_S,
            _KIND.TIME_COLUMN_KIND_CYCLE: TimeFormat.UNIX_US,
        }
        if header.time_kind not in kinds:
            violations.append(("header.time_kind", "choose RFC3339, UNIX_SECONDS or CYCLE"))
        if violations:
            raise InvalidArgumentError(violations)
        try:
            mapping = ColumnMapping(
                timestamp=header.time_column,
                channels=tuple(channels),
                time_format=kinds[header.time_kind],
                asset_column=header.asset_id_column or None,
                asset_id=None if header.asset_id_column else header.asset_id,
            )
        except FileFormatError as e:
            raise InvalidArgumentError([(f"header.{e.field}", e.description)]) from None
        return FileImport(header, spec, mapping, origin_us, cycle_us)

    # -- the bytes ------------------------------------------------------------------------

    async def spool(
        self, chunks: AsyncIterator[bytes], *, check_lines: bool = True
    ) -> tuple[Path, str, int]:
        """Write the chunks to a temporary file; returns its path, content hash and size.

        Args:
            chunks: the file's bytes.
            check_lines: refuse the file as soon as a line or the line count passes the
                limits (a reader that quarantines long lines itself turns this off).

        Raises:
            InvalidArgumentError: the file is too large, or (``check_lines``) has a line
                longer than ``upload_max_line_bytes`` or more than ``upload_max_lines``.
        """
        self._spool.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        scan = _LineScan(self._limits) if check_lines else None
        size = 0
        handle = tempfile.NamedTemporaryFile(dir=self._spool, suffix=".upload", delete=False)
        path = Path(handle.name)
        try:
            with handle:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > MAX_UPLOAD_BYTES:
                        raise InvalidArgumentError(
                            [("chunk", f"the file exceeds {MAX_UPLOAD_BYTES} bytes")]
                        )
                    if scan is not None:
                        scan.add(chunk)
                    digest.update(chunk)
                    handle.write(chunk)
            if scan is not None:
                scan.finish()
        except BaseException:
            await asyncio.to_thread(path.unlink, missing_ok=True)
            raise
        return path, f"sha256:{digest.hexdigest()}", size

    # -- the import -----------------------------------------------------------------------

    def _reader(self, plan: FileImport, source: IO[bytes]) -> BatchReader:
        header = plan.header
        max_rows = min(self._intake.max_rows, 10_000)
        if header.format == _FORMAT.TELEMETRY_FILE_FORMAT_CMAPSS:
            return read_cmapss(
                source,
                plant=header.register_in_plant,
                start_time=datetime.fromtimestamp(plan.cycle_origin_us / 1e6, UTC),
                cycle_interval=timedelta(microseconds=plan.cycle_us),
                max_rows=max_rows,
            )
        assert plan.mapping is not None
        if header.format == _FORMAT.TELEMETRY_FILE_FORMAT_JSONL:
            return read_json_lines(source, plan.mapping, max_rows=max_rows)
        return read_csv(source, plan.mapping, max_rows=max_rows, delimiter=header.delimiter or ",")

    def _source(self, plan: FileImport, path: Path) -> IO[bytes]:
        handle: IO[bytes] = path.open("rb")
        header = plan.header
        if header.format == _FORMAT.TELEMETRY_FILE_FORMAT_CSV and not header.has_header:
            first = handle.readline()
            handle.seek(0)
            delimiter = header.delimiter or ","
            count = field_count(first, delimiter)
            names = delimiter.join(str(i) for i in range(1, count + 1)).encode() + b"\n"
            return io.BufferedReader(_Prefixed(names, handle))
        return handle

    async def ensure_asset_type(self, plan: FileImport) -> FileImport:
        """Register the built-in turbofan type for a file of its assets when it is missing."""
        builtin = (
            plan.header.format == _FORMAT.TELEMETRY_FILE_FORMAT_CMAPSS
            or plan.header.asset_type == CMAPSS_ASSET_TYPE
        )
        if not builtin:
            return plan
        found = self._intake.catalog.type_of(CMAPSS_ASSET_TYPE)
        if found is None:
            spec = cmapss_asset_type(timedelta(microseconds=plan.cycle_us))
            try:
                async with self._store.transaction() as uow:
                    version = await handlers.register_asset_type(
                        uow, handlers.RegisterAssetType(spec)
                    )
                self._intake.catalog.remember_type(spec, version)
            except AlreadyExistsError:
                await self._intake.catalog.refresh_types()
            found = self._intake.catalog.type_of(CMAPSS_ASSET_TYPE)
        return FileImport(plan.header, found, plan.mapping, plan.cycle_origin_us, plan.cycle_us)

    async def _ensure_asset(self, asset_id: str, plan: FileImport, registered: set[str]) -> None:
        if asset_id in registered or not plan.header.register_in_plant or plan.asset_type is None:
            return
        registered.add(asset_id)
        if self._intake.catalog.cached(asset_id) or await self._intake.catalog.resolve(asset_id):
            return
        spec = AssetSpec(asset_id, plan.header.register_in_plant, plan.asset_type.name)
        try:
            async with self._store.transaction() as uow:
                await handlers.register_asset(uow, handlers.RegisterAsset(spec), now_us())
        except AlreadyExistsError:
            pass
        self._intake.catalog.remember_asset(spec)

    async def run(self, plan: FileImport, path: Path, content_hash: str) -> ImportResult:
        """Read the spooled file through the intake; returns the import's counts."""
        plan = await self.ensure_asset_type(plan)
        result = ImportResult(content_hash)
        key = content_hash.removeprefix("sha256:")[:32]
        source = self._source(plan, path)
        reader = self._reader(plan, source)
        in_flight: collections.deque[Pending] = collections.deque()
        registered: set[str] = set()
        assets: set[str] = set()
        last_time: dict[str, int] = {}
        run_to_failure = plan.header.run_to_failure
        try:
            index = 0
            while True:
                batch = await asyncio.to_thread(_next, reader)
                if batch is None:
                    break
                result.batches += 1
                raw = _raw(batch, f"file:{key}:{index}", plan)
                if raw.asset_id not in assets:
                    if len(assets) >= self._limits.max_assets:
                        raise InvalidArgumentError(
                            [
                                (
                                    "file",
                                    f"more than {self._limits.max_assets} distinct assets "
                                    "(upload_max_assets); split the file",
                                )
                            ],
                            reason=LIMIT_REASON,
                            metadata={"limit": "upload_max_assets"},
                        )
                    assets.add(raw.asset_id)
                await self._ensure_asset(raw.asset_id, plan, registered)
                index += 1
                if run_to_failure and raw.rows:
                    last = int(raw.timestamps_us.max())
                    last_time[raw.asset_id] = max(last, last_time.get(raw.asset_id, last))
                in_flight.append(await self._intake.submit_raw(raw))
                while len(in_flight) >= self._window:
                    await self._collect(in_flight.popleft(), result)
            while in_flight:
                await self._collect(in_flight.popleft(), result)
        except FileFormatError as e:
            raise InvalidArgumentError([(f"file.{e.field}", e.description)]) from None
        finally:
            source.close()
        result.row_count = reader.rows + reader.error_count
        if reader.error_count:
            await self._quarantine_lines(plan, reader, key, result)
        failures = [(f.asset_id, f.timestamp_us) for f in reader.failures]
        if run_to_failure and plan.header.format != _FORMAT.TELEMETRY_FILE_FORMAT_CMAPSS:
            failures = sorted(last_time.items())
        result.label_count = await self._record_failures(failures, content_hash)
        return result

    async def _collect(self, pending: Pending, result: ImportResult) -> None:
        receipt = await pending.receipt(self._stall)
        if receipt.duplicate:
            result.duplicates += 1
            result.duplicate_count += receipt.accepted_count
        else:
            result.accepted_count += receipt.accepted_count
            result.quarantined_count += receipt.quarantined_count
        if receipt.accepted_count:
            result.asset_ids.add(pending.asset_id)
        if len(result.samples) < _SAMPLES:
            result.samples.extend(receipt.sample_rejections[: _SAMPLES - len(result.samples)])

    async def _quarantine_lines(
        self, plan: FileImport, reader: BatchReader, key: str, result: ImportResult
    ) -> None:
        asset_id = plan.header.asset_id or ""
        message = events_pb2.QuarantinedBatch(
            asset_id=asset_id,
            asset_type=plan.asset_type.name if plan.asset_type else "",
            batch_id=f"file:{key}:lines",
            unlisted_count=reader.error_count - len(reader.errors),
        )
        message.quarantined_at.FromMicroseconds(now_us())
        message.counts.add(asset_id=asset_id, reason=_MALFORMED, count=reader.error_count)
        for error in reader.errors:
            reading = message.column_rejections.add(
                asset_id=asset_id,
                batch_id=message.batch_id,
                reason=_MALFORMED,
                detail=f"{plan.header.file_name or 'file'} line {error.line}: {error.reason}",
                value=float("nan"),
            )
            reading.quarantined_at.CopyFrom(message.quarantined_at)
        future = await self._intake._publish(
            quarantine_subject(message.asset_type, asset_id or "file"),
            message.SerializeToString(),
            {MSG_ID: f"{asset_id}:{message.batch_id}"},
        )
        await asyncio.wait_for(future, self._stall)
        result.quarantined_count += reader.error_count
        for reading in message.column_rejections[: max(0, _SAMPLES - len(result.samples))]:
            result.samples.append(reading)

    async def _record_failures(self, failures: list[tuple[str, int]], content_hash: str) -> int:
        recorded = 0
        for asset_id, time_us in failures:
            if self._intake.catalog.cached(asset_id) is None:
                continue  # not registered: its readings were quarantined, no label either
            async with self._store.transaction() as uow:
                added = await handlers.record_outcome(
                    uow,
                    handlers.RecordOutcome(
                        asset_id, Outcome(time_us, True, f"file:{content_hash}")
                    ),
                )
            recorded += 1
            if added:
                self._on_labels()
        return recorded


def _next(reader: BatchReader) -> FileBatch | None:
    return next(reader, None)


def _raw(batch: FileBatch, batch_id: str, plan: FileImport) -> RawBatch:
    timestamps = batch.timestamps_us
    if plan.header.time_kind == _KIND.TIME_COLUMN_KIND_CYCLE and plan.mapping is not None:
        timestamps = plan.cycle_origin_us + timestamps * plan.cycle_us
    columns: list[tuple[int, str, str, np.ndarray | None, str]] = [
        (i, name, unit, np.asarray(values, dtype=np.float64), "")
        for i, (name, (unit, values)) in enumerate(batch.columns.items())
    ]
    asset_id = batch.asset_id
    if plan.header.asset_id_column and plan.header.asset_id:
        asset_id = plan.header.asset_id + asset_id
    return RawBatch(batch_id, asset_id, np.asarray(timestamps, dtype=np.int64), columns)
