"""What every replica follows on JetStream besides telemetry: assets and model aliases.

Each replica keeps all of it in memory and needs all of it, so these are ordered
consumers that replay their subjects from the start at every start-up (a few events per
asset and per model change), not shared durable consumers:

- the ingest service's asset and asset type registrations: each asset's plant, and each
  asset type's failure horizon and reading interval (``AssetDirectory``);
- the registry's ``AliasMoved`` events: the champion and challenger of each asset type;
- the scheduler's ``WorkOrderPolicySet`` events: the lowest failure probability at which a
  prediction of each asset type can open a work order, so that every such prediction is
  explained (carries its top sensors).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nats.js import api

from prognos.api import wire
from prognos.api.common.v1.envelope_pb2 import Envelope
from prognos.api.ingest.v1 import events_pb2 as ingest_events
from prognos.api.ingest.v1 import ingest_pb2
from prognos.api.registry.v1 import events_pb2 as registry_events
from prognos.api.scheduler.v1 import events_pb2 as scheduler_events
from prognos.core import bus, messaging
from prognos.inference.scoring import AssetInfo

if TYPE_CHECKING:
    from collections.abc import Sequence

    from google.protobuf.message import Message
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from prognos.api.common.v1.envelope_pb2 import Envelope

log = logging.getLogger(__name__)

#: What each replica follows: asset and asset type registrations, aliases, policies.
ASSET_EVENTS = (
    ingest_events.AssetRegistered,
    ingest_events.AssetTypeRegistered,
    ingest_events.AssetTypeUpdated,
)
ALIAS_EVENTS = (registry_events.AliasMoved,)
POLICY_EVENTS = (scheduler_events.WorkOrderPolicySet,)


@dataclass(frozen=True)
class AssetRecord:
    """A registered asset."""

    asset_id: str
    plant: str
    asset_type: str


@dataclass(frozen=True)
class AssetTypeRecord:
    """What predictions need of an asset type."""

    name: str
    horizon: ingest_pb2.FailureHorizon
    row_interval_s: float | None


class AssetDirectory:
    """Registered assets and asset types, as announced by the ingest service."""

    def __init__(self) -> None:
        self.assets: dict[str, AssetRecord] = {}
        self.types: dict[str, AssetTypeRecord] = {}
        self._infos: dict[tuple[str, str], AssetInfo] = {}

    def add_asset(self, asset: ingest_pb2.Asset) -> None:
        """Record an asset registration."""
        self.assets[asset.asset_id] = AssetRecord(asset.asset_id, asset.plant, asset.asset_type)
        self._infos.pop((asset.asset_id, asset.asset_type), None)

    def add_type(self, asset_type: ingest_pb2.AssetType) -> None:
        """Record an asset type registration or update."""
        intervals = [
            c.expected_interval.ToTimedelta().total_seconds()
            for c in asset_type.channels
            if c.HasField("expected_interval")
        ]
        horizon = ingest_pb2.FailureHorizon()
        horizon.CopyFrom(asset_type.horizon)
        self.types[asset_type.name] = AssetTypeRecord(
            asset_type.name, horizon, min(intervals) if intervals else None
        )
        self._infos = {k: v for k, v in self._infos.items() if k[1] != asset_type.name}

    def info(self, asset_id: str, asset_type: str) -> AssetInfo:
        """What a prediction of ``asset_id`` says about it (cached)."""
        key = (asset_id, asset_type)
        info = self._infos.get(key)
        if info is None:
            asset = self.assets.get(asset_id)
            kind = self.types.get(asset_type)
            info = AssetInfo(
                asset_id=asset_id,
                asset_type=asset_type,
                plant=asset.plant if asset else "",
                horizon=kind.horizon if kind else None,
                row_interval_s=kind.row_interval_s if kind else None,
            )
            self._infos[key] = info
        return info

    def asset_type_of(self, asset_id: str) -> str | None:
        """The registered type of an asset, if known."""
        asset = self.assets.get(asset_id)
        return asset.asset_type if asset else None

    def select(self, plant: str = "", asset_type: str = "") -> list[str]:
        """Registered assets of a plant and/or type, sorted."""
        return sorted(
            a.asset_id
            for a in self.assets.values()
            if (not plant or a.plant == plant) and (not asset_type or a.asset_type == asset_type)
        )


EnvelopeHandler = Callable[[Envelope], Awaitable[None] | None]


async def follow(
    js: JetStreamContext, events: Sequence[type[Message]], handler: EnvelopeHandler
) -> object:
    """Replay the subjects of ``events`` from the start of their stream and keep following.

    A message that is unreadable or claims a producer other than its subject's owner is
    skipped with a warning: replicas never act on a forged event.

    Returns:
        The subscription (``unsubscribe()`` it to stop).
    """
    (stream,) = {wire.stream_of(e) for e in events}
    subjects = wire.subjects(*events)
    await bus.ensure_stream(js, stream)

    async def on_message(msg: Msg) -> None:
        try:
            envelope = messaging.read_envelope(msg.data, msg.subject)
        except messaging.EventRefusedError as refused:
            log.warning("message on %s skipped: %s", msg.subject, refused.reason)
            return
        try:
            result = handler(envelope)
            if result is not None:
                await result
        except Exception:
            log.exception("handling %s from %s failed", envelope.type, msg.subject)

    config = api.ConsumerConfig(filter_subjects=subjects, deliver_policy=api.DeliverPolicy.ALL)
    return await js.subscribe(
        subjects[0], stream=stream, cb=on_message, ordered_consumer=True, config=config
    )


def directory_handler(directory: AssetDirectory) -> EnvelopeHandler:
    """Apply ingest's asset and asset type events to ``directory``."""

    def handle(envelope: Envelope) -> None:
        if envelope.type == ingest_events.AssetRegistered.DESCRIPTOR.full_name:
            event = ingest_events.AssetRegistered()
            envelope.payload.Unpack(event)
            directory.add_asset(event.asset)
        elif envelope.type in (
            ingest_events.AssetTypeRegistered.DESCRIPTOR.full_name,
            ingest_events.AssetTypeUpdated.DESCRIPTOR.full_name,
        ):
            registered = ingest_events.AssetTypeRegistered()
            if envelope.payload.Unpack(registered):
                directory.add_type(registered.asset_type)
            else:
                updated = ingest_events.AssetTypeUpdated()
                envelope.payload.Unpack(updated)
                directory.add_type(updated.asset_type)

    return handle


