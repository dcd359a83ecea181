"""Bus identities for tests: an authorized nats-server and connections as one identity."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from prognos.core import busauth
from prognos.core.natsserver import EmbeddedNats

__all__ = ["AuthorizedNats", "connect_as", "seed_of", "start_authorized_nats"]


def seed_of(data_dir: Path | str, identity: str) -> Path:
    """The seed file ``prognos up`` made for ``identity`` under ``data_dir``.

    Args:
        data_dir: The launcher's data directory.
        identity: A name from :data:`prognos.core.busauth.IDENTITIES`.

    Returns:
        ``<data_dir>/secrets/nats/<identity>.nk``.
    """
    return busauth.seed_path(busauth.identity_dir(Path(data_dir) / "secrets"), identity)


async def connect_as(url: str, seed: Path | None, **options: Any) -> Client:
    """Connect to ``url`` signed in with ``seed``, or with no credentials when it is None.

    Args:
        url: The server's client URL.
        seed: A seed file, or None for an anonymous connection.
        options: More options for :func:`nats.connect`.

    Returns:
        The connected client; close or drain it.
    """
    if seed is not None:
        options["nkeys_seed"] = str(seed)
    return await nats.connect(url, **options)


@dataclass(frozen=True)
class AuthorizedNats:
    """A nats-server started with the generated authorization, and every identity's seed.

    Attributes:
        server: The running server.
        seeds: Each identity's seed file.
    """

    server: EmbeddedNats
    seeds: dict[str, Path]

    @property
    def url(self) -> str:
        """The server's client URL."""
        return self.server.url

    @asynccontextmanager
    async def connect(
        self, identity: str | None, on_error: Callable[[Exception], Any] | None = None
    ) -> AsyncIterator[Client]:
        """Connect as ``identity`` (None: no credentials), without reconnecting; close after.

        Args:
            identity: A name from :data:`prognos.core.busauth.IDENTITIES`, or None.
            on_error: Told about every asynchronous error the server sends (a permissions
                violation, for one).

        Yields:
            The connected client.
        """

        async def error_cb(error: Exception) -> None:
            if on_error is not None:
                on_error(error)

        seed = self.seeds[identity] if identity is not None else None
        nc = await connect_as(
            self.url, seed, error_cb=error_cb, allow_reconnect=False, connect_timeout=2
        )
        try:
            yield nc
        finally:
            await nc.close()


def start_authorized_nats(directory: Path) -> AuthorizedNats:
    """Make every identity's seed under ``directory`` and start a server that knows them.

    Stop it with ``result.server.stop()``.

    Args:
        directory: Holds ``seeds/`` and the server's ``nats/`` data directory.

    Returns:
        The started server and the seeds.
    """
    seeds = busauth.ensure_identities(directory / "seeds")
    config = busauth.authorization_config(
        {name: busauth.public_key(path) for name, path in seeds.items()}
    )
    server = EmbeddedNats(directory / "nats", authorization=config).start()
    return AuthorizedNats(server, seeds)
