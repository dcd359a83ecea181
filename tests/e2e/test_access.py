"""Every RPC of every service refuses a caller without a token or with the wrong role.

The RPCs are not listed here: they are walked from the service descriptors of every
generated ``prognos.api`` module, so an RPC added to a contract is checked the day it
appears, and one that forgot its ``access`` option is admin-only rather than open.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.protobuf.descriptor import MethodDescriptor

import prognos.api
from prognos.api.common.v1 import access_pb2, audit_pb2, audit_pb2_grpc
from prognos.api.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from prognos.cli.client import open_channel, open_channel_with_token, secrets_of
from prognos.cli.launcher import RunInfo
from prognos.core.auth import ADMIN_ROLE, ROLES, issue_token, load_private_key
from prognos.core.config import SERVICES
from prognos.core.telemetry import read_spans
from prognos.core.testing import assert_eventually
from prognos.core.tls import channel_credentials

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@dataclass(frozen=True)
class Rpc:
    """One method of one service, on one process that serves it."""

    process: str
    method: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def allowed(self) -> set[str]:
        options = self.method.GetOptions()
        roles = options.Extensions[access_pb2.access].roles
        return {ADMIN_ROLE, *roles}

    def __str__(self) -> str:
        return f"{self.process}:{self.method.containing_service.name}.{self.method.name}"


def _api_modules() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.walk_packages(prognos.api.__path__, "prognos.api.")
        if info.name.endswith("_pb2")
    )


def _processes_of(package: str) -> list[str]:
    """``prognos.api.<svc>.v1`` is served by <svc>; ``prognos.api.common.v1`` by every one."""
    area = package.split(".")[2]
    if area == "common":
        return list(SERVICES)
    assert area in SERVICES, f"{package} is served by no known process: map it here"
    return [area]


def _every_rpc() -> list[Rpc]:
    rpcs = []
    for name in _api_modules():
        file = importlib.import_module(name).DESCRIPTOR
        for service in file.services_by_name.values():
            for process in _processes_of(file.package):
                rpcs.extend(Rpc(process, method) for method in service.methods)
    return rpcs


RPCS = _every_rpc()


async def test_the_walk_finds_the_services_of_every_process() -> None:
    names = {rpc.method.containing_service.full_name for rpc in RPCS}

    assert {
        "prognos.api.ingest.v1.IngestService",
        "prognos.api.registry.v1.ModelRegistry",
        "prognos.api.inference.v1.InferenceService",
        "prognos.api.scheduler.v1.MaintenanceScheduler",
        "prognos.api.common.v1.InfoService",
        "prognos.api.common.v1.AuditService",
    } <= names
    assert {rpc.process for rpc in RPCS} == set(SERVICES)


async def _status(channel: grpc.aio.Channel, rpc: Rpc) -> tuple[grpc.StatusCode, str]:
    """Call with an empty request (or stream) and return the status, never a response."""
    method = rpc.method
    if method.client_streaming and method.server_streaming:
        call = channel.stream_stream(rpc.path)(iter(()), timeout=10)
    elif method.client_streaming:
        call = channel.stream_unary(rpc.path)(iter(()), timeout=10)
    elif method.server_streaming:
        call = channel.unary_stream(rpc.path)(b"", timeout=10)
    else:
        call = channel.unary_unary(rpc.path)(b"", timeout=10)
    return await call.code(), await call.details() or ""


def _wrong_roles(rpc: Rpc) -> list[str]:
    """One role the RPC does not allow, or none at all when it allows every role."""
    outside = [role for role in ROLES if role not in rpc.allowed]
    return outside[:1]


def _token(fleet: RunInfo, subject: str, roles: list[str]) -> str:
    key = load_private_key(secrets_of(fleet).token_signing_key)
    return issue_token(key, subject, roles, timedelta(minutes=10))


async def _entries_after(fleet: RunInfo, process: str, seq: int) -> list[audit_pb2.AuditEntry]:
    async with open_channel(fleet, process, role="auditor") as channel:
        reply = await audit_pb2_grpc.AuditServiceStub(channel).ListEntries(
            audit_pb2.ListEntriesRequest(after_seq=seq), timeout=10
        )
    return list(reply.entries)


async def _head(fleet: RunInfo, process: str) -> int:
    async with open_channel(fleet, process, role="auditor") as channel:
        reply = await audit_pb2_grpc.AuditServiceStub(channel).VerifyChain(
            audit_pb2.VerifyChainRequest(), timeout=10
        )
    return reply.head.seq


@pytest.mark.parametrize("rpc", RPCS, ids=str)
async def test_no_token_is_unauthenticated_and_a_wrong_role_denied_both_audited(
    fleet: RunInfo, rpc: Rpc
) -> None:
    start = await _head(fleet, rpc.process)
    subject = f"probe-{uuid.uuid4().hex[:8]}"
    wrong = _wrong_roles(rpc)

    async with open_channel_with_token(fleet, rpc.process, None) as channel:
        anonymous = await _status(channel, rpc)
    token = _token(fleet, subject, wrong)
    async with open_channel_with_token(fleet, rpc.process, token) as channel:
        forbidden = await _status(channel, rpc)

    assert anonymous[0] == grpc.StatusCode.UNAUTHENTICATED, anonymous
    assert forbidden[0] == grpc.StatusCode.PERMISSION_DENIED, forbidden
    denials = [
        json.loads(e.details_json) | {"actor": e.actor}
        for e in await _entries_after(fleet, rpc.process, start)
        if e.action == "access.denied"
    ]
    mine = [d for d in denials if d["method"] == rpc.path]
    assert [(d["outcome"], d["actor"]) for d in mine] == [
        ("unauthenticated", "anonymous"),
        ("forbidden", f"user:{subject}"),
    ]
    assert mine[1]["roles"] == wrong


async def test_a_client_without_the_ca_signed_certificate_cannot_connect(fleet: RunInfo) -> None:
    secrets = secrets_of(fleet)
    address = next(s.address for s in fleet.services if s.name == "scheduler")
    credentials = grpc.composite_channel_credentials(
        channel_credentials(secrets.ca_cert),
        grpc.access_token_call_credentials(_token(fleet, "no-cert", [ADMIN_ROLE])),
    )
    async with grpc.aio.secure_channel(address, credentials) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await audit_pb2_grpc.AuditServiceStub(channel).VerifyChain(
                audit_pb2.VerifyChainRequest(), timeout=10
            )

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def _pump(name: str) -> ingest_pb2.AssetType:
    asset_type = ingest_pb2.AssetType(name=name, display_name="Pump")
    channel = asset_type.channels.add(name="bearing_temp", unit="degC", min_value=-40)
    channel.max_value = 120
    channel.expected_interval.FromSeconds(10)
    asset_type.horizon.duration.FromSeconds(48 * 3600)
    return asset_type


async def test_an_allowed_call_is_audited_with_its_principal_and_trace(fleet: RunInfo) -> None:
    start = await _head(fleet, "ingest")
    subject = f"user:mle-{uuid.uuid4().hex[:8]}"
    name = f"pump-{uuid.uuid4().hex[:8]}"

    token = _token(fleet, subject, ["ml-engineer"])
    async with open_channel_with_token(fleet, "ingest", token) as channel:
        await ingest_pb2_grpc.IngestServiceStub(channel).RegisterAssetType(
            ingest_pb2.RegisterAssetTypeRequest(asset_type=_pump(name)), timeout=10
        )

    [entry] = [
        e for e in await _entries_after(fleet, "ingest", start) if e.subject == f"asset_type/{name}"
    ]
    assert entry.actor == subject
    spans_dir = Path(fleet.data_dir) / "spans"

    def traced() -> None:
        names = {s.name for s in read_spans(spans_dir, entry.trace_id) if s.service == "ingest"}
        assert "/prognos.api.ingest.v1.IngestService/RegisterAssetType" in names

    await assert_eventually(traced, timeout=10)