def alias_handler(
    apply: Callable[[registry_events.AliasMoved, str], None],
) -> EnvelopeHandler:
    """Pass every ``AliasMoved`` (and its envelope id) to ``apply``."""

    def handle(envelope: Envelope) -> None:
        if envelope.type != registry_events.AliasMoved.DESCRIPTOR.full_name:
            return
        event = registry_events.AliasMoved()
        envelope.payload.Unpack(event)
        apply(event, envelope.id)

    return handle


def opening_floor(policy: scheduler_events.WorkOrderPolicySet) -> float:
    """The lowest failure probability at which a prediction can open a work order.

    A policy with a remaining-useful-life rule opens on the RUL whatever the probability,
    so every prediction can open one (0.0); otherwise, those at ``open_probability``.
    """
    if policy.policy.HasField("open_remaining_useful_life"):
        return 0.0
    return policy.policy.open_probability


def anomaly_floor(policy: scheduler_events.WorkOrderPolicySet) -> float | None:
    """The lowest anomaly score at which a health model's prediction opens an inspection,
    or ``None`` when the policy has no such rule."""
    if policy.policy.HasField("open_anomaly_score"):
        return policy.policy.open_anomaly_score
    return None


def policy_handler(apply: Callable[[str, float, float | None], None]) -> EnvelopeHandler:
    """Pass each asset type's opening floors (``opening_floor``, ``anomaly_floor``) to
    ``apply``."""

    def handle(envelope: Envelope) -> None:
        if envelope.type != scheduler_events.WorkOrderPolicySet.DESCRIPTOR.full_name:
            return
        event = scheduler_events.WorkOrderPolicySet()
        envelope.payload.Unpack(event)
        if event.asset_type:
            apply(event.asset_type, opening_floor(event), anomaly_floor(event))

    return handle
