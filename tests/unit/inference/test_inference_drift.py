"""Drift statistics against a training reference, and the live sample ring."""

from __future__ import annotations

import numpy as np

from prognos.inference.drift import LiveSample, Reference, evaluate, psi


def reference_document(rng: np.random.Generator, features: list[str]) -> dict:
    """A ``reference.json`` as the registry writes it, of standard normal features."""
    levels = np.linspace(0.0, 1.0, 101)
    body = {}
    for name in features:
        values = rng.normal(0.0, 1.0, 20_000)
        space = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "quantiles": np.quantile(values, levels).tolist(),
            "sample": values[:512].tolist(),
        }
        body[name] = {"raw": space, "normalised": space}
    return {"rows": 20_000, "quantile_levels": levels.tolist(), "features": body}


def test_only_the_shifted_feature_drifts() -> None:
    rng = np.random.default_rng(1)
    reference = Reference.from_json(reference_document(rng, ["s2", "s3", "s4"]))
    live = rng.normal(0.0, 1.0, (2_000, 3))
    live[:, 1] += 1.0

    results = {
        r.feature: r
        for r in evaluate(reference, ["s2", "s3", "s4"], live, psi_threshold=0.2, ks_alpha=0.01)
    }

    assert [name for name, r in results.items() if r.drifted] == ["s3"]
    assert results["s3"].psi > 0.5 and results["s3"].ks_pvalue < 1e-6
    assert abs(results["s3"].wasserstein - 1.0) < 0.2
    assert results["s2"].psi < 0.05 and results["s4"].psi < 0.05


def test_the_same_distribution_does_not_drift_at_any_sample_size() -> None:
    rng = np.random.default_rng(2)
    reference = Reference.from_json(reference_document(rng, ["a"]))
    for n in (300, 3_000, 30_000):
        (result,) = evaluate(
            reference, ["a"], rng.normal(0.0, 1.0, (n, 1)), psi_threshold=0.2, ks_alpha=0.01
        )
        assert not result.drifted, (n, result)


def test_deciles_that_tie_merge_their_bins() -> None:
    document = reference_document(np.random.default_rng(3), ["flag"])
    quantiles = [0.0] * 60 + [1.0] * 41  # a feature that is 0 for 60% of the rows
    document["features"]["flag"]["normalised"]["quantiles"] = quantiles
    feature = Reference.from_json(document).features["flag"]

    assert feature.edges.tolist() == [0.0, 1.0]
    assert np.isclose(feature.expected.sum(), 1.0)
    assert psi(feature, np.r_[np.zeros(600), np.ones(400)]) < 0.1


def test_features_without_a_reference_are_skipped() -> None:
    reference = Reference.from_json(reference_document(np.random.default_rng(4), ["a"]))
    results = evaluate(reference, ["a", "b"], np.zeros((10, 2)), psi_threshold=0.2, ks_alpha=0.01)
    assert [r.feature for r in results] == ["a"]


def test_the_live_sample_keeps_the_newest_rows() -> None:
    sample = LiveSample("v1", features=1, capacity=5)
    sample.add(np.arange(3, dtype=np.float32)[:, None], np.arange(3))
    sample.add(np.arange(3, 7, dtype=np.float32)[:, None], np.arange(3, 7))

    rows, start, end = sample.snapshot()
    assert len(sample) == 5
    assert sorted(rows[:, 0].tolist()) == [2, 3, 4, 5, 6] and (start, end) == (2, 6)
    sample.add(np.arange(10, 20, dtype=np.float32)[:, None], np.arange(10, 20))
    assert sorted(sample.snapshot()[0][:, 0].tolist()) == [15, 16, 17, 18, 19]
