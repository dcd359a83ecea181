"""A simulated turbofan fleet, its telemetry and tiny served models, for the inference tests.

Importable (tests load it by path) and runnable: ``python tests/helpers/inference_fleet.py
train OUT_DIR... [--seeds 1,2] [--window W] [--epochs E]`` trains a small 1D CNN per seed on
simulated run-to-failure units with the registry's training code and exports it for
serving into each ``OUT_DIR`` (``model.tflite``, ``preprocessing.json``,
``reference.json``), printing each export manifest as JSON. Training runs in a process of
its own so that the test process never loads TensorFlow.

The fleet follows the C-MAPSS layout (``unit``, ``cycle``, ``setting_1..3``, ``s1..s21``)
in two operating regimes; on the telemetry stream the same numbers travel as the channels
of the built-in turbofan asset type (``op_setting_1..3``, ``sensor_1..21``), so serving
exercises the mapping from training columns to channels.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

S = 1_000_000

#: (channel, unit, min, max) of the built-in turbofan asset type.
CHANNELS: tuple[tuple[str, str, float, float], ...] = (
    ("op_setting_1", "kft", -5.0, 60.0),
    ("op_setting_2", "1", -1.0, 2.0),
    ("op_setting_3", "1", 0.0, 150.0),
    ("sensor_1", "degR", 300.0, 1000.0),
    ("sensor_2", "degR", 300.0, 1500.0),
    ("sensor_3", "degR", 500.0, 3000.0),
    ("sensor_4", "degR", 500.0, 3000.0),
    ("sensor_5", "psi", 0.0, 100.0),
    ("sensor_6", "psi", 0.0, 100.0),
    ("sensor_7", "psi", 0.0, 1500.0),
    ("sensor_8", "rpm", 0.0, 5000.0),
    ("sensor_9", "rpm", 0.0, 20000.0),
    ("sensor_10", "1", 0.0, 10.0),
    ("sensor_11", "psi", 0.0, 200.0),
    ("sensor_12", "lb/s/psi", 0.0, 2000.0),
    ("sensor_13", "rpm", 0.0, 5000.0),
    ("sensor_14", "rpm", 0.0, 20000.0),
    ("sensor_15", "1", 0.0, 50.0),
    ("sensor_16", "1", 0.0, 1.0),
    ("sensor_17", "1", 0.0, 1000.0),
    ("sensor_18", "rpm", 0.0, 5000.0),
    ("sensor_19", "percent", 0.0, 200.0),
    ("sensor_20", "lb/s", 0.0, 200.0),
    ("sensor_21", "lb/s", 0.0, 200.0),
)
CHANNEL_NAMES = tuple(name for name, *_ in CHANNELS)
SETTINGS = ("setting_1", "setting_2", "setting_3")
SENSORS = tuple(f"s{i}" for i in range(1, 22))
COLUMNS = ("unit", "cycle", *SETTINGS, *SENSORS)

#: Training column -> telemetry channel.
COLUMN_TO_CHANNEL = {
    **{f"setting_{i}": f"op_setting_{i}" for i in range(1, 4)},
    **{f"s{i}": f"sensor_{i}" for i in range(1, 22)},
}

REGIMES = np.array([[0.0, 0.0, 100.0], [20.0, 0.70, 100.0]])
#: FD001-like levels of the 21 sensors in regime 0; regime 1 runs a little cooler.
LEVELS = np.array(
    [518.67, 642.5, 1590.0, 1408.0, 14.62, 21.61, 553.4, 2388.1, 9065.0, 1.3,
     47.5, 521.4, 2388.1, 8143.0, 8.44, 0.03, 392.0, 2388.0, 100.0, 38.8, 23.3]
)  # fmt: skip
REGIME_SCALE = np.array([1.0, 0.97])
CONSTANT = ("s1", "s5", "s6", "s10", "s16", "s18", "s19")
#: Noise std and wear amplitude (at failure) of the informative sensors, relative to level.
NOISE = 0.0008
WEAR = 0.004


def simulate_units(
    units: int,
    seed: int,
    *,
    life: tuple[int, int] = (80, 160),
    shift: dict[str, float] | None = None,
) -> Any:
    """Run-to-failure units as a pandas frame in the C-MAPSS layout.

    Args:
        units: How many engines.
        seed: Seed of everything random.
        life: Bounds of each engine's life in cycles.
        shift: Column -> offset in noise standard deviations, added to every row.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    blocks = []
    for unit in range(1, units + 1):
        length = int(rng.integers(life[0], life[1] + 1))
        blocks.append(_unit_rows(rng, unit, np.arange(1, length + 1), length, shift))
    frame = pd.DataFrame(np.concatenate(blocks), columns=list(COLUMNS))
    frame["unit"] = frame["unit"].astype(np.int64)
    frame["cycle"] = frame["cycle"].astype(np.int64)
    return frame


