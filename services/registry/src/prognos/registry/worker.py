"""``python -m prognos.registry.worker train|evaluate|verify SPEC``: TensorFlow work off the server.

The registry never trains, evaluates or loads a model in its own process (it serves gRPC
from one event loop). It writes a JSON spec, starts this module as a child process, and
reads JSON lines from the child's standard output:

* ``{"type": "progress", "phase": ..., "progress": 0..1, "epoch": n, "total_epochs": n,
  "metrics": {...}}`` while working,
* then exactly one of ``{"type": "result", ...}`` (exit 0), ``{"type": "error", "message":
  ...}`` (exit 1) or ``{"type": "cancelled"}`` (exit 3).

Anything else the libraries print goes to standard error, which the server keeps in a log
file. SIGTERM stops the child: during training after the batch in progress, at once otherwise.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prognos.registry.training.trainer import TrainConfig

Emit = Callable[[dict[str, Any]], None]

EXIT_ERROR = 1
EXIT_CANCELLED = 3

#: How a run is evaluated, besides the model's own hyper-parameters: units held out of the
#: training file (seeded), and the NASA-style cuts made of each held-out unit (seeded). The
#: defaults are those of tests/benchmarks/bench_training.py, so the numbers compare.
EVALUATION_DEFAULTS: dict[str, int] = {
    "holdout_units": 20,
    "split_seed": 7,
    "test_seed": 11,
    "truncations": 5,
    "folds": 5,
}
#: The model families a type other than the turbofan chooses among by cross-validation
#: (``training.selection``) unless its run names an ``architecture``.
DEFAULT_FAMILIES = ("cnn", "gbt")
#: Data selection: ``max_units`` > 0 keeps only the first that many units (quick runs).
DATA_DEFAULTS: dict[str, int] = {"max_units": 0}

#: The files of a trained version, as stored in the artifact store.
BUNDLE_FILES = (
    "model.keras",
    "preprocessing.json",
    "reference.json",
    "training.json",
    "verification_windows.npy",
)
SERVING_FILES = ("saved_model.tar", "model.tflite", "export.json")
EVALUATION_FILES = (
    "evaluation.json",
    "evaluation_report.png",
    "evaluation_test.txt",
    "evaluation_truth.txt",
)
#: The evaluation files of a model of any other asset type: the held-out cuts as Parquet.
LIVES_EVALUATION_FILES = ("evaluation.json", "evaluation_report.png", "evaluation_cuts.parquet")
#: Fewest confirmed failures (failed lives) a type other than the turbofan needs for a
#: supervised model, unless the spec says (``supervised_min_failures``); below, a health model.
SUPERVISED_MIN_FAILURES = 5


class CancelledError(Exception):
    """The server asked the worker to stop."""


def _coerce(value: str, default: Any) -> Any:
    if isinstance(default, bool):
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    if isinstance(default, tuple):
        parsed = json.loads(value)
        if not isinstance(parsed, list):
            raise ValueError(f"not a JSON list: {value!r}")
        return tuple(parsed)
    return value


def _text(value: Any) -> str:
    return json.dumps(list(value)) if isinstance(value, tuple) else str(value)


def parse_hyperparameters(
    raw: dict[str, str], *, horizon_cycles: float | None
) -> tuple[TrainConfig, dict[str, int], dict[str, int]]:
    """Split text hyper-parameters into the model's config, the evaluation and the data.

    Raises:
        ValueError: an unknown name, or a value of the wrong type.
    """
    from prognos.registry.training.trainer import TrainConfig

    config = TrainConfig()
    if horizon_cycles is not None and "horizon_cycles" not in raw:
        config = replace(config, horizon_cycles=float(horizon_cycles))
    evaluation = dict(EVALUATION_DEFAULTS)
    data = dict(DATA_DEFAULTS)
    names = {f.name for f in fields(TrainConfig)}
    updates: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "families":  # the candidates to cross-validate (see ``_families``)
            continue
        if key not in names | set(evaluation) | set(data):
            known = sorted(names | set(evaluation) | set(data))
            raise ValueError(f"unknown hyper-parameter {key!r}; known: {', '.join(known)}")
        try:
            if key in names:
                updates[key] = _coerce(value, getattr(config, key))
            elif key in evaluation:
                evaluation[key] = int(value)
            else:
                data[key] = int(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"hyper-parameter {key}={value!r}: {error}") from None
    return replace(config, **updates), evaluation, data


def effective_hyperparameters(
    config: TrainConfig, evaluation: dict[str, int], data: dict[str, int]
) -> dict[str, str]:
    """Every setting the run used, as text, for the lineage."""
    values = {f.name: _text(getattr(config, f.name)) for f in fields(config)}
    values.update({k: str(v) for k, v in evaluation.items()})
    values.update({k: str(v) for k, v in data.items()})
    return values


def headline(evaluation: dict[str, Any]) -> dict[str, float]:
    """The numbers of an evaluation that a model version records as its metrics."""
    binary = evaluation["binary"]
    values = {
        "units": float(evaluation["units"]),
        "rmse": evaluation["rmse"],
        "phm08_score": evaluation["phm08_score"],
        "mean_error": evaluation["mean_error"],
        "precision": binary["precision"],
        "recall": binary["recall"],
        "f1": binary["f1"],
        "f1_from_rul": evaluation["binary_from_rul"]["f1"],
        "brier": evaluation["brier"],
        "expected_calibration_error": evaluation["expected_calibration_error"],
    }
    if "auc" in evaluation:
        values["auc"] = evaluation["auc"]
    for mode, figures in evaluation.get("modes", {}).items():
        for name in ("precision", "recall", "f1", "auc", "positives"):
            values[f"mode.{mode}.{name}"] = figures[name]
    return {k: float(v) for k, v in values.items() if math.isfinite(float(v))}


class _Progress:
    """Maps the steps of a run onto one fraction: training takes 5% to 85%.

    With a model family to choose, the cross-validation takes 5% to 50% and the final
    training the rest up to 85%.
    """

    def __init__(self, emit: Emit, total_epochs: int) -> None:
        self._emit = emit
        self.total_epochs = total_epochs
        self.epoch = 0
        self.start, self.span = 0.05, 0.8

    def selecting(self, fraction: float) -> None:
        self.phase("selecting", 0.05 + 0.45 * fraction)
        self.start, self.span = 0.5, 0.35

    def phase(self, phase: str, progress: float, metrics: dict[str, float] | None = None) -> None:
        self._emit(
            {
                "type": "progress",
                "phase": phase,
                "progress": progress,
                "epoch": self.epoch,
                "total_epochs": self.total_epochs,
                "metrics": metrics or {},
            }
        )

    def training(self, fraction: float, metrics: dict[str, Any]) -> None:
        self.epoch = int(metrics.get("epoch", self.epoch))
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        self.phase("training", self.start + self.span * fraction, clean)


def train_command(spec: dict[str, Any], emit: Emit, cancelled: threading.Event) -> dict[str, Any]:
    """Load the data, train, evaluate on held-out units (and the champion too), export.

    The data is read before TensorFlow is imported, so a run on unusable data fails fast.
    """
    from prognos.registry import datasets
    from prognos.registry.artifacts import pack_directory

    def check() -> None:
        if cancelled.is_set():
            raise CancelledError

    emit({"type": "progress", "phase": "loading", "progress": 0.0, "epoch": 0, "total_epochs": 0})
    source = spec["source"]
    if source["kind"] == "snapshot":
        from prognos.api.ingest.v1 import ingest_pb2

        snapshot = ingest_pb2.DatasetSnapshot.FromString(Path(source["snapshot_file"]).read_bytes())
        asset_type = None
        if spec.get("asset_type_file"):
            asset_type = ingest_pb2.AssetType.FromString(Path(spec["asset_type_file"]).read_bytes())
        loaded = datasets.from_snapshot(snapshot, asset_type)
    else:
        loaded = datasets.from_cmapss_file(Path(source["path"]), source["content_hash"])

    from prognos.registry.training import TrainedModel, export_serving, render_report, train

    raw = spec.get("hyperparameters", {})
    horizon = spec.get("horizon_cycles")
    if loaded.layout is not None:
        horizon = loaded.layout.horizon_steps
    config, evaluation, data_params = parse_hyperparameters(raw, horizon_cycles=horizon)
    if loaded.layout is not None and "rul_clip" not in raw:
        # The RUL a model can tell apart must reach well past the horizon it is asked about.
        config = replace(config, rul_clip=max(config.rul_clip, 2.0 * config.horizon_cycles))
    progress = _Progress(emit, config.epochs)
    frame = loaded.frame
    if data_params["max_units"] > 0:
        keep = sorted(frame["unit"].unique())[: data_params["max_units"]]
        frame = frame[frame["unit"].isin(keep)].reset_index(drop=True)
    units = int(frame["unit"].nunique())
    if units < 2:
        raise ValueError(f"{units} unit(s) to learn from: need at least two to hold one out")
    if loaded.layout is not None:
        failures = int(frame.groupby("unit")["failed"].first().sum())
        needed = int(spec.get("supervised_min_failures", SUPERVISED_MIN_FAILURES))
        if failures < needed:
            return _train_health(
                spec,
                loaded,
                frame,
                (config, evaluation, data_params),
                emit,
                cancelled,
                failures=failures,
                needed=needed,
            )
    if evaluation["holdout_units"] >= units:
        evaluation["holdout_units"] = max(1, units // 5)
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    held_out_protocol = (
        _LivesProtocol(frame, config, evaluation, out, loaded.layout)
        if loaded.layout is not None
        else _CmapssProtocol(frame, evaluation, out)
    )
    check()

    # While training, SIGTERM stops after the batch in progress; otherwise it ends the process.
    previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: cancelled.set())
    columns: dict[str, Any] = {}
    if loaded.layout is not None:
        columns = {
            "sensors": loaded.layout.features,
            "settings": loaded.layout.settings,
            "failure_modes": loaded.layout.failure_modes,
        }
    selection: dict[str, Any] | None = None
    families = _families(raw, loaded.layout is not None)
    try:
        if families:
            from prognos.registry.training.selection import cross_validate

            def fit(part: Any, family_config: Any, **kwargs: Any) -> Any:
                return train(part, family_config, cancelled=cancelled.is_set, **kwargs)

            selection = cross_validate(
                frame,
                config,
                families,
                folds=evaluation["folds"],
                seed=evaluation["split_seed"],
                train=fit,
                columns=columns,
                progress=progress.selecting,
            )
            config = replace(config, architecture=selection["chosen"])
            check()
        trained = train(
            held_out_protocol.training,
            config,
            progress=progress.training,
            cancelled=cancelled.is_set,
            **columns,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    check()

    progress.phase("evaluating", 0.87)
    result = held_out_protocol.evaluate(trained)
    if selection is not None:
        result["cross_validation"] = selection
    title = (
        f"{spec['asset_type']} run {spec['run_id']}: {evaluation['holdout_units']} held-out units"
    )
    render_report(result, out / "evaluation_report.png", title=title)
    (out / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    champion_metrics: dict[str, float] = {}
    if spec.get("champion_bundle"):
        from prognos.registry.training.health import is_health_model

        try:
            champion = TrainedModel.load(spec["champion_bundle"])
            if is_health_model(champion.model):
                raise ValueError("it is a health model, which estimates neither RUL nor risk")
            champion_metrics = headline(held_out_protocol.evaluate(champion))
        except (KeyError, ValueError) as error:
            # A champion of another layout (other channels) cannot read these windows.
            print(f"champion not comparable: {error}", file=sys.stderr)
    check()

    progress.phase("exporting", 0.92)
    trained.save(out)
    info = export_serving(trained, out)
    pack_directory(Path(info.saved_model), out / "saved_model.tar")
    metrics = headline(result)
    if selection is not None:
        from prognos.registry.training.selection import headline as selection_headline

        metrics.update(selection_headline(selection))
    metrics.update(
        {
            "export_max_rul_diff": info.check.max_rul_diff,
            "export_max_probability_diff": info.check.max_probability_diff,
            "export_rul_tolerance": info.check.rul_tolerance,
            "export_probability_tolerance": info.check.probability_tolerance,
        }
    )
    last = trained.history[-1] if trained.history else {}
    training_metrics = {k: float(v) for k, v in last.items() if k != "epoch"}
    training_metrics.update(
        {
            "epochs": float(len(trained.history)),
            "train_seconds": trained.train_seconds,
            "train_units": float(held_out_protocol.training["unit"].nunique()),
            "held_out_units": float(held_out_protocol.held_out_units),
            "rows": float(len(frame)),
            "parameters": float(trained.model.count_params()),
        }
    )
    if loaded.layout is not None:
        training_metrics["censored_units"] = float(
            frame.groupby("unit")["failed"].first().eq(0).sum()
        )
    return {
        "bundle": str(out),
        "artifacts": [*BUNDLE_FILES, *SERVING_FILES, *held_out_protocol.files],
        "metrics": metrics,
        "training_metrics": training_metrics,
        "champion_metrics": champion_metrics,
        "hyperparameters": {
            **effective_hyperparameters(config, evaluation, data_params),
            **({"families": ",".join(families)} if selection is not None else {}),
            "model_kind": "supervised",
        },
        "label_set": loaded.label_set,
    }


def _families(raw: dict[str, str], any_type: bool) -> tuple[str, ...]:
    """The families to cross-validate: ``families`` if given, the defaults for a type other
    than the turbofan when no ``architecture`` is named, otherwise none."""
    if "families" in raw:
        families = tuple(f.strip() for f in raw["families"].split(",") if f.strip())
        if len(families) < 2:
            return ()
        return families
    if any_type and "architecture" not in raw:
        return DEFAULT_FAMILIES
    return ()


class _CmapssProtocol:
    """Held-out units cut the NASA way, written as a NASA-format test and truth file."""

    files = EVALUATION_FILES

    def __init__(self, frame: Any, evaluation: dict[str, int], out: Path) -> None:
        from prognos.registry.training.data import make_nasa_test, split_units, write_nasa_files

        self.training, held_out = split_units(
            frame, evaluation["holdout_units"], seed=evaluation["split_seed"]
        )
        self.held_out_units = int(held_out["unit"].nunique())
        test, truth = make_nasa_test(
            held_out, seed=evaluation["test_seed"], truncations_per_unit=evaluation["truncations"]
        )
        self._test, self._truth = out / "evaluation_test.txt", out / "evaluation_truth.txt"
        write_nasa_files(test, truth, self._test, self._truth)

    def evaluate(self, trained: Any) -> dict[str, Any]:
        from prognos.registry.training import evaluate_cmapss

        return evaluate_cmapss(trained, self._test, self._truth)


class _LivesProtocol:
    """Held-out lives of any asset type cut the NASA way, kept as a Parquet file."""

    files = LIVES_EVALUATION_FILES

    def __init__(
        self,
        frame: Any,
        config: TrainConfig,
        evaluation: dict[str, int],
        out: Path,
        layout: Any,
    ) -> None:
        from prognos.registry.training.data import split_units
        from prognos.registry.training.lives import truncations

        failed_units = frame.loc[frame["failed"] == 1, "unit"].unique()
        self.training, held_out = split_units(
            frame, evaluation["holdout_units"], seed=evaluation["split_seed"]
        )
        if not held_out["failed"].any() and len(failed_units) > 1:
            # Hold out a failed life too, or the RUL could not be scored at all.
            swap = int(failed_units[-1])
            held_out = frame[frame["unit"].isin([*held_out["unit"].unique(), swap])]
            self.training = frame[~frame["unit"].isin(held_out["unit"].unique())]
        self.held_out_units = int(held_out["unit"].nunique())
        self._cut, self._truth, self._failed = truncations(
            held_out,
            evaluation["test_seed"],
            per_unit=evaluation["truncations"],
            rul_clip=config.rul_clip,
            min_steps=min(31, config.window),
        )
        truth_of = dict(enumerate(self._truth.tolist(), start=1))
        self._cut.assign(truth=self._cut["unit"].map(truth_of)).to_parquet(
            out / "evaluation_cuts.parquet"
        )

    def evaluate(self, trained: Any) -> dict[str, Any]:
        from prognos.registry.training.evaluation import evaluate_lives

        return evaluate_lives(trained, self._cut, self._truth, self._failed)


def _train_health(
    spec: dict[str, Any],
    loaded: Any,
    frame: Any,
    parameters: tuple[TrainConfig, dict[str, int], dict[str, int]],
    emit: Emit,
    cancelled: threading.Event,
    *,
    failures: int,
    needed: int,
) -> dict[str, Any]:
    """Fit, export and check the health model of a type with too few failures to learn from.

    Its version records ``model_kind`` ``health`` and how many failures it saw; once the
    type's data holds ``needed`` confirmed failures, its next run trains the supervised model.
    """
    from prognos.registry.artifacts import pack_directory
    from prognos.registry.training import export_serving
    from prognos.registry.training.health import (
        HEALTH_FILE,
        HEALTH_KIND,
        train_health,
        verify_health_export,
    )
    from prognos.registry.training.health import headline as health_headline

    config, evaluation, data_params = parameters
    progress = _Progress(emit, 0)
    previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: cancelled.set())
    try:
        model = train_health(
            frame,
            config,
            sensors=loaded.layout.features,
            settings=loaded.layout.settings,
            holdout_units=evaluation["holdout_units"],
            split_seed=evaluation["split_seed"],
            progress=lambda done, figures: progress.phase("training", 0.05 + 0.8 * done, figures),
            cancelled=cancelled.is_set,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    progress.phase("exporting", 0.92)
    out = Path(spec["out"])
    model.save(out)
    (out / "evaluation.json").write_text(json.dumps(model.evaluation, indent=2) + "\n")
    info = export_serving(model.trained, out)
    check = verify_health_export(info.saved_model, info.tflite, model.trained.verification_windows)
    pack_directory(Path(info.saved_model), out / "saved_model.tar")
    metrics = health_headline(model.evaluation)
    metrics.update(
        {
            "export_max_anomaly_score_diff": check.max_score_diff,
            "export_max_anomaly_distance_diff": check.max_distance_diff,
        }
    )
    figures = model.evaluation
    lives = frame.groupby("unit")["failed"].first()
    return {
        "bundle": str(out),
        "artifacts": [*BUNDLE_FILES, *SERVING_FILES, HEALTH_FILE, "evaluation.json"],
        "metrics": metrics,
        "training_metrics": {
            "train_seconds": model.trained.train_seconds,
            "train_units": float(figures["fit_units"]),
            "held_out_units": float(figures["units"]),
            "windows": float(figures["fit_windows"]),
            "rows": float(len(frame)),
            "failed_units": float(failures),
            "censored_units": float(lives.eq(0).sum()),
        },
        "champion_metrics": {},
        "hyperparameters": {
            **effective_hyperparameters(config, evaluation, data_params),
            "model_kind": HEALTH_KIND,
            "supervised_min_failures": str(needed),
        },
        "label_set": loaded.label_set,
    }


def evaluate_command(
    spec: dict[str, Any], emit: Emit, cancelled: threading.Event
) -> dict[str, Any]:
    """Evaluate a stored version on a NASA-format test and truth file; draw the report."""
    from prognos.registry.training import evaluate_cmapss, render_report

    evaluation = evaluate_cmapss(spec["bundle"], spec["test"], spec["truth"])
    render_report(evaluation, spec["report"], title=spec.get("title", ""))
    return {"evaluation": evaluation, "metrics": headline(evaluation)}


def verify_command(spec: dict[str, Any], emit: Emit, cancelled: threading.Event) -> dict[str, Any]:
    """Check that the LiteRT model gives the SavedModel's outputs within the tolerances."""
    import numpy as np

    from prognos.registry.artifacts import unpack_directory
    from prognos.registry.training import verify_export

    saved_model = unpack_directory(
        Path(spec["saved_model_tar"]), Path(spec["work"]) / "saved_model"
    )
    check = verify_export(saved_model, spec["tflite"], np.load(spec["windows"]))
    return {
        "metrics": {
            "export_max_rul_diff": check.max_rul_diff,
            "export_max_probability_diff": check.max_probability_diff,
            "export_rul_tolerance": check.rul_tolerance,
            "export_probability_tolerance": check.probability_tolerance,
        }
    }


