"""``prognos up`` / ``prognos status`` as a user runs them: real processes, signals and gRPC."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from prognos.cli.certs import DevSecrets
from prognos.core.config import SERVICES
from prognos.core.natsserver import free_port, probe_nats
from prognos.core.testing import wait_until
from prognos.core.tls import channel_credentials

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
TINY = "tiny_grpc_service"


@dataclass
class Up:
    """A running ``prognos up`` and where it writes."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    output: Path
    env: dict[str, str]

    @property
    def run_file(self) -> Path:
        return self.data_dir / "run.json"

    def text(self) -> str:
        return self.output.read_text(errors="replace")


def _env(**extra: str) -> dict[str, str]:
    # The user's PROGNOS_* must not leak in: PROGNOS_NATS_URL would point at a shared server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROGNOS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HELPERS), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _prognos(*args: str) -> list[str]:
    return [sys.executable, "-m", "prognos.cli.main", *args]


def _tiny(*names: str) -> list[str]:
    return [arg for name in names for arg in ("--service", f"{name}={TINY}")]


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")  # a zombie holds nothing and counts as gone
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _processes_using(data_dir: Path) -> list[int]:
    """Live processes whose command line or environment names ``data_dir``."""
    needle = str(data_dir).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in blob and not _pid_gone(int(entry.name)):
            found.append(int(entry.name))
    return found


def _log(up: Up, service: str) -> str:
    path = up.data_dir / "logs" / f"{service}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _health(address: str, data_dir: Path) -> str:
    # `prognos up` serves mutual TLS with the development CA it made in the data directory.
    secrets = DevSecrets(data_dir / "secrets")
    credentials = channel_credentials(secrets.ca_cert, secrets.client_cert, secrets.client_key)
    with grpc.secure_channel(address, credentials) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=2
        )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


