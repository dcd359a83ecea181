"""Prediction messages from scores: one window gives the same message alone or in a batch."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from prognos.inference.scoring import AssetInfo, Scores, predictions


def scores_of(n: int) -> Scores:
    model: Any = SimpleNamespace(version="v1", preprocessing=SimpleNamespace(horizon_cycles=30.0))
    return Scores(
        model=model,
        inputs=np.zeros((n, 1, 1), np.float32),
        rul=np.linspace(10.0, 90.0, n),
        probability=np.linspace(0.9, 0.1, n),
        digests=[f"sha256:{i:064x}" for i in range(n)],
        explanations={},
    )


@pytest.mark.parametrize("n", [1, 16, 17, 40])
def test_each_window_gives_the_same_prediction_alone_or_in_a_batch(n: int) -> None:
    start = 1_700_000_000_123_456 + np.arange(n, dtype=np.int64) * 1_000_001
    end = start + 49_000_000
    assets = [AssetInfo(f"e{i}", "turbofan", "plant-1") for i in range(n)]
    batch = predictions(scores_of(n), assets, start, end, made_at_us=1)

    assert len(batch) == n
    for i, p in enumerate(batch):
        assert p.time.ToMicroseconds() == end[i]
        assert p.window.start_time.ToMicroseconds() == start[i]
        assert p.window.end_time.ToMicroseconds() == end[i] + 1  # the window's end is exclusive
        assert p.asset_id == f"e{i}" and p.model_version == "v1" and p.rul.cycles > 0
    last = n - 1
    alone = Scores(
        model=scores_of(1).model,
        inputs=np.zeros((1, 1, 1), np.float32),
        rul=scores_of(n).rul[last:],
        probability=scores_of(n).probability[last:],
        digests=scores_of(n).digests[last:],
        explanations={},
    )
    (single,) = predictions(alone, assets[last:], start[last:], end[last:], made_at_us=1)
    assert single == batch[last]
