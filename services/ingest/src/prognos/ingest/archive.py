"""The telemetry archive: Parquet files per asset type, asset and day, each batch exactly once.

The archiver follows the TELEMETRY stream with a durable pull consumer (acks cover every
message up to the one acknowledged), buffers batches, and flushes when enough rows are
buffered, when the oldest is old enough, or when a snapshot asks for it. A flush writes one
immutable file per asset type, asset and day touched (sorted by time), then commits in one
database transaction the catalog entries, the ledger of the archived batches and its
position on the stream, and only then acknowledges. After a crash it resumes after its
position; files written by a flush that did not commit are not in the catalog and are
removed on start. Outcome labels recorded in the database are written to label files in
the same flushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from google.protobuf.message import DecodeError
from nats.errors import TimeoutError as NatsTimeoutError

from prognos.api import wire
from prognos.api.ingest.v1 import ingest_pb2
from prognos.ingest import adapters
from prognos.ingest.followers import follow
from prognos.ingest.intake import (
    COUNTS_HEADER,
    LEDGER_FOLLOWER,
    TELEMETRY_STREAM,
    subject_token,
)

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from prognos.core.store import EventStore
    from prognos.ingest.intake import Catalog

__all__ = [
    "ARCHIVE_DURABLE",
    "Archiver",
    "read_archive_files",
    "read_snapshot",
    "read_snapshot_labels",
]

log = logging.getLogger(__name__)

ARCHIVE_DURABLE = LEDGER_FOLLOWER
DAY_US = 86_400_000_000
_FETCH = 512
_TIME = pa.timestamp("us", tz="UTC")
#: LZ4 gives up fast on noise and halves smooth sensor signals, at a quarter of the CPU
#: that zstd takes and about that of snappy on noise.
COMPRESSION = "lz4"
#: Nice value of the thread that writes files: under CPU contention the telemetry intake,
#: which clients wait for, goes first; the archive catches up when the CPU is free.
WRITER_NICE = 10
_SYNC_POOL = ThreadPoolExecutor(8, thread_name_prefix="archive-fsync")


def _lower_priority() -> None:
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)


@dataclass
class _Batch:
    sequence: int
    asset_type: str
    asset_id: str
    batch_id: str
    timestamps_us: np.ndarray
    columns: dict[str, np.ndarray]
    accepted: int
    quarantined: int
    received_at_us: int
    """When the stream stored the message: the batch's receipt."""


def _received_at_us(msg: Msg) -> int:
    """When JetStream stored ``msg``, in microseconds: after that the sender got its receipt."""
    assert msg.metadata is not None
    return int(msg.metadata.timestamp.timestamp() * 1_000_000)


def _day(day_index: int) -> str:
    return datetime.fromtimestamp(day_index * 86_400, UTC).strftime("%Y-%m-%d")


def _write(root: Path, relative: str, table: pa.Table) -> tuple[str, int]:
    """Write a Parquet file (not yet synced); returns its content hash and size.

    A file is only part of the archive once its catalog entry commits; a file that a crash
    left half-written has none and is removed on the next start.
    """
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=COMPRESSION, use_dictionary=["asset_id", "batch_id"])
    data = sink.getvalue()
    digest = hashlib.sha256(memoryview(data)).hexdigest()
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(memoryview(data))
    return f"sha256:{digest}", data.size


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_all(root: Path, relatives: Sequence[str]) -> None:
    """Flush files and their directories to disk, many at once (the disk batches them)."""
    paths = [root / r for r in relatives]
    directories = {p.parent for p in paths}
    list(_SYNC_POOL.map(_fsync, paths))
    list(_SYNC_POOL.map(_fsync, directories))


