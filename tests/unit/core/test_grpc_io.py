"""Every Prognos process picks gRPC's I/O before grpc is loaded, and a set value wins."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from prognos.core import grpc_io

ENTRY_POINTS = [
    "prognos.ingest.__main__",
    "prognos.registry.__main__",
    "prognos.inference.__main__",
    "prognos.scheduler.__main__",
    "prognos.cli.main",
]


def test_an_unset_variable_gets_the_poller() -> None:
    environ: dict[str, str] = {}
    assert grpc_io.apply(environ) == grpc_io.POLLER
    assert environ == {grpc_io.VARIABLE: grpc_io.POLLER}


@pytest.mark.parametrize("value", ["", "-event_engine_client", "event_engine_client"])
def test_a_value_the_operator_set_is_kept(value: str) -> None:
    environ = {grpc_io.VARIABLE: value}
    assert grpc_io.apply(environ) == value
    assert environ == {grpc_io.VARIABLE: value}


def test_applying_after_grpc_was_loaded_says_it_is_too_late(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import grpc  # noqa: F401  (loaded, as it is in this process)

    monkeypatch.delenv(grpc_io.VARIABLE, raising=False)
    with pytest.warns(RuntimeWarning, match="imported before prognos.core.grpc_io"):
        grpc_io.apply()


def test_this_suite_set_the_io_before_it_loaded_grpc() -> None:
    # sys.modules keeps the order in which imports began: tests/conftest.py must come first.
    loaded = list(sys.modules)
    assert loaded.index("prognos.core.grpc_io") < loaded.index("grpc")
    assert grpc_io.VARIABLE in os.environ


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_each_entry_point_sets_the_io_before_it_loads_grpc(module: str) -> None:
    # -X importtime lists each module as its import completes, nested ones first.
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    order = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line]
    assert "grpc" in order, f"{module} does not load grpc: the check means nothing"
    assert order.index("prognos.core.grpc_io") < order.index("grpc")
