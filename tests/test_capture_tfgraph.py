"""TensorFlow graph capture: a Keras MobileNet frozen to a GraphDef ``.pb``, exported as a
SavedModel and traced as a ConcreteFunction; tensor names, selection, one run per capture,
layouts, errors, and a diff against the live Keras model."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import parity  # noqa: E402
from parity.capture.tfgraph import (  # noqa: E402
    TFGraph,
    TFGraphBackend,
    resolve_tensor_name,
    resolve_tensor_names,
)
from parity.errors import InputError, MappingError, ModelError  # noqa: E402

SHAPE = (128, 128, 3)
X = np.random.default_rng(0).standard_normal((2, *SHAPE)).astype("float32")


def _randomize_batchnorm(model):
    """Non-trivial BN statistics and biases, so BN's ``mul_1`` and ``add_1`` differ."""
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.get_weights()[0].shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, n).astype("float32"),
                    rng.normal(0, 0.3, n).astype("float32"),
                    rng.normal(0, 0.3, n).astype("float32"),
                    rng.uniform(0.5, 2.0, n).astype("float32"),
                ]
            )
        elif layer.name == "conv_preds":
            w, b = layer.get_weights()
            layer.set_weights([w, rng.normal(0, 0.5, b.shape).astype("float32")])


@pytest.fixture(scope="module")
def mobilenet():
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNet(weights=None, input_shape=SHAPE, alpha=0.25)
    _randomize_batchnorm(model)
    return model


@pytest.fixture(scope="module")
def concrete(mobilenet):
    fn = tf.function(lambda x: mobilenet(x, training=False))
    return fn.get_concrete_function(tf.TensorSpec((None, *SHAPE), tf.float32, name="input"))


@pytest.fixture(scope="module")
def frozen_pb(concrete, tmp_path_factory):
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(concrete)
    out = tmp_path_factory.mktemp("frozen")
    tf.io.write_graph(frozen.graph.as_graph_def(), str(out), "mobilenet.pb", as_text=False)
    return out / "mobilenet.pb"


@pytest.fixture(scope="module")
def graph(frozen_pb):
    return TFGraph.from_frozen_pb(frozen_pb)


@pytest.fixture(scope="module")
def trace(graph):
    return TFGraphBackend(graph).capture([X])


@pytest.fixture(scope="module")
def keras_out(mobilenet):
    return np.asarray(mobilenet(X, training=False))


def test_frozen_pb_inputs_outputs_and_info(graph, mobilenet):
    assert graph.inputs == ("input:0",) and graph.outputs == ("Identity:0",)
    info = TFGraphBackend(graph).info()
    assert info.framework == "tf-graph" and info.framework_version == tf.__version__
    assert info.name == "mobilenet.pb" and info.kind == "frozen GraphDef"
    # the frozen weights: every Keras weight (BN moving stats included) plus BN's epsilon constants
    assert mobilenet.count_params() <= info.param_count <= mobilenet.count_params() + 100
    (spec,) = info.input_spec
    assert spec.name == "input" and spec.shape == (None, *SHAPE) and spec.layout == "NHWC"


def test_capture_records_relu6_tensors_with_tf_names(trace, keras_out):
    relu6 = [n for n in trace.names if n.endswith("Relu6:0")]
    assert len(relu6) == 27
    assert "mobilenet_0.25_128_1/conv_dw_1_relu_1/Relu6:0" in relu6
    assert not any(n.startswith("import/") for n in trace.names)
    tap = trace["mobilenet_0.25_128_1/conv_dw_1_relu_1/Relu6:0"]
    assert tap.op == "Relu6" and tap.layout == "NHWC" and tap.shape == (2, 64, 64, 8)
    ops = {t.op for t in trace.layers}
    assert {"Conv2D", "DepthwiseConv2dNative", "Relu6", "Mul", "AddV2", "Pad", "Mean", "Softmax"} <= ops
    conv = trace["mobilenet_0.25_128_1/conv1_1/convolution:0"]
    assert conv.attrs["data_format"] == "NHWC" and conv.attrs["strides"] == (1, 2, 2, 1)
    assert trace["mobilenet_0.25_128_1/reshape_2_1/Reshape:0"].layout == "NC"
    # weights and their constant-only arithmetic are not activations
    assert not any("ReadVariableOp" in n or "Rsqrt" in n for n in trace.names)
    assert trace.names[-1] == "output" and trace["output"].role == "output"
    assert trace["output"].attrs["tensor"] == "Identity:0"
    np.testing.assert_allclose(trace["output"].value, keras_out, atol=1e-5)
    # topological: a layer's tensors come before the next layer's
    assert trace.names.index("mobilenet_0.25_128_1/conv1_relu_1/Relu6:0") < trace.names.index(
        "mobilenet_0.25_128_1/conv_dw_1_1/depthwise:0"
    )


def test_intermediate_matches_keras_layer(trace, mobilenet):
    sub = keras.Model(mobilenet.inputs[0], mobilenet.get_layer("conv_dw_1_relu").output)
    np.testing.assert_allclose(
        trace["mobilenet_0.25_128_1/conv_dw_1_relu_1/Relu6:0"].value, np.asarray(sub(X)), atol=1e-5
    )


