"""Only the owner of a subject can publish it: nats-server enforces each identity's permissions.

Before, the bus had no authentication: anyone who reached NATS could publish a
``registry.alias.moved`` (inference serves it, four-eyes approval skipped) or an
``inference.prediction.made`` (it opens a work order). Against a real nats-server started
with the authorization block that ``prognos up`` generates: a forged event published with
another service's identity, with an unknown key or with no credentials is refused by the
server and never reaches a stream or a subscriber, while the owner's publish still goes
through; only a service itself writes its ``audit.*.<service>`` anchors.
"""

from __future__ import annotations

from pathlib import Path

import nats
import nkeys
import pytest
from nats.js import api

from prognos.core import anchoring, bus, busauth
from prognos.core.testing.identities import AuthorizedNats
from prognos.core.testing.waiting import assert_eventually

ALIAS_MOVED = "registry.alias.moved"
PREDICTION_MADE = "inference.prediction.made"


async def _owner_stream(authorized: AuthorizedNats, owner: str, stream: str) -> None:
    async with authorized.connect(owner) as nc:
        await bus.ensure_stream(nc.jetstream(), stream)


async def _stored(authorized: AuthorizedNats, stream: str, subject: str) -> list[bytes]:
    """Every message of ``stream`` on ``subject``, read by the observer identity."""
    async with authorized.connect(busauth.OBSERVER_IDENTITY) as nc:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        found: list[bytes] = []
        for seq in range(max(info.state.first_seq, 1), info.state.last_seq + 1):
            message = await js.get_msg(stream, seq)
            if message.subject == subject:
                found.append(message.data or b"")
        return found


def _violation(errors: list[Exception], subject: str) -> bool:
    # nats-py lower-cases the server's message.
    expected = f'permissions violation for publish to "{subject}"'.lower()
    return any(expected in str(e).lower() for e in errors)


async def _forge_then_publish_legitimately(
    authorized: AuthorizedNats, forger: str, owner: str, stream: str, subject: str
) -> None:
    """A forger's publish is refused and never delivered; the owner's, right after, is."""
    await _owner_stream(authorized, owner, stream)
    received: list[bytes] = []
    errors: list[Exception] = []
    async with authorized.connect(busauth.OBSERVER_IDENTITY) as observer:

        async def on_message(msg: object) -> None:
            received.append(msg.data)  # type: ignore[attr-defined]

        await observer.subscribe(subject, cb=on_message)
        await observer.flush()
        async with authorized.connect(forger, errors.append) as forging:
            await forging.publish(subject, b"forged")
            # The server has handled the PUB once it answers the PING behind it.
            await forging.flush()
            await assert_eventually(lambda: _violation(errors, subject), timeout=5)
        async with authorized.connect(owner) as owning:
            ack = await owning.jetstream().publish(subject, b"legitimate")
            assert ack.stream == stream

        await assert_eventually(lambda: received == [b"legitimate"], timeout=5)
    assert await _stored(authorized, stream, subject) == [b"legitimate"]


@pytest.mark.parametrize("forger", ["scheduler", "ingest"])
async def test_another_services_identity_cannot_move_an_alias(
    authorized_nats: AuthorizedNats, forger: str
) -> None:
    await _forge_then_publish_legitimately(
        authorized_nats, forger, "registry", "REGISTRY", ALIAS_MOVED
    )


@pytest.mark.parametrize("forger", ["scheduler", "ingest", "registry"])
async def test_another_services_identity_cannot_make_a_prediction(
    authorized_nats: AuthorizedNats, forger: str
) -> None:
    await _forge_then_publish_legitimately(
        authorized_nats, forger, "inference", "INFERENCE", PREDICTION_MADE
    )


@pytest.mark.parametrize("reader", [busauth.CLI_IDENTITY, busauth.OBSERVER_IDENTITY])
async def test_read_only_identities_cannot_publish_events(
    authorized_nats: AuthorizedNats, reader: str
) -> None:
    await _forge_then_publish_legitimately(
        authorized_nats, reader, "registry", "REGISTRY", ALIAS_MOVED
    )


async def test_a_connection_without_credentials_is_refused(authorized_nats: AuthorizedNats) -> None:
    await _owner_stream(authorized_nats, "registry", "REGISTRY")
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
        async with authorized_nats.connect(None):
            pass
    assert await _stored(authorized_nats, "REGISTRY", ALIAS_MOVED) == []


