"""Training, saving, evaluating and exporting a tiny RUL model on a synthetic fleet."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from prognos.registry.training.data import make_nasa_test, write_nasa_files
from prognos.registry.training.evaluation import evaluate_cmapss, render_report
from prognos.registry.training.export import (
    MANIFEST_FILE,
    ExportInfo,
    ExportMismatchError,
    LiteRtRunner,
    export_serving,
    verify_export,
)
from prognos.registry.training.models import POOLINGS, RecurrentOptions, build_networks
from prognos.registry.training.trainer import (
    TrainConfig,
    TrainedModel,
    TrainingCancelledError,
    predict_last_cycle,
    train,
)

TINY = TrainConfig(
    window=12,
    epochs=2,
    batch=64,
    architecture="cnn",
    horizon_cycles=15.0,
    rul_clip=50.0,
    verification_samples=32,
)


@pytest.fixture(scope="module")
def trained(units: pd.DataFrame) -> TrainedModel:
    return train(units, TINY)


def test_training_reports_progress_up_to_completion(units: pd.DataFrame) -> None:
    calls: list[tuple[float, dict[str, float]]] = []
    model = train(units, TINY, progress=lambda done, metrics: calls.append((done, metrics)))

    fractions = [done for done, _ in calls]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert len(calls) == 1 + TINY.epochs
    assert {"epoch", "loss"} <= set(calls[-1][1])
    assert len(model.history) == TINY.epochs


def test_cancelling_stops_training_within_a_batch(units: pd.DataFrame) -> None:
    polls = 0

    def cancelled() -> bool:
        nonlocal polls
        polls += 1
        return polls > 3

    config = TrainConfig(window=12, epochs=50, batch=16, architecture="cnn")
    with pytest.raises(TrainingCancelledError):
        train(units, config, cancelled=cancelled)
    # one poll before the first epoch, then one per batch until the stop takes effect
    assert polls <= 5


def test_a_saved_model_predicts_as_before(
    trained: TrainedModel, units: pd.DataFrame, tmp_path: Path
) -> None:
    trained.save(tmp_path / "model")
    again = TrainedModel.load(tmp_path / "model")

    assert again.preprocessing == trained.preprocessing
    assert again.config == trained.config
    before = predict_last_cycle(trained, units)
    after = predict_last_cycle(again, units)
    pd.testing.assert_frame_equal(before, after)
    assert before["rul"].between(0, TINY.rul_clip).all()
    assert before["failure_probability"].between(0, 1).all()


def test_evaluates_nasa_files_and_draws_the_report(
    trained: TrainedModel, units: pd.DataFrame, tmp_path: Path
) -> None:
    test, truth = make_nasa_test(units, seed=3, truncations_per_unit=2, min_cycles=15)
    write_nasa_files(test, truth, tmp_path / "test.txt", tmp_path / "truth.txt")

    result = evaluate_cmapss(trained, tmp_path / "test.txt", tmp_path / "truth.txt")

    assert result["units"] == 12
    rows = result["per_unit"]
    assert [row["true_rul"] for row in rows] == list(truth)
    errors = np.array([row["predicted_rul"] - row["true_rul_clipped"] for row in rows])
    assert result["rmse"] == pytest.approx(float(np.sqrt(np.mean(errors**2))))
    png = render_report(result, tmp_path / "report.png", title="tiny")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def exported(trained: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> ExportInfo:
    return export_serving(trained, tmp_path_factory.mktemp("export"))


def test_litert_export_matches_the_saved_model(trained: TrainedModel, exported: ExportInfo) -> None:
    info = exported

    assert info.check.max_rul_diff <= info.check.rul_tolerance
    assert info.check.max_probability_diff <= info.check.probability_tolerance
    assert info.check.windows == len(trained.verification_windows)
    assert (Path(info.directory) / MANIFEST_FILE).exists()
    assert len(info.tflite_sha256) == 64 and len(info.saved_model_sha256) == 64
    rul, probability = LiteRtRunner(info.tflite)(trained.verification_windows[:3])
    expected_rul, expected_probability = trained.predict_windows(trained.verification_windows[:3])
    np.testing.assert_allclose(rul, expected_rul, atol=info.check.rul_tolerance)
    np.testing.assert_allclose(probability, expected_probability, atol=1e-4)


def test_verification_refuses_a_litert_model_that_differs(
    trained: TrainedModel, exported: ExportInfo, tmp_path: Path
) -> None:
    changed = TrainedModel.load(trained.save(tmp_path / "copy"))
    changed.model.set_weights([w * 1.5 for w in changed.model.get_weights()])
    other = export_serving(changed, tmp_path / "changed")

    with pytest.raises(ExportMismatchError):
        verify_export(exported.saved_model, other.tflite, trained.verification_windows)


def test_smoothing_inside_the_network_is_the_exponential_recurrence() -> None:
    networks = build_networks("gru", 20, 3, 125.0, smoothing=0.3)
    smoothed = keras.Model(networks.serving.input, networks.serving.get_layer("smoothed").output)
    rows = np.random.default_rng(0).normal(size=(2, 20, 3)).astype(np.float32)

    expected = rows.astype(np.float64).copy()
    for t in range(1, 20):
        expected[:, t] = 0.3 * rows[:, t] + 0.7 * expected[:, t - 1]
    np.testing.assert_allclose(smoothed(rows).numpy(), expected, atol=1e-5)
    assert not networks.serving.get_layer("smoothing").trainable_weights


@pytest.mark.parametrize("pooling", POOLINGS)
def test_an_ensemble_serves_the_clamped_mean_of_its_members(pooling: str) -> None:
    options = RecurrentOptions(units=8, layers=2, pooling=pooling, dropout=0.1)
    networks = build_networks("gru", 10, 3, 50.0, members=3, recurrent=options)
    rows = np.random.default_rng(1).normal(size=(4, 10, 3)).astype(np.float32)

    heads = networks.training(rows)
    served = networks.serving(rows)
    scaled = np.mean([heads[f"m{m}_rul_scaled"].numpy() for m in range(3)], axis=0)
    probability = np.mean([heads[f"m{m}_probability"].numpy() for m in range(3)], axis=0)
    np.testing.assert_allclose(served["rul"].numpy(), np.clip(scaled * 50.0, 0, 50), atol=1e-4)
    np.testing.assert_allclose(served["failure_probability"].numpy(), probability, atol=1e-6)


def test_an_unknown_pooling_is_refused() -> None:
    with pytest.raises(ValueError, match="pooling"):
        build_networks("gru", 10, 3, 50.0, recurrent=RecurrentOptions(pooling="max"))
