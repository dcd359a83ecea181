"""Signed checkpoints and exported copies of a chain, checked offline with a public key."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from prognos.cli.audit import COPY_FORMAT, verify_copy
from prognos.core import audit
from prognos.core.anchoring import (
    ChainHead,
    CheckpointSignatureError,
    sign_head,
    signing_payload,
    verify_checkpoint,
)
from prognos.core.auth import generate_signing_key, write_key_pair

KEY = generate_signing_key()


def _chain(n: int) -> list[audit.AuditEntry]:
    """A valid chain of ``n`` entries, built as ``audit.append`` builds them."""
    chain: list[audit.AuditEntry] = []
    prev = audit.GENESIS_HASH
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for seq in range(1, n + 1):
        draft = audit.AuditEntry(
            seq=seq,
            entry_id=str(uuid.uuid4()),
            at=start + timedelta(seconds=seq),
            actor=f"user:u{seq}",
            action="thing.done",
            subject=f"thing/{seq}",
            reason="because",
            trace_id=f"{seq:032x}",
            details={"n": seq, "name": "Zoë"},
            prev_hash=prev,
            hash="",
        )
        entry = audit.AuditEntry(**{**draft.__dict__, "hash": audit.compute_hash(draft.content())})
        chain.append(entry)
        prev = entry.hash
    return chain


def _copy(chain: list[audit.AuditEntry]) -> dict[str, Any]:
    """An export document as `prognos audit checkpoint` writes it."""
    last = chain[-1]
    head = ChainHead("ingest", last.seq, last.hash, datetime(2026, 2, 1, tzinfo=UTC))
    checkpoint = sign_head(KEY, head)
    return {
        "format": COPY_FORMAT,
        "service": "ingest",
        "checkpoint": {
            **json.loads(signing_payload(head)),
            "algorithm": checkpoint.algorithm,
            "key_id": checkpoint.key_id,
            "signature": base64.b64encode(checkpoint.signature).decode(),
        },
        "entries": [{**e.content(), "hash": e.hash} for e in chain],
    }


@pytest.fixture
def public_key(tmp_path: Path) -> Path:
    write_key_pair(KEY, tmp_path / "checkpoint.key", tmp_path / "checkpoint.pub")
    return tmp_path / "checkpoint.pub"


def test_a_signed_head_verifies_with_the_public_key() -> None:
    head = ChainHead("registry", 7, "ab" * 32, datetime.now(UTC))

    assert verify_checkpoint(KEY.public_key(), sign_head(KEY, head)).seq == 7


def test_a_signed_head_with_another_hash_does_not_verify() -> None:
    checkpoint = sign_head(KEY, ChainHead("registry", 7, "ab" * 32, datetime.now(UTC)))
    checkpoint.head.hash = "cd" * 32

    with pytest.raises(CheckpointSignatureError):
        verify_checkpoint(KEY.public_key(), checkpoint)


def test_a_signed_head_does_not_verify_with_another_key() -> None:
    checkpoint = sign_head(KEY, ChainHead("registry", 7, "ab" * 32, datetime.now(UTC)))

    with pytest.raises(CheckpointSignatureError):
        verify_checkpoint(generate_signing_key().public_key(), checkpoint)


def test_an_untouched_copy_verifies_offline(public_key: Path) -> None:
    verdict = verify_copy(_copy(_chain(5)), public_key)

    assert verdict.ok, verdict.problem
    assert (verdict.entries, verdict.checkpoint_seq) == (5, 5)


def test_a_copy_survives_a_json_round_trip(public_key: Path) -> None:
    document = json.loads(json.dumps(_copy(_chain(3)), indent=1, ensure_ascii=False))

    assert verify_copy(document, public_key).ok


def test_an_edited_entry_in_a_copy_is_named(public_key: Path) -> None:
    document = _copy(_chain(5))
    document["entries"][2]["details"]["n"] = 99

    verdict = verify_copy(document, public_key)

    assert not verdict.ok
    assert verdict.broken_seq == 3
    assert verdict.broken_entry_id == document["entries"][2]["entry_id"]
    assert "altered" in verdict.problem


def test_a_deleted_entry_in_a_copy_is_named(public_key: Path) -> None:
    document = _copy(_chain(5))
    del document["entries"][1]

    verdict = verify_copy(document, public_key)

    assert not verdict.ok and verdict.broken_seq == 3 and "gap" in verdict.problem


def test_reordered_entries_in_a_copy_are_named(public_key: Path) -> None:
    document = _copy(_chain(5))
    entries = document["entries"]
    entries[1], entries[2] = entries[2], entries[1]

    verdict = verify_copy(document, public_key)

    assert not verdict.ok and verdict.broken_seq == 3


def test_a_copy_cut_short_of_its_checkpoint_fails(public_key: Path) -> None:
    document = _copy(_chain(5))
    document["entries"].pop()

    verdict = verify_copy(document, public_key)

    assert not verdict.ok and "signed head 5" in verdict.problem


def test_a_rewritten_copy_with_a_moved_checkpoint_fails_its_signature(public_key: Path) -> None:
    forged = _chain(4)
    document = _copy(_chain(5))
    document["entries"] = [{**e.content(), "hash": e.hash} for e in forged]
    document["checkpoint"] = {**document["checkpoint"], "seq": 4, "hash": forged[-1].hash}

    verdict = verify_copy(document, public_key)

    assert not verdict.ok and "signature does not verify" in verdict.problem


def test_a_copy_checked_with_another_public_key_fails(tmp_path: Path) -> None:
    other = generate_signing_key()
    write_key_pair(other, tmp_path / "other.key", tmp_path / "other.pub")

    verdict = verify_copy(_copy(_chain(2)), tmp_path / "other.pub")

    assert not verdict.ok and "signature" in verdict.problem


def test_an_unreadable_copy_fails_without_raising(public_key: Path) -> None:
    document = copy.deepcopy(_copy(_chain(2)))
    del document["checkpoint"]["signature"]

    verdict = verify_copy(document, public_key)

    assert not verdict.ok and "unreadable" in verdict.problem
