"""Keras 2 (tf_keras) models are captured like Keras 3 ones: functional, Sequential and
subclassed; the same tap names, layouts and attributes; replay and weight parity on their
layers; layer paths where names repeat; fused activations split; Keras 2 H5 files load."""

from __future__ import annotations

import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tf_keras = pytest.importorskip("tf_keras")

import parity  # noqa: E402
from parity.capture.keras import KerasBackend, keras_module  # noqa: E402
from parity.weights import find_layer  # noqa: E402
from parity._zoo import ConvNet, randomize_bn  # noqa: E402
from parity._zoo.keras_twins import _convnet_layers  # noqa: E402

X = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))


@pytest.fixture(scope="module")
def convnet():
    torch.manual_seed(0)
    return randomize_bn(ConvNet().eval(), seed=1)


def tf_keras_twin(model, bn_epsilon="match", swap_stats=False):
    """The zoo's Keras 3 twin of ConvNet, built with tf_keras: Conv2D → BN → ReLU → Permute →
    Flatten → Dense, torch's weights copied with the usual transposes."""
    layers, weights = _convnet_layers(tf_keras, model, bn_epsilon, "permute")
    inp = tf_keras.Input((28, 28, 1), name="image")
    x = inp
    for layer in layers:
        x = layer(x)
    km = tf_keras.Model(inp, x, name="convnet")
    gamma, beta, mean, var = weights[1]
    km.get_layer("layer1_0").set_weights(weights[0])
    km.get_layer("layer1_1").set_weights([gamma, beta, var, mean] if swap_stats else weights[1])
    km.get_layer("fc").set_weights(weights[2])
    return km


def test_functional_taps_layouts_and_attrs_as_for_keras_3(convnet):
    twin = tf_keras_twin(convnet)
    trace = parity.capture(twin, nhwc(X))
    assert trace.names == ["layer1_0", "layer1_1", "layer1_2", "to_nchw", "flatten", "fc", "output"]
    assert [t.op for t in trace.taps] == ["Conv2D", "BatchNormalization", "ReLU", "Permute", "Flatten", "Dense", "output"]
    assert [t.layout for t in trace.taps] == ["NHWC", "NHWC", "NHWC", "NCHW", "N(CHW)", "NC", "NC"]
    bn = trace["layer1_1"]
    assert bn.attrs["epsilon"] == pytest.approx(convnet.layer1[1].eps)
    np.testing.assert_allclose(bn.attrs["moving_variance"], convnet.layer1[1].running_var.numpy(), rtol=1e-6)
    assert trace["layer1_0"].attrs["padding"] == "same" and trace["layer1_0"].attrs["data_format"] == "channels_last"
    np.testing.assert_array_equal(trace["output"].value, twin(nhwc(X), training=False).numpy())
    info = trace.model
    assert (info.framework, info.framework_version, info.kind) == ("keras", tf_keras.__version__, "tf_keras functional")
    assert info.param_count == twin.count_params()
    (spec,) = KerasBackend(twin).input_spec()
    assert (spec.name, spec.shape, spec.dtype, spec.layout) == ("image", (None, 28, 28, 1), "float32", "NHWC")


def test_sequential_nested_in_sequential():
    inner = tf_keras.Sequential(
        [tf_keras.layers.Conv2D(2, 1, name="inner_conv"), tf_keras.layers.Activation("relu", name="inner_act")],
        name="inner",
    )
    model = tf_keras.Sequential([tf_keras.Input((6, 6, 1)), inner, tf_keras.layers.Flatten(name="flat")], name="outer")
    x = np.random.default_rng(1).standard_normal((2, 6, 6, 1)).astype("float32")
    trace = parity.capture(model, x, containers=True)
    assert trace.names == ["inner_conv", "inner_act", "inner", "flat", "output"]
    assert trace["inner"].role == "container" and trace.model.kind == "tf_keras Sequential"
    assert trace["flat"].attrs["flat_from"] == (6, 6, 2)


def test_faithful_pair_passes_with_every_layer_matched(convnet):
    report = parity.diff(convnet, tf_keras_twin(convnet), X)
    assert report.ok, str(report)
    compared, total = report.coverage
    assert (compared, total) == (4, 4)  # conv, bn, relu, fc
    assert report.layer("layer1.1").b_name == "layer1_1"
    assert max(d.rel_err for d in report.layers) < 1e-5
    # weight parity read every tf_keras variable: kernel, bias, gamma, beta, moving mean and variance
    assert sorted(p.b_param for p in report.params) == sorted(
        ["kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance", "kernel", "bias"]
    )
    assert all(p.status == "ok" for p in report.params)


