"""The telemetry hot path: read a batch, check it, and put it on JetStream without waiting.

``Intake.submit`` turns one ``TelemetryBatch`` into at most two JetStream publications (the
accepted readings on TELEMETRY, the quarantined ones on QUARANTINE) and returns a
``Pending`` whose ``receipt()`` resolves once JetStream has stored them. Callers keep a
bounded window of pending batches and hand out receipts in order; nothing here awaits
JetStream per batch.

Exactly once. Every publication carries ``Nats-Msg-Id: <asset_id>:<batch_id>``, so JetStream
drops a resend within its duplicate window. A resend after the window is recognised before
it is published: a batch with a reading at or behind the asset's watermark (the newest
reading already accepted, carried by every telemetry message in ``Prognos-Watermark-Us``)
may have been stored before, so it is looked up in this process's recent receipts, then in
the ledger of stored batches that the archive writes as it archives, then on the stream
itself from the archive's position onwards. New data (every reading after the watermark)
needs none of these lookups.

Tracing. A telemetry message carries the trace context of the call that sent it
(``traceparent``), so the predictions made from it and the work orders they open continue
the sender's trace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import api
from nats.js.errors import NotFoundError
from sqlalchemy.exc import SQLAlchemyError

from prognos.api import wire
from prognos.api.ingest.v1 import events_pb2, ingest_pb2
from prognos.core.errors import UnavailableError
from prognos.core.telemetry import current_traceparent
from prognos.ingest import adapters
from prognos.ingest.domain import AssetSpec, AssetTypeSpec, SensorChannel
from prognos.ingest.units import UnitMismatchError, UnknownUnitError, converter
from prognos.ingest.validation import (
    BatchRejectedError,
    BatchValidation,
    QuarantineReason,
    validate_batch,
)

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from prognos.core.config import Settings
    from prognos.core.store import EventStore

__all__ = [
    "LEDGER_FOLLOWER",
    "MSG_ID",
    "QUARANTINE_STREAM",
    "TELEMETRY_STREAM",
    "WATERMARK_HEADER",
    "Catalog",
    "ColumnRejection",
    "Intake",
    "Pending",
    "RawBatch",
    "decode_subject_token",
    "describe_reading",
    "read_batch",
    "subject_token",
]

log = logging.getLogger(__name__)

TELEMETRY_STREAM = wire.stream_of(ingest_pb2.TelemetryBatch)
QUARANTINE_STREAM = wire.stream_of(events_pb2.QuarantinedBatch)
QUARANTINE_SUBJECTS = list(wire.streams()[QUARANTINE_STREAM].subjects)
MSG_ID = wire.MSG_ID_HEADER
WATERMARK_HEADER = wire.WATERMARK_HEADER
TRACEPARENT = wire.TRACEPARENT_HEADER
TRACESTATE = wire.TRACESTATE_HEADER
COUNTS_HEADER = wire.COUNTS_HEADER
UNKNOWN_TYPE = wire.UNKNOWN_ASSET_TYPE
#: The follower whose position says up to where the ledger of stored batches is complete.
LEDGER_FOLLOWER = "ingest-archive"

_MAX_ID_LENGTH = 200
_MAX_LISTED = 10_000
_SAMPLES = 10
_RECENT = 100_000
_NEGATIVE_CACHE_S = 1.0
_REASON = ingest_pb2.QuarantineReason

# validation.QuarantineReason -> the API's QuarantineReason number.
_API_REASON = {
    QuarantineReason.NOT_A_NUMBER: _REASON.QUARANTINE_REASON_NOT_A_NUMBER,
    QuarantineReason.INFINITE: _REASON.QUARANTINE_REASON_INFINITE,
    QuarantineReason.OUT_OF_RANGE: _REASON.QUARANTINE_REASON_OUT_OF_RANGE,
    QuarantineReason.FUTURE: _REASON.QUARANTINE_REASON_FUTURE,
    QuarantineReason.LATE: _REASON.QUARANTINE_REASON_LATE,
    QuarantineReason.DUPLICATE_TIMESTAMP: _REASON.QUARANTINE_REASON_DUPLICATE,
}
# Internal validation codes (reason i is code i + 1) -> API numbers, as a lookup array.
_CODE_TO_API = np.array([0, *(_API_REASON[reason] for reason in QuarantineReason)], dtype=np.uint8)

subject_token = wire.subject_token
decode_subject_token = wire.decode_subject_token
telemetry_subject = wire.telemetry_subject
quarantine_subject = wire.quarantine_subject


def now_us() -> int:
    return time.time_ns() // 1000


# --- reading a batch -----------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnRejection:
    """A whole column kept out: its readings are counted, not listed one by one."""

    channel: str
    unit: str
    reason: int
    detail: str
    count: int


@dataclass
class RawBatch:
    """A batch that could be read: its rows and its columns as sent (not yet checked)."""

    batch_id: str
    asset_id: str
    timestamps_us: np.ndarray
    columns: list[tuple[int, str, str, np.ndarray | None, str]]
    """``(index, name, unit, values or None, why unreadable)`` per column, as sent."""

    @property
    def rows(self) -> int:
        return int(self.timestamps_us.size)


def _check_id(value: str, name: str, violations: list[tuple[str, str]]) -> None:
    if not value or not value.strip():
        violations.append((name, "must not be empty"))
    elif len(value) > _MAX_ID_LENGTH or not value.isprintable():
        violations.append((name, f"at most {_MAX_ID_LENGTH} printable characters"))


def read_batch(batch: ingest_pb2.TelemetryBatch, *, max_rows: int) -> RawBatch:
    """Read a batch's shape: ids, timestamps and each column's numbers.

    A fault that makes the whole batch unreadable raises; a column that cannot be read is
    kept with the reason, to be quarantined while the other columns go on.

    Raises:
        BatchRejectedError: naming each field that makes the batch unreadable.
    """
    violations: list[tuple[str, str]] = []
    _check_id(batch.batch_id, "batch_id", violations)
    _check_id(batch.asset_id, "asset_id", violations)
    if ":" in batch.asset_id:
        violations.append(("asset_id", "must not contain ':'"))
    ts: np.ndarray | None = None
    try:
        ts = wire.timestamps(batch)
    except wire.ColumnError as error:
        violations.append((error.field, error.problem))
    if ts is not None and ts.size > max_rows:
        violations.append(("timestamps_us", f"{ts.size} rows exceed the limit of {max_rows}"))
    if not len(batch.channels):
        violations.append(("channels", "empty batch: no channels"))
    if violations or ts is None:
        raise BatchRejectedError(violations)

    columns: list[tuple[int, str, str, np.ndarray | None, str]] = []
    rows = ts.size
    for i, column in enumerate(batch.channels):
        where = f"channels[{i}]"
        values: np.ndarray | None = None
        problem = ""
        try:
            values = wire.column_values(column, where)
        except wire.ColumnError as error:
            problem = str(error)
        if values is not None and values.size != rows:
            problem = f"{where}: {values.size} values for {rows} timestamps"
            values = None
        if not column.name:
            problem = f"{where}.name: must name a channel"
            values = None
        columns.append((i, column.name, column.unit, values, problem))
    return RawBatch(batch.batch_id, batch.asset_id, ts, columns)


@dataclass(frozen=True)
class _Decision:
    """What becomes of a column with a given name and unit, at a given position."""

    sent_unit: str
    reason: int = 0
    detail: str = ""


@lru_cache(maxsize=4_096)
def _decisions(
    spec: AssetTypeSpec, columns: tuple[tuple[int, str, str], ...]
) -> tuple[_Decision, ...]:
    """Per column (position, name, unit as sent): accepted in which unit, or kept out and why."""
    by_name = {channel.name: channel for channel in spec.channels}
    seen: set[str] = set()
    decisions = []
    for i, name, unit in columns:
        where = f"channels[{i}]"
        channel = by_name.get(name)
        if channel is None:
            decisions.append(
                _Decision(
                    unit,
                    _REASON.QUARANTINE_REASON_UNKNOWN_CHANNEL,
                    f"{where}.name: {name!r} is not a channel of asset type {spec.name!r}",
                )
            )
            continue
        if name in seen:
            decisions.append(
                _Decision(
                    unit,
                    _REASON.QUARANTINE_REASON_MALFORMED,
                    f"{where}.name: channel {name!r} given more than once",
                )
            )
            continue
        seen.add(name)
        sent_unit = unit or channel.unit
        try:
            converter(sent_unit, channel.unit)
        except (UnknownUnitError, UnitMismatchError) as e:
            decisions.append(
                _Decision(unit, _REASON.QUARANTINE_REASON_INCOMPATIBLE_UNIT, f"{where}.unit: {e}")
            )
            continue
        decisions.append(_Decision(sent_unit))
    return tuple(decisions)


def _screen(
    raw: RawBatch, spec: AssetTypeSpec
) -> tuple[list[tuple[str, str, np.ndarray]], list[ColumnRejection]]:
    """Split columns into those to validate and those kept out whole, with the reason."""
    good: list[tuple[str, str, np.ndarray]] = []
    rejected: list[ColumnRejection] = []
    rows = raw.rows
    readable = [c for c in raw.columns if not c[4]]
    decisions = iter(_decisions(spec, tuple((c[0], c[1], c[2]) for c in readable)))
    for _, name, unit, values, problem in raw.columns:
        if problem:
            rejected.append(
                ColumnRejection(name, unit, _REASON.QUARANTINE_REASON_MALFORMED, problem, rows)
            )
            continue
        decision = next(decisions)
        if decision.reason:
            rejected.append(ColumnRejection(name, unit, decision.reason, decision.detail, rows))
            continue
        assert values is not None
        good.append((name, decision.sent_unit, values))
    return good, rejected


# --- the catalog of assets and types -----------------------------------------------------------


class Catalog:
    """Which asset has which type, cached in memory and read from the database on a miss."""

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self._types: dict[str, tuple[AssetTypeSpec, int]] = {}
        self._assets: dict[str, AssetSpec] = {}
        self._missing: dict[str, float] = {}

    async def load(self) -> None:
        """Read every asset type and asset."""
        async with self._store.reader() as conn:
            types = await adapters.list_asset_types(conn)
            rows = await adapters.all_assets(conn)
        self._types = {spec.name: (spec, version) for spec, version in types}
        self._assets = {row.spec.asset_id: row.spec for row in rows}

    async def refresh_types(self) -> None:
        """Re-read the asset types whose version changed."""
        async with self._store.reader() as conn:
            versions = await adapters.asset_type_versions(conn)
            if any(self._types.get(n, (None, -1))[1] != v for n, v in versions.items()):
                types = await adapters.list_asset_types(conn)
                self._types = {spec.name: (spec, version) for spec, version in types}

    def remember_type(self, spec: AssetTypeSpec, version: int) -> None:
        self._types[spec.name] = (spec, version)

    def remember_asset(self, spec: AssetSpec) -> None:
        self._assets[spec.asset_id] = spec
        self._missing.pop(spec.asset_id, None)

    def type_of(self, name: str) -> AssetTypeSpec | None:
        entry = self._types.get(name)
        return entry[0] if entry else None

    def cached(self, asset_id: str) -> tuple[AssetSpec, AssetTypeSpec] | None:
        asset = self._assets.get(asset_id)
        if asset is None:
            return None
        entry = self._types.get(asset.asset_type)
        return (asset, entry[0]) if entry else None

    async def resolve(self, asset_id: str) -> tuple[AssetSpec, AssetTypeSpec] | None:
        """The asset and its type, or None when it is not registered."""
        found = self.cached(asset_id)
        if found is not None:
            return found
        missed_at = self._missing.get(asset_id)
        if missed_at is not None and time.monotonic() - missed_at < _NEGATIVE_CACHE_S:
            return None
        async with self._store.reader() as conn:
            rows = await adapters.get_assets(conn, [asset_id])
        row = rows.get(asset_id)
        if row is None:
            self._missing[asset_id] = time.monotonic()
            if len(self._missing) > 10_000:
                self._missing.clear()
            return None
        self._assets[asset_id] = row.spec
        if row.spec.asset_type not in self._types:
            await self.refresh_types()
        return self.cached(asset_id)


# --- pending batches and receipts ----------------------------------------------------------------


@dataclass
class Pending:
    """A batch on its way to JetStream; ``receipt()`` resolves when it is stored."""

    batch_id: str
    asset_id: str
    accepted_count: int
    quarantined_count: int
    counts: dict[int, int]
    samples: list[ingest_pb2.QuarantinedReading]
    telemetry: asyncio.Future[api.PubAck] | None = None
    quarantine: asyncio.Future[api.PubAck] | None = None
    duplicate_of: adapters.StoredBatch | None = None
    on_stored: list[Any] = field(default_factory=list)

    async def receipt(self, timeout: float) -> ingest_pb2.TelemetryReceipt:  # noqa: ASYNC109
        """Wait until JetStream stored the batch, then describe it.

        Raises:
            UnavailableError: JetStream did not acknowledge within ``timeout`` seconds, or
                refused the message; the batch may be resent with the same id.
        """
        receipt = ingest_pb2.TelemetryReceipt(batch_id=self.batch_id)
        if self.duplicate_of is not None:
            receipt.duplicate = True
            receipt.accepted_count = self.duplicate_of.accepted_count
            receipt.quarantined_count = self.duplicate_of.quarantined_count
            receipt.stream_sequence = self.duplicate_of.stream_sequence
            return receipt
        futures = [f for f in (self.telemetry, self.quarantine) if f is not None]
        try:
            if all(f.done() for f in futures):  # the usual case with a window of batches
                acks = [f.result() for f in futures]
            else:
                acks = await asyncio.wait_for(asyncio.gather(*futures), timeout)
        except TimeoutError:
            raise UnavailableError(
                f"the telemetry store did not confirm batch {self.batch_id!r} "
                f"within {timeout:g}s; resend it",
                retry_after_s=max(1.0, timeout / 2),
                reason="TELEMETRY_STORE_STALLED",
                metadata={"batch_id": self.batch_id},
            ) from None
        except Exception as e:  # nats reports refusals as assorted error types
            raise UnavailableError(
                f"the telemetry store refused batch {self.batch_id!r} ({type(e).__name__}); "
                "resend it",
                retry_after_s=1.0,
                reason="TELEMETRY_STORE_UNAVAILABLE",
                metadata={"batch_id": self.batch_id},
            ) from e
        receipt.accepted_count = self.accepted_count
        receipt.quarantined_count = self.quarantined_count
        receipt.sample_rejections.extend(self.samples)
        if self.telemetry is not None:
            ack = acks[0]
            receipt.stream_sequence = ack.seq
            receipt.duplicate = bool(ack.duplicate)
        for callback in self.on_stored:
            callback(receipt)
        return receipt


def describe_reading(
    reason: int, channel: str, value: float, unit: str, spec: SensorChannel | None
) -> str:
    name = _REASON.Name(reason).removeprefix("QUARANTINE_REASON_").lower().replace("_", " ")
    if reason == _REASON.QUARANTINE_REASON_OUT_OF_RANGE and spec is not None:
        return (
            f"{channel}={value:g} {unit or spec.unit} outside [{spec.min_value:g}, "
            f"{spec.max_value:g}] {spec.unit}"
        )
    if reason == _REASON.QUARANTINE_REASON_LATE:
        return f"{channel}: reading behind the asset's newest by more than the lateness bound"
    if reason == _REASON.QUARANTINE_REASON_FUTURE:
        return f"{channel}: reading time ahead of the server clock"
    if reason == _REASON.QUARANTINE_REASON_DUPLICATE:
        return f"{channel}: a second row with the same timestamp in the batch"
    return f"{channel}={value!r}: {name}"


def _reading(
    asset_id: str,
    batch_id: str,
    reason: int,
    channel: str,
    detail: str,
    *,
    time_us: int | None = None,
    value: float = float("nan"),
) -> ingest_pb2.QuarantinedReading:
    reading = ingest_pb2.QuarantinedReading(
        asset_id=asset_id,
        batch_id=batch_id,
        channel=channel,
        value=value,
        reason=reason,  # type: ignore[arg-type]
        detail=detail,
    )
    if time_us is not None:
        reading.time.FromMicroseconds(int(time_us))
    reading.quarantined_at.FromMicroseconds(now_us())
    return reading


# --- the intake ---------------------------------------------------------------------------


class Intake:
    """Checks batches and publishes them; shared by every stream and upload of a process.

    Args:
        settings: lateness, clock skew and batch size limits.
        store: the service's event store (the ledger and the catalog live in its database).
        js: JetStream.
        catalog: the asset catalog.
    """

    def __init__(
        self, settings: Settings, store: EventStore, js: JetStreamContext, catalog: Catalog
    ) -> None:
        self._settings = settings
        self._store = store
        self._js = js
        self.catalog = catalog
        self.max_rows = settings.telemetry_max_rows
        self._lateness_us = int(settings.telemetry_max_lateness_s * 1e6)
        self._future_us = int(settings.telemetry_max_future_s * 1e6)
        self._watermarks: dict[str, int | None] = {}
        self._last_ids: dict[str, str] = {}
        self._recent: OrderedDict[tuple[str, str], adapters.StoredBatch] = OrderedDict()
        self._max_payload = 1 << 20

    async def start(self, max_payload: int) -> None:
        """Create the streams if needed and read the catalog."""
        from prognos.core.bus import ensure_stream

        await ensure_stream(self._js, TELEMETRY_STREAM)
        await ensure_stream(self._js, QUARANTINE_STREAM, QUARANTINE_SUBJECTS)
        await self.catalog.load()
        self._max_payload = max_payload

    # -- watermarks -----------------------------------------------------------------------

    async def _watermark(self, asset_type: str, asset_id: str) -> int | None:
        if asset_id in self._watermarks:
            return self._watermarks[asset_id]
        watermark: int | None = None
        try:
            last = await self._js.get_last_msg(
                TELEMETRY_STREAM, telemetry_subject(asset_type, asset_id)
            )
        except NotFoundError:
            last = None
        if last is not None and last.headers:
            value = last.headers.get(WATERMARK_HEADER)
            watermark = int(value) if value else None
            msg_id = last.headers.get(MSG_ID, "")
            self._last_ids[asset_id] = msg_id
            if msg_id and last.seq is not None:
                accepted, _, quarantined = last.headers.get(COUNTS_HEADER, "0/0").partition("/")
                batch_id = msg_id.partition(":")[2]
                self._remember(
                    adapters.StoredBatch(
                        asset_id, batch_id, last.seq, int(accepted), int(quarantined), 0, 0
                    )
                )
        # Another coroutine may have read it meanwhile; the larger one is the truth.
        current = self._watermarks.get(asset_id)
        if current is not None and (watermark is None or current > watermark):
            watermark = current
        self._watermarks[asset_id] = watermark
        return watermark

    def _remember(self, stored: adapters.StoredBatch) -> None:
        key = (stored.asset_id, stored.batch_id)
        self._recent[key] = stored
        self._recent.move_to_end(key)
        while len(self._recent) > _RECENT:
            self._recent.popitem(last=False)

    # -- recognising a resend ---------------------------------------------------------------

    async def _stored_before(
        self, asset_type: str, asset_id: str, batch_id: str
    ) -> adapters.StoredBatch | None:
        key = (asset_id, batch_id)
        found = self._recent.get(key)
        if found is not None:
            return found
        async with self._store.reader() as conn:
            ledger = await adapters.find_batches(conn, [key])
            position = await adapters.follower_position(conn, LEDGER_FOLLOWER)
        if key in ledger:
            return ledger[key]
        return await self._scan_stream(asset_type, asset_id, batch_id, position + 1)

    async def _scan_stream(
        self, asset_type: str, asset_id: str, batch_id: str, from_sequence: int
    ) -> adapters.StoredBatch | None:
        """Look for the batch on the stream among the messages the ledger does not hold yet."""
        subject = telemetry_subject(asset_type, asset_id)
        wanted = f"{asset_id}:{batch_id}"
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(1, from_sequence),
            ack_policy=api.AckPolicy.NONE,
            headers_only=True,
            inactive_threshold=5.0,
            mem_storage=True,
        )
        psub = await self._js.pull_subscribe(subject, stream=TELEMETRY_STREAM, config=config)
        try:
            remaining = (await psub.consumer_info()).num_pending
            while remaining > 0:
                try:
                    messages = await psub.fetch(min(remaining, 256), timeout=2.0)
                except (NatsTimeoutError, TimeoutError):
                    break
                for msg in messages:
                    remaining -= 1
                    headers = msg.headers or {}
                    if headers.get(MSG_ID) == wanted:
                        accepted, _, quarantined = headers.get(COUNTS_HEADER, "0/0").partition("/")
                        assert msg.metadata is not None
                        return adapters.StoredBatch(
                            asset_id,
                            batch_id,
                            msg.metadata.sequence.stream,
                            int(accepted),
                            int(quarantined),
                            0,
                            0,
                        )
            return None
        finally:
            try:
                await psub.unsubscribe()
            except Exception:  # the consumer goes away by itself once inactive
                log.debug("unsubscribe of a scan consumer failed", exc_info=True)

    # -- the batch -------------------------------------------------------------------------

    async def submit(self, batch: ingest_pb2.TelemetryBatch) -> Pending:
        """Check one batch and start publishing it.

        Raises:
            BatchRejectedError: the batch cannot be read; nothing of it was stored.
            UnavailableError: JetStream cannot take the message now.
        """
        return await self.submit_raw(read_batch(batch, max_rows=self.max_rows))

    async def submit_raw(self, raw: RawBatch) -> Pending:
        """Like ``submit``, for a batch already read (from a file, for instance)."""
        found = self.catalog.cached(raw.asset_id) or await self.catalog.resolve(raw.asset_id)
        if found is None:
            return await self._unknown_asset(raw)
        _, spec = found
        stored: adapters.StoredBatch | None = None
        try:
            if raw.asset_id in self._watermarks:
                last_seen = self._watermarks[raw.asset_id]
            else:
                last_seen = await self._watermark(spec.name, raw.asset_id)
            if last_seen is not None and int(raw.timestamps_us.min()) <= last_seen:
                stored = await self._stored_before(spec.name, raw.asset_id, raw.batch_id)
        except (NatsError, SQLAlchemyError, TimeoutError, ConnectionError) as e:
            raise UnavailableError(
                f"cannot tell whether batch {raw.batch_id!r} is stored already "
                f"({type(e).__name__}); resend it",
                retry_after_s=1.0,
                reason="TELEMETRY_STORE_UNAVAILABLE",
                metadata={"batch_id": raw.batch_id},
            ) from e
        if stored is not None:
            return Pending(
                raw.batch_id,
                raw.asset_id,
                stored.accepted_count,
                stored.quarantined_count,
                {},
                [],
                duplicate_of=stored,
            )
        good, rejected = _screen(raw, spec)
        return await self.publish_checked(raw, spec, good, rejected, last_seen)

    async def publish_checked(
        self,
        raw: RawBatch,
        spec: AssetTypeSpec,
        good: list[tuple[str, str, np.ndarray]],
        rejected: list[ColumnRejection],
        last_seen: int | None,
    ) -> Pending:
        """Validate the readable columns, then publish accepted and quarantined readings."""
        validation: BatchValidation | None = None
        if good:
            validation = validate_batch(
                spec,
                raw.asset_id,
                raw.timestamps_us,
                good,
                now_us=now_us(),
                last_seen_us=last_seen,
                max_lateness_us=self._lateness_us,
                max_future_us=self._future_us,
                max_rows=self.max_rows,
            )
        counts: dict[int, int] = {}
        for rejection in rejected:
            counts[rejection.reason] = counts.get(rejection.reason, 0) + rejection.count
        accepted = 0
        if validation is not None:
            for reason, count in validation.counts.items():
                counts[_API_REASON[reason]] = counts.get(_API_REASON[reason], 0) + count
            accepted = validation.accepted_values
        quarantined = sum(counts.values())
        samples = self._samples(raw, spec, rejected, validation)
        pending = Pending(raw.batch_id, raw.asset_id, accepted, quarantined, counts, samples)
        headers_id = f"{raw.asset_id}:{raw.batch_id}"
        if validation is not None and validation.accepted_rows:
            watermark = int(validation.timestamps_us[-1])
            if last_seen is not None and last_seen > watermark:
                watermark = last_seen
            payload = _telemetry_payload(raw, spec, validation, quarantined)
            if len(payload) > self._max_payload:
                raise BatchRejectedError(
                    [
                        (
                            "timestamps_us",
                            f"the batch's accepted readings take {len(payload)} bytes, above "
                            f"the telemetry message limit of {self._max_payload} bytes: send "
                            "fewer rows per batch",
                        )
                    ]
                )
            self._watermarks[raw.asset_id] = watermark
            headers = {
                MSG_ID: headers_id,
                WATERMARK_HEADER: str(watermark),
                COUNTS_HEADER: f"{accepted}/{quarantined}",
            }
            traceparent, tracestate = current_traceparent()
            if traceparent:
                headers[TRACEPARENT] = traceparent
                if tracestate:
                    headers[TRACESTATE] = tracestate
            pending.telemetry = await self._publish(
                telemetry_subject(spec.name, raw.asset_id), payload, headers
            )
            self._last_ids[raw.asset_id] = headers_id
            first, last = int(validation.timestamps_us[0]), int(validation.timestamps_us[-1])

            def remember(receipt: ingest_pb2.TelemetryReceipt) -> None:
                self._remember(
                    adapters.StoredBatch(
                        raw.asset_id,
                        raw.batch_id,
                        receipt.stream_sequence,
                        accepted,
                        quarantined,
                        first,
                        last,
                    )
                )

            pending.on_stored.append(remember)
        if quarantined:
            message = _quarantine_message(raw, spec.name, rejected, validation, counts, accepted)
            pending.quarantine = await self._publish(
                quarantine_subject(spec.name, raw.asset_id),
                message.SerializeToString(),
                {MSG_ID: headers_id},
            )
        return pending

    async def _unknown_asset(self, raw: RawBatch) -> Pending:
        reason = _REASON.QUARANTINE_REASON_UNKNOWN_ASSET
        detail = f"asset_id: {raw.asset_id!r} is not registered"
        rejected = [
            ColumnRejection(name, unit, reason, detail, raw.rows)
            for _, name, unit, _, _ in raw.columns
        ]
        count = sum(r.count for r in rejected)
        message = _quarantine_message(raw, "", rejected, None, {reason: count}, 0)
        pending = Pending(
            raw.batch_id,
            raw.asset_id,
            0,
            count,
            {reason: count},
            [_reading(raw.asset_id, raw.batch_id, reason, "", detail)],
        )
        pending.quarantine = await self._publish(
            quarantine_subject("", raw.asset_id),
            message.SerializeToString(),
            {MSG_ID: f"{raw.asset_id}:{raw.batch_id}"},
        )
        return pending

    async def _publish(
        self, subject: str, payload: bytes, headers: dict[str, str]
    ) -> asyncio.Future[api.PubAck]:
        try:
            return await self._js.publish_async(subject, payload, headers=headers)
        except Exception as e:  # connection closed, outbound buffer full, ...
            raise UnavailableError(
                f"the telemetry store cannot take messages now ({type(e).__name__})",
                retry_after_s=1.0,
                reason="TELEMETRY_STORE_UNAVAILABLE",
            ) from e

    def _samples(
        self,
        raw: RawBatch,
        spec: AssetTypeSpec,
        rejected: Sequence[ColumnRejection],
        validation: BatchValidation | None,
    ) -> list[ingest_pb2.QuarantinedReading]:
        samples = [
            _reading(raw.asset_id, raw.batch_id, r.reason, r.channel, r.detail)
            for r in rejected[:_SAMPLES]
        ]
        if validation is not None and len(validation.quarantine) and len(samples) < _SAMPLES:
            q = validation.quarantine
            take = min(_SAMPLES - len(samples), len(q))
            for k in range(take):
                channel = q.channels[int(q.channel_index[k])]
                reason = int(_CODE_TO_API[q.reason_codes[k]])
                value = float(q.raw_values[k])
                samples.append(
                    _reading(
                        raw.asset_id,
                        raw.batch_id,
                        reason,
                        channel,
                        describe_reading(
                            reason,
                            channel,
                            value,
                            q.raw_units.get(channel, ""),
                            spec.channel(channel),
                        ),
                        time_us=int(q.timestamps_us[k]),
                        value=value,
                    )
                )
        return samples


def _telemetry_payload(
    raw: RawBatch, spec: AssetTypeSpec, validation: BatchValidation, quarantined: int
) -> bytes:
    message = ingest_pb2.TelemetryBatch(
        batch_id=raw.batch_id,
        asset_id=raw.asset_id,
        asset_type=spec.name,
        timestamps_us_le=validation.timestamps_us.astype("<i8", copy=False).tobytes(),
        quarantined_count=quarantined,
    )
    channels = message.channels
    for name, values in validation.columns.items():
        channels.add(
            name=name,
            unit=validation.units[name],
            values_f64_le=values.astype("<f8", copy=False).tobytes(),
        )
    return message.SerializeToString()


def _quarantine_message(
    raw: RawBatch,
    asset_type: str,
    rejected: Sequence[ColumnRejection],
    validation: BatchValidation | None,
    counts: dict[int, int],
    accepted: int,
) -> events_pb2.QuarantinedBatch:
    message = events_pb2.QuarantinedBatch(
        asset_id=raw.asset_id,
        asset_type=asset_type,
        batch_id=raw.batch_id,
        accepted_count=accepted,
    )
    message.quarantined_at.FromMicroseconds(now_us())
    for reason, count in sorted(counts.items()):
        message.counts.add(asset_id=raw.asset_id, reason=reason, count=count)  # type: ignore[arg-type]
    for rejection in rejected:
        message.column_rejections.append(
            _reading(
                raw.asset_id, raw.batch_id, rejection.reason, rejection.channel, rejection.detail
            )
        )
    listed = 0
    if validation is not None and len(validation.quarantine):
        q = validation.quarantine
        listed = min(len(q), _MAX_LISTED)
        message.channels.extend(q.channels)
        message.units.extend(q.raw_units.get(c, "") for c in q.channels)
        message.timestamps_us_le = q.timestamps_us[:listed].astype("<i8").tobytes()
        message.channel_index_le = q.channel_index[:listed].astype("<u2").tobytes()
        message.reasons = _CODE_TO_API[q.reason_codes[:listed]].tobytes()
        message.values_f64_le = q.raw_values[:listed].astype("<f8").tobytes()
    column_readings = sum(r.count for r in rejected)
    message.unlisted_count = sum(counts.values()) - listed - column_readings
    return message
