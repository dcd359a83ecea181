"""Access control on a real server: mutual TLS, tokens and roles, denials in the audit chain."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from prognos.api.common.v1 import audit_pb2, audit_pb2_grpc, info_pb2, info_pb2_grpc
from prognos.cli.certs import DevSecrets, ensure_dev_secrets
from prognos.core.audit_api import AUDIT_SERVICE, AuditServicer
from prognos.core.auth import current_principal, issue_token, load_private_key
from prognos.core.config import Settings
from prognos.core.errors import from_grpc_error
from prognos.core.migrate import upgrade
from prognos.core.server import GrpcServer, wait_for_serving
from prognos.core.service import access_interceptors
from prognos.core.store import EventStore, create_engine
from prognos.core.tls import channel_credentials, server_credentials

HOUR = timedelta(hours=1)


class _RecordingAuditServicer(AuditServicer):
    """VerifyChain also writes an entry as whoever calls it, to show the acting principal."""

    async def VerifyChain(
        self, request: audit_pb2.VerifyChainRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.VerifyChainResponse:
        principal = current_principal()
        async with self._store.transaction() as uow:
            roles = list(principal.roles) if principal else []
            await uow.audit("chain.checked", "audit/test", details={"roles": roles})
        return await super().VerifyChain(request, context)


@dataclass
class Secured:
    server: GrpcServer
    store: EventStore
    secrets: DevSecrets

    def token(self, subject: str, *roles: str, ttl: timedelta = HOUR) -> str:
        key = load_private_key(self.secrets.token_signing_key)
        return issue_token(key, subject, roles, ttl)

    def channel(self, token: str | None = None, *, client_cert: bool = True) -> grpc.aio.Channel:
        s = self.secrets
        tls = (
            channel_credentials(s.ca_cert, s.client_cert, s.client_key)
            if client_cert
            else channel_credentials(s.ca_cert)
        )
        if token is not None:
            tls = grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(token))
        return grpc.aio.secure_channel(self.server.address, tls)

    async def entries(self) -> list[audit_pb2.AuditEntry]:
        async with self.channel(self.token("auditor-bot", "auditor")) as channel:
            reply = await audit_pb2_grpc.AuditServiceStub(channel).ListEntries(
                audit_pb2.ListEntriesRequest(), timeout=5
            )
        return list(reply.entries)


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    secrets = ensure_dev_secrets(tmp_path / "secrets", ["ingest"])
    settings = Settings.load(
        "ingest",
        data_dir=tmp_path,
        grpc_port=0,
        tls_ca_file=secrets.ca_cert,
        tls_cert_file=secrets.service_cert("ingest"),
        tls_key_file=secrets.service_key("ingest"),
        auth_public_key_file=secrets.token_public_key,
    )
    upgrade(settings)
    engine = create_engine(settings)
    store = EventStore(engine, "ingest")
    server = GrpcServer(
        settings,
        version="0.0.0",
        extra_interceptors=access_interceptors(settings, store),
        credentials=server_credentials(settings),
    )
    server.add_service(
        audit_pb2_grpc.add_AuditServiceServicer_to_server,
        _RecordingAuditServicer(store),
        AUDIT_SERVICE,
    )
    await server.start()
    try:
        yield Secured(server, store, secrets)
    finally:
        await server.stop()
        await engine.dispose()


async def _verify_chain(channel: grpc.aio.Channel) -> audit_pb2.VerifyChainResponse:
    stub = audit_pb2_grpc.AuditServiceStub(channel)
    return await stub.VerifyChain(audit_pb2.VerifyChainRequest(), timeout=5)


async def test_a_call_without_a_token_is_unauthenticated_and_audited(secured: Secured) -> None:
    async with secured.channel() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _verify_chain(channel)

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert from_grpc_error(caught.value).reason == "TOKEN_MISSING"
    [denial] = await secured.entries()
    assert (denial.action, denial.actor) == ("access.denied", "anonymous")
    details = json.loads(denial.details_json)
    assert details["method"] == f"/{AUDIT_SERVICE}/VerifyChain"
    assert details["outcome"] == "unauthenticated"


async def test_an_expired_token_is_unauthenticated(secured: Secured) -> None:
    key = load_private_key(secured.secrets.token_signing_key)
    stale = issue_token(key, "alice", ["auditor"], HOUR, now=datetime.now(UTC) - 2 * HOUR)

    async with secured.channel(stale) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _verify_chain(channel)

    assert from_grpc_error(caught.value).reason == "TOKEN_EXPIRED"
    [denial] = await secured.entries()
    assert denial.actor == "unverified:alice"


async def test_a_role_not_listed_is_permission_denied_and_audited(secured: Secured) -> None:
    async with secured.channel(secured.token("bob", "erp", "gateway")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _verify_chain(channel)

    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    error = from_grpc_error(caught.value)
    assert error.reason == "ROLE_NOT_ALLOWED" and error.domain == "ingest"
    [denial] = await secured.entries()
    assert denial.actor == "user:bob"
    details = json.loads(denial.details_json)
    assert details["outcome"] == "forbidden"
    assert details["roles"] == ["erp", "gateway"]
    assert details["allowed_roles"] == ["admin", "auditor"]


@pytest.mark.parametrize("role", ["auditor", "admin"])
async def test_an_allowed_call_runs_as_its_principal(secured: Secured, role: str) -> None:
    async with secured.channel(secured.token("carol", role)) as channel:
        result = await _verify_chain(channel)

    assert result.ok
    [entry] = await secured.entries()
    assert (entry.action, entry.actor) == ("chain.checked", "user:carol")
    assert json.loads(entry.details_json) == {"roles": [role]}


async def test_a_method_this_server_does_not_know_is_admin_only(secured: Secured) -> None:
    async with secured.channel(secured.token("dave", "auditor")) as channel:
        info = await info_pb2_grpc.InfoServiceStub(channel).GetInfo(
            info_pb2.GetInfoRequest(), timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await channel.unary_unary("/prognos.api.nothing.v1.Nowhere/Call")(b"", timeout=5)
    async with secured.channel(secured.token("erin", "admin")) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as unimplemented:
            await channel.unary_unary("/prognos.api.nothing.v1.Nowhere/Call")(b"", timeout=5)

    assert info.service_name == "ingest"
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_health_is_open_to_any_client_with_a_certificate(secured: Secured) -> None:
    await wait_for_serving(
        secured.server.address,
        deadline_s=5,
        credentials=channel_credentials(
            secured.secrets.ca_cert, secured.secrets.client_cert, secured.secrets.client_key
        ),
    )
    async with secured.channel() as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )

    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert await secured.entries() == []


async def test_a_client_without_a_certificate_cannot_connect(secured: Secured) -> None:
    async with secured.channel(secured.token("eve", "admin"), client_cert=False) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _verify_chain(channel)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_plaintext_client_cannot_connect(secured: Secured) -> None:
    async with grpc.aio.insecure_channel(secured.server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _verify_chain(channel)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
