"""``prognos bus-keys``: the NATS identities (nkey seeds) and the server's authorization file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prognos.core import busauth
from prognos.core.config import SERVICES, Settings

__all__ = ["SEED_NAME", "bus_keys", "write_bus_identities"]

SEED_NAME = "nats.nk"
"""A service's seed file in its own directory under ``--services-dir``."""

_DATA_DIR_HELP = "Data directory (default: $PROGNOS_DATA_DIR, else .prognos)."


def write_bus_identities(
    out: Path,
    *,
    services_dir: Path | None = None,
    server_config: Path | None = None,
    rotate: tuple[str, ...] = (),
) -> dict[str, Path]:
    """Make every missing bus identity, keep the others, and write the server's file.

    Args:
        out: Where the seeds live: ``<out>/nats/<identity>.nk`` (``prognos up``'s layout).
        services_dir: Put each service's seed in ``<services_dir>/<service>/nats.nk``
            instead, so that a deployment hands each service its own directory alone;
            the command line's and the observer's stay under ``out``.
        server_config: Where to write the ``authorization`` block for nats-server (public
            keys only); default ``<out>/nats/authorization.conf``.
        rotate: Identities whose seed is replaced by a new one (the old one stops working
            once the servers reload the file).

    Returns:
        Each identity's seed file.
    """
    unknown = set(rotate) - set(busauth.IDENTITIES)
    if unknown:
        raise ValueError(f"unknown bus identities: {', '.join(sorted(unknown))}")
    seeds: dict[str, Path] = {}
    for identity in busauth.IDENTITIES:
        if services_dir is not None and identity in SERVICES:
            path = services_dir / identity / SEED_NAME
        else:
            path = busauth.seed_path(busauth.identity_dir(out), identity)
        if identity in rotate:
            path.unlink(missing_ok=True)
        if not path.is_file():
            # ensure_identities writes <dir>/<identity>.nk owner-only; move it into place.
            made = busauth.ensure_identities(path.parent / ".new", [identity])[identity]
            made.replace(path)
            made.parent.rmdir()
        seeds[identity] = path
    target = server_config or busauth.identity_dir(out) / "authorization.conf"
    target.parent.mkdir(parents=True, exist_ok=True)
    config = busauth.authorization_config(
        {name: busauth.public_key(path) for name, path in seeds.items()}
    )
    partial = target.with_suffix(".partial")
    partial.write_text(config)
    partial.replace(target)
    return seeds


def bus_keys(
    out: Annotated[
        Path | None,
        typer.Option(help="Directory to write to (default: <data dir>/secrets)."),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help=_DATA_DIR_HELP)] = None,
    services_dir: Annotated[
        Path | None,
        typer.Option(
            help="Put each service's seed in DIR/<service>/nats.nk instead, so that a "
            "deployment can give each service its own directory alone.",
            metavar="DIR",
        ),
    ] = None,
    server_config: Annotated[
        Path | None,
        typer.Option(
            help="Where to write nats-server's authorization block (public keys only; "
            "default: <out>/nats/authorization.conf).",
            metavar="FILE",
        ),
    ] = None,
    rotate: Annotated[
        list[str] | None,
        typer.Option(help="Replace this identity's seed; repeat. Reload the servers after."),
    ] = None,
) -> None:
    """Make each NATS identity's nkey seed, unless it exists, and nats-server's authorization.

    Prints each identity's seed file, never a seed.
    """
    target = out or Settings.load("cli", **({"data_dir": data_dir} if data_dir else {})).secrets_dir
    try:
        seeds = write_bus_identities(
            target,
            services_dir=services_dir,
            server_config=server_config,
            rotate=tuple(rotate or ()),
        )
    except ValueError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    for identity, path in seeds.items():
        typer.echo(f"{identity:<11} {path}")
