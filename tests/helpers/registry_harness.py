"""The registry in-process for tests: real SQLite, nats-server, mutual TLS, tokens, workers.

The nats-server runs with the bus identities' authorization: the registry signs in as
itself, and another service's event is published with that service's identity.

Importable by path (``load_helper("registry_harness")``); it loads ``registry_data`` the
same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import grpc.aio
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import Message
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext

from prognos.api.common.v1.envelope_pb2 import Envelope
from prognos.api.registry.v1 import registry_pb2, registry_pb2_grpc
from prognos.cli.certs import DevSecrets, ensure_dev_secrets
from prognos.core import audit, bus, busauth
from prognos.core.auth import issue_token, load_private_key
from prognos.core.config import Settings
from prognos.core.migrate import upgrade
from prognos.core.natsserver import EmbeddedNats
from prognos.core.server import GrpcServer
from prognos.core.service import Runtime, access_interceptors
from prognos.core.store import EventStore, create_engine
from prognos.core.testing.identities import connect_as
from prognos.core.tls import channel_credentials, server_credentials
from prognos.registry.bootstrap import TRANSLATORS, build

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "services" / "registry" / "migrations"


def load_helper(name: str) -> ModuleType:
    """A module of tests/helpers, loaded by path."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


#: A training configuration that finishes in seconds: one epoch of a small CNN.
TINY = {
    "epochs": "1",
    "window": "12",
    "architecture": "cnn",
    "members": "1",
    "batch": "64",
    "holdout_units": "2",
    "truncations": "2",
    "verification_samples": "16",
}

FAST = {
    "relay_poll_s": 0.05,
    "consumer_batch_size": 50,
    "shutdown_grace_s": 1.0,
    "anchor_interval_s": 60.0,
}


@dataclass
class Registry:
    """A running registry and what a test needs to talk to it."""

    settings: Settings
    store: EventStore
    nc: Client
    js: JetStreamContext
    address: str
    secrets: DevSecrets
    #: Connections signed in as the other services, by name, for events they own.
    owners: dict[str, Client] = field(default_factory=dict)
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def stub(self, subject: str, *roles: str) -> registry_pb2_grpc.ModelRegistryStub:
        """A stub whose calls are made by ``subject`` with ``roles`` (a fresh token)."""
        token = issue_token(
            load_private_key(self.secrets.token_signing_key), subject, roles, timedelta(hours=1)
        )
        s = self.secrets
        credentials = grpc.composite_channel_credentials(
            channel_credentials(s.ca_cert, s.client_cert, s.client_key),
            grpc.access_token_call_credentials(token),
        )
        channel = grpc.aio.secure_channel(self.address, credentials)
        self.channels.append(channel)
        return registry_pb2_grpc.ModelRegistryStub(channel)

    async def audit_entries(self, action: str = "") -> list[audit.AuditEntry]:
        async with self.store.reader() as conn:
            found = [e async for e in audit.entries(conn)]
        return [e for e in found if not action or e.action == action]

    async def messages(self, stream: str, subject: str) -> list[Envelope]:
        """Every message on ``subject`` so far, oldest first, unpacked from its envelope."""
        sub = await self.js.pull_subscribe(subject, stream=stream)
        envelopes = []
        try:
            while True:
                try:
                    batch = await sub.fetch(100, timeout=0.3)
                except (NatsTimeoutError, TimeoutError):
                    break
                for msg in batch:
                    envelope = Envelope()
                    envelope.ParseFromString(msg.data)
                    envelopes.append(envelope)
                    await msg.ack()
        finally:
            await sub.unsubscribe()
        return envelopes

    async def publish(self, subject: str, message: Message, *, actor: str) -> str:
        """Publish another service's integration event as its outbox relay would.

        It goes out with the identity of the service that owns ``subject`` (its first token).
        """
        event_id = str(uuid.uuid4())
        payload = AnyProto()
        payload.Pack(message)
        envelope = Envelope(
            id=event_id,
            type=message.DESCRIPTOR.full_name,
            schema_version=1,
            stream=f"test-{event_id}",
            version=1,
            actor=actor,
            producer=subject.partition(".")[0],
            payload=payload,
        )
        envelope.time.GetCurrentTime()
        await (
            self.owners[subject.partition(".")[0]]
            .jetstream()
            .publish(
                subject,
                envelope.SerializeToString(),
                headers={"Nats-Msg-Id": event_id, "Prognos-Type": envelope.type},
            )
        )
        return event_id


