"""Training of one asset type's RUL model in a plain function, with progress and cancellation."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Self

import keras
import numpy as np
import pandas as pd

from prognos.registry.training import tabular
from prognos.registry.training.data import CYCLE, RUL, SENSORS, SETTINGS, UNIT, add_rul
from prognos.registry.training.lives import (
    FAILED,
    censoring_weights,
    mode_targets,
    setting_decimals,
)
from prognos.registry.training.models import (
    MODE_OUTPUT,
    PROBABILITY_OUTPUT,
    RUL_OUTPUT,
    RecurrentOptions,
    build_networks,
)
from prognos.registry.training.preprocessing import Preprocessing, reference_distributions

ProgressCallback = Callable[[float, dict[str, Any]], None]
CancelledCheck = Callable[[], bool]

MODEL_FILE = "model.keras"
PREPROCESSING_FILE = "preprocessing.json"
REFERENCE_FILE = "reference.json"
TRAINING_FILE = "training.json"
WINDOWS_FILE = "verification_windows.npy"


class TrainingCancelledError(RuntimeError):
    """Training stopped because the caller asked for it."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run; the defaults are the measured choice for FD001.

    ``probability_weight`` weighs the failure-probability loss (binary cross-entropy) against
    the RUL loss (squared error on RUL / ``rul_clip``); ``members`` above one trains that
    many independently initialised networks and serves their mean; ``age_feature`` adds the
    row's cycle (cycles since the unit's life began) as an input. It measured better (see
    MODEL_CARD.md) but is off by default: it needs a server that reads preprocessing
    format 2. ``units``, ``layers``, ``pooling`` and ``dropout`` shape the recurrent trunks
    (``models.RecurrentOptions``); ``smoothing`` above zero smooths each feature along the
    window inside the network (``models.build_networks``), so serving is unchanged.
    """

    window: int = 50
    epochs: int = 15
    batch: int = 256
    lr: float = 2e-3
    architecture: str = "gru"
    seed: int = 0
    rul_clip: float = 125.0
    horizon_cycles: float = 30.0
    members: int = 3
    probability_weight: float = 0.05
    setting_decimals: tuple[int, ...] = (0, 2, 0)
    age_feature: bool = False
    verification_samples: int = 256
    units: int = 48
    layers: int = 1
    pooling: str = "last"
    dropout: float = 0.0
    smoothing: float = 0.0
    trees: int = 300
    leaves: int = 15
    depth: int = 6
    min_leaf: int = 20
    tree_lr: float = 0.05

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Inverse of ``to_dict``."""
        values = dict(data)
        values["setting_decimals"] = tuple(values["setting_decimals"])
        return cls(**values)


