"""The whole trail in one call: the scheduler asks the other services on the caller's behalf.

Four real gRPC servers with mutual TLS and the token check, each serving ``AuditService``
over its own chain; the scheduler's gathers the others' parts with its own certificate and
the caller's token.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from prognos.api.common.v1 import audit_pb2, audit_pb2_grpc
from prognos.cli.certs import DevSecrets, ensure_dev_secrets
from prognos.core.audit_api import AUDIT_SERVICE, AuditServicer
from prognos.core.auth import current_principal, issue_token, load_private_key
from prognos.core.config import Settings
from prognos.core.errors import from_grpc_error
from prognos.core.migrate import upgrade
from prognos.core.server import GrpcServer
from prognos.core.service import access_interceptors
from prognos.core.store import EventStore, create_engine
from prognos.core.tls import channel_credentials, server_credentials
from prognos.scheduler.trail import TrailGatherer

SERVICES = ("ingest", "registry", "inference", "scheduler")
WINDOW = {"window_start": "2030-01-01T00:00:00Z", "window_end": "2030-01-01T01:00:00Z"}


class _WitnessServicer(AuditServicer):
    """Remembers who asked for each part."""

    def __init__(self, store: EventStore, callers: list[str]) -> None:
        super().__init__(store)
        self.callers = callers

    async def GetTrail(
        self, request: audit_pb2.GetTrailRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.GetTrailResponse:
        principal = current_principal()
        self.callers.append(principal.actor if principal else "")
        return await super().GetTrail(request, context)


@dataclass
class Fleet:
    secrets: DevSecrets
    servers: dict[str, GrpcServer]
    stores: dict[str, EventStore]
    scheduler: AuditServicer | None = None
    scheduler_settings: Settings = field(default_factory=Settings)
    callers: dict[str, list[str]] = field(default_factory=dict)

    def token(self, subject: str, *roles: str) -> str:
        key = load_private_key(self.secrets.token_signing_key)
        return issue_token(key, subject, roles, timedelta(hours=1))

    async def ask(
        self, service: str, request: audit_pb2.GetTrailRequest, token: str
    ) -> audit_pb2.GetTrailResponse:
        s = self.secrets
        credentials = grpc.composite_channel_credentials(
            channel_credentials(s.ca_cert, s.client_cert, s.client_key),
            grpc.access_token_call_credentials(token),
        )
        async with grpc.aio.secure_channel(self.servers[service].address, credentials) as channel:
            reply: audit_pb2.GetTrailResponse = await audit_pb2_grpc.AuditServiceStub(
                channel
            ).GetTrail(request, timeout=20)
        return reply

    async def whole(self, work_order_id: str, token: str | None = None) -> Any:
        request = audit_pb2.GetTrailRequest(work_order_id=work_order_id, whole=True)
        return await self.ask("scheduler", request, token or self.token("alice", "auditor"))


async def _entry(store: EventStore, action: str, subject: str, **details: object) -> None:
    async with store.transaction(actor="user:test") as uow:
        await uow.audit(action, subject, reason=action, details=details)


async def _story(stores: dict[str, EventStore]) -> None:
    """A work order's story, in time order, each service writing its own chain."""
    await _entry(stores["ingest"], "asset.registered", "asset/a-1", plant="p")
    await _entry(stores["ingest"], "dataset_snapshot.created", "dataset_snapshot/snap-1")
    await _entry(
        stores["registry"],
        "training_run.queued",
        "training_run/run-1",
        dataset_snapshot_id="snap-1",
    )
    await _entry(
        stores["registry"],
        "model_version.registered",
        "model_version/m-v1",
        training_run_id="run-1",
    )
    await _entry(stores["registry"], "model_version.registered", "model_version/other-v1")
    await _entry(
        stores["inference"],
        "prediction.alert_raised",
        "asset/a-1",
        prediction_id="p-1",
        model_version="m-v1",
        **WINDOW,
    )
    await _entry(
        stores["scheduler"],
        "work_order.proposed",
        "work_order/wo-1",
        prediction_id="p-1",
        model_version="m-v1",
        asset_id="a-1",
        **WINDOW,
    )
    await _entry(stores["scheduler"], "work_order.released", "work_order/wo-1")


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    secrets = ensure_dev_secrets(tmp_path / "secrets", list(SERVICES))
    async with contextlib.AsyncExitStack() as stack:
        servers: dict[str, GrpcServer] = {}
        stores: dict[str, EventStore] = {}
        fleet = Fleet(secrets, servers, stores)
        for service in SERVICES:
            settings = Settings.load(
                service,
                data_dir=tmp_path / service,
                grpc_port=0,
                tls_ca_file=secrets.ca_cert,
                tls_cert_file=secrets.service_cert(service),
                tls_key_file=secrets.service_key(service),
                auth_public_key_file=secrets.token_public_key,
            )
            settings.data_dir.mkdir()
            upgrade(settings)
            engine = create_engine(settings)
            stack.push_async_callback(engine.dispose)
            stores[service] = EventStore(engine, service)
            server = GrpcServer(
                settings,
                version="0+test",
                extra_interceptors=access_interceptors(settings, stores[service]),
                credentials=server_credentials(settings),
            )
            servicer = _WitnessServicer(stores[service], fleet.callers.setdefault(service, []))
            server.add_service(
                audit_pb2_grpc.add_AuditServiceServicer_to_server, servicer, AUDIT_SERVICE
            )
            await server.start()
            stack.push_async_callback(server.stop)
            servers[service] = server
        fleet.scheduler, fleet.scheduler_settings = servicer, settings  # the last one
        addresses = {f"{s}_address": servers[s].address for s in SERVICES if s != "scheduler"}
        gatherer = TrailGatherer(settings.model_copy(update=addresses))
        stack.push_async_callback(gatherer.close)
        servicer.gatherer = gatherer
        await _story(stores)
        yield fleet


