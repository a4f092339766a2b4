"""The TF→PyTorch ResNet-50 scenario: ``keras.applications.ResNet50`` (v1: conv biases, stride
on the first 1×1 convolution, BatchNorm epsilon 1.001e-5) ported to PyTorch by
:func:`parity._zoo.resnet50.port_keras_resnet50`, with trained-like BatchNorm statistics.

At 64×64, batch 1 (ResNet-50's 176 modules, all of them; ~15 s here) the correct port agrees with Keras
layer for layer, every torch module is compared, and the worst relative error is float32
round-off.  The port that gives one BatchNorm Keras' *default* epsilon (1e-3) instead of
ResNet's 1.001e-5 is caught at that BatchNorm, with a ``bn_epsilon`` diagnosis.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import parity  # noqa: E402
from parity._zoo import resnet50_pair  # noqa: E402
from parity._zoo.resnet50 import KERAS_BN_EPS, ResNet50, port_keras_resnet50  # noqa: E402

SIZE = 64
BUGGY_BN = "conv3_block2_2_bn"


@pytest.fixture(scope="module")
def pair():
    return resnet50_pair(input_size=SIZE, seed=0)


@pytest.fixture(scope="module")
def x_nchw():
    return np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype("float32")


def test_port_mirrors_keras_layer_names_and_epsilon(pair):
    keras_model, torch_model = pair
    keras_names = {layer.name for layer in keras_model.layers} - {keras_model.layers[0].name}  # input layer
    torch_names = {name for name, _ in torch_model.named_children()}
    assert torch_names == keras_names
    bns = [m for m in torch_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 53 and all(m.eps == KERAS_BN_EPS for m in bns)
    assert torch_model.conv3_block1_1_conv.stride == (2, 2) and torch_model.conv3_block1_2_conv.stride == (1, 1)
    # randomised statistics: not the init's mean 0 / var 1, and small enough for epsilon to matter
    var = torch.cat([m.running_var for m in bns])
    assert float(var.min()) < 0.05 and not torch.allclose(var, torch.ones_like(var))


def test_pair_is_deterministic(pair):
    _, torch_model = pair
    _, again = resnet50_pair(input_size=SIZE, seed=0)
    for (name, t), (_, u) in zip(torch_model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(t, u), name


def test_port_alone_reproduces_the_keras_outputs(pair, x_nchw):
    keras_model, torch_model = pair
    ported = port_keras_resnet50(keras_model, ResNet50())
    with torch.no_grad():
        got = ported(torch.from_numpy(x_nchw)).numpy()
    want = np.asarray(keras_model(np.transpose(x_nchw, (0, 2, 3, 1)), training=False))
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4


def test_correct_port_agrees_at_every_layer(pair, x_nchw):
    keras_model, torch_model = pair
    report = parity.diff(torch_model, keras_model, x_nchw)
    assert report.ok, report.summary()
    compared, total = report.coverage
    assert (compared, total) == (176, 176), [u.name for u in report.unmatched_a]
    assert not report.unmatched, [(u.side, u.name, u.reason) for u in report.unmatched]
    compared_names = {d.a_name for d in report.layers}
    assert compared_names >= {name for name, _ in torch_model.named_children()}
    worst = max(report.layers, key=lambda d: d.metrics.rel_err)
    print(f"\nResNet-50 {SIZE}×{SIZE}: {compared}/{total} torch layers compared, "
          f"max relative error {worst.metrics.rel_err:.2e} at {worst.a_name}")
    assert worst.metrics.rel_err < 1e-4


def test_one_bn_with_keras_default_epsilon_is_diagnosed(pair, x_nchw):
    keras_model, torch_model = pair
    bn = getattr(torch_model, BUGGY_BN)
    bn.eps = 1e-3  # Keras' BatchNormalization default, not ResNet's 1.001e-5
    try:
        report = parity.diff(torch_model, keras_model, x_nchw)
    finally:
        bn.eps = KERAS_BN_EPS
    assert not report.ok
    first = report.first_divergence
    assert (first.a_name, first.b_name) == (BUGGY_BN, BUGGY_BN)
    codes = [d.code for d in first.diagnoses]
    assert "bn_epsilon" in codes, codes
    diagnosis = next(d for d in first.diagnoses if d.code == "bn_epsilon")
    assert diagnosis.evidence["eps_a_fitted"] == pytest.approx(1e-3, rel=0.05)
    # everything before the bug agrees
    assert all(d.ok for d in report.layers[: first.index])


@pytest.mark.parametrize("a_side", ["torch", "keras"])
def test_correct_port_passes_against_float64_with_margin(pair, x_nchw, a_side):
    """ResNet-50 depth (53 BatchNorms, 16 residual adds): every layer of the faithful port within a
    few noise floors of the float64 twin of A, torch's or Keras'."""
    from parity.reference import NOISE_FACTOR

    keras_model, torch_model = pair
    if a_side == "torch":
        report = parity.diff(torch_model, keras_model, x_nchw, reference="float64")
    else:
        report = parity.diff(keras_model, torch_model, np.transpose(x_nchw, (0, 2, 3, 1)), reference="float64")
    assert report.ok, report.summary()
    assert report.reference.kind == "float64" and report.reference.side == "a"
    assert report.reference.judged == len(report.layers) == 177
    worst = max(report.layers, key=lambda d: d.noise_ratio)
    print(f"\nResNet-50 against float64 ({a_side} A): worst {worst.noise_ratio:.2f}× noise at {worst.a_name}")
    assert worst.noise_ratio < NOISE_FACTOR / 4  # measured 1.24× (torch A), 1.00× (Keras A): k has 4× margin at least


def test_one_bn_with_keras_default_epsilon_is_flagged_against_float64(pair, x_nchw):
    keras_model, torch_model = pair
    bn = getattr(torch_model, BUGGY_BN)
    bn.eps = 1e-3
    try:
        report = parity.diff(torch_model, keras_model, x_nchw, reference="float64")
    finally:
        bn.eps = KERAS_BN_EPS
    first = report.first_divergence
    assert first.a_name == BUGGY_BN and "bn_epsilon" in {g.code for g in first.diagnoses}
    assert first.noise_ratio > 1000