class Archiver:
    """Writes the TELEMETRY stream and the recorded labels to Parquet, exactly once.

    Args:
        store: the ingest event store (catalog, ledger and position live in its database).
        js: JetStream.
        root: the archive directory.
        catalog: asset types, for the column order of the files.
        flush_rows: flush when this many rows are buffered.
        flush_interval_s: flush when the oldest buffered batch waited this long.
        sync_files: fsync each file before its catalog entry commits.
    """

    def __init__(
        self,
        store: EventStore,
        js: JetStreamContext,
        root: Path,
        catalog: Catalog,
        *,
        flush_rows: int = 500_000,
        flush_interval_s: float = 60.0,
        sync_files: bool = True,
    ) -> None:
        self._store = store
        self._js = js
        self.root = root.resolve()
        self._catalog = catalog
        self._flush_rows = flush_rows
        self._interval = flush_interval_s
        self._sync_files = sync_files
        self._buffer: list[_Batch] = []
        self._rows = 0
        self._oldest = 0.0
        self._last_msg: Msg | None = None
        self._seen = 0
        self.position = 0
        self._target = 0
        self._labels_due = True
        self._last_label_check = 0.0
        self._stopping = False
        self._wake = asyncio.Event()
        self._flushed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._writer = ThreadPoolExecutor(
            1, thread_name_prefix="archive-writer", initializer=_lower_priority
        )
        self.ready = asyncio.Event()

    @property
    def root_uri(self) -> str:
        return self.root.as_uri()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="telemetry-archive")

    async def stop(self) -> None:
        """Flush what is buffered and stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait(self) -> None:
        """Until the archiver stops (after ``stop``, or when it failed)."""
        if self._task is not None:
            await self._task

    def labels_recorded(self) -> None:
        """Labels were added: write them with the next flush."""
        self._labels_due = True

    async def sync(self, through_sequence: int, timeout: float) -> bool:  # noqa: ASYNC109
        """Flush until every message up to ``through_sequence`` (and every label) is archived.

        Returns:
            Whether that happened within ``timeout`` seconds.
        """
        self._target = max(self._target, through_sequence, self.position)
        self._labels_due = True
        self._wake.set()
        deadline = time.monotonic() + timeout
        async with self._flushed:
            while self.position < through_sequence or self._labels_due:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._task is None or self._task.done():
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._flushed.wait(), remaining)
        return True

    async def run(self) -> None:
        self._task = asyncio.current_task()
        async with self._store.reader() as conn:
            self.position = await adapters.follower_position(conn, ARCHIVE_DURABLE)
            known = await adapters.archive_paths(conn)
        self._seen = self.position
        removed = await asyncio.to_thread(self._remove_orphans, known)
        if removed:
            log.warning("removed %d archive files of a flush that did not commit", removed)
        from prognos.core.bus import ensure_stream

        await ensure_stream(self._js, TELEMETRY_STREAM)
        psub = await follow(
            self._js,
            stream=TELEMETRY_STREAM,
            subject=wire.streams()[TELEMETRY_STREAM].subjects[0],
            durable=ARCHIVE_DURABLE,
            after_sequence=self.position,
            ack_wait_s=max(60.0, 3 * self._interval),
        )
        self.ready.set()
        try:
            while not self._stopping:
                await self._step(psub)
            if self._buffer or self._labels_due:
                await self._flush()
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def _step(self, psub: Any) -> None:
        wait = 1.0
        if self._buffer:
            wait = max(0.01, min(wait, self._oldest + self._interval - time.monotonic()))
        if self._target > self._seen:
            wait = min(wait, 0.05)
        try:
            messages = await psub.fetch(_FETCH, timeout=wait)
        except (NatsTimeoutError, TimeoutError):
            messages = []
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("archive fetch failed", exc_info=True)
            await asyncio.sleep(0.5)  # back off before asking the server again
            return
        for msg in messages:
            self._add(msg)
        if self._due():
            try:
                await self._flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("archive flush failed; retrying")
                await asyncio.sleep(1.0)  # the buffer is kept, the next step retries

    def _add(self, msg: Msg) -> None:
        assert msg.metadata is not None
        sequence = msg.metadata.sequence.stream
        if sequence <= self._seen:
            return  # redelivered: already buffered or archived
        self._seen = sequence
        self._last_msg = msg
        batch = ingest_pb2.TelemetryBatch()
        try:
            batch.ParseFromString(msg.data)
            timestamps = np.frombuffer(batch.timestamps_us_le, dtype="<i8")
            columns = {c.name: np.frombuffer(c.values_f64_le, dtype="<f8") for c in batch.channels}
            if any(v.size != timestamps.size for v in columns.values()):
                raise DecodeError("column lengths differ")
        except DecodeError:
            log.error("skipping unreadable telemetry message %d on %s", sequence, msg.subject)
            return
        accepted, _, quarantined = (msg.headers or {}).get(COUNTS_HEADER, "0/0").partition("/")
        if not self._buffer:
            self._oldest = time.monotonic()
        self._buffer.append(
            _Batch(
                sequence,
                batch.asset_type,
                batch.asset_id,
                batch.batch_id,
                timestamps,
                columns,
                int(accepted or 0),
                int(quarantined or 0),
                _received_at_us(msg),
            )
        )
        self._rows += timestamps.size

    def _due(self) -> bool:
        if self._stopping:
            return False
        if self._buffer and (
            self._rows >= self._flush_rows
            or time.monotonic() - self._oldest >= self._interval
            or (self._target > self.position and self._seen >= self._target)
        ):
            return True
        if self._target > self.position and self._seen >= self._target:
            return True
        since_labels = time.monotonic() - self._last_label_check
        if self._labels_due and since_labels >= min(self._interval, 1.0):
            return True
        # Labels may also come from another process's transaction: look now and then.
        return since_labels >= self._interval

    async def _flush(self) -> None:
        buffered, last_msg = self._buffer, self._last_msg
        self._labels_due = False
        self._last_label_check = time.monotonic()
        try:
            async with self._store.reader() as conn:
                labels = await adapters.unarchived_labels(conn)
            if not buffered and not labels:
                async with self._flushed:
                    self._flushed.notify_all()
                return
            files, ledger, label_paths = await asyncio.get_running_loop().run_in_executor(
                self._writer, self._write_files, buffered, labels
            )
        except BaseException:
            self._labels_due = True
            raise
        last_sequence = buffered[-1].sequence if buffered else self.position
        async with self._store.transaction() as uow:
            await adapters.add_archive_files(uow.conn, files)
            await adapters.record_batches(uow.conn, ledger)
            await adapters.mark_labels_archived(uow.conn, label_paths)
            if last_sequence > self.position:
                await adapters.set_follower_position(uow.conn, ARCHIVE_DURABLE, last_sequence)
        if len(labels) >= 10_000:
            self._labels_due = True
        self._buffer, self._rows = [], 0
        self.position = max(self.position, last_sequence)
        if last_msg is not None and buffered:
            try:
                await last_msg.ack()
            except Exception:  # redelivered later and skipped by position
                log.warning("archive ack failed", exc_info=True)
        async with self._flushed:
            self._flushed.notify_all()

    # -- files (run in a worker thread) ------------------------------------------------------

    def _channel_order(self, asset_type: str, names: Iterable[str]) -> list[str]:
        spec = self._catalog.type_of(asset_type)
        known = [c.name for c in spec.channels] if spec else []
        present = set(names)
        return [n for n in known if n in present] + sorted(present - set(known))

    def _write_files(
        self, buffered: Sequence[_Batch], labels: Sequence[adapters.LabelRow]
    ) -> tuple[list[adapters.ArchiveFile], list[adapters.StoredBatch], dict[str, str]]:
        files: list[adapters.ArchiveFile] = []
        ledger: list[adapters.StoredBatch] = []
        if buffered:
            first, last = buffered[0].sequence, buffered[-1].sequence
            groups: dict[tuple[str, str], list[_Batch]] = defaultdict(list)
            for batch in buffered:
                groups[(batch.asset_type, batch.asset_id)].append(batch)
                ts = batch.timestamps_us
                ledger.append(
                    adapters.StoredBatch(
                        batch.asset_id,
                        batch.batch_id,
                        batch.sequence,
                        batch.accepted,
                        batch.quarantined,
                        int(ts[0]) if ts.size else 0,
                        int(ts[-1]) if ts.size else 0,
                        batch.received_at_us,
                    )
                )
            for (asset_type, asset_id), batches in groups.items():
                files.extend(self._write_asset(asset_type, asset_id, batches, first, last))
        label_paths: dict[str, str] = {}
        if labels:
            files.extend(self._write_labels(labels, label_paths))
        if self._sync_files:
            _sync_all(self.root, [f.path for f in files])
        return files, ledger, label_paths

    def _write_asset(
        self, asset_type: str, asset_id: str, batches: list[_Batch], first: int, last: int
    ) -> list[adapters.ArchiveFile]:
        times = np.concatenate([b.timestamps_us for b in batches])
        sizes = [b.timestamps_us.size for b in batches]
        names = self._channel_order(asset_type, (n for b in batches for n in b.columns))
        values: dict[str, np.ndarray] = {}
        for name in names:
            parts = [b.columns.get(name, np.full(b.timestamps_us.size, np.nan)) for b in batches]
            values[name] = np.concatenate(parts)
        sequences = np.repeat(np.array([b.sequence for b in batches], dtype=np.int64), sizes)
        batch_ids = np.repeat(np.arange(len(batches)), sizes)
        order = np.argsort(times, kind="stable")
        times = times[order]
        days = times // DAY_US
        bounds = np.flatnonzero(np.diff(days)) + 1
        starts = [0, *bounds.tolist()]
        ends = [*bounds.tolist(), times.size]
        ids = pa.array([b.batch_id for b in batches], pa.string())
        written = []
        for start, end in zip(starts, ends, strict=True):
            pick = order[start:end]
            day = _day(int(days[start]))
            table = pa.table(
                {
                    "time": pa.array(times[start:end], _TIME),
                    "asset_id": pa.DictionaryArray.from_arrays(
                        pa.array(np.zeros(end - start, dtype=np.int32)), pa.array([asset_id])
                    ),
                    "batch_id": pa.DictionaryArray.from_arrays(
                        pa.array(batch_ids[pick].astype(np.int32)), ids
                    ),
                    "stream_sequence": pa.array(sequences[pick]),
                    **{name: pa.array(values[name][pick]) for name in names},
                }
            )
            relative = (
                f"telemetry/asset_type={asset_type}/asset={subject_token(asset_id)}/day={day}/"
                f"part-{first:012d}-{last:012d}.parquet"
            )
            content_hash, size = _write(self.root, relative, table)
            picked = sequences[pick]
            written.append(
                adapters.ArchiveFile(
                    path=relative,
                    kind="telemetry",
                    asset_type=asset_type,
                    asset_id=asset_id,
                    day=day,
                    min_time_us=int(times[start]),
                    max_time_us=int(times[end - 1]),
                    row_count=end - start,
                    size_bytes=size,
                    content_hash=content_hash,
                    first_sequence=int(picked.min()),
                    last_sequence=int(picked.max()),
                )
            )
        return written

    def _write_labels(
        self, labels: Sequence[adapters.LabelRow], paths: dict[str, str]
    ) -> list[adapters.ArchiveFile]:
        groups: dict[tuple[str, str, int], list[adapters.LabelRow]] = defaultdict(list)
        for label in labels:
            groups[(label.asset_type, label.asset_id, label.time_us // DAY_US)].append(label)
        written = []
        flush_id = uuid.uuid4().hex[:12]
        for (asset_type, asset_id, day_index), rows in groups.items():
            rows.sort(key=lambda r: (r.time_us, r.event_id))
            table = pa.table(
                {
                    "time": pa.array([r.time_us for r in rows], _TIME),
                    "asset_id": pa.array([r.asset_id for r in rows], pa.string()),
                    "asset_type": pa.array([r.asset_type for r in rows], pa.string()),
                    "failure_confirmed": pa.array([r.failure_confirmed for r in rows]),
                    "source": pa.array([r.source for r in rows], pa.string()),
                    "failure_mode": pa.array([r.failure_mode for r in rows], pa.string()),
                    "event_id": pa.array([r.event_id for r in rows], pa.string()),
                    "repaired_at": pa.array([r.repaired_at_us for r in rows], _TIME),
                }
            )
            day = _day(day_index)
            relative = (
                f"labels/asset_type={asset_type}/asset={subject_token(asset_id)}/day={day}/"
                f"labels-{flush_id}.parquet"
            )
            content_hash, size = _write(self.root, relative, table)
            for row in rows:
                paths[row.event_id] = relative
            written.append(
                adapters.ArchiveFile(
                    path=relative,
                    kind="labels",
                    asset_type=asset_type,
                    asset_id=asset_id,
                    day=day,
                    min_time_us=rows[0].time_us,
                    max_time_us=rows[-1].time_us,
                    row_count=len(rows),
                    size_bytes=size,
                    content_hash=content_hash,
                    first_sequence=0,
                    last_sequence=0,
                )
            )
        return written

    def _remove_orphans(self, known: set[str]) -> int:
        removed = 0
        for top in ("telemetry", "labels"):
            base = self.root / top
            if not base.is_dir():
                continue
            for path in base.rglob("*"):
                if not path.is_file():
                    continue
                relative = path.relative_to(self.root).as_posix()
                if relative not in known:
                    path.unlink()
                    removed += 1
        return removed


# --- reading the archive back ------------------------------------------------------------------


class ArchiveIntegrityError(ValueError):
    """A file's bytes do not match the content hash its snapshot froze."""