async def test_one_call_returns_every_services_part_in_time_order(fleet: Fleet) -> None:
    trail = await fleet.whole("wo-1")

    actions = [(s.service, s.action) for s in trail.steps]
    assert actions == [
        ("ingest", "asset.registered"),
        ("ingest", "dataset_snapshot.created"),
        ("registry", "training_run.queued"),
        ("registry", "model_version.registered"),
        ("inference", "prediction.alert_raised"),
        ("scheduler", "work_order.proposed"),
        ("scheduler", "work_order.released"),
    ]
    assert [(p.service, p.answered, p.error) for p in trail.parts] == [
        ("scheduler", True, ""),
        ("inference", True, ""),
        ("registry", True, ""),
        ("ingest", True, ""),
    ]
    assert all(p.chain.ok and p.chain.entries > 0 for p in trail.parts)
    assert [p.steps for p in trail.parts] == [2, 1, 2, 2]
    assert trail.asset_id == "a-1"
    assert trail.window_end.ToJsonString() == WINDOW["window_end"]
    assert {"prediction/p-1", "model_version/m-v1", "dataset_snapshot/snap-1"} <= set(
        trail.references
    )


async def test_every_part_is_asked_for_as_the_caller_not_as_the_scheduler(fleet: Fleet) -> None:
    await fleet.whole("wo-1", fleet.token("carol", "auditor"))

    for service in ("inference", "registry", "ingest"):
        assert fleet.callers[service] == ["user:carol"], service


