"""Run NATS and the services as child processes: the engine of ``prognos up`` and ``status``."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Self

import grpc
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from prognos.cli._tables import AsJson, Column, Wide, echo_json, listing, print_table
from prognos.cli.certs import DevSecrets, ensure_dev_secrets
from prognos.core import busauth
from prognos.core.config import SERVICES, Settings
from prognos.core.natsserver import (
    NatsEndpoint,
    NatsServerError,
    connect_or_embed,
    die_with_parent,
    free_port,
    probe_nats,
)
from prognos.core.tls import channel_credentials, client_credentials

__all__ = [
    "DEFAULT_SERVICES",
    "RUN_FILE",
    "ExitedProcess",
    "LaunchError",
    "Launcher",
    "ProgressCallback",
    "RunInfo",
    "ServiceHealth",
    "ServiceRecord",
    "ServiceSpec",
    "check_service",
    "pid_alive",
    "run_file",
    "status",
    "up",
]

RUN_FILE = "run.json"
_POLL_S = 0.1
_INFO_MODULE = "prognos.api.common.v1.info_pb2_grpc"

ProgressCallback = Callable[[str, str], None]
"""Called with (process name, state) as the launcher moves along; "nats" names NATS."""


@dataclass(frozen=True)
class ServiceSpec:
    """A service to launch: ``python -m <module> migrate`` then ``python -m <module> serve``."""

    name: str
    module: str

    @classmethod
    def parse(cls, text: str) -> ServiceSpec:
        """Read ``name`` (module ``prognos.<name>``) or ``name=module``."""
        name, _, module = text.partition("=")
        return cls(name.strip(), module.strip() or f"prognos.{name.strip()}")


DEFAULT_SERVICES: tuple[ServiceSpec, ...] = tuple(ServiceSpec.parse(name) for name in SERVICES)


class LaunchError(RuntimeError):
    """A step of the launch failed; ``detail`` holds what the failing process said."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


@dataclass(frozen=True)
class ServiceRecord:
    """One running service, as written to ``run.json``."""

    name: str
    address: str
    pid: int
    log: str


