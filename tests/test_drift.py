"""Trained-vs-untrained drift: the seed-000 puzzle measured per layer."""

from __future__ import annotations

import numpy as np
import pytest

import parity

torch = pytest.importorskip("torch")
pytest.importorskip("keras")

from parity._zoo import ConvNet, randomize_bn, to_keras  # noqa: E402

X = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype("float32")


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    return randomize_bn(ConvNet().eval(), seed=1)


def test_drift_flags_the_batchnorm_of_the_seed_pair(trained):
    result = parity.drift(trained, lambda m: to_keras(m, bn_epsilon="keras-default"), X)
    bn = result.report.layer("layer1.1")
    assert bn.baseline_err == pytest.approx(4.9e-4, rel=0.1)  # fresh weights: within tolerance
    assert bn.drift > 50 and not bn.ok
    assert result.flagged[0].a_name == "layer1.1"
    assert result.summary().startswith("✗ DRIFT at layer1.1 (BatchNorm2d): error 4.9e-04 with fresh weights")
    assert "random normalisation statistics show it without training" in result.summary()
    assert not result.randomized.layer("layer1.1").ok  # random statistics expose it untrained
    assert any("larger than in the baseline pair" in n and "mean 0, variance 1" in n for n in result.report.notes)


def test_a_correct_conversion_does_not_drift(trained):
    result = parity.drift(trained, lambda m: to_keras(m, bn_epsilon="match"), X)
    assert result.report.ok and not result.flagged
    assert result.summary() == "✓ NO DRIFT: no layer's error grew with training beyond round-off"


def test_a_baseline_flags_growth_even_within_tolerance(trained):
    fresh = parity.baseline.fresh_twin(trained)
    report = parity.diff(
        trained, to_keras(trained, bn_epsilon="keras-default"), X, rtol=1e-1, atol=1e-5,
        baseline=(fresh, to_keras(fresh, bn_epsilon="keras-default")),
    )
    bn = report.layer("layer1.1")
    assert bn.rel_err < 0.1  # within the loose tolerance …
    assert not bn.ok and bn.reasons[-1].startswith(f"error grew {bn.drift:,.0f}× over the baseline pair's")
    assert report.first_divergence.a_name == "layer1.1"
    assert report.layer("layer1.0").drift < 10 and report.layer("layer1.0").ok
