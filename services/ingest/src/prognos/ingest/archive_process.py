"""The archive in a process of its own, started and watched by the ingest service.

Writing Parquet costs about as much CPU as taking the telemetry in. In a process of its
own, at a lower CPU priority, it never holds the intake's interpreter lock and yields the
cores to the readings that clients wait for; it catches up when the CPU is free. It holds
an exclusive lock on the archive directory (one archiver per archive, also while a
restarted service's new archiver waits for the old one to finish), and flushes on request
on the core NATS subject ``_ingest.archive.sync`` (outside every JetStream stream).

Run: ``python -m prognos.ingest.archive_process`` with the ingest service's settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prognos.api import wire
from prognos.core import bus, telemetry
from prognos.core.config import Settings
from prognos.core.natsserver import die_with_parent
from prognos.core.store import EventStore, create_engine
from prognos.ingest.archive import Archiver
from prognos.ingest.intake import Catalog

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

__all__ = ["NICE", "SYNC_SUBJECT", "ArchiveProcess", "main"]

log = logging.getLogger(__name__)

SYNC_SUBJECT = wire.ARCHIVE_SYNC_SUBJECT
NICE = 10
LOCK_FILE = ".archiver.lock"
_CATALOG_REFRESH_S = 2.0
_RESTART_S = 2.0


async def _serve(settings: Settings) -> None:
    with contextlib.suppress(OSError):
        os.nice(NICE)
    root = settings.effective_archive_dir
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK_FILE).open("a+") as lock:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        log.info("archiving to %s", root.resolve())
        await _archive(settings, root)


async def _archive(settings: Settings, root: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    engine = create_engine(settings)
    nc = await bus.connect(settings, name="prognos-ingest-archive")
    try:
        store = EventStore(engine, settings.service)
        catalog = Catalog(store)
        await catalog.load()
        gc.freeze()  # as in the service: keep start-up objects out of the collector's walks
        archiver = Archiver(
            store,
            nc.jetstream(),
            root,
            catalog,
            flush_rows=settings.archive_flush_rows,
            flush_interval_s=settings.archive_flush_interval_s,
        )
        requests: set[asyncio.Task[None]] = set()

        async def answer(msg: Msg) -> None:
            request = json.loads(msg.data or b"{}")
            done = await archiver.sync(int(request.get("through", 0)), float(request["wait_s"]))
            await msg.respond(json.dumps({"done": done, "position": archiver.position}).encode())

        async def on_sync(msg: Msg) -> None:
            task = asyncio.create_task(answer(msg))
            requests.add(task)
            task.add_done_callback(requests.discard)

        async def refresh_catalog() -> None:
            while True:
                await asyncio.sleep(_CATALOG_REFRESH_S)
                try:
                    await catalog.refresh_types()
                except Exception:
                    log.warning("refreshing the asset types failed", exc_info=True)

        archiver.start()
        await nc.subscribe(SYNC_SUBJECT, cb=on_sync)
        refresher = asyncio.create_task(refresh_catalog())
        finished = asyncio.ensure_future(archiver.wait())
        waiting = asyncio.ensure_future(stop.wait())
        await asyncio.wait({finished, waiting}, return_when=asyncio.FIRST_COMPLETED)
        refresher.cancel()
        waiting.cancel()
        await archiver.stop()
        if finished.done():
            finished.result()  # a failed archiver fails the process, which is restarted
        else:
            finished.cancel()
    finally:
        with contextlib.suppress(Exception):
            await nc.drain()
        await engine.dispose()


def main() -> None:
    """Archive until SIGTERM, with the ingest service's settings."""
    settings = Settings.load("ingest")
    telemetry.configure_logging(settings)
    asyncio.run(_serve(settings))


class ArchiveProcess:
    """The ingest service's handle on its archive process: start, watch, flush, stop.

    Args:
        settings: the ingest settings (the archive directory).
        nc: the service's NATS connection, for flush requests.
    """

    def __init__(self, settings: Settings, nc: Client) -> None:
        self._settings = settings
        self._nc = nc
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = False
        self.root = settings.effective_archive_dir.resolve()

    @property
    def root_uri(self) -> str:
        return self.root.as_uri()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def run(self) -> None:
        """Keep the archive process running; restart it when it dies."""
        while not self._stopping:
            # Spawned from the event loop's (main) thread: its death signal is tied to it.
            self._process = await asyncio.create_subprocess_exec(
                *die_with_parent([sys.executable, "-m", "prognos.ingest.archive_process"])
            )
            code = await self._process.wait()
            if self._stopping:
                return
            log.error("the archive process exited with code %s; restarting it", code)
            await asyncio.sleep(_RESTART_S)

    async def stop(self) -> None:
        """SIGTERM the archive process (it flushes what it holds) and wait for it."""
        self._stopping = True
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def sync(self, through_sequence: int, timeout: float) -> bool:  # noqa: ASYNC109
        """Ask the archive to hold every message up to ``through_sequence`` and every label.

        Returns:
            Whether it confirmed within ``timeout`` seconds.
        """
        request = json.dumps({"through": through_sequence, "wait_s": timeout}).encode()
        try:
            reply = await self._nc.request(SYNC_SUBJECT, request, timeout=timeout + 1.0)
        except Exception:  # no archive process answering (yet), or it did not in time
            log.warning("the archive did not answer a flush request", exc_info=True)
            return False
        answer: dict[str, Any] = json.loads(reply.data)
        return bool(answer.get("done"))


if __name__ == "__main__":
    main()