@dataclass(frozen=True)
class RunInfo:
    """What ``prognos up`` started, as written to ``<data_dir>/run.json``."""

    data_dir: str
    launcher_pid: int
    started_at: str
    nats_url: str
    nats_pid: int | None
    services: tuple[ServiceRecord, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document."""
        return asdict(self)

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> RunInfo:
        """Read the JSON document back."""
        services = tuple(ServiceRecord(**item) for item in document.get("services", ()))
        return cls(**{**document, "services": services})

    def write(self, path: Path) -> None:
        """Write atomically, so a reader never sees half a file."""
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        partial.replace(path)

    @classmethod
    def read(cls, path: Path) -> RunInfo:
        """Load a run file written by :meth:`write`."""
        return cls.from_dict(json.loads(path.read_text()))


@dataclass(frozen=True)
class ExitedProcess:
    """A child that exited while it should have been running."""

    name: str
    returncode: int | None
    log: Path | None


@dataclass(frozen=True)
class ServiceHealth:
    """What a service said when asked: its health status and, if it answers, its version."""

    status: str
    version: str | None = None

    @property
    def serving(self) -> bool:
        """Whether the service reported SERVING."""
        return self.status == "SERVING"


def run_file(data_dir: Path) -> Path:
    """The run file of ``data_dir``."""
    return data_dir / RUN_FILE


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (and is not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _open(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    if credentials is None:
        return grpc.aio.insecure_channel(address)
    return grpc.aio.secure_channel(address, credentials)


async def check_service(
    address: str, timeout_s: float = 2.0, *, credentials: grpc.ChannelCredentials | None = None
) -> ServiceHealth:
    """Ask a service for its overall health (``grpc.health.v1``) and its version.

    The version comes from ``InfoService.GetInfo`` when the API ships it, the service
    implements it and the credentials allow it; otherwise it is None. Each call waits at
    most ``timeout_s`` seconds.

    Args:
        address: ``host:port``.
        timeout_s: Seconds per call.
        credentials: TLS (and token) credentials; plaintext when ``None``.
    """
    async with _open(address, credentials) as channel:
        status = await _health(channel, timeout_s)
        version = await _version(channel, timeout_s) if status == "SERVING" else None
    return ServiceHealth(status, version)


async def _health(channel: grpc.aio.Channel, timeout_s: float) -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def _version(channel: grpc.aio.Channel, timeout_s: float) -> str | None:
    try:
        info_grpc = importlib.import_module(_INFO_MODULE)
        info_pb2 = importlib.import_module(_INFO_MODULE.removesuffix("_grpc"))
    except ImportError:
        return None
    try:
        reply = await info_grpc.InfoServiceStub(channel).GetInfo(
            info_pb2.GetInfoRequest(), timeout=timeout_s
        )
    except grpc.aio.AioRpcError:
        return None
    return str(reply.version) or None


_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")
_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "[::1]", "localhost")
_LOCALHOST = "localhost"
_PORT_TRIES = 20


def _dialable(host: str, port: int) -> str:
    """``host:port`` that another process can connect to.

    Loopback and wildcard binds are reached as ``localhost``: TLS clients that follow
    RFC 6066 (Node, for one) refuse an IP address as a server name, and the development
    certificates name ``localhost``.
    """
    if host in _WILDCARD_HOSTS or host in _LOOPBACK_HOSTS:
        host = _LOCALHOST
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _bind_host(host: str) -> str:
    """Where a service listens: a loopback host becomes ``localhost``, both loopbacks.

    gRPC resolves ``localhost`` to ``::1`` and ``127.0.0.1`` and tries them in turn, on the
    client side and when binding, so a server bound to ``localhost`` listens wherever a
    client of ``localhost`` knocks, and still only on loopback.
    """
    return _LOCALHOST if host in _LOOPBACK_HOSTS else host


def _free_on_ipv6_loopback(port: int) -> bool:
    """Whether ``[::1]:port`` is free (or the host has no IPv6 loopback to clash on)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(("::1", port))
    except OSError as error:
        return error.errno != errno.EADDRINUSE
    return True


def _free_loopback_port() -> int:
    """A port free on both loopbacks a moment ago, so that ``localhost`` reaches one server.

    gRPC binds ``localhost`` even when only one of its addresses is free; a client trying
    ``::1`` first would then meet whoever holds that port there.
    """
    port = free_port("127.0.0.1")
    for _ in range(_PORT_TRIES):
        if _free_on_ipv6_loopback(port):
            break
        port = free_port("127.0.0.1")
    return port


def _log_tail(path: Path, lines: int = 30, start: int = 0) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(start)
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    log_start: int = 0


class Launcher:
    """Starts NATS (embedded unless configured), migrates and serves each service.

    Every child runs in its own process group with the launcher's environment plus
    ``PROGNOS_DATA_DIR``, ``PROGNOS_NATS_URL``, ``PROGNOS_SERVICE`` and every service's
    ``PROGNOS_<SVC>_GRPC_HOST`` / ``_GRPC_PORT`` / ``_ADDRESS``, writing to
    ``<data_dir>/logs/<svc>.log``.
    A port configured for a service is used; otherwise a free one is picked.

    Unless TLS or a token key is configured (production files), the launcher creates the
    development secrets under ``<data_dir>/secrets`` (``ensure_dev_secrets``) and points
    the children at them: mutual TLS, role tokens and signed audit checkpoints by default.

    The embedded nats-server always runs with authorization: the launcher keeps one nkey
    seed per bus identity under ``<data_dir>/secrets/nats`` (``busauth.ensure_identities``),
    starts the server with their public keys and permissions, and hands each service only
    its own seed (``PROGNOS_NATS_NKEY_SEED_FILE``). A configured ``nats_url`` is the
    operator's server, with its own identities (``PROGNOS_<SVC>_NATS_NKEY_SEED_FILE``).

    Use it as an async context manager, or call :meth:`start` and, always, :meth:`stop`.
    Cancelling :meth:`start` is safe: :meth:`stop` still finds every child.

    Args:
        settings: Launcher settings; ``data_dir`` and ``nats_url`` are used.
        services: The services to run, in start order.
        python: The interpreter for the children.
        start_timeout: Seconds for every service to report SERVING.
        migrate_timeout: Seconds for all migrations together.
        stop_timeout: Seconds between SIGTERM and SIGKILL.
        on_progress: Told about each step, for a display.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        services: Sequence[ServiceSpec] = DEFAULT_SERVICES,
        python: str = sys.executable,
        start_timeout: float = 120.0,
        migrate_timeout: float = 120.0,
        stop_timeout: float = 10.0,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self._data_dir = settings.data_dir.resolve()
        self._settings = settings.model_copy(update={"data_dir": self._data_dir})
        self._services = tuple(services)
        self._python = python
        self._start_timeout = start_timeout
        self._migrate_timeout = migrate_timeout
        self._stop_timeout = stop_timeout
        self._progress = on_progress or (lambda name, state: None)
        self._stack = contextlib.AsyncExitStack()
        self._nats: NatsEndpoint | None = None
        self._migrations: list[_Child] = []
        self._children: list[_Child] = []
        self._info: RunInfo | None = None
        self._secrets: DevSecrets | None = None
        self._probe_credentials: grpc.ChannelCredentials | None = None
        self._bus_seeds: dict[str, Path] = {}

    @property
    def data_dir(self) -> Path:
        """The absolute data directory."""
        return self._data_dir

    @property
    def run_path(self) -> Path:
        """Where the run file is written."""
        return run_file(self._data_dir)

    @property
    def info(self) -> RunInfo | None:
        """What is running, once :meth:`start` succeeded."""
        return self._info

    @property
    def secrets(self) -> DevSecrets | None:
        """The development secrets in use, once started; ``None`` with production files."""
        return self._secrets

    async def __aenter__(self) -> Self:
        succeeded = False
        try:
            await self.start()
            succeeded = True
        finally:
            if not succeeded:
                await self.stop()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> RunInfo:
        """Start NATS, run each migration, start each service and wait until all serve.

        Returns:
            What runs where; also written to ``run.json``.

        Raises:
            LaunchError: Something is already running on this data directory, a migration
                failed, or a service died or did not report SERVING in time.
        """
        self._refuse_if_running()
        (self._data_dir / "logs").mkdir(parents=True, exist_ok=True)

        self._progress("nats", "starting")
        self._nats = await self._stack.enter_async_context(
            connect_or_embed(self._settings, authorization=self._bus_authorization())
        )
        if self._nats.server is None and not probe_nats(self._nats.url, timeout=2.0):
            raise LaunchError(f"no NATS server answers at {self._nats.url}")
        self._progress("nats", "ready" if self._nats.server else "external")

        addresses = self._assign_addresses()
        env = self._environment(self._nats.url, addresses)
        env.update(self._credentials(addresses))
        await self._migrate(env)
        for spec in self._services:
            self._children.append(self._spawn(spec, "serve", env, truncate=False))
            self._progress(spec.name, "starting")
        await self._wait_serving(addresses)

        self._info = RunInfo(
            data_dir=str(self._data_dir),
            launcher_pid=os.getpid(),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            nats_url=self._nats.url,
            nats_pid=self._nats.pid,
            services=tuple(
                ServiceRecord(
                    name=child.name,
                    address=_dialable(*addresses[child.name]),
                    pid=child.process.pid,
                    log=str(child.log),
                )
                for child in self._children
            ),
        )
        self._info.write(self.run_path)
        return self._info

    async def wait_for_exit(self) -> ExitedProcess:
        """Return as soon as a service or the embedded NATS stops running."""
        while True:
            for child in self._children:
                code = child.process.poll()
                if code is not None:
                    return ExitedProcess(child.name, code, child.log)
            server = self._nats.server if self._nats else None
            if server is not None and not server.running:
                return ExitedProcess("nats", None, server.log_path)
            await asyncio.sleep(_POLL_S)

    async def stop(self) -> None:
        """SIGTERM every child's group, SIGKILL what is left at the deadline, stop NATS.

        Safe to call more than once, and after a failed or cancelled start.
        """
        children = self._migrations + self._children
        for child in children:
            _signal_group(child.process, signal.SIGTERM)
        deadline = time.monotonic() + self._stop_timeout
        # A child's exit is not an awaitable event here: poll it against the deadline.
        while any(_group_alive(c.process) for c in children) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for child in children:
            if _group_alive(child.process):
                _signal_group(child.process, signal.SIGKILL)
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(self._stop_timeout)
        self._migrations.clear()
        self._children.clear()
        await self._stack.aclose()
        self._nats = None
        if self._info is not None:
            with contextlib.suppress(FileNotFoundError):
                self.run_path.unlink()
            self._info = None

    # -- steps ----------------------------------------------------------------------------

    def _refuse_if_running(self) -> None:
        path = self.run_path
        if not path.exists():
            return
        with contextlib.suppress(ValueError, TypeError, KeyError, OSError):
            previous = RunInfo.read(path)
            if previous.launcher_pid != os.getpid() and pid_alive(previous.launcher_pid):
                raise LaunchError(
                    f"prognos is already running on {self._data_dir} "
                    f"(launcher pid {previous.launcher_pid}); stop it first"
                )
        path.unlink(missing_ok=True)  # left behind by a launcher that was killed

    def _assign_addresses(self) -> dict[str, tuple[str, int]]:
        addresses: dict[str, tuple[str, int]] = {}
        for spec in self._services:
            configured = Settings.load(spec.name)
            host = _bind_host(configured.grpc_host)
            if configured.grpc_port:
                port = configured.grpc_port
            elif host == _LOCALHOST:
                port = _free_loopback_port()
            else:
                port = free_port(host)
            addresses[spec.name] = (host, port)
        return addresses

    def _bus_authorization(self) -> str | None:
        """Make the bus identities for an embedded server; None for a configured one."""
        if self._settings.nats_url:
            self._bus_seeds = {}
            return None
        self._bus_seeds = busauth.ensure_identities(
            busauth.identity_dir(self._settings.secrets_dir)
        )
        return busauth.authorization_config(
            {name: busauth.public_key(path) for name, path in self._bus_seeds.items()}
        )

    def _own_environment(self, service: str) -> dict[str, str]:
        """What only this child is told: its own bus identity's seed file."""
        seed = self._bus_seeds.get(service)
        return {"PROGNOS_NATS_NKEY_SEED_FILE": str(seed)} if seed is not None else {}

    def _credentials(self, addresses: dict[str, tuple[str, int]]) -> dict[str, str]:
        """Set up TLS and tokens; return the variables that point the children at them."""
        configured = self._settings
        if configured.tls_enabled or configured.auth_public_key_file:
            # Production files, passed on through the inherited environment.
            self._probe_credentials = client_credentials(configured)
            return {}
        hosts = sorted({host for host, _ in addresses.values()})
        self._secrets = ensure_dev_secrets(
            configured.secrets_dir, [spec.name for spec in self._services], hosts=hosts
        )
        self._probe_credentials = channel_credentials(
            self._secrets.ca_cert, self._secrets.client_cert, self._secrets.client_key
        )
        return self._secrets.service_environment(spec.name for spec in self._services)

    def _environment(self, nats_url: str, addresses: dict[str, tuple[str, int]]) -> dict[str, str]:
        # Children inherit the launcher's environment, so any PROGNOS_* the user set applies.
        env = dict(os.environ)
        env.update(
            PROGNOS_DATA_DIR=str(self._data_dir),
            PROGNOS_NATS_URL=nats_url,
            PYTHONUNBUFFERED="1",
        )
        # Every child learns every service's address, so peers can find each other.
        for name, (host, port) in addresses.items():
            env[f"PROGNOS_{name.upper()}_GRPC_HOST"] = host
            env[f"PROGNOS_{name.upper()}_GRPC_PORT"] = str(port)
            env[f"PROGNOS_{name.upper()}_ADDRESS"] = _dialable(host, port)
        return env

    def _spawn(
        self, spec: ServiceSpec, verb: str, env: dict[str, str], *, truncate: bool
    ) -> _Child:
        log = self._data_dir / "logs" / f"{spec.name}.log"
        with open(log, "wb" if truncate else "ab") as fh:
            start = fh.tell()
            process = subprocess.Popen(
                die_with_parent([self._python, "-m", spec.module, verb]),
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**env, **self._own_environment(spec.name), "PROGNOS_SERVICE": spec.name},
                # Own group: a terminal's Ctrl-C reaches only the launcher, which stops the
                # children in order; die_with_parent covers a launcher that was killed.
                process_group=0,
            )
        return _Child(spec.name, process, log, start)

    async def _migrate(self, env: dict[str, str]) -> None:
        for spec in self._services:
            self._migrations.append(self._spawn(spec, "migrate", env, truncate=True))
            self._progress(spec.name, "migrating")
        deadline = time.monotonic() + self._migrate_timeout
        pending = list(self._migrations)
        while pending:
            for child in list(pending):
                code = child.process.poll()
                if code is None:
                    continue
                pending.remove(child)
                if code != 0:
                    raise LaunchError(
                        f"{child.name}: migrate failed with exit code {code} (log {child.log})",
                        _log_tail(child.log, start=child.log_start),
                    )
                self._progress(child.name, "migrated")
            if pending and time.monotonic() > deadline:
                names = ", ".join(child.name for child in pending)
                raise LaunchError(f"migrate did not finish in {self._migrate_timeout:g}s: {names}")
            await asyncio.sleep(_POLL_S)
        self._migrations.clear()

    async def _wait_serving(self, addresses: dict[str, tuple[str, int]]) -> None:
        channels = {
            name: _open(_dialable(host, port), self._probe_credentials)
            for name, (host, port) in addresses.items()
        }
        try:
            deadline = time.monotonic() + self._start_timeout
            waiting = {child.name: child for child in self._children}
            last: dict[str, str] = {}
            while waiting:
                for name, child in list(waiting.items()):
                    code = child.process.poll()
                    if code is not None:
                        raise LaunchError(
                            f"{name} exited with code {code} before serving (log {child.log})",
                            _log_tail(child.log, start=child.log_start),
                        )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    stuck = ", ".join(f"{n} ({last.get(n, 'no answer')})" for n in waiting)
                    raise LaunchError(
                        f"not SERVING within {self._start_timeout:g}s: {stuck}",
                        "\n\n".join(
                            f"== {c.log} ==\n{_log_tail(c.log, start=c.log_start)}"
                            for c in waiting.values()
                        ),
                    )
                names = list(waiting)
                statuses = await asyncio.gather(
                    *(_health(channels[n], min(1.0, max(remaining, 0.1))) for n in names)
                )
                for name, status in zip(names, statuses, strict=True):
                    if status != last.get(name):
                        self._progress(name, status)
                    last[name] = status
                    if status == "SERVING":
                        del waiting[name]
                if waiting:
                    await asyncio.sleep(_POLL_S)
        finally:
            for channel in channels.values():
                await channel.close()


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    if process.poll() is not None and not _group_alive(process):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _group_alive(process: subprocess.Popen[bytes]) -> bool:
    """Whether the child, or anything it started in its group, still runs."""
    if process.poll() is None:
        return True
    try:
        os.killpg(process.pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


# -- commands ---------------------------------------------------------------------------

_DATA_DIR_HELP = "Data directory (default: $PROGNOS_DATA_DIR, else .prognos)."
_FINAL_STATES = {"SERVING", "ready", "external", "migrated"}


def _settings(data_dir: Path | None, nats_url: str | None = None) -> Settings:
    overrides: dict[str, Any] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if nats_url:
        overrides["nats_url"] = nats_url
    return Settings.load("prognos", **overrides)


class _StartDisplay:
    """A live table of each process's state on a terminal; plain lines elsewhere."""

    def __init__(self, console: Console, names: Sequence[str]) -> None:
        self._console = console
        self._states = {"nats": "waiting", **dict.fromkeys(names, "waiting")}
        self._live = (
            Live(self._render(), console=console, transient=True, refresh_per_second=8)
            if console.is_terminal
            else None
        )

    def update(self, name: str, state: str) -> None:
        self._states[name] = state
        if self._live is not None:
            self._live.update(self._render())
        else:
            self._console.print(f"{name}: {state}", markup=False, highlight=False)

    def __enter__(self) -> Self:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()

    def _render(self) -> Table:
        table = Table(title="Starting prognos", show_header=False, box=None)
        for name, state in self._states.items():
            mark: RenderableType = (
                Text("✓", style="green") if state in _FINAL_STATES else Spinner("dots")
            )
            table.add_row(mark, name, state)
        return table


def _run_table(info: RunInfo, width: int | None = None) -> Table:
    columns = (Column("Service"), Column("Address", ident=True), Column("PID"), Column("Log"))
    rows = [(r.name, r.address, str(r.pid), r.log) for r in info.services]
    nats_pid = str(info.nats_pid) if info.nats_pid is not None else "external"
    rows.append(("nats", info.nats_url, nats_pid, ""))
    return listing("prognos is running", columns, rows, width=width)


def _print_failure(console: Console, message: str, detail: str) -> None:
    console.print(Text(f"error: {message}", style="bold red"))
    if detail:
        console.print(Panel(Text(detail), title="log tail", border_style="red"))


async def _up(settings: Settings, specs: Sequence[ServiceSpec], start_timeout_s: float) -> int:
    console = Console()
    task = asyncio.current_task()
    assert task is not None
    interrupted = False
    stopping = False

    def on_signal(sig: signal.Signals) -> None:
        nonlocal interrupted
        if interrupted or stopping:
            console.print(f"{sig.name}: already stopping")
            return
        interrupted = True
        console.print(f"{sig.name}: stopping")
        task.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)

    display = _StartDisplay(console, [spec.name for spec in specs])
    launcher = Launcher(
        settings, services=specs, start_timeout=start_timeout_s, on_progress=display.update
    )
    code = 0
    try:
        with display:
            info = await launcher.start()
        console.print(_run_table(info, console.width))
        console.print(f"Run file {launcher.run_path}. Press Ctrl-C to stop.", highlight=False)
        exited = await launcher.wait_for_exit()
        detail = _log_tail(exited.log) if exited.log else ""
        _print_failure(
            console, f"{exited.name} exited (code {exited.returncode}); stopping all", detail
        )
        code = 1
    except (LaunchError, NatsServerError) as error:
        _print_failure(console, str(error), getattr(error, "detail", ""))
        code = 1
    except asyncio.CancelledError:
        if not interrupted:
            raise
        task.uncancel()
    finally:
        stopping = True
        await launcher.stop()
        console.print("prognos stopped")
    return code


