"""Who may do what on the event bus: NATS nkey identities and their subject permissions.

Every process that talks to NATS has its own identity: an nkey (an Ed25519 key pair; the
server keeps only the public key, the process proves itself by signing the server's nonce
with its seed). The server's ``authorization`` block lists each public key with its
permissions, and nats-server enforces them: a publish outside a user's allow list is
dropped with a permissions violation and never reaches a stream or a subscriber.

The rules, per identity:

- a service publishes only its own subjects (``<service>.>``; ingest also raw telemetry,
  the quarantine and its archive's sync requests) and its own audit anchors
  (``audit.head.<service>``, ``audit.checkpoint.<service>``): nobody else writes them;
- JetStream is reached through its API subjects: reading and consuming streams, creating
  the known streams if missing, never updating, purging or deleting a stream or a message;
- the command line reads streams and writes nothing; the test observer likewise.

Seeds are files of one line, readable by their owner only, one per identity, and never
logged: :func:`ensure_identities` writes ``<directory>/<identity>.nk``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import nkeys

from prognos.api import wire
from prognos.api.common.v1 import audit_pb2

__all__ = [
    "CLI_IDENTITY",
    "IDENTITIES",
    "OBSERVER_IDENTITY",
    "BusPermissions",
    "authorization_config",
    "ensure_identities",
    "generate_seed",
    "identity_dir",
    "permissions_for",
    "public_key",
    "seed_path",
]

CLI_IDENTITY = "cli"
"""The command line (``prognos audit verify`` and friends): reads, never writes."""

OBSERVER_IDENTITY = "observer"
"""Tests and operators that watch the bus: subscribe and read, never publish an event."""

_SERVICES = ("ingest", "registry", "inference", "scheduler")

IDENTITIES: tuple[str, ...] = (*_SERVICES, CLI_IDENTITY, OBSERVER_IDENTITY)
"""Every identity the launcher and the compose secrets job make, in this order."""

#: The streams any service may create when it finds one missing (services create the
#: streams they consume too, so start-up order does not matter). Their configuration is
#: the one the shared code writes; nobody may update, purge or delete them afterwards.
_KNOWN_STREAMS = tuple(wire.streams())

#: Reading JetStream: account info, stream info and listing, message gets, consumers.
#: Consumers and acks of one service can be touched by another; the events cannot.
_JS_READ = (
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.*",
    "$JS.API.STREAM.NAMES",
    "$JS.API.STREAM.LIST",
    "$JS.API.STREAM.MSG.GET.*",
    "$JS.API.DIRECT.GET.>",
    "$JS.API.CONSUMER.>",
    "$JS.ACK.>",
    "$JS.FC.>",
)

#: Replies to requests (JetStream API answers, pull batches, push deliveries) arrive here.
_INBOX = "_INBOX.>"


@dataclass(frozen=True)
class BusPermissions:
    """One identity's NATS permissions, in nats-server's terms.

    Attributes:
        publish: Subjects it may publish to (wildcards allowed).
        subscribe: Subjects it may subscribe to.
        allow_responses: Whether it may answer requests it receives (publish once to the
            reply subject of a message it got), without a publish grant on ``_INBOX.>``.
    """

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False

    def to_config(self) -> dict[str, object]:
        """The ``permissions`` map of a user in nats-server's configuration."""
        config: dict[str, object] = {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }
        if self.allow_responses:
            config["allow_responses"] = True
        return config


def _owned(service: str) -> tuple[str, ...]:
    """The subjects of the streams the contracts give to ``service``."""
    return tuple(
        subject
        for stream in wire.streams().values()
        if stream.producer == service
        for subject in stream.subjects
    )


def _create(*streams: str) -> tuple[str, ...]:
    return tuple(f"$JS.API.STREAM.CREATE.{name}" for name in streams)


def _service(
    name: str,
    *,
    publish: tuple[str, ...] = (),
    subscribe: tuple[str, ...] = (),
    allow_responses: bool = False,
) -> BusPermissions:
    return BusPermissions(
        publish=(
            *_owned(name),
            *publish,
            wire.subject(audit_pb2.ChainHead, service=name),
            wire.subject(audit_pb2.Checkpoint, service=name),
            *_create(*_KNOWN_STREAMS),
            *_JS_READ,
        ),
        subscribe=(_INBOX, *subscribe),
        allow_responses=allow_responses,
    )


