"""Anchoring the audit chain outside the database: heads on JetStream, signed checkpoints.

A hash chain shows an edit, a deletion or a reordering inside it, but not a database
rewritten from some entry on, or cut short. So each service publishes its chain head
(sequence number and hash) to the JetStream stream ``AUDIT``, which denies deletes and
purges, after audited writes and at least every ``anchor_interval_s``; ``prognos audit
verify`` compares the database with the latest anchor. The anchor never moves backwards:
a head that is behind the latest anchor, or whose entry at the anchored sequence has
another hash, is not published but logged as an error.

Checkpoints are heads signed with the service's Ed25519 key, published under
``audit.checkpoint.<service>`` every ``checkpoint_interval_s`` and on request; an auditor
verifies an exported copy of the chain against one offline with the public key alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from nats.js import api
from nats.js.errors import APIError, BadRequestError, NotFoundError
from sqlalchemy import desc, select

from prognos.api import wire
from prognos.api.common.v1 import audit_pb2
from prognos.core.audit import GENESIS_HASH
from prognos.core.auth import key_id

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )
    from nats.js import JetStreamContext

    from prognos.core.store import EventStore

__all__ = [
    "AUDIT_STREAM",
    "SIGNATURE_ALGORITHM",
    "ChainAnchor",
    "ChainHead",
    "ChainMismatchError",
    "CheckpointSignatureError",
    "checkpoint_subject",
    "ensure_audit_stream",
    "head_subject",
    "latest_anchor",
    "latest_checkpoint",
    "read_head",
    "sign_head",
    "signing_payload",
    "verify_checkpoint",
]

_log = logging.getLogger(__name__)
#: JetStream's error code for a publish whose expected last subject sequence is stale.
_WRONG_LAST_SEQUENCE = 10071

AUDIT_STREAM = wire.stream_of(audit_pb2.ChainHead)
"""The immutable stream of chain heads and checkpoints."""
SIGNATURE_ALGORITHM = "Ed25519"
_STREAM_NAME_IN_USE = 10058


def head_subject(service: str) -> str:
    """Where a service's chain heads are published."""
    return wire.subject(audit_pb2.ChainHead, service=service)


def checkpoint_subject(service: str) -> str:
    """Where a service's signed checkpoints are published."""
    return wire.subject(audit_pb2.Checkpoint, service=service)


@dataclass(frozen=True)
class ChainHead:
    """The last entry of a service's chain at a moment."""

    service: str
    seq: int
    hash: str
    at: datetime

    def to_proto(self) -> audit_pb2.ChainHead:
        """The wire form."""
        message = audit_pb2.ChainHead(service=self.service, seq=self.seq, hash=self.hash)
        message.at.FromDatetime(self.at)
        return message

    @classmethod
    def from_proto(cls, message: audit_pb2.ChainHead) -> ChainHead:
        """Read the wire form."""
        return cls(message.service, message.seq, message.hash, message.at.ToDatetime(tzinfo=UTC))


