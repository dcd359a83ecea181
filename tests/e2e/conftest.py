"""End-to-end fixtures: the four services as real processes, started by `prognos up`'s launcher."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from prognos.cli.launcher import Launcher, LaunchError, RunInfo
from prognos.core.config import Settings


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunInfo]:
    """All four services on an embedded nats-server and SQLite files, shared by a module.

    Tests sharing it use distinct names, so they need no clean-up between them.
    """
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("PROGNOS_")]:
            patch.delenv(key)
        # Export spans quickly so a test can read a trace moments after making it.
        patch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        data_dir = tmp_path_factory.mktemp("fleet") / "data"
        try:
            launcher = await Launcher(Settings.load("launcher", data_dir=data_dir)).__aenter__()
        except LaunchError as error:
            # Show what the failing process said, not only that it failed.
            pytest.fail(f"{error}\n{error.detail}")
        try:
            assert launcher.info is not None
            yield launcher.info
        finally:
            await launcher.stop()