def _root_path(root_uri: str) -> Path:
    parsed = urlparse(root_uri)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"cannot read archive root {root_uri!r}: only file:// is supported")
    return Path(unquote(parsed.path))


def read_archive_files(
    root_uri: str,
    files: Sequence[tuple[str, str]],
    *,
    verify: bool = True,
) -> pa.Table:
    """Read ``(path, content_hash)`` files of one kind into one table (columns unified).

    Raises:
        ArchiveIntegrityError: a file's SHA-256 differs from its content hash.
    """
    root = _root_path(root_uri)
    tables = []
    for path, content_hash in files:
        data = (root / path).read_bytes()
        if verify:
            actual = "sha256:" + hashlib.sha256(data).hexdigest()
            if actual != content_hash:
                raise ArchiveIntegrityError(f"{path}: content hash {actual} is not {content_hash}")
        table = pq.read_table(pa.BufferReader(data))
        tables.append(table.cast(_plain_schema(table.schema)))
    if not tables:
        return pa.table({"time": pa.array([], _TIME), "asset_id": pa.array([], pa.string())})
    return pa.concat_tables(tables, promote_options="default")


def _plain_schema(schema: pa.Schema) -> pa.Schema:
    """Dictionary-encoded strings as plain strings, so files concatenate."""
    return pa.schema(
        [
            pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
            for f in schema
        ]
    )


