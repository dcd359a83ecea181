"""Assets to replicas by rendezvous hashing: balanced, and only the leaver's assets move."""

from __future__ import annotations

from collections import Counter

from prognos.inference.membership import owner

ASSETS = [f"plant-{i % 7}/engine-{i}" for i in range(3_000)]


def test_assets_spread_evenly_over_the_replicas() -> None:
    members = ("a", "b", "c")
    counts = Counter(owner(members, asset) for asset in ASSETS)
    assert set(counts) == set(members)
    assert min(counts.values()) > 0.8 * len(ASSETS) / 3


def test_a_replica_leaving_moves_only_its_own_assets() -> None:
    before = {asset: owner(("a", "b", "c"), asset) for asset in ASSETS}
    after = {asset: owner(("a", "c"), asset) for asset in ASSETS}
    moved = [asset for asset in ASSETS if before[asset] != after[asset]]
    assert moved and all(before[asset] == "b" for asset in moved)
    assert len(moved) == sum(1 for owner_ in before.values() if owner_ == "b")


def test_a_replica_joining_takes_a_share_from_every_other() -> None:
    before = {asset: owner(("a", "b"), asset) for asset in ASSETS}
    after = {asset: owner(("a", "b", "c"), asset) for asset in ASSETS}
    moved = [asset for asset in ASSETS if before[asset] != after[asset]]
    assert all(after[asset] == "c" for asset in moved)
    assert {before[asset] for asset in moved} == {"a", "b"}


def test_owners_do_not_depend_on_the_order_of_members() -> None:
    assert all(owner(("a", "b", "c"), x) == owner(("c", "a", "b"), x) for x in ASSETS[:200])
    assert owner((), "anything") is None