def test_bn_epsilon_bug_is_flagged_at_the_batchnorm(convnet):
    report = parity.diff(convnet, tf_keras_twin(convnet, bn_epsilon="keras-default"), X)
    first = report.first_divergence
    assert (first.a_name, first.b_name) == ("layer1.1", "layer1_1")
    assert first.own_method == "replay" and first.own_err == pytest.approx(first.rel_err, rel=1e-3)
    assert "bn_epsilon" in [d.code for d in first.diagnoses]


def test_swapped_bn_statistics_are_named_by_weight_parity(convnet):
    report = parity.diff(convnet, tf_keras_twin(convnet, swap_stats=True), X)
    bad = [(p.a_layer, p.a_param, p.b_param, p.status) for p in report.params if p.status != "ok"]
    assert bad == [
        ("layer1.1", "running_mean", "moving_mean", "swapped"),
        ("layer1.1", "running_var", "moving_variance", "swapped"),
    ]
    assert report.first_divergence.a_name == "layer1.1"


class Twice(tf_keras.Model):
    """Subclassed: a layer called twice, a Dense with a fused activation, a dict output."""

    def __init__(self):
        super().__init__(name="twice")
        self.conv = tf_keras.layers.Conv2D(1, 3, padding="same", name="shared")
        self.flat = tf_keras.layers.Flatten(name="flat")
        self.head = tf_keras.layers.Dense(3, activation="relu", name="head")

    def call(self, x):
        return self.head(self.flat(self.conv(self.conv(x)))), {"skip": x}