def _select(table: pa.Table, snapshot: ingest_pb2.DatasetSnapshot) -> pa.Table:
    import pyarrow.compute as pc

    mask = None
    if snapshot.HasField("start_time"):
        start = pa.scalar(snapshot.start_time.ToMicroseconds(), _TIME)
        mask = pc.greater_equal(table["time"], start)
    if snapshot.HasField("end_time"):
        end = pa.scalar(snapshot.end_time.ToMicroseconds(), _TIME)
        below = pc.less(table["time"], end)
        mask = below if mask is None else pc.and_(mask, below)
    if mask is not None:
        table = table.filter(mask)
    return table.sort_by([("asset_id", "ascending"), ("time", "ascending")])


def _files_of(snapshot: ingest_pb2.DatasetSnapshot, kind: int) -> list[tuple[str, str]]:
    return [(f.path, f.content_hash) for f in snapshot.files if f.kind == kind]


def read_snapshot(snapshot: ingest_pb2.DatasetSnapshot, *, verify: bool = True) -> pa.Table:
    """The telemetry of a snapshot as one Arrow table, sorted by asset and time.

    Only Parquet and the snapshot message are needed, so any service can do the same with
    pyarrow alone: read each telemetry file at ``<root_uri>/<path>``, check its SHA-256,
    concatenate, keep ``start_time <= time < end_time``, sort.

    Raises:
        ArchiveIntegrityError: a file changed since the snapshot was taken.
    """
    table = read_archive_files(
        snapshot.root_uri,
        _files_of(snapshot, ingest_pb2.DATASET_FILE_KIND_TELEMETRY),
        verify=verify,
    )
    return _select(table, snapshot)


def read_snapshot_labels(snapshot: ingest_pb2.DatasetSnapshot, *, verify: bool = True) -> pa.Table:
    """The outcome labels of a snapshot, sorted by asset and time."""
    table = read_archive_files(
        snapshot.root_uri, _files_of(snapshot, ingest_pb2.DATASET_FILE_KIND_LABELS), verify=verify
    )
    return _select(table, snapshot)
