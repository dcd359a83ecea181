"""Durable pull consumers that resume where the database says, not where JetStream says.

The archive and the quarantine recorder commit their stream position in the same
transaction as their effect, and acknowledge afterwards. After a crash JetStream would
redeliver the unacknowledged messages only once their ack wait expires, after newer ones;
a follower that skips what is behind its position would then lose them. So a follower
recreates its consumer on start, to deliver from just after the committed position, in
stream order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nats.js import api
from nats.js.errors import NotFoundError

if TYPE_CHECKING:
    from nats.js import JetStreamContext

__all__ = ["follow"]


async def follow(
    js: JetStreamContext,
    *,
    stream: str,
    subject: str,
    durable: str,
    after_sequence: int,
    ack_wait_s: float,
) -> JetStreamContext.PullSubscription:
    """A pull subscription delivering ``stream`` from ``after_sequence + 1`` on, in order.

    Acknowledging a message acknowledges every message before it (``AckPolicy.ALL``).
    """
    try:
        await js.delete_consumer(stream, durable)
    except NotFoundError:
        pass
    config = api.ConsumerConfig(
        ack_policy=api.AckPolicy.ALL,
        ack_wait=ack_wait_s,
        max_ack_pending=-1,
        max_deliver=-1,
    )
    if after_sequence > 0:
        config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = after_sequence + 1
    else:
        config.deliver_policy = api.DeliverPolicy.ALL
    return await js.pull_subscribe(subject, durable=durable, stream=stream, config=config)
