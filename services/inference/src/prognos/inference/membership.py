"""Replicas sharing the telemetry stream: membership in a KV bucket, assets by rendezvous hash.

Every replica puts ``{address}`` under its id in the ``inference_replicas`` KV
bucket once a heartbeat; the bucket's TTL removes the key of a replica that stopped
putting it (a server marker tells every watcher), and a replica that stops cleanly deletes
its key. Each replica watches the bucket, so all of them see the same member set within
a heartbeat (and within the TTL after a crash).

An asset belongs to the member with the highest ``hash(member, asset)`` (rendezvous
hashing): every replica computes the same owner without talking to the others, and a
member joining or leaving moves only the assets it takes or held; whoever takes over
assets replays the telemetry stream of the last ``inference_rebuild_lookback_s`` to rebuild
their windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nats.js import api
from nats.js.errors import BucketNotFoundError, NotFoundError

from prognos.api import wire

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

BUCKET = wire.MEMBERSHIP_BUCKET


def weight(member: str, key: str) -> int:
    """Rendezvous weight of ``key`` for ``member`` (stable across processes)."""
    digest = hashlib.blake2b(f"{member}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(members: Sequence[str], key: str) -> str | None:
    """The member that owns ``key``; None without members."""
    if len(members) == 1:  # alone: no need to hash
        return members[0]
    best, best_weight = None, -1
    for member in members:
        w = weight(member, key)
        if w > best_weight:
            best, best_weight = member, w
    return best


@dataclass(frozen=True)
class Member:
    """What a replica last announced."""

    replica_id: str
    address: str
    heard_at: float


ViewListener = Callable[[tuple[str, ...], tuple[str, ...]], None]


class Membership:
    """This replica's view of the replicas sharing the stream.

    Args:
        js: JetStream context.
        replica_id: This replica's id.
        heartbeat_s: How often to announce this replica.
        ttl_s: How long a silent replica counts as alive.
        announce: Returns this replica's address ("" until it listens) for each heartbeat.
    """

    def __init__(
        self,
        js: JetStreamContext,
        replica_id: str,
        *,
        heartbeat_s: float,
        ttl_s: float,
        announce: Callable[[], str],
    ) -> None:
        self._js = js
        self.replica_id = replica_id
        self._heartbeat_s = heartbeat_s
        self._ttl_s = ttl_s
        self._announce = announce
        self._kv: KeyValue | None = None
        self._members: dict[str, Member] = {}
        self.view: tuple[str, ...] = ()
        self._listeners: list[ViewListener] = []
        self._stopping = False
        self._watch_task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    def on_change(self, listener: ViewListener) -> None:
        """Call ``listener(old_view, new_view)`` whenever the member set changes."""
        self._listeners.append(listener)

    def owner(self, key: str) -> str | None:
        """The member that owns ``key`` in the current view."""
        return owner(self.view, key)

    def address_of(self, replica_id: str) -> str:
        """The gRPC address a member announced ("" when unknown)."""
        member = self._members.get(replica_id)
        return member.address if member else ""

    def members(self) -> list[Member]:
        """The live members, by id."""
        return [self._members[m] for m in self.view if m in self._members]

    async def _bucket(self) -> KeyValue:
        try:
            return await self._js.key_value(BUCKET)
        except (BucketNotFoundError, NotFoundError):
            pass
        try:
            return await self._js.create_key_value(
                api.KeyValueConfig(
                    bucket=BUCKET,
                    history=1,
                    ttl=self._ttl_s,
                    limit_marker_ttl=max(1.0, self._ttl_s),
                    storage=api.StorageType.MEMORY,
                )
            )
        except Exception:
            # Another replica created it at the same moment.
            return await self._js.key_value(BUCKET)

    async def start(self) -> None:
        """Join: announce this replica, read the others, and set the first view."""
        self._kv = await self._bucket()
        await self._put()
        watcher = await self._kv.watchall()
        # The initial values come first, then None.
        while True:
            entry = await watcher.updates(timeout=10.0)
            if entry is None:
                break
            self._apply(entry)
        self._members.setdefault(self.replica_id, self._self_member())
        self._recompute()
        self.ready.set()
        self._watch_task = asyncio.create_task(self._watch(watcher), name="membership-watch")

    async def announce(self) -> None:
        """Announce this replica now (its address is known once the server listens)."""
        if self._kv is None or self._stopping:
            return
        await self._put()
        self._recompute()

    def _self_member(self) -> Member:
        return Member(self.replica_id, self._announce(), time.monotonic())

    async def _put(self) -> None:
        assert self._kv is not None
        await self._kv.put(self.replica_id, json.dumps({"address": self._announce()}).encode())

    def _apply(self, entry: Any) -> None:
        if entry.operation in ("DEL", "PURGE") or entry.value is None:
            self._members.pop(entry.key, None)
            return
        try:
            value = json.loads(entry.value)
        except ValueError:
            return
        self._members[entry.key] = Member(
            entry.key, str(value.get("address", "")), time.monotonic()
        )

    async def _watch(self, watcher: Any) -> None:
        try:
            async for entry in watcher:
                if entry is None:
                    continue
                if entry.key == self.replica_id and entry.operation in ("DEL", "PURGE"):
                    if not self._stopping:
                        # Our key expired (a stall longer than the TTL): announce again.
                        await self._put()
                    continue
                self._apply(entry)
                self._recompute()
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()

    def _recompute(self) -> None:
        if not self._stopping:
            self._members[self.replica_id] = self._self_member()
        now = time.monotonic()
        for replica, member in list(self._members.items()):
            if replica != self.replica_id and now - member.heard_at > self._ttl_s * 1.5:
                # Missed its expiry marker: it has not been heard of for too long.
                del self._members[replica]
        view = tuple(sorted(self._members))
        if view != self.view:
            old, self.view = self.view, view
            log.info("inference replicas: %s (was %s)", ", ".join(view), ", ".join(old) or "-")
            for listener in self._listeners:
                listener(old, view)

    async def run(self) -> None:
        """Heartbeat until ``leave``."""
        await self.ready.wait()
        while not self._stopping:
            try:
                await self._put()
            except Exception:
                log.warning("membership heartbeat failed", exc_info=True)
            self._recompute()
            await asyncio.sleep(self._heartbeat_s)

    async def leave(self) -> None:
        """Delete this replica's key so the others take its assets now."""
        self._stopping = True
        if self._kv is not None:
            with contextlib.suppress(Exception):
                await self._kv.delete(self.replica_id)
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
