"""parity.diff on hand-converted pairs: correct conversions pass, each known bug is flagged
at the exact layer."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

import parity  # noqa: E402
from parity._zoo import BasicBlock, ConvNet, MobileNetBlock, randomize_bn, to_keras  # noqa: E402


def _seeded(cls, *args, **kwargs):
    torch.manual_seed(0)
    return cls(*args, **kwargs).eval()


@pytest.fixture(scope="module")
def digits_batch():
    return np.random.default_rng(0).uniform(0, 1, (8, 1, 28, 28)).astype("float32")


@pytest.fixture(scope="module")
def convnet_trained_like():
    return randomize_bn(_seeded(ConvNet), seed=1)


# --- the seed ConvNet ---------------------------------------------------------------------


@pytest.mark.parametrize("flatten", ["permute", "reorder"])
def test_correct_convnet_conversion_passes(convnet_trained_like, digits_batch, flatten):
    km = to_keras(convnet_trained_like, bn_epsilon="match", flatten=flatten)
    report = parity.diff(convnet_trained_like, km, digits_batch)
    assert report.ok, str(report)
    assert report.first_divergence is None
    names = [(d.a_name, d.b_name) for d in report.layers]
    assert names[:4] == [("layer1.0", "layer1_0"), ("layer1.1", "layer1_1"), ("layer1.2", "layer1_2"), ("fc", "fc")]
    assert report.layer("layer1.0").transform == "NHWC→NCHW"
    assert max(d.rel_err for d in report.layers) < 1e-5
    out = report.layer("output")
    assert out.metrics.argmax_agreement == 1.0


def test_keras_default_bn_epsilon_flagged_at_batchnorm_when_trained(convnet_trained_like, digits_batch):
    km = to_keras(convnet_trained_like, bn_epsilon="keras-default", flatten="permute")
    report = parity.diff(convnet_trained_like, km, digits_batch)
    assert not report.ok
    first = report.first_divergence
    assert (first.a_name, first.b_name) == ("layer1.1", "layer1_1")
    assert (first.op, first.b_op) == ("BatchNorm2d", "BatchNormalization")
    assert report.layer("layer1.0").ok  # the conv before it is fine
    assert first.rel_err > 1e-2
    (diag,) = first.diagnoses
    assert diag.code == "bn_epsilon" and diag.layer == "layer1.1"
    assert diag.evidence["eps_b_fitted"] == pytest.approx(1e-3, rel=0.05)
    assert diag.evidence["eps_a_fitted"] == pytest.approx(1e-5, abs=2e-5)
    assert diag.evidence["channels_explained"] == 16
    assert [x.code for x in report.diagnoses] == ["bn_epsilon"]


def test_keras_default_bn_epsilon_within_tolerance_when_untrained(digits_batch):
    model = _seeded(ConvNet)  # running_var = 1: the epsilon gap is 5e-4, under float32's 1e-3
    km = to_keras(model, bn_epsilon="keras-default", flatten="permute")
    report = parity.diff(model, km, digits_batch)
    assert report.ok
    assert report.layer("layer1.1").rel_err == pytest.approx(4.95e-4, rel=0.02)
    # …and a stricter tolerance exposes it at the same layer
    strict = parity.diff(model, km, digits_batch, rtol=1e-4, atol=1e-6)
    assert strict.first_divergence.a_name == "layer1.1"
    assert strict.first_divergence.diagnoses[0].code == "bn_epsilon"
    assert strict.first_divergence.diagnoses[0].evidence["eps_b_fitted"] == pytest.approx(1e-3, rel=0.05)


def test_dense_weights_not_reordered_after_channels_last_flatten(convnet_trained_like, digits_batch):
    km = to_keras(convnet_trained_like, bn_epsilon="match", flatten="naive")
    report = parity.diff(convnet_trained_like, km, digits_batch)
    assert report.first_divergence.a_name == "fc"
    assert report.first_divergence.b_name == "fc"
    for name in ("layer1.0", "layer1.1", "layer1.2"):
        assert report.layer(name).ok, name
    assert report.first_divergence.rel_err > 0.1


def test_nested_sequential_keras_model_aligns(convnet_trained_like, digits_batch):
    from parity._zoo import to_keras_convnet_sequential

    km = to_keras_convnet_sequential(convnet_trained_like, bn_epsilon="keras-default", flatten="permute")
    report = parity.diff(convnet_trained_like, km, digits_batch)
    assert report.first_divergence.op == "BatchNorm2d"
    assert report.first_divergence.b_op == "BatchNormalization"


def test_keras_as_model_a_and_torch_as_b(convnet_trained_like, digits_batch):
    km = to_keras(convnet_trained_like, bn_epsilon="keras-default", flatten="permute")
    x_nhwc = np.ascontiguousarray(digits_batch.transpose(0, 2, 3, 1))
    report = parity.diff(km, convnet_trained_like, x_nhwc)
    assert report.inputs.conversions == ("NHWC→NCHW",)
    assert report.first_divergence.a_name == "layer1_1"
    assert report.first_divergence.b_name == "layer1.1"
    assert report.layer("layer1_0").transform == "NCHW→NHWC"


# --- MobileNet-v1 style block --------------------------------------------------------------


@pytest.fixture(scope="module")
def mobilenet():
    return randomize_bn(_seeded(MobileNetBlock, 8, 16, 2), seed=2)


@pytest.fixture(scope="module")
def large_inputs():
    # large enough that pre-activations exceed 6, where ReLU and ReLU6 part
    return (np.random.default_rng(1).standard_normal((4, 8, 16, 16)) * 20).astype("float32")


def test_mobilenet_block_correct_conversion_passes(mobilenet, large_inputs):
    report = parity.diff(mobilenet, to_keras(mobilenet), large_inputs)
    assert report.ok, str(report)
    compared = {d.a_name for d in report.layers}
    assert {"dw", "bn1", "relu1", "pw", "bn2", "relu2"} <= compared


def test_mobilenet_relu_instead_of_relu6_flagged_at_that_activation(mobilenet, large_inputs):
    km = to_keras(mobilenet, relu6="relu")
    report = parity.diff(mobilenet, km, large_inputs)
    first = report.first_divergence
    assert first.a_name == "relu1" and first.op == "ReLU6"
    for name in ("dw", "bn1"):
        assert report.layer(name).ok


# --- ResNet basic block with a residual add ---------------------------------------------


def test_resnet_basic_block_passes(digits_batch):
    model = randomize_bn(_seeded(BasicBlock, 16), seed=3)
    x = np.random.default_rng(2).standard_normal((2, 16, 12, 12)).astype("float32")
    report = parity.diff(model, to_keras(model), x)
    assert report.ok, str(report)
    assert {"conv1", "bn1", "conv2", "bn2", "relu2"} <= {d.a_name for d in report.layers}
    # the Keras Add has no module on the torch side: shown as one-sided, not lost
    assert any(u.side == "b" and u.op == "Add" and u.reason == "one-sided" for u in report.unmatched)


# --- ResNet-50 depth: float32 round-off accumulates, the defaults must still pass ---------


@pytest.fixture(scope="module")
def deep_resnet():
    from parity._zoo import DeepResNet, calibrate_bn

    model = _seeded(DeepResNet, 25)  # 51 convolutions, as deep as ResNet-50
    calib = torch.from_numpy(np.random.default_rng(1).standard_normal((16, 3, 32, 32)).astype("float32"))
    return calibrate_bn(model, calib)


def test_resnet50_depth_correct_conversion_passes_with_margin(deep_resnet):
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype("float32")
    report = parity.diff(deep_resnet, to_keras(deep_resnet), x)
    assert report.ok, str(report)
    assert len(report.layers) == 156  # every module of A, the pooled (N,C,1,1)↔(N,C) pair included
    assert report.layer("pool").transform == "reshape (16,)→(16, 1, 1)"
    assert max(d.rel_err for d in report.layers) < 1e-4  # measured 3e-6: ≥ 300× under float32's 1e-3
    assert {u.op for u in report.unmatched} == {"Add"}


def test_resnet50_depth_keras_default_epsilon_flagged_at_the_first_batchnorm(deep_resnet):
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype("float32")
    report = parity.diff(deep_resnet, to_keras(deep_resnet, bn_epsilon="keras-default"), x)
    assert report.first_divergence.a_name == "stem_bn"
    assert report.first_divergence.diagnoses[0].code == "bn_epsilon"
    # the HTML of a ResNet-50-depth pair stays small: charts are drawn, not tensors stored
    html = report.to_html()
    assert len(html.encode()) < 3_000_000
    assert html.count('class="detail"') == 9  # the first eight flagged layers up close, and the output
    assert f"show all {len(report.layers)} layers" in html
