"""How a training worker reads its text hyper-parameters and reports an evaluation."""

from __future__ import annotations

import pytest

from prognos.registry.worker import effective_hyperparameters, headline, parse_hyperparameters


def test_text_hyper_parameters_become_the_config_the_evaluation_and_the_data() -> None:
    config, evaluation, data = parse_hyperparameters(
        {
            "epochs": "3",
            "lr": "0.01",
            "architecture": "cnn",
            "setting_decimals": "[1, 2, 0]",
            "holdout_units": "4",
            "max_units": "10",
        },
        horizon_cycles=45.0,
    )

    assert (config.epochs, config.lr, config.architecture) == (3, 0.01, "cnn")
    assert config.setting_decimals == (1, 2, 0)
    assert config.horizon_cycles == 45.0
    assert evaluation["holdout_units"] == 4 and evaluation["split_seed"] == 7
    assert data == {"max_units": 10}
    text = effective_hyperparameters(config, evaluation, data)
    assert text["setting_decimals"] == "[1, 2, 0]" and text["epochs"] == "3"
    assert parse_hyperparameters(text, horizon_cycles=None)[0] == config


def test_an_explicit_horizon_wins_over_the_asset_type() -> None:
    config, _, _ = parse_hyperparameters({"horizon_cycles": "20"}, horizon_cycles=45.0)

    assert config.horizon_cycles == 20.0


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"epoch": "3"}, "unknown hyper-parameter 'epoch'"),
        ({"epochs": "many"}, "epochs='many'"),
        ({"setting_decimals": "3"}, "setting_decimals"),
    ],
)
def test_a_wrong_name_or_value_is_named(raw: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_hyperparameters(raw, horizon_cycles=None)


def test_the_headline_keeps_the_protocol_numbers_and_drops_undefined_ones() -> None:
    evaluation = {
        "units": 4,
        "rmse": 11.5,
        "phm08_score": 80.0,
        "mean_error": 1.0,
        "binary": {"precision": 1.0, "recall": 0.5, "f1": 2 / 3},
        "binary_from_rul": {"f1": 0.5},
        "brier": float("nan"),
        "expected_calibration_error": 0.1,
    }

    metrics = headline(evaluation)

    assert metrics["rmse"] == 11.5 and metrics["units"] == 4.0 and metrics["recall"] == 0.5
    assert "brier" not in metrics