async def test_a_key_the_server_does_not_know_is_refused(
    authorized_nats: AuthorizedNats, tmp_path: Path
) -> None:
    await _owner_stream(authorized_nats, "inference", "INFERENCE")
    stranger = tmp_path / "stranger.nk"
    stranger.write_bytes(busauth.generate_seed())
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
        await nats.connect(
            authorized_nats.url,
            nkeys_seed=str(stranger),
            allow_reconnect=False,
            connect_timeout=2,
        )
    assert await _stored(authorized_nats, "INFERENCE", PREDICTION_MADE) == []


async def test_only_a_service_itself_writes_its_audit_anchors(
    authorized_nats: AuthorizedNats,
) -> None:
    async with authorized_nats.connect("registry") as registry:
        js = registry.jetstream()
        await anchoring.ensure_audit_stream(js)
        ack = await js.publish(anchoring.head_subject("registry"), b"registry's head")
        assert ack.stream == anchoring.AUDIT_STREAM

    for forger in ("scheduler", "inference", busauth.CLI_IDENTITY, busauth.OBSERVER_IDENTITY):
        errors: list[Exception] = []
        async with authorized_nats.connect(forger, errors.append) as forging:
            for subject in (
                anchoring.head_subject("registry"),
                anchoring.checkpoint_subject("registry"),
                "audit.anything",
            ):
                await forging.publish(subject, b"rewritten history")
            await forging.flush()
            await assert_eventually(
                lambda errors=errors: _violation(errors, anchoring.checkpoint_subject("registry")),
                timeout=5,
            )

    async with authorized_nats.connect(busauth.OBSERVER_IDENTITY) as nc:
        info = await nc.jetstream().stream_info(anchoring.AUDIT_STREAM)
    assert info.state.messages == 1


async def test_no_service_can_delete_or_purge_a_stream(authorized_nats: AuthorizedNats) -> None:
    errors: list[Exception] = []
    async with authorized_nats.connect("registry", errors.append) as registry:
        js = registry.jetstream(timeout=1)
        await anchoring.ensure_audit_stream(js)
        await js.publish(anchoring.head_subject("registry"), b"head")
        for attempt in (js.delete_stream, js.purge_stream):
            # Refused by the server: the API request is dropped and never answered.
            with pytest.raises(nats.errors.TimeoutError):
                await attempt(anchoring.AUDIT_STREAM)
        info = await js.stream_info(anchoring.AUDIT_STREAM)
    assert info.state.messages == 1
    assert _violation(errors, f"$JS.API.STREAM.DELETE.{anchoring.AUDIT_STREAM}")
    assert _violation(errors, f"$JS.API.STREAM.PURGE.{anchoring.AUDIT_STREAM}")


async def test_a_consumer_of_another_service_still_reads_its_events(
    authorized_nats: AuthorizedNats,
) -> None:
    """The permissions keep the real flows working: inference follows the registry."""
    await _owner_stream(authorized_nats, "registry", "REGISTRY")
    async with authorized_nats.connect("registry") as registry:
        await registry.jetstream().publish(ALIAS_MOVED, b"moved")
    async with authorized_nats.connect("inference") as inference:
        js = inference.jetstream()
        sub = await js.pull_subscribe(
            ALIAS_MOVED,
            durable="inference-on-alias-moved",
            stream="REGISTRY",
            config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT),
        )
        (message,) = await sub.fetch(1, timeout=5)
        assert message.data == b"moved"
        await message.ack_sync(timeout=5)
        kv = await js.create_key_value(bucket="inference_replicas", ttl=5)
        await kv.put("replica-1", b"alive")
        assert (await kv.get("replica-1")).value == b"alive"


def test_seeds_are_owner_only_and_configs_hold_public_keys_only(tmp_path: Path) -> None:
    seeds = busauth.ensure_identities(tmp_path / "seeds")
    config = busauth.authorization_config(
        {name: busauth.public_key(path) for name, path in seeds.items()}
    )
    for path in seeds.values():
        assert path.stat().st_mode & 0o777 == 0o600
        seed = path.read_text().strip()
        assert seed.startswith("SU") and seed not in config
        assert busauth.public_key(path) in config
    assert set(seeds) == set(busauth.IDENTITIES)
    again = busauth.ensure_identities(tmp_path / "seeds")
    assert {k: p.read_bytes() for k, p in again.items()} == {
        k: p.read_bytes() for k, p in seeds.items()
    }
    nkeys.from_seed(bytearray(seeds["ingest"].read_bytes().strip()))