StartUp = Callable[..., Up]


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[StartUp]:
    """Start ``prognos up`` on a fresh data directory; whatever happens, leave nothing behind."""
    started: list[Up] = []

    def start(*args: str, **env: str) -> Up:
        data_dir = tmp_path / "data"
        output = tmp_path / "up.out"
        with output.open("wb") as out:
            process = subprocess.Popen(
                _prognos("up", "--data-dir", str(data_dir), *args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_env(**env),
            )
        started.append(Up(process, data_dir, output, _env(**env)))
        return started[-1]

    yield start
    for up in started:
        if up.process.poll() is None:
            up.process.send_signal(signal.SIGINT)
            try:
                up.process.wait(30)
            except subprocess.TimeoutExpired:
                up.process.kill()
                up.process.wait(5)
        for pid in _processes_using(up.data_dir):
            os.kill(pid, signal.SIGKILL)


def _wait_running(up: Up, timeout: float) -> dict[str, object]:
    def running() -> bool:
        if up.process.poll() is not None:
            raise RuntimeError(f"prognos up exited with {up.process.returncode}:\n{up.text()}")
        return up.run_file.exists()

    try:
        wait_until(running, timeout=timeout, interval=0.1, message="run.json written")
    except AssertionError as error:
        raise AssertionError(f"{error}; prognos up said:\n{up.text()}") from None
    document: dict[str, object] = json.loads(up.run_file.read_text())
    return document


def _stops_cleanly(up: Up, document: dict[str, object]) -> None:
    services = document["services"]
    assert isinstance(services, list)
    pids = [int(s["pid"]) for s in services] + [int(str(document["nats_pid"]))]
    children = [int(p) for p in _processes_using(up.data_dir)]
    assert set(pids) <= set(children), "every recorded pid runs with this data dir"

    up.process.send_signal(signal.SIGINT)

    assert up.process.wait(30) == 0, up.text()
    wait_until(
        lambda: all(_pid_gone(pid) for pid in pids + children),
        timeout=10,
        message="every child and nats-server gone",
    )
    assert _processes_using(up.data_dir) == []
    assert not up.run_file.exists()
    assert "prognos stopped" in up.text()


def _serves(up: Up, names: tuple[str, ...], timeout: float) -> None:
    document = _wait_running(up, timeout)
    services = document["services"]
    assert isinstance(services, list)
    assert [s["name"] for s in services] == list(names)
    assert len({s["address"] for s in services}) == len(names), "one port per service"
    for service in services:
        assert _health(service["address"], up.data_dir) == "SERVING"
        assert Path(service["log"]).is_file()
    nats_url = str(document["nats_url"])
    assert nats_url != "nats://127.0.0.1:4222" and probe_nats(nats_url)

    status = subprocess.run(
        _prognos("status", "--data-dir", str(up.data_dir)),
        env=up.env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert status.returncode == 0, status.stdout + status.stderr
    for name in names:
        assert name in status.stdout
    assert status.stdout.count("SERVING") == len(names)
    _stops_cleanly(up, document)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_up_serves_the_four_services_then_sigint_leaves_no_process(start_up: StartUp) -> None:
    up = start_up("--timeout", "240")

    _serves(up, SERVICES, timeout=260)


def test_a_failed_migration_stops_everything_and_shows_its_output(start_up: StartUp) -> None:
    up = start_up(*_tiny("ingest", "registry"), TINY_SERVICE_FAIL="registry:migrate")

    assert up.process.wait(90) == 1, up.text()

    assert "registry: migrate failed with exit code 3" in up.text()
    assert "schema upgrade failed on purpose" in up.text()
    assert not up.run_file.exists()
    wait_until(lambda: _processes_using(up.data_dir) == [], timeout=10, message="no process left")


@pytest.mark.slow
def test_a_crashed_service_stops_everything_and_shows_its_log(start_up: StartUp) -> None:
    up = start_up(*_tiny("ingest", "registry"), TINY_SERVICE_FAIL="registry:later")
    document = _wait_running(up, timeout=100)
    services = document["services"]
    assert isinstance(services, list)
    pids = [int(s["pid"]) for s in services] + [int(str(document["nats_pid"]))]

    (up.data_dir / "registry.crash").touch()

    assert up.process.wait(60) == 1, up.text()
    assert "registry exited (code 5)" in up.text()
    assert "crashing on purpose" in up.text()
    wait_until(lambda: all(_pid_gone(pid) for pid in pids), timeout=10, message="all pids gone")
    assert _processes_using(up.data_dir) == []
    assert not up.run_file.exists()


def test_sigint_while_starting_stops_everything(start_up: StartUp) -> None:
    up = start_up(*_tiny("ingest", "registry"), TINY_SERVICE_FAIL="registry:hang")
    wait_until(
        lambda: "ingest: SERVING" in up.text() and "hanging on purpose" in _log(up, "registry"),
        timeout=60,
        interval=0.1,
        message="ingest serving while registry hangs",
    )
    children = _processes_using(up.data_dir)
    assert len(children) >= 3, "nats-server and both services run"

    up.process.send_signal(signal.SIGINT)

    assert up.process.wait(30) == 0, up.text()
    wait_until(lambda: all(_pid_gone(pid) for pid in children), timeout=10, message="all gone")
    assert _processes_using(up.data_dir) == []
    assert not up.run_file.exists()


def test_an_unreachable_nats_url_fails_before_anything_starts(start_up: StartUp) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    up = start_up(*_tiny("ingest"), "--nats-url", dead)

    assert up.process.wait(60) == 1, up.text()

    assert f"no NATS server answers at {dead}" in up.text()
    assert not (up.data_dir / "logs" / "ingest.log").exists(), "nothing was started"


def test_status_fails_when_nothing_runs(tmp_path: Path) -> None:
    status = subprocess.run(
        _prognos("status", "--data-dir", str(tmp_path)),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert status.returncode == 1
    assert "Nothing is running" in status.stdout


def test_status_fails_when_a_service_does_not_answer(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    (tmp_path / "run.json").write_text(
        json.dumps(
            {
                "data_dir": str(tmp_path),
                "launcher_pid": os.getpid(),
                "started_at": "2026-01-01T00:00:00+00:00",
                "nats_url": f"nats://127.0.0.1:{free_port()}",
                "nats_pid": None,
                "services": [{"name": "ingest", "address": dead, "pid": 1, "log": "-"}],
            }
        )
    )

    status = subprocess.run(
        _prognos("status", "--data-dir", str(tmp_path), "--timeout", "1"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert status.returncode == 1
    assert "UNAVAILABLE" in status.stdout and "UNREACHABLE" in status.stdout
