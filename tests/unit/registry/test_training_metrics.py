"""Protocol metrics of the RUL model against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prognos.registry.training.metrics import (
    binary_metrics,
    brier_score,
    expected_calibration_error,
    phm08_score,
    reliability_bins,
    rmse,
)


def test_rmse_is_the_root_of_the_mean_squared_error() -> None:
    # errors 3, -4, 0 -> squares 9, 16, 0 -> mean 25/3
    assert rmse(np.array([13.0, 6.0, 5.0]), np.array([10.0, 10.0, 5.0])) == pytest.approx(
        math.sqrt(25 / 3)
    )


def test_phm08_score_punishes_late_predictions_more_than_early_ones() -> None:
    # d = -13 (early): e^1 - 1; d = +10 (late): e^1 - 1; d = 0: 0
    assert phm08_score(np.array([0.0, 20.0, 7.0]), np.array([13.0, 10.0, 7.0])) == pytest.approx(
        2 * (math.e - 1)
    )
    early = phm08_score(np.array([90.0]), np.array([100.0]))
    late = phm08_score(np.array([110.0]), np.array([100.0]))
    assert early == pytest.approx(math.exp(10 / 13) - 1)
    assert late == pytest.approx(math.exp(1) - 1)
    assert late > early


def test_binary_metrics_count_hits_misses_and_false_alarms() -> None:
    predicted = np.array([True, True, True, False, False, False])
    actual = np.array([True, True, False, True, False, False])
    result = binary_metrics(predicted, actual)
    # tp 2, fp 1, fn 1
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["positives"] == 3


def test_binary_metrics_are_zero_when_nothing_is_predicted() -> None:
    result = binary_metrics(np.zeros(3, bool), np.array([True, False, False]))
    assert (result["precision"], result["recall"], result["f1"]) == (0.0, 0.0, 0.0)


def test_brier_score_is_the_mean_squared_probability_error() -> None:
    # (0.9-1)^2 + (0.2-0)^2 + (0.5-1)^2 = 0.01 + 0.04 + 0.25
    assert brier_score(np.array([0.9, 0.2, 0.5]), np.array([1, 0, 1])) == pytest.approx(0.1)


def test_reliability_bins_group_probabilities_and_report_observed_rates() -> None:
    probability = np.array([0.05, 0.15, 0.12, 0.95, 1.0, 0.91])
    actual = np.array([0, 0, 1, 1, 1, 0])
    table = reliability_bins(probability, actual, bins=10)
    assert [(row["lower"], row["count"]) for row in table] == [(0.0, 1), (0.1, 2), (0.9, 3)]
    assert table[1]["mean_predicted"] == pytest.approx(0.135)
    assert table[1]["observed_rate"] == pytest.approx(0.5)
    assert table[2]["observed_rate"] == pytest.approx(2 / 3)
    # |0.05-0| * 1 + |0.135-0.5| * 2 + |0.62-0.667| * 3, over 6 windows
    expected = (0.05 + 2 * 0.365 + 3 * abs((0.95 + 1.0 + 0.91) / 3 - 2 / 3)) / 6
    assert expected_calibration_error(table) == pytest.approx(expected)
