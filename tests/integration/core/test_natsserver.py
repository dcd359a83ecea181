"""The embedded nats-server: real processes, real JetStream, no port assumptions."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from prognos.core.config import Settings
from prognos.core.natsserver import (
    EmbeddedNats,
    NatsServerError,
    connect_or_embed,
    find_nats_server,
    free_port,
    probe_nats,
)
from prognos.core.testing import assert_eventually, wait_until


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it holds no port or file, so it counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_finds_the_binary_shipped_with_the_environment() -> None:
    binary = find_nats_server()

    assert binary.name == "nats-server"
    assert os.access(binary, os.X_OK)


async def test_serves_jetstream_on_a_free_port(nats_server: EmbeddedNats) -> None:
    assert nats_server.port != 4222
    assert nats_server.url == f"nats://127.0.0.1:{nats_server.port}"
    nc = await nats.connect(nats_server.url, connect_timeout=2)
    try:
        js = nc.jetstream()
        await js.add_stream(name="PROBE", subjects=["probe.>"])

        ack = await js.publish("probe.one", b"hello", timeout=2)

        assert (ack.stream, ack.seq) == ("PROBE", 1)
        assert (await js.get_msg("PROBE", 1)).data == b"hello"
    finally:
        await nc.close()
    assert any(nats_server.store_dir.rglob("PROBE")), "stream is not stored in store_dir"
    assert nats_server.log_path.is_file()


async def test_two_servers_run_side_by_side_on_different_ports(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path / "a") as first, EmbeddedNats(tmp_path / "b") as second:
        assert first.port != second.port
        assert first.pid != second.pid
        assert probe_nats(first.url) and probe_nats(second.url)


async def test_async_stop_leaves_no_process(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path) as server:
        pid, url = server.pid, server.url

    assert not server.running
    await assert_eventually(lambda: _pid_gone(pid), timeout=5, message=f"pid {pid} gone")
    assert not probe_nats(url)


def test_sync_start_stop_leaves_no_process(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path).start()
    pid = server.pid
    assert probe_nats(server.url)

    server.stop()
    server.stop()  # idempotent

    wait_until(lambda: _pid_gone(pid), timeout=5, message=f"pid {pid} gone")


def test_stop_kills_a_server_that_ignores_sigterm(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path, stop_timeout=0.5).start()
    pid = server.pid
    os.kill(pid, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM

    server.stop()

    wait_until(lambda: _pid_gone(pid), timeout=5, message=f"pid {pid} gone")


def test_a_taken_port_fails_clearly_and_leaves_no_process(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    clash = EmbeddedNats(tmp_path, port=nats_server.port)

    with pytest.raises(NatsServerError, match="exited with code"):
        clash.start()

    assert not clash.running


async def test_connect_or_embed_uses_a_configured_url_and_starts_nothing(tmp_path: Path) -> None:
    settings = Settings.load("test", data_dir=tmp_path, nats_url="nats://127.0.0.1:1")

    async with connect_or_embed(settings) as endpoint:
        assert endpoint.url == "nats://127.0.0.1:1"
        assert endpoint.server is None and endpoint.pid is None

    assert not (tmp_path / "nats").exists()


async def test_connect_or_embed_runs_a_server_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings.load("test", data_dir=tmp_path)

    async with connect_or_embed(settings) as endpoint:
        assert endpoint.pid is not None
        assert probe_nats(endpoint.url)
        assert endpoint.server is not None
        assert endpoint.server.store_dir == (tmp_path / "nats" / "jetstream").resolve()
        pid = endpoint.pid

    await assert_eventually(lambda: _pid_gone(pid), timeout=5, message=f"pid {pid} gone")


def test_free_port_is_bindable() -> None:
    port = free_port()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


async def test_assert_eventually_reports_the_last_error_on_timeout() -> None:
    calls = 0

    def never() -> None:
        nonlocal calls
        calls += 1
        raise AssertionError(f"attempt {calls}")

    with pytest.raises(AssertionError, match=r"thing not met within 0.2s .*attempt"):
        await assert_eventually(never, timeout=0.2, interval=0.01, message="thing")
    assert calls > 1


async def test_assert_eventually_returns_the_first_truthy_result() -> None:
    values = iter([0, [], 7])

    async def next_value() -> int | list[int]:
        return next(values)

    assert await assert_eventually(next_value, timeout=2, interval=0.01) == 7


def test_a_server_does_not_outlive_a_killed_parent(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from prognos.core.natsserver import EmbeddedNats\n"
        "server = EmbeddedNats(sys.argv[1]).start()\n"
        "print(server.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert not _pid_gone(pid)

        parent.kill()  # no chance to clean up
        parent.wait(10)

        wait_until(lambda: _pid_gone(pid), timeout=10, message=f"orphaned pid {pid} gone")
    finally:
        parent.kill()
        parent.wait(10)
