"""`prognos bus-keys` keeps identities, rotates the named ones, and writes public keys only."""

from __future__ import annotations

from pathlib import Path

import pytest

from prognos.cli.buskeys import SEED_NAME, write_bus_identities
from prognos.core import busauth


def _keys(seeds: dict[str, Path]) -> dict[str, str]:
    return {name: busauth.public_key(path) for name, path in seeds.items()}


def test_each_service_gets_its_seed_in_its_own_directory(tmp_path: Path) -> None:
    config = tmp_path / "nats" / "authorization.conf"
    seeds = write_bus_identities(tmp_path / "issuer", services_dir=tmp_path, server_config=config)
    assert seeds["ingest"] == tmp_path / "ingest" / SEED_NAME
    assert seeds[busauth.CLI_IDENTITY].is_relative_to(tmp_path / "issuer")
    text = config.read_text()
    for path in seeds.values():
        assert busauth.public_key(path) in text
        assert path.read_text().strip() not in text
        assert path.stat().st_mode & 0o777 == 0o600


def test_a_second_run_keeps_every_seed_and_rotate_replaces_only_the_named(
    tmp_path: Path,
) -> None:
    first = _keys(write_bus_identities(tmp_path))
    assert _keys(write_bus_identities(tmp_path)) == first
    rotated = _keys(write_bus_identities(tmp_path, rotate=("inference",)))
    assert rotated["inference"] != first["inference"]
    assert {k: v for k, v in rotated.items() if k != "inference"} == {
        k: v for k, v in first.items() if k != "inference"
    }
    config = (busauth.identity_dir(tmp_path) / "authorization.conf").read_text()
    assert rotated["inference"] in config and first["inference"] not in config


def test_an_unknown_identity_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nobody"):
        write_bus_identities(tmp_path, rotate=("nobody",))