# Read from the code: every subject each service publishes, or subscribes to outside
# JetStream (whose deliveries arrive on _INBOX).
_PERMISSIONS: dict[str, BusPermissions] = {
    # Telemetry batches, the quarantine, and its archive process's sync request/reply.
    "ingest": _service(
        "ingest",
        publish=(wire.ARCHIVE_SYNC_SUBJECT,),
        subscribe=(wire.ARCHIVE_SYNC_SUBJECT,),
        allow_responses=True,
    ),
    "registry": _service("registry"),
    # Replicas announce themselves in the inference_replicas KV bucket; the prediction
    # stream RPC follows its own predictions on core subscriptions.
    "inference": _service(
        "inference",
        publish=(
            f"$KV.{wire.MEMBERSHIP_BUCKET}.>",
            f"$JS.API.STREAM.CREATE.KV_{wire.MEMBERSHIP_BUCKET}",
        ),
        subscribe=_owned("inference"),
    ),
    # Replicas tell each other about work-order changes on core subscriptions.
    "scheduler": _service("scheduler", subscribe=(wire.wildcard(*wire.WORK_ORDER_EVENTS),)),
    CLI_IDENTITY: BusPermissions(publish=_JS_READ, subscribe=(_INBOX,)),
    OBSERVER_IDENTITY: BusPermissions(
        publish=_JS_READ,
        subscribe=(_INBOX, *(s for stream in wire.streams().values() for s in stream.subjects)),
    ),
}


def permissions_for(identity: str) -> BusPermissions:
    """The permissions of one identity.

    Args:
        identity: A name from :data:`IDENTITIES`.

    Returns:
        What it may publish and subscribe to.

    Raises:
        KeyError: The identity is unknown.
    """
    return _PERMISSIONS[identity]


def generate_seed() -> bytes:
    """A fresh user nkey seed (``SU...``), from the operating system's randomness."""
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


def public_key(seed: bytes | str | Path) -> str:
    """The public key (``U...``) of a seed, given as bytes or as the path of a seed file.

    Args:
        seed: The seed itself, or a file holding it.

    Returns:
        The public nkey, which is what the server's configuration names.
    """
    raw = seed.read_bytes() if isinstance(seed, Path) else seed
    data = bytearray(raw.encode() if isinstance(raw, str) else raw).strip()
    pair = nkeys.from_seed(data)
    try:
        return str(pair.public_key.decode())
    finally:
        pair.wipe()


def identity_dir(secrets_dir: Path) -> Path:
    """Where ``prognos up`` keeps the bus identities' seeds: ``<secrets_dir>/nats``."""
    return secrets_dir / "nats"


def seed_path(directory: Path, identity: str) -> Path:
    """Where :func:`ensure_identities` keeps an identity's seed."""
    return directory / f"{identity}.nk"


def ensure_identities(directory: Path, identities: Iterable[str] = IDENTITIES) -> dict[str, Path]:
    """Create the seed of every identity that has none yet; keep the existing ones.

    Each seed is written owner-only (0600) and atomically, so a reader never sees half.

    Args:
        directory: Where the seeds live (created 0700 if missing).
        identities: Names from :data:`IDENTITIES`.

    Returns:
        Each identity's seed file.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths: dict[str, Path] = {}
    for identity in identities:
        permissions_for(identity)  # refuse a name the server would not know
        path = seed_path(directory, identity)
        if not path.is_file():
            partial = path.with_suffix(".nk.partial")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(generate_seed() + b"\n")
            partial.replace(path)
        paths[identity] = path
    return paths


def authorization_config(public_keys: Mapping[str, str]) -> str:
    """The ``authorization`` block of nats-server's configuration for these identities.

    A connection without a listed nkey is refused; there is no anonymous user.

    Args:
        public_keys: Each identity's public nkey.

    Returns:
        Configuration text (nats-server reads JSON-style values) to write to a file.
    """
    users = [
        {"nkey": key, "permissions": permissions_for(identity).to_config()}
        for identity, key in public_keys.items()
    ]
    body = json.dumps({"users": users}, indent=2)
    header = f"# Bus identities: {', '.join(public_keys)}. Generated by prognos; public keys only."
    return f"{header}\nauthorization {body}\n"