def _unit_rows(
    rng: np.random.Generator,
    unit: int,
    cycles: np.ndarray,
    length: int,
    shift: dict[str, float] | None,
) -> np.ndarray:
    n = len(cycles)
    regime = rng.integers(0, len(REGIMES), size=n)
    settings = REGIMES[regime] + rng.normal(0.0, [0.002, 0.0002, 0.0], size=(n, 3))
    wear = np.expm1(3.0 * cycles / length) / np.expm1(3.0)
    sensors = LEVELS[None, :] * REGIME_SCALE[regime][:, None]
    sign = np.where(np.arange(21) % 3 == 0, -1.0, 1.0)
    for j, name in enumerate(SENSORS):
        if name in CONSTANT:
            continue
        noise = NOISE * LEVELS[j]
        sensors[:, j] += sign[j] * WEAR * LEVELS[j] * wear + rng.normal(0.0, noise, n)
        if shift and name in shift:
            sensors[:, j] += shift[name] * noise
    return np.column_stack([np.full(n, unit), cycles, settings, sensors])


@dataclass
class SimulatedAsset:
    """One engine of a live fleet: where it is in its life, and its next readings."""

    asset_id: str
    life: int
    cycle: int
    rng: np.random.Generator

    def readings(self, rows: int, shift: dict[str, float] | None = None) -> np.ndarray:
        """The next ``rows`` cycles as ``(rows, 24)`` channel values (``CHANNEL_NAMES`` order)."""
        cycles = np.arange(self.cycle + 1, self.cycle + rows + 1)
        cycles = np.minimum(cycles, self.life)
        self.cycle = int(cycles[-1])
        block = _unit_rows(self.rng, 0, cycles, self.life, shift)
        return block[:, 2:]


def live_fleet(count: int, seed: int, *, prefix: str = "sim") -> list[SimulatedAsset]:
    """Engines at random points of their lives (their rows look like training rows)."""
    rng = np.random.default_rng(seed)
    fleet = []
    for i in range(count):
        life = int(rng.integers(80, 161))
        fleet.append(
            SimulatedAsset(
                f"{prefix}-{i:05d}",
                life,
                int(rng.integers(0, life - 34)),
                np.random.default_rng(seed * 100_003 + i),
            )
        )
    return fleet


def telemetry_batch(
    asset_id: str,
    values: np.ndarray,
    end_us: int,
    *,
    interval_us: int = S,
    asset_type: str = "",
    batch_id: str | None = None,
) -> Any:
    """A ``TelemetryBatch`` of ``values`` (rows x 24 channels) whose last row is at ``end_us``.

    With ``asset_type`` set it has the normalised shape ingest publishes on the TELEMETRY
    stream (``timestamps_us_le``, ``values_f64_le``, ``unit``); without, it is what a
    gateway sends.
    """
    from prognos.api.ingest.v1 import ingest_pb2

    rows = len(values)
    stamps = end_us - interval_us * np.arange(rows - 1, -1, -1, dtype=np.int64)
    batch = ingest_pb2.TelemetryBatch(
        batch_id=batch_id or uuid.uuid4().hex,
        asset_id=asset_id,
        timestamps_us_le=stamps.astype("<i8").tobytes(),
        asset_type=asset_type,
    )
    for j, (name, unit, _, _) in enumerate(CHANNELS):
        batch.channels.add(
            name=name, unit=unit, values_f64_le=np.ascontiguousarray(values[:, j], "<f8").tobytes()
        )
    return batch


def asset_token(asset_id: str) -> str:
    """The asset's token in a telemetry subject (ingest's escaping)."""
    safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
    return "".join(c if c in safe else "".join(f"%{b:02X}" for b in c.encode()) for c in asset_id)


def telemetry_subject(asset_type: str, asset_id: str) -> str:
    """``telemetry.<asset_type>.<asset token>``."""
    return f"telemetry.{asset_type}.{asset_token(asset_id)}"


def asset_type_proto(name: str = "turbofan") -> Any:
    """The turbofan asset type (30-cycle horizon) as an ``ingest.v1.AssetType``."""
    from prognos.api.ingest.v1 import ingest_pb2

    message = ingest_pb2.AssetType(name=name, display_name="Simulated turbofan")
    for channel, unit, low, high in CHANNELS:
        added = message.channels.add(name=channel, unit=unit, min_value=low, max_value=high)
        added.expected_interval.FromSeconds(1)
    message.horizon.cycles = 30
    return message