COMMANDS: dict[str, Callable[[dict[str, Any], Emit, threading.Event], dict[str, Any]]] = {
    "train": train_command,
    "evaluate": evaluate_command,
    "verify": verify_command,
}


def _protocol_stream() -> IO[str]:
    """Keep the real standard output for the protocol; send fd 1 to standard error."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return protocol


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in COMMANDS:
        print(
            f"usage: python -m prognos.registry.worker {'|'.join(COMMANDS)} SPEC", file=sys.stderr
        )
        return 2
    protocol = _protocol_stream()
    lock = threading.Lock()

    def emit(message: dict[str, Any]) -> None:
        with lock:
            protocol.write(json.dumps(message) + "\n")
            protocol.flush()

    cancelled = threading.Event()
    spec = json.loads(Path(args[1]).read_text())
    try:
        result = COMMANDS[args[0]](spec, emit, cancelled)
    except CancelledError:
        emit({"type": "cancelled"})
        return EXIT_CANCELLED
    except Exception as error:
        from prognos.registry.training import TrainingCancelledError

        if isinstance(error, TrainingCancelledError):
            emit({"type": "cancelled"})
            return EXIT_CANCELLED
        traceback.print_exc()
        emit({"type": "error", "message": f"{type(error).__name__}: {error}"})
        return EXIT_ERROR
    emit({"type": "result", **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
