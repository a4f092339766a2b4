"""The MLPerf-style scenario: a TensorFlow MobileNet-v1 delivered as a frozen ``.pb`` is
ported to PyTorch, and the port is checked against the graph's ``Relu6:0`` tensors.

The Keras ``MobileNet(alpha=0.25)`` at 128×128 gets trained-like BatchNorm statistics
(variances 0.01…0.5, so the epsilon matters), is frozen to a GraphDef ``.pb``, and its
weights are ported to :class:`parity._zoo.MobileNetV1`.  The correct port agrees with the
graph to float32 round-off; the port that keeps torch's default BatchNorm epsilon (1e-5
instead of Keras' 1e-3) is flagged at the first BatchNorm.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import parity  # noqa: E402
from parity.cli import main  # noqa: E402
from parity._zoo import MobileNetV1, port_keras_mobilenet  # noqa: E402

SCOPE = "mobilenet_0.25_128_1"  # the Keras model's name scope in the traced graph
RELU6 = ["conv1_relu"] + [f"conv_{kind}_{i}_relu" for i in range(1, 14) for kind in ("dw", "pw")]


@pytest.fixture(scope="module")
def keras_mobilenet():
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNet(weights=None, input_shape=(128, 128, 3), alpha=0.25)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.get_weights()[0].shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, n).astype("float32"),  # gamma
                    rng.normal(0.0, 0.1, n).astype("float32"),  # beta
                    rng.normal(0.0, 0.1, n).astype("float32"),  # moving mean
                    rng.uniform(0.01, 0.5, n).astype("float32"),  # moving variance
                ]
            )
    return model


@pytest.fixture(scope="module")
def frozen_pb(keras_mobilenet, tmp_path_factory):
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn = tf.function(lambda x: keras_mobilenet(x, training=False)).get_concrete_function(
        tf.TensorSpec((None, 128, 128, 3), tf.float32)
    )
    graph_def = convert_variables_to_constants_v2(fn).graph.as_graph_def()
    out = tmp_path_factory.mktemp("frozen")
    tf.io.write_graph(graph_def, str(out), "mobilenet.pb", as_text=False)
    return str(out / "mobilenet.pb")


@pytest.fixture(scope="module")
def x_nchw():
    return np.random.default_rng(1).standard_normal((2, 3, 128, 128)).astype("float32")


@pytest.fixture(scope="module")
def port(keras_mobilenet):
    return port_keras_mobilenet(keras_mobilenet)


@pytest.fixture(scope="module")
def port_torch_eps(keras_mobilenet):
    return port_keras_mobilenet(keras_mobilenet, bn_eps=1e-5)  # torch's default: the porting bug


@pytest.fixture(scope="module")
def relu6_mapping(port):
    names = [n for n, m in port.named_modules() if isinstance(m, torch.nn.ReLU6)]
    assert names == RELU6
    return {name: f"import/*/{name}*/Relu6:0" for name in names}


@pytest.fixture(scope="module")
def report_mapped(port, frozen_pb, x_nchw, relu6_mapping):
    return parity.diff(port, frozen_pb, x_nchw, mapping=relu6_mapping)


@pytest.fixture(scope="module")
def report_auto(port, frozen_pb, x_nchw):
    return parity.diff(port, frozen_pb, x_nchw)


@pytest.fixture(scope="module")
def report_eps_mapped(port_torch_eps, frozen_pb, x_nchw, relu6_mapping):
    return parity.diff(port_torch_eps, frozen_pb, x_nchw, mapping=relu6_mapping)


@pytest.fixture(scope="module")
def report_eps_auto(port_torch_eps, frozen_pb, x_nchw):
    return parity.diff(port_torch_eps, frozen_pb, x_nchw)


# --- the port itself ------------------------------------------------------------------------


def test_port_computes_what_the_keras_model_computes(keras_mobilenet, port, x_nchw):
    with torch.no_grad():
        y_torch = port(torch.from_numpy(x_nchw)).numpy()
    y_keras = np.asarray(keras_mobilenet(np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1)), training=False))
    assert y_torch.shape == y_keras.shape == (2, 1000)
    np.testing.assert_allclose(y_torch, y_keras, rtol=1e-4, atol=1e-7)
    assert (y_torch.argmax(1) == y_keras.argmax(1)).all()
    bns = [m for m in port.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 27 and {m.eps for m in bns} == {1e-3}  # Keras' epsilon, taken per layer
    assert sum(p.numel() for p in port.parameters()) == keras_mobilenet.count_params() - sum(
        2 * m.num_features for m in bns  # Keras counts the moving statistics as (non-trainable) weights
    )


def test_port_sizes_itself_from_the_keras_model(keras_mobilenet):
    model = port_keras_mobilenet(keras_mobilenet)
    assert isinstance(model, MobileNetV1) and model.alpha == 0.25
    assert model.conv_preds.out_channels == 1000 and model.conv_pw_13.out_channels == 256
    assert not model.training


def test_port_refuses_a_model_of_another_width(keras_mobilenet):
    with pytest.raises(ValueError, match="conv1"):
        port_keras_mobilenet(keras_mobilenet, MobileNetV1(alpha=0.5))


# --- parity taps ----------------------------------------------------------------------------


def test_taps_lists_the_27_relu6_tensors_of_the_pb(frozen_pb, capsys):
    assert main(["taps", frozen_pb, "--filter", "import/*Relu6:0"]) == 0
    out = capsys.readouterr().out  # not a terminal: one tab-separated line per tensor
    assert f"\t{SCOPE}/conv_dw_1_relu_1/Relu6:0\tRelu6\t2×64×64×8\tfloat32\tNHWC" in out
    assert "27 of 90 tensors matching '*Relu6:0'" in out
    names = re.findall(r"\S+/Relu6:0", out)
    assert names == [f"{SCOPE}/{name}_1/Relu6:0" for name in RELU6]
    assert f"{SCOPE}/conv_dw_1_relu_1/Relu6:0" in out


# --- the correct port against the .pb -------------------------------------------------------


def test_port_matches_the_pb_at_every_mapped_relu6(report_mapped):
    report = report_mapped
    assert report.ok, str(report)
    assert report.first_divergence is None
    mapped = [d for d in report.layers if d.how == "mapping"]
    assert [d.a_name for d in mapped] == RELU6
    for d in mapped:
        assert d.b_name == f"{SCOPE}/{d.a_name}_1/Relu6:0"
        assert (d.op, d.b_op) == ("ReLU6", "Relu6")
        assert d.transform == "NHWC→NCHW"
        assert d.rel_err < 1e-4, d.a_name
    assert max(d.rel_err for d in mapped) < 1e-6  # measured 3.6e-7
    assert report.inputs.conversions == ("NCHW→NHWC",)
    # the rest is aligned by name scope around the mapped anchors
    assert report.coverage == (89, 91)
    assert report.layer("output").metrics.argmax_agreement == 1.0


def test_port_matches_the_pb_without_a_mapping(report_auto, report_mapped):
    report = report_auto
    assert report.ok, str(report)
    compared, total = report.coverage
    assert (compared, total) == (89, 91) and compared / total >= 0.8
    # every torch module found its TensorFlow name scope: conv1_bn ↔ …/conv1_bn_1/batchnorm/add_1:0
    layers = [d for d in report.layers if d.role != "output"]
    # Keras names the pooling layer itself (global_average_pooling2d, _1, _2, … per process):
    # when its scope no longer carries our name it is paired by its values instead
    pooled = report.layer("global_average_pooling2d")
    assert pooled.b_name.endswith("/Mean:0") and pooled.how in ("scope", "value")
    named = [d for d in layers if d is not pooled]
    assert {d.how for d in named} == {"scope"}, [(d.a_name, d.b_name, d.how) for d in named if d.how != "scope"]
    for d in named:
        assert d.b_name.split("/")[1] == f"{d.a_name}_1", (d.a_name, d.b_name)
    assert report.layer("conv1_bn").b_name == f"{SCOPE}/conv1_bn_1/batchnorm/add_1:0"
    assert report.layer("conv_pad_2").b_op == "Pad"
    assert {(u.name, u.reason) for u in report.unmatched_a} == {("conv1_pad", "one-sided"), ("dropout", "one-sided")}
    # the same pairs as with the mapping, and the same numbers
    assert [(d.a_name, d.b_name) for d in report.layers] == [(d.a_name, d.b_name) for d in report_mapped.layers]
    assert max(d.rel_err for d in report.layers) < 1e-6


# --- torch's default BatchNorm epsilon --------------------------------------------------------


@pytest.mark.parametrize("which", ["mapped", "auto"])
def test_torch_default_bn_epsilon_diverges_at_the_first_batchnorm(which, report_eps_mapped, report_eps_auto):
    report = report_eps_mapped if which == "mapped" else report_eps_auto
    assert not report.ok
    first = report.first_divergence
    assert (first.a_name, first.b_name) == ("conv1_bn", f"{SCOPE}/conv1_bn_1/batchnorm/add_1:0")
    assert (first.op, first.b_op, first.how) == ("BatchNorm2d", "AddV2", "scope")
    assert first.rel_err == pytest.approx(1.92e-3, rel=0.05)
    assert report.layer("conv1").ok  # the convolution before it is exact
    # exact up to float32 rounding: torch's and TF's kernels sum the 27 products of a 3×3×3
    # convolution in different orders (and differently on different CPUs), a few ulps apart
    assert report.layer("conv1").rel_err < 1e-6
    # the first Relu6 tensor of the graph is the next flagged layer; all 27 fail
    failing = [d.a_name for d in report.layers if not d.ok]
    assert [n for n in failing if n in RELU6][0] == "conv1_relu"
    assert all(not report.layer(n).ok for n in RELU6)
    assert report.layer("conv1_relu").rel_err == pytest.approx(2.0e-3, rel=0.05)
    assert max(d.rel_err for d in report.layers) > 0.1  # grows to ~0.14 around blocks 5-6
    assert report.layer("output").metrics.argmax_agreement == 1.0  # the softmax still picks the same class
    if which == "mapped":
        assert report.layer("conv1_relu").how == "mapping"


def test_torch_default_bn_epsilon_has_the_epsilon_signature(port_torch_eps, keras_mobilenet, frozen_pb, x_nchw):
    """conv1_bn of the port is, channel by channel, the graph's BatchNorm scaled by
    sqrt((var + 1e-5) / (var + 1e-3)): the numbers a bn_epsilon diagnosis is made from."""
    from parity.diagnose.bn import per_channel_affine

    a = parity.capture(port_torch_eps, x_nchw)["conv1_bn"].value
    b = parity.capture(frozen_pb, np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1)))[
        f"{SCOPE}/conv1_bn_1/batchnorm/add_1:0"
    ].value
    slope, _, resid = per_channel_affine(b.transpose(0, 3, 1, 2), a, 1)
    var = keras_mobilenet.get_layer("conv1_bn").get_weights()[3].astype(np.float64)
    np.testing.assert_allclose(slope, np.sqrt((var + 1e-3) / (var + 1e-5)), rtol=1e-6)
    assert resid.max() < 1e-6


def test_torch_default_bn_epsilon_is_diagnosed(report_eps_auto):
    first = report_eps_auto.first_divergence
    assert first.a_name == "conv1_bn"
    assert [d.code for d in first.diagnoses] == ["bn_epsilon"]
    assert first.diagnoses[0].evidence["eps_b_fitted"] == pytest.approx(1e-3, rel=0.05)
