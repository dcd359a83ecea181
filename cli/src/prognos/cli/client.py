"""Client channels to the services: the one place that knows how to reach and authenticate.

Every command, test and tool that calls a Prognos service opens its channel here, so that
transport security and credentials are added in one place.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from prognos.cli.launcher import RunInfo, run_file
from prognos.core import telemetry


class ServiceNotRunningError(LookupError):
    """The run file names no such service (is `prognos up` running?)."""


def address_of(info: RunInfo, service: str) -> str:
    """The ``host:port`` of a running service."""
    for record in info.services:
        if record.name == service:
            return record.address
    raise ServiceNotRunningError(f"{service} is not among the running services")


def read_run_info(data_dir: Path) -> RunInfo:
    """The run file that `prognos up` wrote in ``data_dir``."""
    path = run_file(data_dir)
    if not path.exists():
        raise ServiceNotRunningError(f"nothing is running on {data_dir} (no {path.name})")
    return RunInfo.read(path)


def open_channel(info: RunInfo, service: str, *, role: str = "admin") -> grpc.aio.Channel:
    """An async channel to ``service`` acting with ``role``.

    Args:
        info: what `prognos up` started (``read_run_info``, or the launcher's ``info``).
        service: ``ingest``, ``registry``, ``inference`` or ``scheduler``.
        role: the role to act with once access control is configured.

    Returns:
        A traced ``grpc.aio.Channel``; close it (``async with``) when done.
    """
    del role  # access control attaches credentials for the role here
    return telemetry.insecure_channel(address_of(info, service))