# --- served models --------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    """``sha256:<hex>`` of a file."""
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def alias_moved(
    asset_type: str,
    version: str,
    export_dir: Path,
    *,
    challenger: bool = False,
    previous: str = "",
    rollback: bool = False,
) -> Any:
    """The registry's ``AliasMoved`` for a model exported into ``export_dir``."""
    from prognos.api.registry.v1 import events_pb2, registry_pb2

    event = events_pb2.AliasMoved(
        alias=registry_pb2.MODEL_ALIAS_CHALLENGER
        if challenger
        else registry_pb2.MODEL_ALIAS_CHAMPION,
        asset_type=asset_type,
        from_model_version_id=previous,
        to_model_version_id=version,
        actor="user:test",
        reason="test",
        kind=(
            registry_pb2.ALIAS_CHANGE_KIND_ROLLED_BACK
            if rollback
            else registry_pb2.ALIAS_CHANGE_KIND_PROMOTED
        ),
    )
    for name in ("model.tflite", "preprocessing.json", "reference.json"):
        path = Path(export_dir) / name
        event.artifacts.add(
            name=name,
            uri=path.resolve().as_uri(),
            content_hash=file_sha256(path),
            size_bytes=path.stat().st_size,
        )
    return event


def envelope(message: Any, *, stream: str = "", version: int = 1) -> bytes:
    """``message`` in an ``Envelope``, as the registry's outbox relay publishes it."""
    from prognos.api import wire
    from prognos.api.common.v1.envelope_pb2 import Envelope

    env = Envelope(
        id=str(uuid.uuid4()),
        producer=wire.owner(wire.route(message).subjects[0]) or "",
        type=message.DESCRIPTOR.full_name,
        schema_version=1,
        stream=stream,
        version=version,
        actor="user:test",
    )
    env.payload.Pack(message)
    env.time.GetCurrentTime()
    return env.SerializeToString()


def train_and_export(
    out: Path, *, seed: int, window: int, epochs: int, units: int
) -> dict[str, Any]:
    """Train a small CNN on simulated units and export it for serving into ``out``."""
    from prognos.registry.training import TrainConfig, export_serving, train

    frame = simulate_units(units, seed)
    config = TrainConfig(
        window=window,
        epochs=epochs,
        batch=128,
        architecture="cnn",
        members=1,
        seed=seed,
        rul_clip=125.0,
        horizon_cycles=30.0,
        verification_samples=32,
    )
    trained = train(frame, config)
    info = export_serving(trained, out)
    preprocessing = json.loads((out / "preprocessing.json").read_text())
    return {"export": info.to_dict(), "features": preprocessing["features"]}


def _training_key(window: int, epochs: int, units: int) -> str:
    """Digest of everything a trained model depends on: the simulation and the training code."""
    import inspect

    training = Path(__file__).resolve().parents[2] / "services" / "registry" / "src"
    digest = hashlib.sha256()
    for part in (simulate_units, _unit_rows, train_and_export):
        digest.update(inspect.getsource(part).encode())
    constants = (REGIMES, LEVELS, REGIME_SCALE, CONSTANT, NOISE, WEAR, COLUMNS)
    digest.update(repr(constants).encode())
    for source in sorted((training / "prognos" / "registry" / "training").glob("*.py")):
        digest.update(source.read_bytes())
    digest.update(f"{window}:{epochs}:{units}".encode())
    return digest.hexdigest()[:16]


def trained_models(
    cache: Path, seeds: Sequence[int], *, window: int = 30, epochs: int = 1, units: int = 20
) -> list[Path]:
    """Export directories of one model per seed, trained once and cached under ``cache``.

    The models missing from the cache are trained in one process (TensorFlow loads once).
    """
    key = _training_key(window, epochs, units)
    targets = [Path(cache) / f"{key}-{seed}" for seed in seeds]
    missing = [
        (s, t) for s, t in zip(seeds, targets, strict=True) if not (t / "model.tflite").is_file()
    ]
    if missing:
        subprocess.run(
            [
                sys.executable,
                __file__,
                "train",
                *(str(t.with_name(t.name + ".partial")) for _, t in missing),
                f"--seeds={','.join(str(s) for s, _ in missing)}",
                f"--window={window}",
                f"--epochs={epochs}",
                f"--units={units}",
            ],
            check=True,
            capture_output=True,
        )
        for _, target in missing:
            target.with_name(target.name + ".partial").replace(target)
    return targets


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("train", help="train one model per seed into each OUT directory")
    cmd.add_argument("out", type=Path, nargs="+")
    cmd.add_argument("--seeds", default="1", help="comma-separated, one per OUT")
    cmd.add_argument("--window", type=int, default=30)
    cmd.add_argument("--epochs", type=int, default=1)
    cmd.add_argument("--units", type=int, default=20)
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(seeds) != len(args.out):
        parser.error("give one seed per output directory")
    for out, seed in zip(args.out, seeds, strict=True):
        out.mkdir(parents=True, exist_ok=True)
        result = train_and_export(
            out, seed=seed, window=args.window, epochs=args.epochs, units=args.units
        )
        print(json.dumps(result))


if __name__ == "__main__":
    main()