def test_resolve_tensor_name_forms(graph):
    full = "mobilenet_0.25_128_1/conv_dw_1_relu_1/Relu6:0"
    assert resolve_tensor_name(graph, full) == full
    assert resolve_tensor_name(graph, "import/" + full) == full
    assert resolve_tensor_name(graph, full[:-2]) == full  # ':0' implied
    assert resolve_tensor_name(graph, "*conv_dw_1_relu*/Relu6:0") == full
    assert resolve_tensor_name(graph, "import/*conv_dw_1_relu*/Relu6:0") == full
    assert resolve_tensor_name(graph, r"re:conv_dw_1_relu_\d+/Relu6") == full
    assert len(resolve_tensor_names(graph, "*/Relu6:0")) == 27
    assert resolve_tensor_name(graph, "import/input:0") == "input:0"
    # also on the imported tf.Graph (names carry "import/" there)
    assert resolve_tensor_name(graph.graph, "*conv_dw_1_relu*/Relu6:0") == full
    with pytest.raises(MappingError, match="matches 27 tensors"):
        resolve_tensor_name(graph, "*/Relu6:0")


def test_unknown_name_lists_near_names(graph):
    with pytest.raises(MappingError) as err:
        resolve_tensor_name(graph, "mobilenet_0.25_128_1/conv_dw_1_relu/Relu6:0")
    message = str(err.value)
    assert "Closest names" in message and "mobilenet_0.25_128_1/conv_dw_1_relu_1/Relu6:0" in message
    with pytest.raises(MappingError, match="Closest names"):
        resolve_tensor_name(graph, "*conv_dw_99_relu*/Relu6:0")


def test_capture_runs_the_graph_once(graph, monkeypatch):
    backend = TFGraphBackend(graph)
    calls = []
    original = TFGraphBackend._run

    def counting(self, arrays, fetches):
        calls.append(tuple(fetches))
        return original(self, arrays, fetches)

    monkeypatch.setattr(TFGraphBackend, "_run", counting)
    trace = backend.capture([X])
    assert len(calls) == 1 and backend.run_count == 1
    tensors = {t.attrs["tensor"] for t in trace.taps}
    assert tensors == set(calls[0]) == set(backend.last_fetches)
    assert len(trace.layers) > 100


def test_select_globs_and_regexes(graph):
    backend = TFGraphBackend(graph, select=["*/Relu6:0", "re:conv_preds_1/BiasAdd"])
    trace = backend.capture([X])
    assert len(trace.layers) == 28 and trace.layers[-1].name.endswith("conv_preds_1/BiasAdd:0")
    assert all(t.op in ("Relu6", "BiasAdd") for t in trace.layers) and trace.outputs
    with pytest.raises(MappingError, match="Closest names"):
        TFGraphBackend(graph, select=["*/Relu7:0"]).capture([X])


def test_granularity_modules_keeps_scope_outputs(graph):
    trace = TFGraphBackend(graph, granularity="modules").capture([X])
    names = trace.names
    assert "mobilenet_0.25_128_1/conv1_bn_1/batchnorm/add_1:0" in names
    assert "mobilenet_0.25_128_1/conv1_bn_1/batchnorm/mul_1:0" not in names
    assert "mobilenet_0.25_128_1/conv_preds_1/BiasAdd:0" in names
    assert "mobilenet_0.25_128_1/conv_preds_1/convolution:0" not in names
    assert len([n for n in names if n.endswith("Relu6:0")]) == 27


def test_inputs_by_name_and_input_errors(graph, trace):
    backend = TFGraphBackend(graph)
    by_name = backend.capture({"import/input:0": X})
    np.testing.assert_array_equal(by_name["output"].value, trace["output"].value)
    with pytest.raises(InputError, match=r"input: \(None, 128, 128, 3\)"):
        backend.capture([X.transpose(0, 3, 1, 2)])
    with pytest.raises(InputError, match="takes 1 input"):
        backend.capture([X, X])
    with pytest.raises(InputError, match="no input named 'image'"):
        backend.capture({"image": X})


def test_saved_model_export(mobilenet, keras_out, tmp_path):
    mobilenet.export(str(tmp_path / "sm"), verbose=False)
    graph = TFGraph.from_saved_model(tmp_path / "sm")
    backend = TFGraphBackend(graph)
    info = backend.info()
    assert info.kind == "SavedModel (serving_default)" and info.name == "sm"
    trace = backend.capture([X])
    np.testing.assert_allclose(trace["output"].value, keras_out, atol=1e-5)
    assert len([n for n in trace.names if n.endswith("Relu6:0")]) == 27
    with pytest.raises(ModelError, match="'serving_default'"):
        TFGraph.from_saved_model(tmp_path / "sm", signature="predict")


