"""Synthetic run-to-failure fleets in the C-MAPSS layout, small enough for fast tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import pytest

from prognos.registry.training.data import COLUMNS, SENSORS

CONSTANT_SENSORS = ("s1", "s5", "s10", "s16", "s18", "s19")
SINGLE_REGIME = ((0.0, 0.0, 100.0),)
SIX_REGIMES = (
    (0.0, 0.0, 100.0),
    (10.0, 0.25, 100.0),
    (20.0, 0.70, 100.0),
    (25.0, 0.62, 60.0),
    (35.0, 0.84, 100.0),
    (42.0, 0.84, 100.0),
)


def synthetic_fleet(
    units: int,
    seed: int,
    regimes: Sequence[tuple[float, float, float]] = SINGLE_REGIME,
    life: tuple[int, int] = (60, 120),
) -> pd.DataFrame:
    """Units that degrade exponentially to failure; each row runs in a random regime.

    Every sensor has a regime-dependent level (sensors in ``CONSTANT_SENSORS`` carry only
    that level), informative sensors add noise and a wear term that grows toward failure,
    and the operating settings jitter around their regime's values as in C-MAPSS.
    """
    rng = np.random.default_rng(seed)
    regime_levels = rng.normal(0.0, 50.0, size=(len(regimes), len(SENSORS))) + 500.0
    wear_sign = rng.choice([-1.0, 1.0], size=len(SENSORS))
    rows = []
    for unit in range(1, units + 1):
        length = int(rng.integers(life[0], life[1] + 1))
        cycle = np.arange(1, length + 1)
        wear = np.expm1(3.0 * cycle / length) / np.expm1(3.0)
        regime = rng.integers(0, len(regimes), size=length)
        settings = np.asarray(regimes, dtype=np.float64)[regime]
        settings = settings + rng.normal(0.0, [0.002, 0.0002, 0.0], size=settings.shape)
        sensors = regime_levels[regime].copy()
        for j, name in enumerate(SENSORS):
            if name not in CONSTANT_SENSORS:
                sensors[:, j] += wear_sign[j] * 4.0 * wear + rng.normal(0.0, 0.5, length)
        block = np.column_stack([np.full(length, unit), cycle, settings, sensors])
        rows.append(block)
    frame = pd.DataFrame(np.concatenate(rows), columns=list(COLUMNS))
    frame["unit"] = frame["unit"].astype(np.int64)
    frame["cycle"] = frame["cycle"].astype(np.int64)
    return frame


@pytest.fixture
def fleet() -> Callable[..., pd.DataFrame]:
    """The ``synthetic_fleet`` factory."""
    return synthetic_fleet


@pytest.fixture
def six_regimes() -> tuple[tuple[float, float, float], ...]:
    """Operating settings of six regimes, like those of C-MAPSS FD002."""
    return SIX_REGIMES


@pytest.fixture
def constant_sensors() -> tuple[str, ...]:
    """Sensors of the synthetic fleet that only follow the regime."""
    return CONSTANT_SENSORS


@pytest.fixture(scope="session")
def units() -> pd.DataFrame:
    """Six short run-to-failure units in one regime, shared by the tests that train."""
    return synthetic_fleet(6, seed=11, life=(40, 70))
