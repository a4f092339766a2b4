"""Inputs: given in model A's layout, converted for B, generated when absent, refused when bad."""

from __future__ import annotations

import numpy as np
import pytest

import parity
from parity.capture import backend_for
from parity.inputs import normalize_inputs, prepare_inputs

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def torch_conv():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU())


@pytest.fixture(scope="module")
def keras_conv():
    inp = keras.Input((28, 28, 1), name="img")
    return keras.Model(inp, keras.layers.Conv2D(4, 3, padding="same")(inp))


def test_nchw_inputs_are_transposed_for_a_channels_last_model(torch_conv, keras_conv):
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype("float32")
    a_in, b_in, summary = prepare_inputs(x, backend_for(torch_conv), backend_for(keras_conv))
    assert b_in[0].shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(b_in[0], x.transpose(0, 2, 3, 1))
    assert summary.conversions == ("NCHW→NHWC",)
    assert summary.shapes_a == ((3, 1, 28, 28),) and summary.shapes_b == ((3, 28, 28, 1),)


def test_nhwc_inputs_are_transposed_for_torch_when_keras_is_a(torch_conv, keras_conv):
    x = np.ones((2, 28, 28, 1), dtype="float32")
    _, b_in, summary = prepare_inputs(x, backend_for(keras_conv), backend_for(torch_conv))
    assert b_in[0].shape == (2, 1, 28, 28)
    assert summary.conversions == ("NHWC→NCHW",)


def test_inputs_in_the_wrong_layout_for_a_are_refused_with_a_hint(torch_conv, keras_conv):
    x = np.ones((2, 28, 28, 1), dtype="float32")  # NHWC handed to a torch model as A
    with pytest.raises(parity.InputError) as err:
        prepare_inputs(x, backend_for(torch_conv), backend_for(keras_conv))
    msg = str(err.value)
    assert "(2, 28, 28, 1)" in msg and "1 channels at axis 1" in msg and "looks like NHWC" in msg


def test_shape_no_permutation_fits_is_refused(keras_conv):
    torch.manual_seed(0)
    three = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1))
    x = np.ones((2, 3, 28, 28), dtype="float32")
    with pytest.raises(parity.InputError) as err:
        prepare_inputs(x, backend_for(three), backend_for(keras_conv))
    msg = str(err.value)
    assert "(None, 28, 28, 1)" in msg and "(2, 3, 28, 28)" in msg and "no" in msg


def test_declared_shape_mismatch_for_a_is_refused(keras_conv, torch_conv):
    with pytest.raises(parity.InputError, match=r"expects input 'img' of shape \(None, 28, 28, 1\)"):
        prepare_inputs(np.ones((2, 32, 32, 1), "float32"), backend_for(keras_conv), backend_for(torch_conv))


def test_nan_and_non_numeric_inputs_are_refused():
    x = np.ones((2, 3), dtype="float32")
    x[0, 1] = np.nan
    with pytest.raises(parity.InputError, match="1 NaN and 0 Inf"):
        normalize_inputs(x)
    with pytest.raises(parity.InputError, match="expected a NumPy array"):
        normalize_inputs({"x": object()})
    with pytest.raises(parity.InputError, match="dtype <U1"):
        normalize_inputs(np.array(["a"]))


def test_generated_inputs_come_from_the_declared_side_and_are_seeded(torch_conv, keras_conv):
    a1, b1, s1 = prepare_inputs(None, backend_for(torch_conv), backend_for(keras_conv), seed=3)
    a2, _, _ = prepare_inputs(None, backend_for(torch_conv), backend_for(keras_conv), seed=3)
    assert a1[0].shape == (2, 1, 28, 28)  # from Keras' (None, 28, 28, 1), in torch's layout
    assert b1[0].shape == (2, 28, 28, 1)
    np.testing.assert_array_equal(a1[0], a2[0])
    assert "seed 3" in s1.source


def test_generated_inputs_need_a_declared_shape(torch_conv):
    torch.manual_seed(0)
    other = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1))
    with pytest.raises(parity.InputError, match="Pass inputs explicitly"):
        prepare_inputs(None, backend_for(torch_conv), backend_for(other))


def test_float64_inputs_are_run_as_float32():
    (x,) = normalize_inputs(np.ones((2, 2)))
    assert x.dtype == np.float32
