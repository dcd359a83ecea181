"""Pytest fixtures for real infrastructure; load with ``pytest_plugins``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from prognos.core.natsserver import EmbeddedNats

__all__ = ["nats_server", "nats_url"]


@pytest.fixture
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A fresh nats-server with JetStream on a free port and its own temporary store.

    A sync fixture, so it serves sync tests and tests on any event loop alike.
    """
    with EmbeddedNats(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture
def nats_url(nats_server: EmbeddedNats) -> str:
    """The client URL of :func:`nats_server`."""
    return nats_server.url
