"""The event store, the transactional outbox and the consumer tracking table.

One unit of work is one database transaction in which a handler may append events to
aggregate streams (optimistic concurrency on ``(stream_id, version)``), queue integration
messages for the outbox, write audit entries and record that a consumed message was
processed. Either all of it commits or none of it does, so no event is published that was
not stored, and no stored event goes unpublished.

The same code runs on SQLite (WAL; writers serialised with ``BEGIN IMMEDIATE``) and on
PostgreSQL (writers serialised with a transaction-scoped advisory lock, so that the global
position order is the commit order and the audit chain never forks).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from prognos.core import audit as _audit
from prognos.core import messaging
from prognos.core.context import current_actor
from prognos.core.errors import ConcurrencyError
from prognos.core.events import DomainEvent, decode, encode
from prognos.core.telemetry import current_traceparent

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from prognos.core.config import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: The tables every service database has; each service adds its own read models to a
#: MetaData of its own (``new_metadata()``).
metadata = MetaData(naming_convention=NAMING_CONVENTION)

_Json = JSON().with_variant(JSONB(), "postgresql")
_Position = BigInteger().with_variant(Integer(), "sqlite")

events_table = Table(
    "events",
    metadata,
    Column("position", _Position, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("stream_id", String(255), nullable=False),
    Column("version", Integer, nullable=False),
    Column("type", String(255), nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("data", _Json, nullable=False),
    Column("meta", _Json, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("stream_id", "version"),
)

outbox_table = Table(
    "outbox",
    metadata,
    Column("position", _Position, primary_key=True, autoincrement=True),
    Column("message_id", String(64), nullable=False, unique=True),
    Column("subject", String(255), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("headers", _Json, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=True),
    # A message the server refused for good (too large, say): kept, never retried.
    Column("dead_lettered_at", DateTime(timezone=True), nullable=True),
    Column("dead_reason", Text, nullable=True),
    Index("ix_outbox_unpublished", "published_at", "position"),
)

tracking_table = Table(
    "tracking",
    metadata,
    Column("consumer", String(128), nullable=False),
    Column("message_id", String(64), nullable=False),
    Column("processed_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("consumer", "message_id"),
)

audit_table = Table(
    "audit_log",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False
    ),
    Column("entry_id", String(36), nullable=False, unique=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(255), nullable=False),
    Column("action", String(128), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("reason", Text, nullable=False),
    Column("trace_id", String(32), nullable=False),
    Column("details", _Json, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

_tracer = trace.get_tracer("prognos.core.store")

# Any constant will do: it names "the writer lock of this service's database".
_WRITER_LOCK_KEY = 0x70726F676E6F73


def new_metadata() -> MetaData:
    """A MetaData for a service's own tables, with the same constraint naming convention."""
    return MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StoredEvent:
    """An event as it sits in the store."""

    position: int
    event_id: str
    stream_id: str
    version: int
    type: str
    schema_version: int
    data: dict[str, Any]
    meta: dict[str, Any]
    recorded_at: datetime

    @property
    def event(self) -> DomainEvent:
        """The domain event, upcast to its current schema version."""
        return decode(self.type, self.schema_version, self.data)


@dataclass(frozen=True)
class OutboxMessage:
    """A message queued for publication to JetStream."""

    message_id: str
    subject: str
    payload: bytes
    headers: dict[str, str]


def _outbox_message(r: Any) -> OutboxMessage:
    """An outbox row as the message it holds (SQLite returns the headers as text)."""
    headers = r.headers if isinstance(r.headers, dict) else json.loads(r.headers)
    return OutboxMessage(r.message_id, r.subject, r.payload, headers)


def _row_to_event(row: Any) -> StoredEvent:
    data = row.data if isinstance(row.data, dict) else json.loads(row.data)
    meta = row.meta if isinstance(row.meta, dict) else json.loads(row.meta)
    recorded_at = row.recorded_at
    if recorded_at.tzinfo is None:
        recorded_at = recorded_at.replace(tzinfo=UTC)
    return StoredEvent(
        position=row.position,
        event_id=row.event_id,
        stream_id=row.stream_id,
        version=row.version,
        type=row.type,
        schema_version=row.schema_version,
        data=data,
        meta=meta,
        recorded_at=recorded_at,
    )


def is_postgres(engine_or_conn: AsyncEngine | AsyncConnection) -> bool:
    return engine_or_conn.dialect.name == "postgresql"