@contextlib.asynccontextmanager
async def running_registry(directory: Path, **overrides: Any) -> AsyncIterator[Registry]:
    """Serve the registry as ``prognos.core.service.serve`` does, without the signals."""
    secrets = ensure_dev_secrets(directory / "secrets", ["registry"])
    seeds = busauth.ensure_identities(busauth.identity_dir(secrets.root))
    authorization = busauth.authorization_config(
        {name: busauth.public_key(path) for name, path in seeds.items()}
    )
    async with EmbeddedNats(directory / "nats", authorization=authorization) as nats_server:
        settings = Settings.load(
            "registry",
            **{
                **FAST,
                "data_dir": directory,
                "nats_url": nats_server.url,
                "nats_nkey_seed_file": seeds["registry"],
                "grpc_port": 0,
                "tls_ca_file": secrets.ca_cert,
                "tls_cert_file": secrets.service_cert("registry"),
                "tls_key_file": secrets.service_key("registry"),
                "auth_public_key_file": secrets.token_public_key,
                **overrides,
            },
        )
        upgrade(settings, MIGRATIONS)
        engine = create_engine(settings)
        store = EventStore(engine, "registry")
        nc = await bus.connect(settings)
        js = nc.jetstream()
        for stream in ("REGISTRY", "INGEST", "INFERENCE"):
            await bus.ensure_stream(js, stream)
        relay = bus.OutboxRelay(store, js, poll_s=settings.relay_poll_s)
        server = GrpcServer(
            settings,
            version="0+test",
            error_translators=TRANSLATORS,  # type: ignore[arg-type]
            extra_interceptors=access_interceptors(settings, store),
            credentials=server_credentials(settings),
        )
        runtime = Runtime(settings, store, nc, js, server, relay)
        await build(runtime)
        relay.start()
        for consumer in runtime.consumers:
            consumer.start()
        tasks = [asyncio.create_task(job()) for job in runtime.background]
        await server.start()
        owners = {
            name: await connect_as(nats_server.url, seeds[name])
            for name in ("ingest", "inference", "scheduler")
        }
        registry = Registry(settings, store, nc, js, server.address, secrets, owners)
        try:
            yield registry
        finally:
            for channel in registry.channels:
                await channel.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(c.stop() for c in runtime.consumers))
            await server.stop()
            await relay.stop()
            for owner in owners.values():
                await owner.drain()
            await nc.drain()
            await engine.dispose()


async def upload(
    stub: registry_pb2_grpc.ModelRegistryStub, path: Path, name: str | None = None
) -> registry_pb2.ModelArtifact:
    """Upload a file in 64 KiB chunks."""
    data = await asyncio.to_thread(path.read_bytes)

    def requests() -> Any:
        yield registry_pb2.UploadArtifactRequest(
            header=registry_pb2.UploadArtifactHeader(name=name or path.name, size_bytes=len(data))
        )
        for start in range(0, len(data), 1 << 16):
            yield registry_pb2.UploadArtifactRequest(chunk=data[start : start + (1 << 16)])

    reply = await stub.UploadArtifact(requests(), timeout=30)
    return reply.artifact


def any_alive(pids: list[int]) -> bool:
    """Whether one of the processes still exists."""
    return any(Path(f"/proc/{pid}").exists() for pid in pids)


def worker_pids(run_id: str) -> list[int]:
    """Processes whose command line names the run (its worker and the worker's shim)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"prognos.registry.worker" in cmdline and run_id.encode() in cmdline:
            pids.append(int(entry.name))
    return pids