@dataclass
class TrainedModel:
    """A trained serving model with everything needed to use, save and export it."""

    model: keras.Model
    preprocessing: Preprocessing
    config: TrainConfig
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    reference: dict[str, Any] = field(default_factory=dict)
    verification_windows: np.ndarray = field(
        default_factory=lambda: np.zeros((0, 0, 0), np.float32)
    )

    def predict_windows(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RUL in cycles and failure probability, one each per window (1-D arrays)."""
        outputs = self.model.predict(np.asarray(windows, np.float32), batch_size=1024, verbose=0)
        return (
            np.asarray(outputs[RUL_OUTPUT], np.float64).reshape(-1),
            np.asarray(outputs[PROBABILITY_OUTPUT], np.float64).reshape(-1),
        )

    def predict_modes(self, windows: np.ndarray) -> np.ndarray:
        """``(n, modes)`` probability of each failure mode within the horizon (no modes: 0 wide)."""
        if not self.preprocessing.failure_modes:
            return np.zeros((len(windows), 0))
        outputs = self.model.predict(np.asarray(windows, np.float32), batch_size=1024, verbose=0)
        return np.asarray(outputs[MODE_OUTPUT], np.float64)

    def save(self, directory: str | Path) -> Path:
        """Write the model, preprocessing, reference distributions and training record."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save(path / MODEL_FILE)
        self.preprocessing.save(path / PREPROCESSING_FILE)
        (path / REFERENCE_FILE).write_text(json.dumps(self.reference) + "\n")
        record = {
            "config": self.config.to_dict(),
            "history": self.history,
            "train_seconds": self.train_seconds,
        }
        (path / TRAINING_FILE).write_text(json.dumps(record, indent=2) + "\n")
        np.save(path / WINDOWS_FILE, self.verification_windows)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Self:
        """Read a directory written by ``save``."""
        path = Path(directory)
        record = json.loads((path / TRAINING_FILE).read_text())
        return cls(
            model=keras.models.load_model(path / MODEL_FILE, compile=False),
            preprocessing=Preprocessing.load(path / PREPROCESSING_FILE),
            config=TrainConfig.from_dict(record["config"]),
            history=record["history"],
            train_seconds=float(record["train_seconds"]),
            reference=json.loads((path / REFERENCE_FILE).read_text()),
            verification_windows=np.load(path / WINDOWS_FILE),
        )


def predict_last_cycle(trained: TrainedModel, frame: pd.DataFrame) -> pd.DataFrame:
    """Predict at the last observed cycle of every unit in a (test) frame.

    Returns:
        One row per unit, in unit order: ``unit``, ``rul`` (cycles) and
        ``failure_probability``.
    """
    windows, units = trained.preprocessing.last_windows(frame)
    rul, probability = trained.predict_windows(windows)
    return pd.DataFrame({UNIT: units, "rul": rul, "failure_probability": probability})


def train(
    frame: pd.DataFrame,
    config: TrainConfig = TrainConfig(),
    progress: ProgressCallback | None = None,
    cancelled: CancelledCheck | None = None,
    *,
    sensors: Sequence[str] = SENSORS,
    settings: Sequence[str] = SETTINGS,
    failure_modes: Sequence[str] = (),
) -> TrainedModel:
    """Fit preprocessing and network on the lives of one asset type.

    Runs in the calling thread; a worker process calls it directly.

    Args:
        frame: Rows in the ``load_cmapss`` layout, every unit run to failure (``rul`` is
            added when missing), or the rows of ``lives.assemble``, whose censored lives
            (``failed`` 0) teach only what their bound on the RUL tells
            (``lives.censoring_weights``).
        config: Hyper-parameters.
        progress: Called with the fraction done (0..1) and the latest metrics after the
            preprocessing and after every epoch.
        cancelled: Polled after every batch; when it returns true, training stops.
        sensors: The condition channels (the C-MAPSS sensors by default).
        settings: The operating-setting channels; ``config.setting_decimals`` rounds them
            when it has one value per setting, otherwise a rounding is fitted to the data.
        failure_modes: The type's failure modes; with any, the model also learns each mode's
            probability within the horizon from the ``failure_mode`` column of the lives.

    Returns:
        The trained model.

    Raises:
        TrainingCancelledError: When ``cancelled`` returned true.
    """
    started = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    if RUL not in frame.columns:
        frame = add_rul(frame)
    decimals = config.setting_decimals
    if len(decimals) != len(settings):
        decimals = setting_decimals(frame, settings)
    preprocessing = Preprocessing.fit(
        frame,
        window=config.window,
        rul_clip=config.rul_clip,
        horizon_cycles=config.horizon_cycles,
        setting_decimals=decimals,
        sensors=sensors,
        settings=settings,
        age_column=CYCLE if config.age_feature else None,
    )
    if failure_modes:
        preprocessing = replace(preprocessing, failure_modes=tuple(failure_modes))
    windows, rul, failing = preprocessing.training_windows(frame)
    ordered = frame.sort_values([UNIT, CYCLE], kind="stable")  # the order of the windows
    modes = mode_targets(ordered, len(failure_modes), config.horizon_cycles)
    sample_weight: dict[str, np.ndarray] | None = None
    if FAILED in frame.columns and not frame[FAILED].all():
        rul_weight, probability_weight, failing = censoring_weights(
            ordered, config.rul_clip, config.horizon_cycles
        )
        sample_weight = {}
    if progress is not None:
        progress(0.0, {"windows": float(len(windows)), "units": float(frame[UNIT].nunique())})
    if cancelled is not None and cancelled():
        raise TrainingCancelledError("cancelled before the first epoch")
    if config.architecture == tabular.ARCHITECTURE:
        serving = tabular.fit_serving_model(
            windows,
            rul,
            failing,
            modes,
            rul_clip=config.rul_clip,
            options=tabular.TreeOptions(
                trees=config.trees,
                leaves=config.leaves,
                depth=config.depth,
                learning_rate=config.tree_lr,
                min_leaf=config.min_leaf,
                seed=config.seed,
            ),
            rul_weight=None if sample_weight is None else rul_weight,
            probability_weight=None if sample_weight is None else probability_weight,
            progress=None if progress is None else (lambda done: progress(done, {})),
        )
        return _trained(serving, preprocessing, config, [], started, frame, windows)

    networks = build_networks(
        config.architecture,
        config.window,
        len(preprocessing.input_columns),
        config.rul_clip,
        members=config.members,
        recurrent=RecurrentOptions(
            units=config.units,
            layers=config.layers,
            pooling=config.pooling,
            dropout=config.dropout,
        ),
        smoothing=config.smoothing,
        modes=len(failure_modes),
    )
    targets: dict[str, np.ndarray] = {}
    losses: dict[str, str] = {}
    weights: dict[str, float] = {}
    for m in range(networks.members):
        targets[f"m{m}_rul_scaled"] = (rul / config.rul_clip)[:, None]
        targets[f"m{m}_probability"] = failing[:, None]
        losses[f"m{m}_rul_scaled"] = "mse"
        losses[f"m{m}_probability"] = "binary_crossentropy"
        weights[f"m{m}_rul_scaled"] = 1.0
        weights[f"m{m}_probability"] = config.probability_weight
        if sample_weight is not None:
            sample_weight[f"m{m}_rul_scaled"] = rul_weight
            sample_weight[f"m{m}_probability"] = probability_weight
        if failure_modes:
            targets[f"m{m}_modes"] = modes
            losses[f"m{m}_modes"] = "binary_crossentropy"
            weights[f"m{m}_modes"] = config.probability_weight
            if sample_weight is not None:
                sample_weight[f"m{m}_modes"] = probability_weight
    steps = config.epochs * int(np.ceil(len(windows) / config.batch))
    schedule = keras.optimizers.schedules.CosineDecay(config.lr, decay_steps=max(steps, 1))
    networks.training.compile(
        optimizer=keras.optimizers.Adam(schedule), loss=losses, loss_weights=weights
    )
    reporter = _Reporter(config.epochs, progress, cancelled)
    networks.training.fit(
        windows,
        targets,
        sample_weight=sample_weight,
        batch_size=config.batch,
        epochs=config.epochs,
        shuffle=True,
        verbose=0,
        callbacks=[reporter],
    )
    if reporter.was_cancelled:
        raise TrainingCancelledError(f"cancelled after {len(reporter.history)} epochs")

    return _trained(
        networks.serving, preprocessing, config, reporter.history, started, frame, windows
    )


def _trained(
    serving: keras.Model,
    preprocessing: Preprocessing,
    config: TrainConfig,
    history: list[dict[str, float]],
    started: float,
    frame: pd.DataFrame,
    windows: np.ndarray,
) -> TrainedModel:
    rng = np.random.default_rng(config.seed)
    pick = rng.choice(
        len(windows), size=min(config.verification_samples, len(windows)), replace=False
    )
    return TrainedModel(
        model=serving,
        preprocessing=preprocessing,
        config=config,
        history=history,
        train_seconds=time.perf_counter() - started,
        reference=reference_distributions(frame, preprocessing, seed=config.seed),
        verification_windows=windows[np.sort(pick)],
    )


class _Reporter(keras.callbacks.Callback):
    """Reports progress per epoch and stops training when the caller cancels."""

    def __init__(
        self, epochs: int, progress: ProgressCallback | None, cancelled: CancelledCheck | None
    ) -> None:
        super().__init__()
        self._epochs = epochs
        self._progress = progress
        self._cancelled = cancelled
        self.was_cancelled = False
        self.history: list[dict[str, float]] = []

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._cancelled is not None and self._cancelled():
            self.was_cancelled = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        metrics = {"epoch": float(epoch + 1)}
        metrics.update({key: float(value) for key, value in (logs or {}).items()})
        self.history.append(metrics)
        if self._progress is not None and not self.was_cancelled:
            self._progress((epoch + 1) / self._epochs, metrics)