def test_subclassed_model_captures_its_inner_layers():
    model = Twice()
    x = np.random.default_rng(2).standard_normal((2, 6, 6, 1)).astype("float32")
    trace = parity.capture(model, x)
    assert trace.names == ["shared", "shared#1", "flat", "head", "head:activation", "output[0]", "output[1][skip]"]
    assert [t.op for t in trace.taps][:5] == ["Conv2D", "Conv2D", "Flatten", "Dense", "relu"]
    assert trace.model.kind == "tf_keras subclassed"
    np.testing.assert_allclose(trace["shared#1"].value, model.conv(trace["shared"].value).numpy(), rtol=1e-6)
    kernel, bias = model.head.get_weights()
    np.testing.assert_allclose(trace["head"].value, trace["flat"].value @ kernel + bias, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(trace["head:activation"].value, np.maximum(trace["head"].value, 0))
    assert trace["head"].attrs["activation"] == "linear" and trace["head:activation"].attrs["activation"] == "relu"
    np.testing.assert_array_equal(trace["output[1][skip]"].value, x)


def test_patching_is_removed_also_after_a_failure(convnet):
    twin = tf_keras_twin(convnet)
    layers = [layer for layer in twin.layers]
    with pytest.raises(parity.CaptureError) as err:
        parity.capture(twin, np.zeros((2, 27, 27, 1), "float32"))
    assert "(2, 27, 27, 1)" in str(err.value) and "(None, 28, 28, 1)" in str(err.value)
    assert all("call" not in layer.__dict__ for layer in layers)
    fused = Twice()
    fused(np.zeros((1, 6, 6, 1), "float32"))
    activation = fused.head.activation
    with pytest.raises(parity.CaptureError):
        parity.capture(fused, np.zeros((1, 6, 6, 2), "float32"))
    assert fused.head.activation is activation and "call" not in fused.head.__dict__
    assert parity.capture(twin, nhwc(X)).names[0] == "layer1_0"  # and it still works


# --- repeated layer names: layer paths -------------------------------------------------------


class TorchBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = torch.nn.Linear(8, 8)
        self.norm = torch.nn.LayerNorm(8, eps=1e-12)

    def forward(self, x):
        return self.norm(self.dense(x))


class TorchStack(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block_a = TorchBlock()
        self.block_b = TorchBlock()

    def forward(self, x):
        return self.block_b(self.block_a(x))


class KerasBlock(tf_keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = tf_keras.layers.Dense(8, name="dense")
        self.norm = tf_keras.layers.LayerNormalization(epsilon=1e-12, name="norm")

    def call(self, x):
        return self.norm(self.dense(x))


class KerasBody(tf_keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.block_a = KerasBlock(name="block_a")
        self.block_b = KerasBlock(name="block_b")

    def call(self, x):
        return self.block_b(self.block_a(x))


class KerasStack(tf_keras.Model):
    """Like transformers' TF models: the model holds a main layer (``bert``) that holds the
    blocks, so its layer paths have one segment more than the torch module names."""

    def __init__(self):
        super().__init__(name="stack")
        self.body = KerasBody(name="body")

    def call(self, x):
        return self.body(x)


def stack_pair(kernel_scale: float = 1.0):
    torch.manual_seed(3)
    a = TorchStack().eval()
    b = KerasStack()
    b(np.zeros((1, 8), "float32"))
    for name in ("block_a", "block_b"):
        ta, kb = getattr(a, name), getattr(b.body, name)
        kb.dense.set_weights([ta.dense.weight.detach().numpy().T, ta.dense.bias.detach().numpy()])
        kb.norm.set_weights([ta.norm.weight.detach().numpy(), ta.norm.bias.detach().numpy()])
    kernel, bias = b.body.block_b.dense.get_weights()
    b.body.block_b.dense.set_weights([kernel * kernel_scale, bias])
    return a, b


XS = np.random.default_rng(4).standard_normal((3, 8)).astype("float32")


def test_repeated_names_give_layer_paths_that_align_to_torch_modules():
    a, b = stack_pair()
    trace = parity.capture(b, XS)
    assert trace.names == ["body/block_a/dense", "body/block_a/norm", "body/block_b/dense", "body/block_b/norm", "output"]
    assert find_layer(b, "body/block_b/dense") is b.body.block_b.dense
    assert find_layer(b, "body/block_b/norm#1") is b.body.block_b.norm
    report = parity.diff(a, b, XS)
    assert report.ok and report.coverage == (4, 4)
    # block_a.dense ↔ body/block_a/dense: a run of the path's segments is the torch name
    assert {d.a_name: (d.b_name, d.how) for d in report.layers if d.role != "output"} == {
        "block_a.dense": ("body/block_a/dense", "scope"), "block_a.norm": ("body/block_a/norm", "scope"),
        "block_b.dense": ("body/block_b/dense", "scope"), "block_b.norm": ("body/block_b/norm", "scope"),
    }


def test_scope_keys_of_layer_paths_and_graph_tensors():
    from parity.align import _scope_keys

    keys = _scope_keys("bert/encoder/layer_._3/attention/output/dense")
    assert {"encoder_layer_3_attention_output_dense", "encoder_layer_3_attention_output"} <= keys
    assert "encoder_layer_attention_output_dense" not in keys  # the block index stays
    assert "encoder_layer_3_attention_output_dropout" in _scope_keys("bert/encoder/layer_._3/attention/output/dropout_2")
    graph = _scope_keys("model_1/conv1_bn_1/batchnorm/add_1:0")  # a graph tensor: its last segment is the op
    assert "conv1_bn" in graph and not any(k.endswith("add") for k in graph)


def test_a_bug_in_a_path_named_layer_is_replayed_and_its_weight_named():
    a, b = stack_pair(kernel_scale=1.05)
    report = parity.diff(a, b, XS)
    first = report.first_divergence
    assert (first.a_name, first.b_name, first.own_method) == ("block_b.dense", "body/block_b/dense", "replay")
    assert 0.03 < first.own_err < 0.05 and first.own_err == pytest.approx(first.rel_err, rel=1e-3)  # W·1.05, b not
    (bad,) = [p for p in report.params if p.status != "ok"]
    assert (bad.a_layer, bad.b_layer, bad.a_param, bad.status) == ("block_b.dense", "body/block_b/dense", "weight", "differs")


# --- fused activations ------------------------------------------------------------------------


@pytest.mark.parametrize("package", ["keras", "tf_keras"])
def test_a_fused_activation_pairs_with_torchs_own_module(package):
    keras = pytest.importorskip(package)
    torch.manual_seed(5)
    a = torch.nn.Sequential()
    a.add_module("fc", torch.nn.Linear(8, 4))
    a.add_module("act", torch.nn.Tanh())
    a.eval()
    inp = keras.Input((8,))
    fc = keras.layers.Dense(4, activation="tanh", name="fc")
    b = keras.Model(inp, fc(inp))
    fc.set_weights([a.fc.weight.detach().numpy().T, a.fc.bias.detach().numpy()])
    report = parity.diff(a, b, XS)
    assert report.ok, str(report)
    assert [(d.a_name, d.b_name) for d in report.layers] == [("fc", "fc"), ("act", "fc:activation"), ("output", "output")]
    fc.set_weights([a.fc.weight.detach().numpy().T, a.fc.bias.detach().numpy() + 0.1])  # the bug: a bias off
    first = parity.diff(a, b, XS).first_divergence
    assert (first.a_name, first.b_name, first.own_method) == ("fc", "fc", "replay")  # replayed without its tanh


# --- Keras 2 as `keras`, and Keras 2 files ----------------------------------------------------


def test_keras_2_importable_as_keras_is_recognised(convnet, monkeypatch):
    """Where ``import keras`` gives Keras 2 (TensorFlow ≤ 2.15) there is no tf_keras: the model's
    package is found under the name ``keras``."""
    twin = tf_keras_twin(convnet)
    monkeypatch.setitem(sys.modules, "keras", tf_keras)
    monkeypatch.delitem(sys.modules, "tf_keras")
    assert keras_module(twin) is tf_keras
    assert parity.capture(twin, nhwc(X)).names[:2] == ["layer1_0", "layer1_1"]


def test_keras_2_h5_files_load_and_diff(convnet, tmp_path):
    import tensorflow as tf

    twin = tf_keras_twin(convnet)
    twin.save(tmp_path / "convnet.h5")
    loaded = parity.load(tmp_path / "convnet.h5")  # Keras 3 reads this one itself
    assert parity.diff(convnet, loaded, X).ok

    # nobuco-style: tf.* calls become TFOpLambda layers, which only Keras 2 can rebuild
    torch.manual_seed(6)
    a = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU6()).eval()
    inp = tf_keras.Input((8,), name="x")
    fc = tf_keras.layers.Dense(4, name="fc")
    b = tf_keras.Model(inp, tf.clip_by_value(fc(inp), 0.0, 6.0), name="clip")
    fc.set_weights([a[0].weight.detach().numpy().T * 20, a[0].bias.detach().numpy()])  # values reach the clip
    with torch.no_grad():
        a[0].weight.mul_(20)
    b.save(tmp_path / "clip.h5")
    loaded = parity.load(tmp_path / "clip.h5")
    assert isinstance(loaded, tf_keras.Model)
    report = parity.diff(a, loaded, XS)
    assert report.ok and report.layer("0").b_name == "fc"
    assert [t.op for t in parity.capture(loaded, XS).taps] == ["Dense", "TFOpLambda", "output"]


def test_keras_2_saved_model_loads_as_the_live_model_on_request(convnet, tmp_path):
    twin = tf_keras_twin(convnet, bn_epsilon="keras-default")
    twin.save(tmp_path / "convnet", save_format="tf")
    loaded = parity.load(tmp_path / "convnet", keras=True)
    assert isinstance(loaded, tf_keras.Model)
    report = parity.diff(convnet, loaded, X)  # layers, replay and weights, as for the live twin
    first = report.first_divergence
    assert (first.a_name, first.b_name, first.own_method) == ("layer1.1", "layer1_1", "replay")
    (tmp_path / "graph_only").mkdir()
    with pytest.raises(parity.ModelError, match="no keras_metadata.pb.*without keras=True"):
        parity.load(tmp_path / "graph_only", keras=True)


def test_drift_baselines_are_built_for_tf_keras_models_too(convnet):
    from parity.baseline import fresh_twin, randomized_stats_twin

    twin = tf_keras_twin(convnet)
    fresh = fresh_twin(twin)
    assert isinstance(fresh, tf_keras.Model) and [l.name for l in fresh.layers] == [l.name for l in twin.layers]
    bn = next(l for l in fresh.layers if type(l).__name__ == "BatchNormalization")
    np.testing.assert_array_equal(bn.moving_variance.numpy(), 1.0)  # fresh statistics, not the trained ones
    rnd = next(l for l in randomized_stats_twin(twin).layers if type(l).__name__ == "BatchNormalization")
    assert 0.005 <= rnd.moving_variance.numpy().min() and rnd.moving_variance.numpy().max() <= 0.05