def upsert_insert(conn: AsyncConnection, table: Table) -> Any:
    """An INSERT on ``table`` that supports ``on_conflict_do_update`` on either database.

    Read models are upserted the same way on SQLite and PostgreSQL; this picks the dialect's
    insert construct so services need not.
    """
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return (pg_insert if is_postgres(conn) else sqlite_insert)(table)


def create_engine(settings: Settings, *, url: str | None = None) -> AsyncEngine:
    """The async engine of a service's database, configured for the event store.

    On SQLite: WAL, a busy timeout, and ``BEGIN IMMEDIATE`` for writing transactions (so two
    writers queue instead of failing to upgrade a read lock). On PostgreSQL: the service's
    own schema first on the search path.

    Args:
        settings: the service's settings (database URL and schema).
        url: overrides the settings' URL (tests).

    Returns:
        An ``AsyncEngine``; dispose it on shutdown.
    """
    url = url or settings.effective_database_url
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})
        _configure_sqlite(engine)
        return engine
    schema = settings.effective_db_schema
    connect_args: dict[str, Any] = {}
    if schema:
        connect_args["options"] = f"-csearch_path={schema}"
    return create_async_engine(url, connect_args=connect_args, pool_size=10, max_overflow=10)


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver, so BEGIN is ours to issue.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get("prognos_readonly"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


class UnitOfWork:
    """One transaction: events, outbox messages, audit entries and tracking rows together.

    Use it through ``EventStore.transaction()``. ``conn`` is the transaction's connection,
    for read-model updates that must commit with the events.
    """

    def __init__(
        self,
        conn: AsyncConnection,
        *,
        service: str,
        actor: str | None,
        correlation_id: str | None,
        causation_id: str | None,
    ) -> None:
        self.conn = conn
        self.service = service
        self._scope(actor, correlation_id, causation_id)
        self.appended: list[StoredEvent] = []
        self.outbox: list[OutboxMessage] = []
        self.audit_entries: list[_audit.AuditEntry] = []

    @asynccontextmanager
    async def savepoint(
        self, *, actor: str | None, correlation_id: str | None, causation_id: str | None
    ) -> AsyncIterator[UnitOfWork]:
        """One piece of work of its own inside this transaction (one message of a batch).

        It writes with its own actor, correlation and causation; an exception rolls back
        its writes alone (a SQL savepoint) and is raised again, and the rest of the
        transaction goes on to commit.
        """
        saved = (self.actor, self.correlation_id, self.causation_id)
        marks = (len(self.appended), len(self.outbox), len(self.audit_entries))
        self._scope(actor, correlation_id, causation_id)
        try:
            async with self.conn.begin_nested():
                yield self
        except BaseException:
            del self.appended[marks[0] :]
            del self.outbox[marks[1] :]
            del self.audit_entries[marks[2] :]
            raise
        finally:
            self.actor, self.correlation_id, self.causation_id = saved

    def _scope(
        self, actor: str | None, correlation_id: str | None, causation_id: str | None
    ) -> None:
        """Who acts and why: the acting principal (else this service), a new correlation."""
        self.actor = actor or current_actor() or f"service:{self.service}"
        self.correlation_id = correlation_id or str(uuid.uuid4())
        self.causation_id = causation_id or ""

    async def load(self, stream_id: str) -> list[StoredEvent]:
        """The events of one stream, oldest first, as seen inside this transaction."""
        rows = await self.conn.execute(
            select(events_table)
            .where(events_table.c.stream_id == stream_id)
            .order_by(events_table.c.version)
        )
        return [_row_to_event(r) for r in rows]

    async def append(
        self,
        stream_id: str,
        expected_version: int,
        new_events: Sequence[DomainEvent],
    ) -> list[StoredEvent]:
        """Append events to a stream whose current version must be ``expected_version``.

        Args:
            stream_id: the aggregate's stream, e.g. ``asset_type-pump``.
            expected_version: the version the caller's decision was based on (0: new stream).
            new_events: the events, in order.

        Returns:
            The stored events with their positions and versions.

        Raises:
            ConcurrencyError: another writer appended to the stream first.
        """
        if not new_events:
            return []
        now = utcnow()
        traceparent, tracestate = current_traceparent()
        meta = {
            "actor": self.actor,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "traceparent": traceparent,
            "tracestate": tracestate,
        }
        rows = []
        for offset, domain_event in enumerate(new_events, start=1):
            type_name, schema_version, data = encode(domain_event)
            rows.append(
                {
                    "event_id": str(uuid.uuid4()),
                    "stream_id": stream_id,
                    "version": expected_version + offset,
                    "type": type_name,
                    "schema_version": schema_version,
                    "data": data,
                    "meta": meta,
                    "recorded_at": now,
                }
            )
        # The unique (stream_id, version) constraint decides races; the failed transaction
        # rolls back, and the stream's actual version is read on a connection of its own.
        try:
            result = await self.conn.execute(
                insert(events_table).returning(events_table.c.position, events_table.c.event_id),
                rows,
            )
        except IntegrityError:
            actual = await self._stream_version(stream_id)
            raise ConcurrencyError(stream_id, expected_version, actual) from None
        positions = {r.event_id: r.position for r in result}
        stored = [
            StoredEvent(position=positions[r["event_id"]], **r)  # type: ignore[arg-type]
            for r in rows
        ]
        self.appended.extend(stored)
        return stored

    async def _stream_version(self, stream_id: str) -> int:
        async with self.conn.engine.connect() as other:
            other = await other.execution_options(prognos_readonly=True)
            value = await other.scalar(
                select(func.max(events_table.c.version)).where(
                    events_table.c.stream_id == stream_id
                )
            )
        return int(value or 0)

    def publish(
        self,
        message: Message,
        *,
        kind: str | None = None,
        subject: str | None = None,
        cause: StoredEvent | None = None,
        message_id: str | None = None,
    ) -> OutboxMessage:
        """Queue an integration event for JetStream, inside an Envelope.

        The subject is the one the contracts route the event to (``prognos.api.wire``).

        Args:
            message: the public protobuf event.
            kind: for an event routed to several subjects, the last token of the one meant.
            subject: the subject of a message the contracts do not route (tests' own).
            cause: the stored domain event it announces; its id becomes the message id, so
                a retried relay publication is dropped by JetStream as a duplicate.
            message_id: an explicit id when there is no stored cause.
        """
        outgoing = messaging.encode(
            message,
            producer=self.service,
            kind=kind,
            subject=subject,
            message_id=message_id or (cause.event_id if cause else str(uuid.uuid4())),
            stream=cause.stream_id if cause else "",
            version=cause.version if cause else 0,
            actor=self.actor or "",
            correlation_id=self.correlation_id or "",
            causation_id=self.causation_id or "",
            time=cause.recorded_at if cause else utcnow(),
        )
        queued = OutboxMessage(
            outgoing.message_id, outgoing.subject, outgoing.data, outgoing.headers
        )
        self.outbox.append(queued)
        return queued

    async def audit(
        self,
        action: str,
        subject: str,
        *,
        reason: str = "",
        details: dict[str, Any] | None = None,
        actor: str | None = None,
        trace_id: str | None = None,
    ) -> _audit.AuditEntry:
        """Write an audit entry, chained to the previous one, in this transaction.

        ``trace_id`` names the trace the entry belongs to when that is not the current
        span's (work done for many traces at once); by default, the current span's.
        """
        entry = await _audit.append(
            self.conn,
            actor=actor or self.actor,
            action=action,
            subject=subject,
            reason=reason,
            details=details or {},
            trace_id=trace_id,
        )
        self.audit_entries.append(entry)
        return entry

    async def track(self, consumer: str, message_id: str) -> bool:
        """Record that ``consumer`` processed ``message_id``.

        Returns:
            False when it was processed before (the caller skips its effect).
        """
        # Writers hold the service's writer lock, so nobody can record the same message
        # between this read and the insert.
        seen = await self.conn.scalar(
            select(tracking_table.c.message_id).where(
                tracking_table.c.consumer == consumer, tracking_table.c.message_id == message_id
            )
        )
        if seen is not None:
            return False
        await self.conn.execute(
            insert(tracking_table).values(
                consumer=consumer, message_id=message_id, processed_at=utcnow()
            )
        )
        return True

    async def _flush_outbox(self) -> None:
        if not self.outbox:
            return
        now = utcnow()
        await self.conn.execute(
            insert(outbox_table),
            [
                {
                    "message_id": m.message_id,
                    "subject": m.subject,
                    "payload": m.payload,
                    "headers": m.headers,
                    "created_at": now,
                }
                for m in self.outbox
            ],
        )


@dataclass
class EventStore:
    """A service's event store: transactions, stream reads and global reads.

    Args:
        engine: the service's async engine (``create_engine``).
        service: the service's name, recorded as the default actor's domain.
        on_commit: called after each commit that queued outbox messages (wakes the relay).
        on_audit: called after each commit that wrote audit entries (wakes the anchor).
    """

    engine: AsyncEngine
    service: str
    on_commit: list[Callable[[], None]] = field(default_factory=list)
    on_audit: list[Callable[[], None]] = field(default_factory=list)

    @asynccontextmanager
    async def transaction(
        self,
        *,
        actor: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> AsyncIterator[UnitOfWork]:
        """A unit of work that commits on normal exit and rolls back on an exception.

        Work started outside any trace (a background planner, a schedule, a worker's
        report) gets a span of its own, so every event and audit entry it writes names a
        trace that ``prognos trace show`` can render.
        """
        with contextlib.ExitStack() as spans:
            if not trace.get_current_span().get_span_context().is_valid:
                spans.enter_context(
                    _tracer.start_as_current_span(f"{self.service} background transaction")
                )
            async with self._transaction(actor, correlation_id, causation_id) as uow:
                yield uow

    @asynccontextmanager
    async def _transaction(
        self, actor: str | None, correlation_id: str | None, causation_id: str | None
    ) -> AsyncIterator[UnitOfWork]:
        async with self.engine.connect() as conn, conn.begin():
            if is_postgres(conn):
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _WRITER_LOCK_KEY}
                )
            uow = UnitOfWork(
                conn,
                service=self.service,
                actor=actor,
                correlation_id=correlation_id,
                causation_id=causation_id,
            )
            yield uow
            await uow._flush_outbox()
        if uow.outbox:
            for callback in self.on_commit:
                callback()
        if uow.audit_entries:
            for callback in self.on_audit:
                callback()

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[AsyncConnection]:
        """A read-only connection (no writer lock taken)."""
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(prognos_readonly=True)
            async with conn.begin():
                yield conn

    async def read_stream(self, stream_id: str) -> list[StoredEvent]:
        """All events of one stream, oldest first."""
        async with self.reader() as conn:
            rows = await conn.execute(
                select(events_table)
                .where(events_table.c.stream_id == stream_id)
                .order_by(events_table.c.version)
            )
            return [_row_to_event(r) for r in rows]

    async def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """Events of every stream in global order, after ``after_position``."""
        async with self.reader() as conn:
            rows = await conn.execute(
                select(events_table)
                .where(events_table.c.position > after_position)
                .order_by(events_table.c.position)
                .limit(limit)
            )
            return [_row_to_event(r) for r in rows]

    async def unpublished(self, limit: int) -> list[tuple[int, OutboxMessage]]:
        """Outbox messages not yet confirmed by JetStream, oldest first."""
        async with self.reader() as conn:
            rows = await conn.execute(
                select(outbox_table)
                .where(
                    outbox_table.c.published_at.is_(None),
                    outbox_table.c.dead_lettered_at.is_(None),
                )
                .order_by(outbox_table.c.position)
                .limit(limit)
            )
            return [(r.position, _outbox_message(r)) for r in rows]

    async def mark_dead_lettered(
        self, position: int, message: OutboxMessage, reason: str, size: int
    ) -> None:
        """Take an outbox message out of publication for good, keeping it and its reason.

        The row stays, with ``reason``, and an ``outbox.dead_lettered`` audit entry records it
        in the same transaction, so the message is never retried and never lost silently.
        """
        async with self.transaction() as uow:
            await uow.conn.execute(
                update(outbox_table)
                .where(outbox_table.c.position == position)
                .values(dead_lettered_at=utcnow(), dead_reason=reason)
            )
            await uow.audit(
                "outbox.dead_lettered",
                f"outbox/{message.message_id}",
                reason=reason,
                details={"subject": message.subject, "bytes": size},
            )

    async def dead_letters(self, limit: int = 100) -> list[tuple[OutboxMessage, str]]:
        """Dead-lettered outbox messages and why, oldest first."""
        async with self.reader() as conn:
            rows = await conn.execute(
                select(outbox_table)
                .where(outbox_table.c.dead_lettered_at.is_not(None))
                .order_by(outbox_table.c.position)
                .limit(limit)
            )
            return [(_outbox_message(r), r.dead_reason) for r in rows]

    async def mark_published(self, positions: Sequence[int]) -> None:
        """Record that JetStream stored these outbox messages."""
        if not positions:
            return
        async with self.engine.connect() as conn, conn.begin():
            await conn.execute(
                update(outbox_table)
                .where(outbox_table.c.position.in_(list(positions)))
                .values(published_at=utcnow())
            )
