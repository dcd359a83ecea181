"""Pytest fixtures for real infrastructure; load with ``pytest_plugins``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from prognos.core.natsserver import EmbeddedNats
from prognos.core.testing.identities import AuthorizedNats, start_authorized_nats

__all__ = ["authorized_nats", "nats_server", "nats_url"]


@pytest.fixture
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A fresh nats-server with JetStream on a free port and its own temporary store.

    It runs without authentication, on purpose: it serves tests about something else
    (stores, relays, consumers). Tests of who may publish what use :func:`authorized_nats`,
    and the end-to-end tests run the launcher's server, which always requires identities.
    A sync fixture, so it serves sync tests and tests on any event loop alike.
    """
    with EmbeddedNats(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture
def nats_url(nats_server: EmbeddedNats) -> str:
    """The client URL of :func:`nats_server`."""
    return nats_server.url


@pytest.fixture
def authorized_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthorizedNats]:
    """A fresh nats-server with the bus identities' authorization, as ``prognos up`` runs it.

    Every identity of :data:`prognos.core.busauth.IDENTITIES` has a seed; connect with
    ``authorized_nats.connect(identity)``.
    """
    authorized = start_authorized_nats(tmp_path_factory.mktemp("authorized-nats"))
    try:
        yield authorized
    finally:
        authorized.server.stop()
