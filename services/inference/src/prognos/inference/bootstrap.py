"""The inference service's composition root."""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prognos.api import wire
from prognos.api.inference.v1 import events_pb2 as _inference_events
from prognos.api.inference.v1 import inference_pb2, inference_pb2_grpc
from prognos.core.config import Settings
from prognos.core.service import Runtime
from prognos.inference.adapters import metadata
from prognos.inference.consumers import (
    ALIAS_EVENTS,
    ASSET_EVENTS,
    POLICY_EVENTS,
    AssetDirectory,
    alias_handler,
    directory_handler,
    follow,
    policy_handler,
)
from prognos.inference.grpc_api import InferenceServicer, Peers
from prognos.inference.live import LiveScorer
from prognos.inference.loading import ModelLoader
from prognos.inference.membership import Membership
from prognos.inference.models import ModelRunner, ServingModel, ServingModels
from prognos.inference.monitoring import DriftMonitor
from prognos.inference.publisher import AlertAuditor, PredictionPublisher

if TYPE_CHECKING:
    from nats.js import JetStreamContext

__all__ = ["STREAM", "Inference", "assemble", "build", "install", "metadata"]

log = logging.getLogger(__name__)

STREAM = wire.stream_of(_inference_events.PredictionMade)


@dataclass
class Inference:
    """Everything one inference replica runs, for the service and for in-process tests."""

    settings: Settings
    replica_id: str
    js: JetStreamContext
    models: ServingModels
    directory: AssetDirectory
    membership: Membership
    live: LiveScorer
    loader: ModelLoader
    drift: DriftMonitor
    auditor: AlertAuditor
    publisher: PredictionPublisher
    executor: ThreadPoolExecutor
    servicer: InferenceServicer
    peers: Peers
    subscriptions: list[Any]

    async def start(self) -> None:
        """Follow assets, aliases and policies, join the replicas, consume telemetry."""
        self.subscriptions.append(
            await follow(self.js, ASSET_EVENTS, directory_handler(self.directory))
        )
        self.subscriptions.append(
            await follow(self.js, ALIAS_EVENTS, alias_handler(self.loader.apply))
        )
        self.subscriptions.append(
            await follow(self.js, POLICY_EVENTS, policy_handler(self.live.opens_at))
        )
        await self.live.start()
        await self.membership.start()

    async def stop(self) -> None:
        """Leave (so the others take the assets at once), stop scoring, flush."""
        await self.membership.leave()
        for subscription in self.subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        await self.live.stop()
        with contextlib.suppress(Exception):
            await self.auditor.drain()
        await self.peers.close()
        self.executor.shutdown(wait=True)


def assemble(runtime: Runtime) -> Inference:
    """Wire one replica to the runtime's settings, store and JetStream."""
    settings = runtime.settings
    replica_id = settings.inference_replica_id or runtime.server.instance_id
    executor = ThreadPoolExecutor(
        max_workers=max(1, settings.inference_threads), thread_name_prefix="inference"
    )
    runner = ModelRunner()
    models = ServingModels()
    directory = AssetDirectory()
    publisher = PredictionPublisher(runtime.js)
    auditor = AlertAuditor(runtime.store)
    live_ref: list[LiveScorer] = []

    def announce() -> str:
        try:
            return runtime.server.address
        except RuntimeError:
            return ""  # not listening yet

    membership = Membership(
        runtime.js,
        replica_id,
        heartbeat_s=settings.inference_heartbeat_s,
        ttl_s=settings.inference_member_ttl_s,
        announce=announce,
    )
    # Joining happens before the server listens: announce the address as soon as it does,
    # not at the next heartbeat, so that the other replicas can forward to this one.
    runtime.server.on_started(membership.announce)

    def channel_of(asset_type: str, model: ServingModel, feature: str) -> str:
        table = live_ref[0].tables.get(asset_type) if live_ref else None
        channels = table.channels if table is not None else []
        return model.preprocessing.channel_for(feature, channels) or feature

    drift = DriftMonitor(settings, runtime.store, models, executor, replica_id, channel_of)
    live = LiveScorer(
        settings,
        runtime.js,
        models,
        directory,
        membership,
        publisher,
        auditor,
        drift,
        executor,
        runner,
    )
    live_ref.append(live)
    loader = ModelLoader(models, executor, runtime.store, replica_id, on_swap=live.models_changed)
    peers = Peers(settings)
    servicer = InferenceServicer(
        settings, live, models, directory, membership, executor, runner, runtime.nc, peers
    )
    return Inference(
        settings=settings,
        replica_id=replica_id,
        js=runtime.js,
        models=models,
        directory=directory,
        membership=membership,
        live=live,
        loader=loader,
        drift=drift,
        auditor=auditor,
        publisher=publisher,
        executor=executor,
        servicer=servicer,
        peers=peers,
        subscriptions=[],
    )


async def install(runtime: Runtime) -> Inference:
    """Assemble a replica on ``runtime``, serve it, start it, and stop it with the server."""
    inference = assemble(runtime)
    runtime.server.add_service(
        inference_pb2_grpc.add_InferenceServiceServicer_to_server,
        inference.servicer,
        inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
    )
    await inference.start()
    runtime.background.extend(
        [inference.membership.run, inference.loader.run, inference.drift.run, inference.auditor.run]
    )
    runtime.server.on_shutdown(inference.stop)
    return inference


async def build(runtime: Runtime) -> None:
    """Add the servicer, the telemetry consumer, the model loader, drift checks and membership."""
    await install(runtime)
