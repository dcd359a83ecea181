"""A seeded fleet of centrifugal pumps whose bearings wear out: readings and failures.

Nothing here resembles C-MAPSS: the channels are a pump's (vibration, bearing temperature,
discharge pressure, flow, motor current), the time base is wall time every ten minutes, the
horizon is 48 hours, and the operating setting is the speed set point (two regimes, as a
pump on a two-speed drive runs). Bearing wear follows the usual shape: a long healthy phase,
then a defect that grows exponentially until the bearing seizes; vibration and temperature
rise with it, hydraulics suffer late. Pumps that are still healthy at the end are censored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from prognos.api.ingest.v1 import ingest_pb2

STEP_SECONDS = 600.0
HORIZON_HOURS = 48.0
CHANNELS: tuple[tuple[str, str, float, float], ...] = (
    ("speed_setpoint", "revolutions_per_minute", 0.0, 4000.0),
    ("vibration_rms", "millimeter / second", 0.0, 100.0),
    ("bearing_temperature", "degree_Celsius", -20.0, 200.0),
    ("discharge_pressure", "bar", 0.0, 40.0),
    ("flow_rate", "meter ** 3 / hour", 0.0, 500.0),
    ("motor_current", "ampere", 0.0, 400.0),
)
SETTINGS = ("speed_setpoint",)
FEATURES = tuple(name for name, *_ in CHANNELS if name not in SETTINGS)
MODES = ("bearing_wear", "seal_leak")


@dataclass(frozen=True)
class PumpFleet:
    """Readings (``time``, ``asset_id``, one column per channel) and confirmed failures."""

    readings: pd.DataFrame
    failures: pd.DataFrame


def pump_fleet(
    pumps: int = 12,
    *,
    failing: int | None = None,
    days: float = 12.0,
    seed: int = 0,
    start: str = "2026-01-01T00:00:00Z",
    prefix: str = "pump-",
) -> PumpFleet:
    """Simulate ``pumps`` pumps for up to ``days`` days each.

    Args:
        pumps: Fleet size.
        failing: How many of them wear out within the period (default: two thirds).
        days: Longest observation per pump.
        seed: Everything is drawn from this seed.
        start: When the first reading of every pump is taken.
        prefix: Asset ids are ``<prefix><n>``, n from 1.
    """
    rng = np.random.default_rng(seed)
    failing = (2 * pumps) // 3 if failing is None else failing
    origin = pd.Timestamp(start)
    steps_max = int(days * 86400 / STEP_SECONDS)
    frames: list[pd.DataFrame] = []
    failures: list[dict[str, object]] = []
    for n in range(1, pumps + 1):
        fails = n <= failing
        steps = int(rng.integers(steps_max // 2, steps_max)) if fails else steps_max
        t = np.arange(steps, dtype=np.float64)
        onset = steps * rng.uniform(0.35, 0.6)
        # Defect size: zero before the onset, then exponential growth to 1 at the seizure.
        growth = np.log(50.0) / max(steps - onset, 1.0)
        defect = np.where(t > onset, (np.exp(growth * (t - onset)) - 1.0) / 49.0, 0.0)
        if not fails:
            defect *= 0.0
        # Odd pumps wear their bearing (vibration and heat), even ones leak at the seal
        # (pressure and flow fall while the motor works harder).
        mode = MODES[(n + 1) % 2]
        bearing = defect if mode == "bearing_wear" else 0.0 * defect
        seal = defect if mode == "seal_leak" else 0.0 * defect
        high_speed = (np.floor(t / rng.integers(30, 90)) % 2).astype(bool)
        speed = np.where(high_speed, 2900.0, 1450.0) + rng.normal(0, 3, steps)
        load = speed / 2900.0
        vibration = 1.2 + 1.6 * load + 9.0 * bearing + 0.5 * seal + rng.normal(0, 0.15, steps)
        temperature = 38 + 18 * load + 35 * bearing + rng.normal(0, 0.6, steps)
        pressure = 3.0 + 6.5 * load**2 - 0.3 * bearing - 2.5 * seal + rng.normal(0, 0.08, steps)
        flow = 40 + 110 * load - 4 * bearing - 35 * seal + rng.normal(0, 1.5, steps)
        current = 22 + 48 * load**3 + 12 * bearing + 6 * seal + rng.normal(0, 0.7, steps)
        times = origin + pd.to_timedelta(t * STEP_SECONDS + rng.uniform(0, 60, steps), unit="s")
        frame = pd.DataFrame(
            {
                "time": times,
                "asset_id": f"{prefix}{n}",
                "speed_setpoint": speed,
                "vibration_rms": vibration,
                "bearing_temperature": temperature,
                "discharge_pressure": pressure,
                "flow_rate": flow,
                "motor_current": current,
            }
        )
        frames.append(frame)
        if fails:
            failures.append(
                {
                    "time": times[-1] + pd.Timedelta(minutes=5),
                    "asset_id": f"{prefix}{n}",
                    "failure_mode": mode,
                }
            )
    return PumpFleet(
        readings=pd.concat(frames, ignore_index=True),
        failures=pd.DataFrame(failures, columns=["time", "asset_id", "failure_mode"]),
    )


def asset_type(name: str = "pump") -> ingest_pb2.AssetType:
    """The pump type as a plant would register it: 10-minute readings, a 48-hour horizon."""
    kind = ingest_pb2.AssetType(
        name=name,
        display_name="Centrifugal pump (two-speed drive)",
        description="Process water pump; rolling-element bearings on the drive end.",
        failure_modes=[
            ingest_pb2.FailureMode(name="bearing_wear", description="Drive-end bearing seizes."),
            ingest_pb2.FailureMode(name="seal_leak", description="Mechanical seal leaks."),
        ],
    )
    for channel, unit, low, high in CHANNELS:
        kind.channels.add(
            name=channel,
            unit=unit,
            min_value=low,
            max_value=high,
            operating_setting=channel in SETTINGS,
        ).expected_interval.FromSeconds(int(STEP_SECONDS))
    kind.horizon.duration.FromSeconds(int(HORIZON_HOURS * 3600))
    return kind