def signing_payload(head: ChainHead) -> bytes:
    """The bytes a checkpoint signs: the head's canonical JSON.

    ``{"at": <ISO 8601 UTC, microseconds>, "hash": ..., "seq": ..., "service": ...}`` with
    sorted keys and no spaces, UTF-8.
    """
    document = {
        "service": head.service,
        "seq": head.seq,
        "hash": head.hash,
        "at": head.at.astimezone(UTC).isoformat(timespec="microseconds"),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def sign_head(private_key: Ed25519PrivateKey, head: ChainHead) -> audit_pb2.Checkpoint:
    """Sign ``head`` with ``private_key``."""
    return audit_pb2.Checkpoint(
        head=head.to_proto(),
        algorithm=SIGNATURE_ALGORITHM,
        key_id=key_id(private_key.public_key()),
        signature=private_key.sign(signing_payload(head)),
    )


class ChainMismatchError(RuntimeError):
    """The chain in the database contradicts its anchor: it was cut short or rewritten."""


class CheckpointSignatureError(ValueError):
    """A checkpoint's signature does not verify with the given public key."""


def verify_checkpoint(public_key: Ed25519PublicKey, checkpoint: audit_pb2.Checkpoint) -> ChainHead:
    """Check a checkpoint's signature and return the head it vouches for.

    Raises:
        CheckpointSignatureError: Another algorithm, another key, or an altered head.
    """
    if checkpoint.algorithm != SIGNATURE_ALGORITHM:
        raise CheckpointSignatureError(f"unsupported algorithm {checkpoint.algorithm!r}")
    head = ChainHead.from_proto(checkpoint.head)
    try:
        public_key.verify(checkpoint.signature, signing_payload(head))
    except InvalidSignature:
        raise CheckpointSignatureError(
            "the signature does not verify: another key signed it, or the head was altered"
        ) from None
    return head


async def ensure_audit_stream(js: JetStreamContext) -> None:
    """Create the ``AUDIT`` stream if missing: file storage, no deletes, no purges."""
    config = api.StreamConfig(
        name=AUDIT_STREAM,
        subjects=list(wire.streams()[AUDIT_STREAM].subjects),
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        deny_delete=True,
        deny_purge=True,
        duplicate_window=120.0,
    )
    try:
        await js.stream_info(AUDIT_STREAM)
    except NotFoundError:
        try:
            await js.add_stream(config)
        except BadRequestError as error:
            # Another service created it between the lookup and the creation.
            if error.err_code != _STREAM_NAME_IN_USE:
                raise


async def read_head(store: EventStore) -> ChainHead:
    """The chain's last entry as stored now (sequence 0 and the genesis hash if empty)."""
    from prognos.core.store import audit_table

    async with store.reader() as conn:
        row = (
            await conn.execute(
                select(audit_table.c.seq, audit_table.c.hash)
                .order_by(desc(audit_table.c.seq))
                .limit(1)
            )
        ).first()
    seq, hash_ = (int(row.seq), str(row.hash)) if row else (0, GENESIS_HASH)
    return ChainHead(store.service, seq, hash_, datetime.now(UTC))


async def _hash_at(store: EventStore, seq: int) -> str | None:
    from prognos.core.store import audit_table

    async with store.reader() as conn:
        value = await conn.scalar(select(audit_table.c.hash).where(audit_table.c.seq == seq))
    return str(value) if value is not None else None


async def latest_anchor(js: JetStreamContext, service: str) -> ChainHead | None:
    """The last head published for ``service``, or ``None`` if there is none yet."""
    anchor, _ = await _latest_anchor_at(js, service)
    return anchor


async def _latest_anchor_at(js: JetStreamContext, service: str) -> tuple[ChainHead | None, int]:
    """The last head published for ``service`` and its stream sequence (0: none yet)."""
    try:
        message = await js.get_last_msg(AUDIT_STREAM, head_subject(service))
    except NotFoundError:
        return None, 0
    head = ChainHead.from_proto(audit_pb2.ChainHead.FromString(message.data or b""))
    return head, int(message.seq or 0)


async def latest_checkpoint(js: JetStreamContext, service: str) -> audit_pb2.Checkpoint | None:
    """The last checkpoint published for ``service``, or ``None`` if there is none yet."""
    try:
        message = await js.get_last_msg(AUDIT_STREAM, checkpoint_subject(service))
    except NotFoundError:
        return None
    return audit_pb2.Checkpoint.FromString(message.data or b"")


class ChainAnchor:
    """Publishes a service's chain head to ``AUDIT``, and signs checkpoints of it.

    Run ``run`` as a background task; ``notify`` (wired to ``EventStore.on_audit``) wakes
    it after an audited write.

    Args:
        store: The service's event store (the chain lives in its database).
        js: A JetStream context.
        interval_s: Look for a new head at least this often.
        checkpoint_interval_s: Sign and publish a checkpoint this often when the head moved.
        signing_key: The checkpoint key; without it there are heads but no checkpoints.
        publish_timeout_s: Seconds to wait for JetStream to store a message.
    """

    def __init__(
        self,
        store: EventStore,
        js: JetStreamContext,
        *,
        interval_s: float = 5.0,
        checkpoint_interval_s: float = 3600.0,
        signing_key: Ed25519PrivateKey | None = None,
        publish_timeout_s: float = 5.0,
    ) -> None:
        self._store = store
        self._js = js
        self._service = store.service
        self._interval_s = interval_s
        self._checkpoint_interval_s = checkpoint_interval_s
        self._signing_key = signing_key
        self._timeout = publish_timeout_s
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._published: tuple[int, str] | None = None
        self._checkpointed: tuple[int, str] | None = None
        self._reported: str | None = None

    @property
    def can_sign(self) -> bool:
        """Whether a checkpoint key is configured."""
        return self._signing_key is not None

    def notify(self) -> None:
        """Wake the anchor: an audit entry was just committed."""
        self._wake.set()

    async def run(self) -> None:
        """Publish heads (and checkpoints) until cancelled; failures are logged and retried."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        next_checkpoint = loop.time() + self._checkpoint_interval_s
        while True:
            self._wake.clear()
            try:
                await self.publish_head()
                if self.can_sign and loop.time() >= next_checkpoint:
                    next_checkpoint = loop.time() + self._checkpoint_interval_s
                    await self.checkpoint(only_if_moved=True)
            except Exception:
                _log.exception("%s: could not anchor the audit chain", self._service)
            # On Python 3.11 a cancellation that arrives just as an awaited reply does can
            # be swallowed inside a library (asyncio.wait_for): honour it before waiting,
            # and wait with asyncio.timeout, which does not lose one.
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._wake.wait()

    async def publish_head(self) -> ChainHead | None:
        """Publish the current head unless it was published already or contradicts the anchor.

        Returns:
            The head published, or ``None`` when nothing was published.
        """
        async with self._lock:
            # The anchor first: another process writing the same chain (a second replica on
            # one database) may anchor a newer head at any moment, and a head read before
            # that anchor would look like a chain cut short.
            anchor, anchored_at = await _latest_anchor_at(self._js, self._service)
            head = await read_head(self._store)
            if head.seq == 0 or self._published == (head.seq, head.hash):
                return None
            problem = await self._contradiction(head, anchor)
            if problem is not None:
                if problem != self._reported:
                    _log.error("%s: audit chain not anchored: %s", self._service, problem)
                    self._reported = problem
                return None
            if anchor is not None and (anchor.seq, anchor.hash) == (head.seq, head.hash):
                self._published = (head.seq, head.hash)  # anchored by another writer
                return None
            try:
                await self._js.publish(
                    head_subject(self._service),
                    head.to_proto().SerializeToString(),
                    timeout=self._timeout,
                    stream=AUDIT_STREAM,
                    headers={
                        wire.MSG_ID_HEADER: f"{self._service}:{head.seq}:{head.hash}",
                        # Only on top of the anchor just checked: never move it backwards.
                        "Nats-Expected-Last-Subject-Sequence": str(anchored_at),
                    },
                )
            except APIError as error:
                if error.err_code != _WRONG_LAST_SEQUENCE:
                    raise
                return None  # another writer anchored in between: check again next time
            self._published = (head.seq, head.hash)
            self._reported = None
            return head

    async def _contradiction(self, head: ChainHead, anchor: ChainHead | None) -> str | None:
        if anchor is None:
            return None
        if head.seq < anchor.seq:
            return (
                f"the database head {head.seq} is behind the anchored head {anchor.seq}: "
                "entries were removed"
            )
        stored = head.hash if head.seq == anchor.seq else await _hash_at(self._store, anchor.seq)
        if stored != anchor.hash:
            return f"entry {anchor.seq} no longer has its anchored hash: the chain was rewritten"
        return None

    async def checkpoint(self, *, only_if_moved: bool = False) -> audit_pb2.Checkpoint | None:
        """Anchor the current head, sign it, and publish the checkpoint.

        Args:
            only_if_moved: Sign nothing when the head is the one signed last.

        Returns:
            The checkpoint, or ``None`` when skipped.

        Raises:
            RuntimeError: No checkpoint key is configured.
            ChainMismatchError: The chain contradicts its anchor; nothing is signed.
        """
        if self._signing_key is None:
            raise RuntimeError(f"{self._service}: no audit signing key configured")
        await self.publish_head()
        anchor = await latest_anchor(self._js, self._service)
        head = await read_head(self._store)  # after the anchor: see publish_head
        if only_if_moved and self._checkpointed == (head.seq, head.hash):
            return None
        problem = await self._contradiction(head, anchor)
        if problem is not None:
            raise ChainMismatchError(f"{self._service}: {problem}")
        checkpoint = sign_head(self._signing_key, head)
        await self._js.publish(
            checkpoint_subject(self._service),
            checkpoint.SerializeToString(),
            timeout=self._timeout,
            stream=AUDIT_STREAM,
        )
        self._checkpointed = (head.seq, head.hash)
        return checkpoint