async def test_a_caller_who_may_not_read_trails_is_refused_before_anyone_is_asked(
    fleet: Fleet,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fleet.whole("wo-1", fleet.token("mallory", "erp"))

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert all(not fleet.callers[s] for s in SERVICES)


async def test_a_service_that_is_down_leaves_its_part_missing_and_named(fleet: Fleet) -> None:
    await fleet.servers["registry"].stop()

    trail = await fleet.whole("wo-1")

    verdicts = {p.service: p for p in trail.parts}
    assert not verdicts["registry"].answered
    assert verdicts["registry"].error.startswith("UNAVAILABLE")
    assert all(verdicts[s].answered for s in ("scheduler", "inference", "ingest"))
    assert {s.service for s in trail.steps} == {"scheduler", "inference", "ingest"}
    # Without the registry's lineage, ingest is still asked for the asset's part.
    assert "asset.registered" in {s.action for s in trail.steps}


async def test_an_unknown_work_order_is_not_found(fleet: Fleet) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fleet.whole("wo-unknown")

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "wo-unknown" in (caught.value.details() or "")
    assert all(not fleet.callers[s] for s in ("inference", "registry", "ingest"))


async def test_only_the_scheduler_gathers_whole_trails(fleet: Fleet) -> None:
    request = audit_pb2.GetTrailRequest(work_order_id="wo-1", whole=True)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fleet.ask("ingest", request, fleet.token("alice", "auditor"))

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert from_grpc_error(caught.value).reason == "NOT_A_TRAIL_GATHERER"


async def test_a_whole_trail_names_its_work_order(fleet: Fleet) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fleet.whole("")

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "work_order_id" in (caught.value.details() or "")


async def test_a_service_without_an_address_is_named_as_not_configured(fleet: Fleet) -> None:
    addresses = {f"{s}_address": fleet.servers[s].address for s in ("inference", "registry")}
    gatherer = TrailGatherer(fleet.scheduler_settings.model_copy(update=addresses))
    fleet.scheduler.gatherer = gatherer
    try:
        trail = await fleet.whole("wo-1")
    finally:
        await gatherer.close()

    ingest = next(p for p in trail.parts if p.service == "ingest")
    assert not ingest.answered
    assert ingest.error == "NOT_CONFIGURED: no address of ingest (PROGNOS_INGEST_ADDRESS)"
    assert {s.service for s in trail.steps} == {"scheduler", "inference", "registry"}


async def test_a_trail_holds_only_what_led_to_its_work_order_and_each_fact_once(
    fleet: Fleet,
) -> None:
    registry, inference = fleet.stores["registry"], fleet.stores["inference"]
    await _entry(registry, "alias.promoted", "alias/m/champion", to="m-v1", **{"from": ""})
    # A later retraining on the same snapshot, whose model takes over the challenger alias.
    await _entry(
        registry, "training_run.queued", "training_run/run-2", dataset_snapshot_id="snap-1"
    )
    await _entry(
        registry, "model_version.registered", "model_version/m-v2", training_run_id="run-2"
    )
    await _entry(registry, "training_run.succeeded", "training_run/run-2", model_version_id="m-v2")
    await _entry(registry, "alias.promoted", "alias/m/challenger", to="m-v2", **{"from": "m-v1"})
    await _entry(registry, "retrain.skipped", "asset_type/m", model_version="m-v1")
    # A replica that rebuilt its windows raises the same prediction's alert again.
    await _entry(
        inference,
        "prediction.alert_raised",
        "asset/a-1",
        prediction_id="p-1",
        model_version="m-v1",
        **WINDOW,
    )

    trail = await fleet.whole("wo-1")

    lineage = [(s.action, s.subject) for s in trail.steps if s.service == "registry"]
    assert lineage == [
        ("training_run.queued", "training_run/run-1"),
        ("model_version.registered", "model_version/m-v1"),
        ("alias.promoted", "alias/m/champion"),
    ]
    alerts = [s for s in trail.steps if s.action == "prediction.alert_raised"]
    assert [s.audit_seq for s in alerts] == [1]
    assert "training_run/run-2" not in trail.references
    assert "dataset_snapshot.created" in {s.action for s in trail.steps}
    assert [s.action for s in trail.steps if s.service == "scheduler"] == [
        "work_order.proposed",
        "work_order.released",
    ]
