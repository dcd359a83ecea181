"""`prognos up` runs its embedded nats-server with authorization; a service gets only its seed.

Before, the embedded server took any connection. Against the real launcher (ingest alone):
a connection without credentials is refused, the service's environment names its own seed
file and no other, and with that seed it still cannot publish another service's subjects.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
import pytest_asyncio

from prognos.cli.launcher import Launcher, LaunchError, RunInfo, ServiceSpec
from prognos.core import busauth
from prognos.core.config import Settings
from prognos.core.testing.identities import connect_as, seed_of
from prognos.core.testing.waiting import assert_eventually

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ingest_up(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunInfo]:
    """``prognos up --service ingest``: the launcher, its embedded NATS and ingest."""
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("PROGNOS_")]:
            patch.delenv(key)
        data_dir = tmp_path_factory.mktemp("up") / "data"
        launcher = Launcher(
            Settings.load("launcher", data_dir=data_dir), services=[ServiceSpec.parse("ingest")]
        )
        try:
            await launcher.start()
        except LaunchError as error:
            await launcher.stop()
            pytest.fail(f"{error}\n{error.detail}")
        try:
            assert launcher.info is not None
            yield launcher.info
        finally:
            await launcher.stop()


def _environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().partition("=")[::2] for item in raw.split(b"\0") if item)


async def test_the_embedded_server_refuses_a_connection_without_credentials(
    ingest_up: RunInfo,
) -> None:
    with pytest.raises(nats.errors.Error, match=r"(?i)authorization"):
        await nats.connect(ingest_up.nats_url, allow_reconnect=False, connect_timeout=2)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
async def test_a_service_is_told_its_own_seed_and_no_other(ingest_up: RunInfo) -> None:
    (record,) = ingest_up.services
    environment = _environment(record.pid)
    own = seed_of(ingest_up.data_dir, "ingest")
    assert environment.get("PROGNOS_NATS_NKEY_SEED_FILE") == str(own)
    others = {str(seed_of(ingest_up.data_dir, i)) for i in busauth.IDENTITIES} - {str(own)}
    assert not [v for v in environment.values() if v in others]
    assert not [v for v in environment.values() if v.strip().startswith("SU")], "a seed leaked"


async def test_the_services_own_seed_cannot_forge_another_services_event(
    ingest_up: RunInfo,
) -> None:
    errors: list[Exception] = []

    async def on_error(error: Exception) -> None:
        errors.append(error)

    nc = await connect_as(
        ingest_up.nats_url,
        seed_of(ingest_up.data_dir, "ingest"),
        error_cb=on_error,
        allow_reconnect=False,
    )
    try:
        await nc.publish("registry.alias.moved", b"forged")
        await nc.flush()
        await assert_eventually(
            lambda: any("registry.alias.moved" in str(e) for e in errors), timeout=5
        )
    finally:
        await nc.close()
