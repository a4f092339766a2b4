"""The public API around diff: bad input gets a clear ParityError; assert_parity's message."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

import parity  # noqa: E402
from parity._zoo import ConvNet, randomize_bn, to_keras  # noqa: E402


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    model = randomize_bn(ConvNet().eval(), seed=1)
    return model, to_keras(model, bn_epsilon="keras-default")


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).uniform(0, 1, (4, 1, 28, 28)).astype("float32")


def test_wrong_input_shape(pair):
    model, km = pair
    with pytest.raises(parity.InputError) as err:
        parity.diff(model, km, np.zeros((4, 1, 32, 32), "float32"))
    msg = str(err.value)
    assert "(None, 28, 28, 1)" in msg and "(4, 1, 32, 32)" in msg


def test_mapping_to_a_missing_layer(pair, x):
    model, km = pair
    with pytest.raises(parity.MappingError) as err:
        parity.diff(model, km, x, mapping={"layer1.1": "layer1_7"})
    msg = str(err.value)
    assert "'layer1_7'" in msg and "model B" in msg and "layer1_1" in msg
    assert isinstance(err.value, LookupError)


def test_nan_in_inputs(pair, x):
    model, km = pair
    bad = x.copy()
    bad[0, 0, 3, 3] = np.nan
    with pytest.raises(parity.InputError, match="1 NaN"):
        parity.diff(model, km, bad)


def test_non_model_object(pair, x):
    model, _ = pair
    with pytest.raises(parity.ModelError) as err:
        parity.diff(model, {"weights": 1}, x)
    assert "builtins.dict" in str(err.value) and "torch.nn.Module or a keras.Model" in str(err.value)
    assert isinstance(err.value, TypeError)


def test_only_one_tolerance_refused(pair, x):
    model, km = pair
    with pytest.raises(parity.ToleranceError, match="atol"):
        parity.diff(model, km, x, rtol=1e-3)


def test_assert_parity_message_names_both_layers_and_numbers(pair, x):
    model, km = pair
    with pytest.raises(parity.ParityMismatch) as err:
        parity.assert_parity(model, km, x)
    msg = str(err.value)
    assert "'layer1.1' (BatchNorm2d) in model A" in msg
    assert "'layer1_1' (BatchNormalization) in model B" in msg
    assert "Mismatched elements:" in msg and "Greatest absolute difference:" in msg
    assert "bn_epsilon" in msg
    assert isinstance(err.value, AssertionError)
    assert err.value.report.first_divergence.a_name == "layer1.1"


def test_per_layer_override_lets_a_known_difference_pass(pair, x):
    model, km = pair
    report = parity.diff(model, km, x, tolerances={"layer1.*": (0.5, 1e-3), "fc": (0.5, 1e-3), "output": (0.5, 1e-3)})
    assert report.ok
    assert report.layer("layer1.1").rtol == 0.5


def test_a_passing_layer_with_different_declared_epsilons_gets_a_note():
    from tests.helpers import make_trace

    x = np.random.default_rng(0).standard_normal((4, 8)).astype("float32")
    a = make_trace([("ln", "LayerNorm", x, "NC", {"eps": 1e-12}), ("out", "output", x, "NC")])
    b = make_trace([("ln", "LayerNormalization", x, "NC", {"epsilon": 1e-3}), ("out", "output", x, "NC")], framework="keras")
    report = parity.diff_traces(a, b)
    assert report.ok
    assert report.notes == (
        "ln (LayerNorm) passes, but the two sides declare different epsilons (A 1e-12, B 1e-03): rel err 0.0e+00 "
        "of 1.0e-03 allowed here, more where a row's or channel's variance is near the larger epsilon. Give B's "
        "layer A's epsilon.",
    )
    same = make_trace([("ln", "LayerNormalization", x, "NC", {"epsilon": 1e-12}), ("out", "output", x, "NC")], framework="keras")
    assert parity.diff_traces(a, same).notes == ()
