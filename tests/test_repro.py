"""A repro to file: ``report.save_repro(dir)`` writes the layer's recorded input, both outputs,
each model's layer alone and a ``repro.py`` that reruns them with the frameworks only.  The
generated script is run here, in a fresh interpreter, and must print the error parity measured."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest

import parity
from parity.errors import ParityError

from .helpers import conv_chain, scaled_copy

torch = pytest.importorskip("torch")


def _run(bundle):
    done = subprocess.run([sys.executable, str(bundle / "repro.py")], cwd=bundle.parent, capture_output=True,
                          text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


def _alone(text: str) -> float:
    found = re.search(r"both layers alone on A's input: relative error ([0-9.e+-]+)", text)
    assert found, text
    return float(found.group(1))


@pytest.fixture(scope="module")
def onnx_pair():
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    a = conv_chain()
    b = scaled_copy(a, {"2": 1.5})
    x = np.random.default_rng(0).standard_normal((2, 3, 10, 10)).astype("float32")
    buf = io.BytesIO()
    torch.onnx.export(b, (torch.from_numpy(x),), buf, opset_version=17, dynamo=False)
    return a, onnx.load_from_string(buf.getvalue()), x


def test_a_torch_onnx_repro_reruns_the_divergence(onnx_pair, tmp_path):
    a, b, x = onnx_pair
    report = parity.diff(a, b, x)
    assert report.first_divergence.a_name == "2"
    bundle = report.save_repro(tmp_path / "repro")
    names = {p.name for p in bundle.iterdir()}
    assert {"input_a.npy", "input_b.npy", "output_a.npy", "output_b.npy", "a_weights.npz", "b_piece.onnx",
            "repro.py", "meta.json", "README.txt"} <= names
    assert np.load(bundle / "input_a.npy").shape == (2, 8, 10, 10)
    code, text = _run(bundle)
    assert code == 0, text
    assert _alone(text) == pytest.approx(report.layer("2").own_err, rel=1e-3)
    assert "A: 2 (Conv2d)" in text


def test_a_repro_is_refused_clearly_where_there_is_none(onnx_pair, tmp_path):
    a, b, x = onnx_pair
    report = parity.diff(a, b, x)
    with pytest.raises(ParityError, match=r"no repro for layer '4'.*\(2\)"):
        report.save_repro(tmp_path / "r", layer="4")  # 4 only inherits the error
    report.to_json(tmp_path / "report.json")
    with pytest.raises(ParityError, match="no live models"):
        parity.load_report(tmp_path / "report.json").save_repro(tmp_path / "r")
    ok = parity.diff(a, a, x)
    with pytest.raises(ParityError, match="no live models"):
        ok.save_repro(tmp_path / "r")


def test_a_torch_keras_repro_reruns_the_padding_bug(tmp_path):
    keras = pytest.importorskip("keras")
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU()).eval()
    b = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")])
    b.layers[0].set_weights([a[0].weight.detach().numpy().transpose(2, 3, 1, 0), a[0].bias.detach().numpy()])
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype("float32")
    report = parity.diff(a, b, x)
    assert report.first_divergence.a_name == "0"
    bundle = report.save_repro(tmp_path / "pad")
    assert {"a_weights.npz", "b_layer.json", "b_weights.npz"} <= {p.name for p in bundle.iterdir()}
    code, text = _run(bundle)
    assert code == 0, text
    own = report.layer("0").own_err
    assert _alone(text) == pytest.approx(own, rel=1e-3) and own > 0.1


def test_a_first_layer_repro_starts_the_onnx_piece_at_the_graph_input(onnx_pair, tmp_path):
    onnx = pytest.importorskip("onnx")
    a, _, x = onnx_pair
    b = scaled_copy(a, {"0": 1.5})
    buf = io.BytesIO()
    torch.onnx.export(b, (torch.from_numpy(x),), buf, opset_version=17, dynamo=False)
    report = parity.diff(a, onnx.load_from_string(buf.getvalue()), x)
    first = report.first_divergence
    assert first.a_name == "0" and first.own_method == "replay"  # measured from the graph input
    bundle = report.save_repro(tmp_path / "first")
    assert json.loads((bundle / "meta.json").read_text())["pieces"]["b"]["kind"] == "onnx"
    code, text = _run(bundle)
    assert code == 0, text
    assert _alone(text) == pytest.approx(first.own_err, rel=1e-3)


def _torch_chain_and_keras_twin(keras):
    """A torch Conv-ReLU-Conv-ReLU chain and its Keras twin (10×10 NHWC) with conv 2's kernel ×1.5."""
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1),
                            torch.nn.ReLU()).eval()
    k = keras.Sequential([keras.Input((10, 10, 3)), keras.layers.Conv2D(8, 3, padding="same"), keras.layers.ReLU(),
                          keras.layers.Conv2D(8, 3, padding="same"), keras.layers.ReLU()])
    k.layers[0].set_weights([a[0].weight.detach().numpy().transpose(2, 3, 1, 0), a[0].bias.detach().numpy()])
    k.layers[2].set_weights([a[2].weight.detach().numpy().transpose(2, 3, 1, 0) * 1.5, a[2].bias.detach().numpy()])
    return a, k