def test_concrete_function(concrete, keras_out):
    graph = TFGraph.from_concrete_function(concrete)
    backend = TFGraphBackend(graph)
    assert backend.info().kind == "tf.function"
    assert TFGraphBackend.accepts(graph) and TFGraphBackend.accepts(concrete)
    assert not TFGraphBackend.accepts(object())
    np.testing.assert_allclose(backend.capture([X])["output"].value, keras_out, atol=1e-5)


def test_missing_or_bad_files(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        TFGraph.from_frozen_pb(tmp_path / "nope.pb")
    bad = tmp_path / "bad.pb"
    bad.write_bytes(b"\xff\x00 definitely not a protobuf \x13\x37")
    with pytest.raises(ModelError, match="not a frozen TensorFlow GraphDef"):
        TFGraph.from_frozen_pb(bad)
    with pytest.raises(ModelError, match="not a SavedModel directory"):
        TFGraph.from_saved_model(tmp_path)


def test_diff_keras_against_frozen_graph(mobilenet, graph):
    bn = "mobilenet_0.25_128_1/conv1_bn_1/batchnorm/add_1:0"
    report = parity.diff(mobilenet, TFGraphBackend(graph, granularity="modules"), X, mapping={"conv1_bn": bn})
    assert report.ok and report.outputs
    matched = {d.a_name: d.b_name for d in report.layers}
    assert matched["conv1_bn"] == bn
    # convolutions and activations pair up by order whatever the aligner does with BatchNorm
    for layer in mobilenet.layers:
        if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D", "ReLU"):
            assert layer.name in matched, layer.name
    # a BatchNorm is never paired with half of its decomposition
    for a_name, b_name in matched.items():
        if a_name.endswith("_bn"):
            assert b_name.endswith("/batchnorm/add_1:0"), (a_name, b_name)


def test_the_input_of_a_clip_written_as_minimum_and_maximum_is_partial():
    # onnx2tf's hard-sigmoid: max(min(x·α + β, 1), 0). Where nothing is clipped the pre-clip AddV2
    # equals the gate and value matching would pair it; only the Maximum is the layer's output
    w = tf.constant(np.random.default_rng(0).standard_normal((4, 6)).astype("float32"))

    @tf.function(input_signature=[tf.TensorSpec((2, 4), tf.float32, name="x")])
    def gate(x):
        pre = tf.matmul(x, w) * (1 / 6) + 0.5
        return tf.maximum(tf.minimum(pre, 1.0), 0.0)

    trace = TFGraphBackend(TFGraph.from_concrete_function(gate.get_concrete_function())).capture(
        [np.random.default_rng(1).standard_normal((2, 4)).astype("float32")]
    )
    partial = {t.op for t in trace.layers if t.attrs.get("partial")}
    whole = {t.op for t in trace.layers if not t.attrs.get("partial")}
    assert {"AddV2", "Minimum"} <= partial and "Maximum" in whole
    clip = next(t for t in trace.layers if t.op == "Maximum")
    np.testing.assert_array_equal(clip.value, trace.outputs[0].value)


def test_a_frozen_graphs_own_error_is_measured_by_feeding_the_recorded_tensor(tmp_path):
    """A frozen GraphDef takes any tensor as a feed: a flagged layer's own error is the piece of
    the graph from the tensor whose A counterpart is the layer's input, fed that input — equal to
    what replaying a live torch twin of B gives."""
    pytest.importorskip("torch")
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from .helpers import conv_chain, scaled_copy

    a = conv_chain()
    b_torch = scaled_copy(a, {"2": 1.5})
    L = keras.layers
    km = keras.Sequential([keras.Input((10, 10, 3)), L.Conv2D(8, 3, padding="same", name="c0"), L.ReLU(name="r1"),
                           L.Conv2D(8, 3, padding="same", name="c2"), L.ReLU(name="r3"), L.Conv2D(4, 1, name="c4")])
    for name, t in (("c0", b_torch[0]), ("c2", b_torch[2]), ("c4", b_torch[4])):
        km.get_layer(name).set_weights([t.weight.detach().numpy().transpose(2, 3, 1, 0), t.bias.detach().numpy()])
    fn = tf.function(lambda x: km(x, training=False)).get_concrete_function(tf.TensorSpec((2, 10, 10, 3), tf.float32))
    tf.io.write_graph(convert_variables_to_constants_v2(fn).graph.as_graph_def(), str(tmp_path), "m.pb", as_text=False)
    x = np.random.default_rng(0).standard_normal((2, 3, 10, 10)).astype("float32")
    on_torch = parity.diff(a, b_torch, x)
    on_graph = parity.diff(a, str(tmp_path / "m.pb"), x)
    assert on_graph.first_divergence.a_name == "2"
    replayed = [d for d in on_graph.layers if d.own_method == "replay"]
    assert replayed, [(d.a_name, d.b_name, d.own_method) for d in on_graph.layers]
    for d in replayed:
        assert d.own_err == pytest.approx(on_torch.layer(d.a_name).own_err, rel=1e-3, abs=1e-6), d.a_name
    assert on_graph.layer("2").own_method == "replay" and on_graph.layer("2").own_err > 0.1
