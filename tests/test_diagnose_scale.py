"""weight_scale / bias_offset: a layer whose output is A's scaled or shifted per channel, found
from the values alone (graph formats included), on hand-made traces — no framework."""

from __future__ import annotations

import numpy as np

import parity

from .helpers import make_trace, nchw_to_nhwc

rng = np.random.default_rng(0)
X = rng.standard_normal((2, 8, 6, 6)).astype("float32")
CONV = rng.standard_normal((2, 8, 6, 6)).astype("float32")
SHIFT = rng.normal(0, 0.5, (1, 8, 1, 1)).astype("float32")  # a folded BatchNorm's β − μ·s per channel


def _report(conv_b, *, op_b="Conv"):
    a = make_trace([("stem", "Conv2d", X, "NCHW"), ("block.conv", "Conv2d", CONV, "NCHW"),
                    ("output", "output", CONV.mean(axis=(2, 3)), "NC")])
    b = make_trace([("stem", op_b, X, "NCHW"), ("block.conv", op_b, conv_b, "NCHW"),
                    ("output", "output", conv_b.mean(axis=(2, 3)), "NC")], framework="onnx")
    return parity.diff_traces(a, b)


def _codes(report):
    return [g.code for g in report.diagnoses if g.layer == "block.conv"]


def test_a_scaled_kernel_is_named_from_the_values():
    report = _report(CONV * np.float32(1.05))
    assert report.first_divergence.a_name == "block.conv"
    (g,) = [g for g in report.diagnoses if g.code == "weight_scale"]
    assert g.layer == "block.conv" and abs(g.evidence["factor"] - 1.05) < 1e-5
    assert g.message.startswith("B's 'block.conv' is A's 'block.conv' (Conv2d) scaled by 1.05 in every one of its 8 channels")


def test_a_scaled_kernel_before_a_folded_batchnorm_is_named_too():
    # B folded conv + BN: b = 1.05·a − 0.05·(β − μ·s) per channel
    report = _report(np.float32(1.05) * CONV - np.float32(0.05) * SHIFT)
    (g,) = [g for g in report.diagnoses if g.code == "weight_scale"]
    assert abs(g.evidence["factor"] - 1.05) < 1e-5 and g.evidence["offset_rms"] > 0.01
    assert "what a scaled kernel before a folded BatchNorm leaves" in g.message


def test_a_missing_bias_is_a_per_channel_offset():
    report = _report(CONV + SHIFT)
    (g,) = [g for g in report.diagnoses if g.code == "bias_offset"]
    assert g.evidence["shifted_channels"] == 8.0 and "weight_scale" not in _codes(report)


def test_factors_that_differ_per_channel_or_a_nonlinear_error_are_not_called_a_scale():
    # per-channel factors (normalisation statistics or an epsilon) are not one scale
    factors = np.linspace(0.8, 1.3, 8, dtype="float32").reshape(1, 8, 1, 1)
    assert not {"weight_scale", "bias_offset"} & set(_codes(_report(CONV * factors)))
    # an operation difference: the per-channel affine fit leaves most of the error
    assert not {"weight_scale", "bias_offset"} & set(_codes(_report(np.tanh(CONV))))


def test_the_layout_decides_which_axis_holds_the_channels():
    a = make_trace([("block.conv", "Conv2d", CONV, "NCHW"), ("output", "output", CONV.mean(axis=(2, 3)), "NC")])
    scaled = CONV * np.float32(1.05)
    b = make_trace([("block.conv", "Conv2D", nchw_to_nhwc(scaled), "NHWC"),
                    ("output", "output", scaled.mean(axis=(2, 3)), "NC")], framework="keras")
    report = parity.diff_traces(a, b)
    (g,) = [g for g in report.diagnoses if g.code == "weight_scale"]
    assert g.evidence["channels"] == 8.0