def test_a_frozen_graph_repro_holds_the_piece_of_the_graph(tmp_path):
    """B a frozen GraphDef (.pb): the bundle holds the nodes between the tensor that is the layer's
    input and the layer's tensor, its start a placeholder, and repro.py reruns it in a TF1 session."""
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    a, k = _torch_chain_and_keras_twin(keras)
    fn = tf.function(lambda t: k(t, training=False)).get_concrete_function(tf.TensorSpec((2, 10, 10, 3), tf.float32))
    tf.io.write_graph(convert_variables_to_constants_v2(fn).graph.as_graph_def(), str(tmp_path), "b.pb", as_text=False)
    x = np.random.default_rng(0).standard_normal((2, 3, 10, 10)).astype("float32")
    report = parity.diff(a, str(tmp_path / "b.pb"), x)
    first = report.first_divergence
    assert first.a_name == "2" and first.own_method == "replay"
    bundle = report.save_repro(tmp_path / "graph")
    piece = json.loads((bundle / "meta.json").read_text())["pieces"]["b"]
    assert piece["kind"] == "tfgraph" and piece["target"] == first.b_name and piece["source"].endswith("Relu:0")
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((bundle / "b_piece.pb").read_bytes())
    ops = [n.op for n in graph_def.node]
    assert ops.count("Placeholder") == 1 and ops.count("Conv2D") == 1 and "Relu" not in ops  # the piece, not the graph
    code, text = _run(bundle)
    assert code == 0, text
    assert _alone(text) == pytest.approx(first.own_err, rel=1e-3)
    assert "the piece of the TensorFlow graph computing it" in (bundle / "README.txt").read_text()


def test_a_tflite_repro_reruns_the_whole_model_and_reads_the_layer(tmp_path):
    """B a .tflite: its interpreter runs whole models only, so the bundle holds the whole model and the
    inputs it was fed; repro.py reruns it, reads the layer's tensor and prints the error as compared."""
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    a, k = _torch_chain_and_keras_twin(keras)
    (tmp_path / "b.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(k).convert())
    x = np.random.default_rng(0).standard_normal((2, 3, 10, 10)).astype("float32")
    report = parity.diff(a, str(tmp_path / "b.tflite"), x)
    first = report.first_divergence
    assert first.a_name == "2"
    bundle = report.save_repro(tmp_path / "lite")
    meta = json.loads((bundle / "meta.json").read_text())
    piece = meta["pieces"]["b"]
    assert (piece["kind"], piece["tensor"], piece["inputs"]) == ("tflite", first.b_name, ["b_model_input_0.npy"])
    assert np.load(bundle / "b_model_input_0.npy").shape == (2, 10, 10, 3)  # B's layout, as it was fed
    code, text = _run(bundle)
    assert code == 0, text
    found = re.search(r"B's whole model rerun .* against A's recorded output: relative error ([0-9.e+-]+)", text)
    assert found, text
    assert float(found.group(1)) == pytest.approx(first.metrics.rel_err, rel=1e-3) and first.metrics.rel_err > 0.1
    assert "the whole TFLite model and the inputs it was fed" in (bundle / "README.txt").read_text()
