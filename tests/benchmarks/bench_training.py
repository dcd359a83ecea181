"""RUL model on C-MAPSS FD001: training time, held-out accuracy and serving latency, as JSON.

Default run: train the chosen configuration (``TrainConfig()``) on the training file minus 20
held-out units (seeded split), cut every held-out unit 5 times the NASA way (seeded), write
those cuts as NASA test/truth files, evaluate by the last-cycle protocol, draw the report,
export SavedModel + LiteRT (verified) and time single-window inference of both runtimes
(batch of one) in the same process.

``--compare`` instead runs k-fold cross-validation over the 80 training units (the
held-out units stay untouched) for each configuration given as JSON, which is how the
architectures in MODEL_CARD.md were compared.

Run: ``nice -n 10 .venv/bin/python tests/benchmarks/bench_training.py [--out DIR]``
     ``... bench_training.py --compare '{"architecture": "cnn"}' '{"architecture": "gru"}'``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from prognos.registry.training import (
    LiteRtRunner,
    SavedModelRunner,
    TrainConfig,
    evaluate_cmapss,
    evaluate_predictions,
    export_serving,
    load_cmapss,
    make_nasa_test,
    predict_last_cycle,
    render_report,
    split_units,
    train,
    write_nasa_files,
)

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "cmapss" / "train_FD001.txt"
HOLDOUT_UNITS = 20
SPLIT_SEED = 7
TEST_SEED = 11
TRUNCATIONS = 5


def _config(overrides: str) -> TrainConfig:
    values = json.loads(overrides)
    if "setting_decimals" in values:
        values["setting_decimals"] = tuple(values["setting_decimals"])
    return replace(TrainConfig(), **values)


def _latency(call: Any, window: np.ndarray, calls: int) -> dict[str, float]:
    for _ in range(min(200, calls)):
        call(window)
    times = np.empty(calls)
    for i in range(calls):
        started = time.perf_counter_ns()
        call(window)
        times[i] = time.perf_counter_ns() - started
    micros = times / 1000.0
    return {
        "p50_us": float(np.percentile(micros, 50)),
        "p99_us": float(np.percentile(micros, 99)),
        "mean_us": float(micros.mean()),
        "calls": calls,
    }


def holdout_run(config: TrainConfig, out: Path, calls: int) -> dict[str, Any]:
    """Train on 80 units, evaluate on NASA-style cuts of the other 20, export, time."""
    frame = load_cmapss(DATA)
    training, held_out = split_units(frame, HOLDOUT_UNITS, seed=SPLIT_SEED)
    test, truth = make_nasa_test(held_out, seed=TEST_SEED, truncations_per_unit=TRUNCATIONS)
    test_file, truth_file = out / "test_holdout.txt", out / "RUL_holdout.txt"
    write_nasa_files(test, truth, test_file, truth_file)

    started = time.perf_counter()
    trained = train(training, config)
    train_seconds = time.perf_counter() - started
    trained.save(out / "model")

    evaluation = evaluate_cmapss(out / "model", test_file, truth_file)
    report = render_report(
        evaluation,
        out / "report.png",
        title=f"FD001, {HOLDOUT_UNITS} held-out units x {TRUNCATIONS} cuts, "
        f"{config.architecture} x{config.members}, window {config.window}",
    )
    info = export_serving(trained, out / "export")
    window = trained.verification_windows[:1]
    litert = LiteRtRunner(info.tflite)
    saved = SavedModelRunner(info.saved_model)
    binary = evaluation["binary"]
    return {
        "config": config.to_dict(),
        "data": str(DATA.resolve()),
        "train_units": int(training["unit"].nunique()),
        "test_units": evaluation["units"],
        "held_out_units": sorted(int(u) for u in held_out["unit"].unique()),
        "train_seconds": round(train_seconds, 1),
        "rmse": round(evaluation["rmse"], 3),
        "phm08_score": round(evaluation["phm08_score"], 1),
        "mean_error": round(evaluation["mean_error"], 2),
        "precision": round(binary["precision"], 3),
        "recall": round(binary["recall"], 3),
        "f1": round(binary["f1"], 3),
        "f1_from_rul": round(evaluation["binary_from_rul"]["f1"], 3),
        "brier": round(evaluation["brier"], 4),
        "expected_calibration_error": round(evaluation["expected_calibration_error"], 4),
        "export_max_rul_diff": info.check.max_rul_diff,
        "export_max_probability_diff": info.check.max_probability_diff,
        "export_rul_tolerance": info.check.rul_tolerance,
        "parameters": int(trained.model.count_params()),
        "tflite_bytes": Path(info.tflite).stat().st_size,
        "latency_litert": _latency(litert, window, calls),
        "latency_saved_model": _latency(saved, window, calls),
        "report": str(report),
        "artifacts": str(out),
    }


def cross_validation(config: TrainConfig, folds: int, cuts: int) -> dict[str, Any]:
    """k-fold CV over the training units: pooled last-cycle metrics of every fold's cuts."""
    frame = load_cmapss(DATA)
    training, _ = split_units(frame, HOLDOUT_UNITS, seed=SPLIT_SEED)
    units = np.sort(training["unit"].unique())
    np.random.default_rng(123).shuffle(units)
    predicted, probability, truth, seconds, per_fold = [], [], [], [], []
    for k, fold in enumerate(np.array_split(units, folds)):
        inside = training["unit"].isin(fold)
        test, fold_truth = make_nasa_test(training[inside], seed=100 + k, truncations_per_unit=cuts)
        started = time.perf_counter()
        trained = train(training[~inside], config)
        seconds.append(time.perf_counter() - started)
        prediction = predict_last_cycle(trained, test)
        predicted.append(prediction["rul"].to_numpy())
        probability.append(prediction["failure_probability"].to_numpy())
        truth.append(fold_truth)
        fold_eval = evaluate_predictions(
            predicted[-1],
            probability[-1],
            fold_truth,
            rul_clip=config.rul_clip,
            horizon_cycles=config.horizon_cycles,
        )
        per_fold.append(round(fold_eval["rmse"], 2))
    pooled = evaluate_predictions(
        np.concatenate(predicted),
        np.concatenate(probability),
        np.concatenate(truth),
        rul_clip=config.rul_clip,
        horizon_cycles=config.horizon_cycles,
    )
    return {
        "config": config.to_dict(),
        "folds": folds,
        "cuts_per_unit": cuts,
        "cv_rmse": round(pooled["rmse"], 2),
        "fold_rmse": per_fold,
        "phm08_score_per_cut": round(pooled["phm08_score"] / len(pooled["per_unit"]), 2),
        "f1": round(pooled["binary"]["f1"], 3),
        "brier": round(pooled["brier"], 4),
        "train_seconds_mean": round(float(np.mean(seconds)), 1),
        "parameters": int(trained.model.count_params()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="{}", help="TrainConfig overrides as JSON")
    parser.add_argument("--out", type=Path, help="keep artifacts here (default: a temp dir)")
    parser.add_argument("--calls", type=int, default=2000, help="latency calls per runtime")
    parser.add_argument("--compare", nargs="+", metavar="JSON", help="cross-validate these")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--cuts", type=int, default=10, help="cuts per validation unit")
    args = parser.parse_args()
    if not DATA.exists():
        print(json.dumps({"skipped": f"C-MAPSS data not found at {DATA}"}))
        return 0
    if args.compare:
        for overrides in args.compare:
            result = cross_validation(_config(overrides), args.folds, args.cuts)
            print(json.dumps(result), flush=True)
        return 0
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        result = holdout_run(_config(args.config), args.out, args.calls)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = holdout_run(_config(args.config), Path(tmp), args.calls)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
