"""The quarantine: rejected readings from the QUARANTINE stream into a listable table.

Every batch's quarantined readings are on the QUARANTINE stream (stored before the batch's
receipt). The recorder follows that stream with a durable pull consumer, adds each batch's
exact counts per asset and reason, lists up to ``LISTED_PER_BATCH`` of its readings in the
database, and records its position in the same transaction, so each message counts once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from google.protobuf.message import DecodeError
from nats.errors import TimeoutError as NatsTimeoutError

from prognos.api.ingest.v1 import events_pb2
from prognos.ingest import adapters
from prognos.ingest.followers import follow
from prognos.ingest.intake import QUARANTINE_STREAM, QUARANTINE_SUBJECTS, describe_reading, now_us

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from prognos.core.store import EventStore
    from prognos.ingest.intake import Catalog

__all__ = ["LISTED_PER_BATCH", "QUARANTINE_DURABLE", "QuarantineRecorder", "rows_of"]

log = logging.getLogger(__name__)

QUARANTINE_DURABLE = "ingest-quarantine"
LISTED_PER_BATCH = 1_000


def rows_of(message: events_pb2.QuarantinedBatch, catalog: Catalog) -> list[dict[str, Any]]:
    """The table rows listing one quarantined batch (at most ``LISTED_PER_BATCH``)."""
    at = message.quarantined_at.ToMicroseconds() or now_us()
    rows: list[dict[str, Any]] = []
    for rejection in message.column_rejections[:LISTED_PER_BATCH]:
        rows.append(
            {
                "asset_id": message.asset_id,
                "batch_id": message.batch_id,
                "time_us": rejection.time.ToMicroseconds() if rejection.HasField("time") else None,
                "channel": rejection.channel,
                "value": None,
                "reason": int(rejection.reason),
                "detail": rejection.detail,
                "quarantined_at_us": at,
            }
        )
    room = LISTED_PER_BATCH - len(rows)
    if room > 0 and message.reasons:
        spec = catalog.type_of(message.asset_type)
        times = np.frombuffer(message.timestamps_us_le, dtype="<i8")[:room].tolist()
        index = np.frombuffer(message.channel_index_le, dtype="<u2")[:room].tolist()
        reasons = np.frombuffer(message.reasons, dtype=np.uint8)[:room].tolist()
        values = np.frombuffer(message.values_f64_le, dtype="<f8")[:room].tolist()
        for ts, ch, reason, value in zip(times, index, reasons, values, strict=True):
            channel = message.channels[ch]
            unit = message.units[ch] if ch < len(message.units) else ""
            rows.append(
                {
                    "asset_id": message.asset_id,
                    "batch_id": message.batch_id,
                    "time_us": ts,
                    "channel": channel,
                    "value": None if math.isnan(value) else value,
                    "reason": reason,
                    "detail": describe_reading(
                        reason, channel, value, unit, spec.channel(channel) if spec else None
                    ),
                    "quarantined_at_us": at,
                }
            )
    return rows


class QuarantineRecorder:
    """Follows the QUARANTINE stream into the quarantine tables, each message once."""

    def __init__(self, store: EventStore, js: JetStreamContext, catalog: Catalog) -> None:
        self._store = store
        self._js = js
        self._catalog = catalog
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.position = 0
        self.ready = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="quarantine-recorder")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        self._task = asyncio.current_task()
        from prognos.core.bus import ensure_stream

        await ensure_stream(self._js, QUARANTINE_STREAM, QUARANTINE_SUBJECTS)
        async with self._store.reader() as conn:
            self.position = await adapters.follower_position(conn, QUARANTINE_DURABLE)
        psub = await follow(
            self._js,
            stream=QUARANTINE_STREAM,
            subject=QUARANTINE_SUBJECTS[0],
            durable=QUARANTINE_DURABLE,
            after_sequence=self.position,
            ack_wait_s=60.0,
        )
        self.ready.set()
        try:
            while not self._stopping:
                try:
                    messages = await psub.fetch(256, timeout=0.5)
                except (NatsTimeoutError, TimeoutError):
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("quarantine fetch failed", exc_info=True)
                    await asyncio.sleep(0.5)  # back off before asking the server again
                    continue
                try:
                    await self._record(messages)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("recording quarantined readings failed; they are redelivered")
                    await asyncio.sleep(1.0)  # unacknowledged: redelivered after ack_wait
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def _record(self, messages: list[Any]) -> None:
        rows: list[dict[str, Any]] = []
        counts: dict[tuple[str, int], int] = {}
        last = self.position
        for msg in messages:
            sequence = msg.metadata.sequence.stream
            if sequence <= last:
                continue
            last = sequence
            message = events_pb2.QuarantinedBatch()
            try:
                message.ParseFromString(msg.data)
            except DecodeError:
                log.error("skipping unreadable quarantine message %d", sequence)
                continue
            rows.extend(rows_of(message, self._catalog))
            for count in message.counts:
                key = (message.asset_id, int(count.reason))
                counts[key] = counts.get(key, 0) + count.count
        if last > self.position:
            async with self._store.transaction() as uow:
                await adapters.add_quarantine(uow.conn, rows, counts, now_us())
                await adapters.set_follower_position(uow.conn, QUARANTINE_DURABLE, last)
            self.position = last
        if messages:
            await messages[-1].ack()
