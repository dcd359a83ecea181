"""Outbound webhooks: every work order change POSTed to the ERP endpoints that want it.

Deliveries are queued in the ``webhook_deliveries`` table in the same transaction as the
change (see ``adapters.append_feed``), so none is lost to a crash. A worker sends each
endpoint's queue in position order: one change at a time, the next only after the one
before was delivered. A failed POST is retried at once a few times (tenacity, for blips),
then left in the queue with a growing delay (up to ``webhook_max_backoff_s``) for as long
as the endpoint stays down. Each request carries the change's ``Idempotency-Key`` (its
event id, the same on every retry) and an HMAC-SHA256 signature over a timestamp and the
body, keyed with the endpoint's shared secret, which is read from a file.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from google.protobuf import json_format
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from prognos.api import wire
from prognos.api.scheduler.v1 import scheduler_pb2
from prognos.scheduler import adapters
from prognos.scheduler.translate import ts

if TYPE_CHECKING:
    from prognos.core.config import Settings
    from prognos.core.store import EventStore
    from prognos.scheduler.domain import EndpointData

log = logging.getLogger(__name__)

SIGNATURE_HEADER = wire.WEBHOOK_SIGNATURE_HEADER
IDEMPOTENCY_HEADER = "Idempotency-Key"
_BATCH = 100
_QUICK_ATTEMPTS = 3


class DeliveryFailedError(Exception):
    """The endpoint did not accept a delivery; ``status`` is its HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``Prognos-Signature`` header value for a body sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, header: str, body: bytes, *, tolerance_s: float = 300.0) -> bool:
    """Check a ``Prognos-Signature`` header, as a receiving endpoint should."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


def body_of(delivery: adapters.Delivery) -> bytes:
    """The JSON body of a delivery: its WatchWorkOrdersResponse."""
    message = scheduler_pb2.WatchWorkOrdersResponse(
        position=delivery.position,
        event_type=delivery.event_type,
        work_order=scheduler_pb2.WorkOrder.FromString(delivery.snapshot),
        time=ts(delivery.recorded_at),
    )
    return json_format.MessageToJson(message, indent=None, sort_keys=True).encode()


class WebhookDeliverer:
    """Sends the webhook delivery queue, per endpoint, in order, until it is empty.

    Args:
        store: the scheduler's event store (the queue lives in its database).
        settings: ``webhook_*`` settings.
        client: the HTTP client (one is made when omitted).
    """

    def __init__(
        self, store: EventStore, settings: Settings, client: httpx.AsyncClient | None = None
    ) -> None:
        self._store = store
        self._settings = settings
        self._secrets = settings.effective_webhook_secrets_dir
        self._client = client
        self._own_client = client is None
        self._wake = asyncio.Event()
        self._stopping = False
        self.delivered = 0
        self.failures = 0
        store.on_commit.append(self.notify)

    def notify(self) -> None:
        """Wake the worker: a transaction may have queued deliveries."""
        self._wake.set()

    def secret_path(self, endpoint_id: str) -> Path:
        return self._secrets / endpoint_id

    def has_secret(self, endpoint_id: str) -> bool:
        return self.secret_path(endpoint_id).is_file()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Deliver until stopped; woken by commits, and polling for due retries."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._settings.webhook_timeout_s)
        try:
            while not self._stopping:
                self._wake.clear()
                try:
                    await self.deliver_once()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("webhook delivery round failed", exc_info=True)
                try:
                    await asyncio.wait_for(self._wake.wait(), self._settings.webhook_poll_s)
                except TimeoutError:
                    pass
        finally:
            if self._own_client and self._client is not None:
                await self._client.aclose()
                self._client = None

    async def deliver_once(self) -> int:
        """Send what is due to every endpoint, concurrently; returns how many were delivered."""
        async with self._store.reader() as conn:
            waiting = await adapters.endpoints_with_pending(conn)
            configured = {
                e.endpoint_id: e for e in await adapters.endpoints(conn, enabled_only=False)
            }
        targets = [configured[i] for i in waiting if i in configured and configured[i].enabled]
        counts = await asyncio.gather(*(self._drain(e) for e in targets))
        return sum(counts)

    async def _drain(self, endpoint: EndpointData) -> int:
        sent = 0
        while not self._stopping:
            async with self._store.reader() as conn:
                batch = await adapters.pending_deliveries(conn, endpoint.endpoint_id, _BATCH)
            if not batch:
                return sent
            for delivery in batch:
                if delivery.next_attempt_at > datetime.now(UTC) or self._stopping:
                    return sent
                if not await self._deliver(endpoint, delivery):
                    return sent  # keep the order: nothing later goes before this one
                sent += 1
        return sent

    async def _deliver(self, endpoint: EndpointData, delivery: adapters.Delivery) -> bool:
        attempts = delivery.attempts
        status: int | None = None
        try:
            secret = self._read_secret(endpoint.endpoint_id)
            body = body_of(delivery)
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(_QUICK_ATTEMPTS),
                wait=wait_exponential(multiplier=0.1, max=1.0),
                retry=retry_if_exception_type((httpx.TransportError, DeliveryFailedError)),
                reraise=True,
            ):
                with attempt:
                    attempts += 1
                    status = await self._post(endpoint, delivery, secret, body)
        except (httpx.HTTPError, DeliveryFailedError, OSError) as error:
            self.failures += 1
            attempts = max(attempts, delivery.attempts + 1)  # a try that sent nothing counts
            wait = self._backoff(attempts)
            log.info(
                "webhook %s: delivery of position %d failed (%s); next try in %.1fs",
                endpoint.endpoint_id,
                delivery.position,
                error,
                wait,
            )
            async with self._store.transaction() as uow:
                await adapters.mark_failed(
                    uow.conn,
                    delivery.delivery_id,
                    attempts=attempts,
                    status=getattr(error, "status", None),
                    error=f"{type(error).__name__}: {error}",
                    next_attempt_at=datetime.now(UTC) + timedelta(seconds=wait),
                )
            return False
        async with self._store.transaction() as uow:
            await adapters.mark_delivered(
                uow.conn, delivery.delivery_id, status or 200, attempts, datetime.now(UTC)
            )
        self.delivered += 1
        return True

    async def _post(
        self, endpoint: EndpointData, delivery: adapters.Delivery, secret: bytes, body: bytes
    ) -> int:
        assert self._client is not None
        headers = {
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: delivery.event_id,
            SIGNATURE_HEADER: sign(secret, int(time.time()), body),
            wire.WEBHOOK_EVENT_TYPE_HEADER: delivery.event_type,
            wire.WEBHOOK_POSITION_HEADER: str(delivery.position),
            wire.WEBHOOK_ENDPOINT_HEADER: endpoint.endpoint_id,
        }
        response = await self._client.post(endpoint.url, content=body, headers=headers)
        if not 200 <= response.status_code < 300:
            raise DeliveryFailedError(f"HTTP {response.status_code}", response.status_code)
        return response.status_code

    def _read_secret(self, endpoint_id: str) -> bytes:
        path = self.secret_path(endpoint_id)
        try:
            secret = path.read_bytes().strip()
        except FileNotFoundError:
            raise DeliveryFailedError(f"no shared secret file {path}") from None
        if not secret:
            raise DeliveryFailedError(f"the shared secret file {path} is empty")
        return secret

    def _backoff(self, attempts: int) -> float:
        """Seconds until the next round of tries: doubling, capped, with jitter."""
        ceiling = self._settings.webhook_max_backoff_s
        base = min(ceiling, 0.5 * 2 ** max(attempts // _QUICK_ATTEMPTS, 0))
        return base * random.uniform(0.5, 1.0)