def up(
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
    nats_url: Annotated[
        str | None,
        typer.Option(help="Use this NATS instead of an embedded one (default: $PROGNOS_NATS_URL)."),
    ] = None,
    service: Annotated[
        list[str] | None,
        typer.Option(help="Run only this service (NAME or NAME=MODULE); repeat. Default: all."),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds for every service to serve.")] = 120.0,
) -> None:
    """Start NATS and the services, wait until each one serves, and run until Ctrl-C."""
    specs = tuple(ServiceSpec.parse(s) for s in service) if service else DEFAULT_SERVICES
    raise typer.Exit(asyncio.run(_up(_settings(data_dir, nats_url), specs, timeout)))


async def _check_all(info: RunInfo, timeout_s: float) -> list[ServiceHealth]:
    from prognos.cli.client import credentials_for, secrets_of

    # Health is open to any TLS client; the version (InfoService) needs a token.
    credentials = credentials_for(secrets_of(info), role="auditor")
    return list(
        await asyncio.gather(
            *(check_service(s.address, timeout_s, credentials=credentials) for s in info.services)
        )
    )


def status(
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each answer.")] = 2.0,
    as_json: AsJson = False,
    wide: Wide = False,
) -> None:
    """Show what `prognos up` runs and whether it serves; exit 1 unless all is well.

    --wide adds each service's log file.
    """
    console = Console()
    path = run_file(_settings(data_dir).data_dir.resolve())
    try:
        info = RunInfo.read(path)
    except FileNotFoundError:
        console.print(f"Nothing is running (no {path}).", highlight=False)
        raise typer.Exit(1) from None
    except (ValueError, TypeError, KeyError) as error:
        console.print(f"Unreadable run file {path}: {error}", highlight=False)
        raise typer.Exit(1) from None

    healths = asyncio.run(_check_all(info, timeout))
    nats_ok = probe_nats(info.nats_url, timeout=timeout)
    launcher_ok = pid_alive(info.launcher_pid)

    healthy = launcher_ok and nats_ok and all(h.serving for h in healths)
    if as_json:
        echo_json(
            {
                "data_dir": info.data_dir,
                "healthy": healthy,
                "launcher": {"pid": info.launcher_pid, "alive": launcher_ok},
                "nats": {"url": info.nats_url, "pid": info.nats_pid, "reachable": nats_ok},
                "services": [
                    {
                        "name": record.name,
                        "address": record.address,
                        "pid": record.pid,
                        "health": health.status,
                        "version": health.version,
                        "log": record.log,
                    }
                    for record, health in zip(info.services, healths, strict=True)
                ],
            }
        )
        raise typer.Exit(0 if healthy else 1)
    columns = (
        Column("Service"),
        Column("Address", ident=True),
        Column("PID", justify="right"),
        Column("Health"),
        Column("Version"),
        Column("Log", wide=True),
    )
    rows: list[tuple[str, str, str, RenderableType, str, str]] = []
    for record, health in zip(info.services, healths, strict=True):
        style = "green" if health.serving else "red"
        rows.append(
            (
                record.name,
                record.address,
                str(record.pid),
                Text(health.status, style=style),
                health.version or "-",
                record.log,
            )
        )
    nats_pid = str(info.nats_pid) if info.nats_pid is not None else "external"
    nats_state = Text("reachable", "green") if nats_ok else Text("UNREACHABLE", "red")
    rows.append(("nats", info.nats_url, nats_pid, nats_state, "-", ""))
    table = listing(f"prognos on {info.data_dir}", columns, rows, wide=wide, width=console.width)
    print_table(console, table, wide=wide)
    if not launcher_ok:
        console.print(
            Text(f"The launcher (pid {info.launcher_pid}) is gone: stale run file.", "red")
        )
    healthy = launcher_ok and nats_ok and all(h.serving for h in healths)
    raise typer.Exit(0 if healthy else 1)
