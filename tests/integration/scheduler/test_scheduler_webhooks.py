"""Webhook delivery to a real local HTTP endpoint that goes down for a while."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import func, select

from prognos.api.scheduler.v1 import scheduler_pb2
from prognos.core.testing.waiting import assert_eventually
from prognos.scheduler import adapters
from prognos.scheduler.testing import calendar, erp_asset, prediction, publish_predictions
from prognos.scheduler.webhooks import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify

if TYPE_CHECKING:
    from conftest import Scheduler

pytestmark = pytest.mark.slow

S = scheduler_pb2
SECRET = b"a-shared-secret-for-erp-1"


@dataclass
class Received:
    key: str
    position: int
    event_type: str


@dataclass
class Receiver:
    """An ERP endpoint: checks signatures, applies each idempotency key once."""

    secret: bytes
    lose_responses: int = 0
    applied: list[Received] = field(default_factory=list)
    seen: Counter[str] = field(default_factory=Counter)
    bad_signatures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    port: int = 0

    def start(self) -> int:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if not verify(receiver.secret, self.headers.get(SIGNATURE_HEADER, ""), body):
                    with receiver._lock:
                        receiver.bad_signatures += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                key = self.headers[IDEMPOTENCY_HEADER]
                with receiver._lock:
                    receiver.seen[key] += 1
                    if receiver.seen[key] == 1:
                        receiver.applied.append(
                            Received(
                                key,
                                int(self.headers["Prognos-Position"]),
                                self.headers["Prognos-Event-Type"],
                            )
                        )
                    lose = receiver.lose_responses > 0
                    receiver.lose_responses -= int(lose)
                # Applied, but the answer is lost: the sender must retry with the same key.
                self.send_response(500 if lose else 200)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)


@pytest.fixture
def receiver() -> object:
    r = Receiver(SECRET)
    yield r
    r.stop()


def key() -> str:
    return str(uuid.uuid4())


async def test_every_change_arrives_once_by_key_after_the_endpoint_was_down_a_while(
    scheduler: Scheduler, receiver: Receiver
) -> None:
    s = scheduler
    secrets = s.settings.effective_webhook_secrets_dir
    secrets.mkdir(parents=True, exist_ok=True)
    (secrets / "erp-1").write_bytes(SECRET + b"\n")
    port = receiver.start()
    configured = await s.stub.UpsertWebhookEndpoint(
        S.UpsertWebhookEndpointRequest(
            idempotency_key=key(),
            endpoint=S.WebhookEndpoint(
                endpoint_id="erp-1",
                url=f"http://127.0.0.1:{port}/prognos/work-orders",
                plants=["hook"],
                enabled=True,
            ),
        )
    )
    assert configured.secret_configured
    receiver.stop()  # the ERP goes down: connections are refused

    assets = [erp_asset(f"hook-{n}", "hook") for n in range(5)]
    await s.stub.UpsertAssets(S.UpsertAssetsRequest(idempotency_key=key(), assets=assets))
    await s.stub.UpsertCrews(
        S.UpsertCrewsRequest(
            idempotency_key=key(),
            crews=[S.Crew(crew_id="hook-crew", plant="hook", skill="mechanical", capacity=3)],
        )
    )
    await s.stub.UpsertCalendar(
        calendar("hook", datetime.now(UTC) + timedelta(days=1), 2, key=key())
    )
    # Another plant's changes are not for this endpoint.
    await s.stub.UpsertAssets(
        S.UpsertAssetsRequest(idempotency_key=key(), assets=[erp_asset("other-1", "other")])
    )
    now = datetime.now(UTC)
    await publish_predictions(
        s.inference,
        [prediction(a.asset_id, 0.9, now, plant=a.plant) for a in [*assets]]
        + [prediction("other-1", 0.9, now, plant="other")],
    )

    async def all_released_and_retried() -> None:
        response = await s.stub.ListWorkOrders(S.ListWorkOrdersRequest(plant="hook"))
        assert len(response.work_orders) == 5
        assert {o.state for o in response.work_orders} == {S.WORK_ORDER_STATE_RELEASED}
        async with s.store.reader() as conn:
            first = await conn.scalar(select(func.max(adapters.webhook_deliveries.c.attempts)))
        assert first is not None and first >= 6  # two rounds of tries, with a pause between

    await assert_eventually(all_released_and_retried, timeout=30)
    assert receiver.applied == []

    receiver.lose_responses = 2
    receiver.start()  # back on the same address

    async with s.store.reader() as conn:
        feed = await adapters.read_feed(conn, 0, 10_000, plant="hook")
    expected = [row.event_id for row in feed]
    assert len(expected) == 15  # proposed, scheduled, released for each of 5 orders

    async def all_arrived() -> None:
        assert [r.key for r in receiver.applied] == expected

    await assert_eventually(all_arrived, timeout=30)
    # In position order, each applied once; the two lost answers were retried with their key.
    positions = [r.position for r in receiver.applied]
    assert positions == sorted(positions)
    assert set(receiver.seen) == set(expected)
    assert sum(receiver.seen.values()) == len(expected) + 2
    assert receiver.bad_signatures == 0
    assert {r.event_type.rsplit(".", 1)[1] for r in receiver.applied} == {
        "WorkOrderProposed",
        "WorkOrderScheduled",
        "WorkOrderReleased",
    }

    async def all_marked_delivered() -> None:
        async with s.store.reader() as conn:
            counts = await adapters.delivery_counts(conn)
        assert counts == {"erp-1": (15, 0)}

    await assert_eventually(all_marked_delivered, timeout=10)


async def test_deliveries_wait_for_a_missing_secret_and_a_wrong_one_is_refused(
    scheduler: Scheduler, receiver: Receiver
) -> None:
    s = scheduler
    port = receiver.start()
    configured = await s.stub.UpsertWebhookEndpoint(
        S.UpsertWebhookEndpointRequest(
            idempotency_key=key(),
            endpoint=S.WebhookEndpoint(
                endpoint_id="erp-2", url=f"http://127.0.0.1:{port}/hook", enabled=True
            ),
        )
    )
    assert not configured.secret_configured
    await s.stub.UpsertAssets(
        S.UpsertAssetsRequest(idempotency_key=key(), assets=[erp_asset("sec-1", "sec")])
    )
    await publish_predictions(
        s.inference, [prediction("sec-1", 0.9, datetime.now(UTC), plant="sec")]
    )

    async def waiting_for_secret() -> None:
        async with s.store.reader() as conn:
            rows = await adapters.pending_deliveries(conn, "erp-2", 10)
        assert rows and rows[0].attempts >= 1

    await assert_eventually(waiting_for_secret, timeout=20)
    secrets = s.settings.effective_webhook_secrets_dir
    secrets.mkdir(parents=True, exist_ok=True)
    (secrets / "erp-2").write_bytes(b"not-the-shared-secret")
    await assert_eventually(lambda: receiver.bad_signatures >= 1, timeout=20)
    assert receiver.applied == []
    (secrets / "erp-2").write_bytes(SECRET)
    await assert_eventually(lambda: len(receiver.applied) >= 2, timeout=20)
