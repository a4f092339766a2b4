"""The trust policy for TensorFlow and Keras files: a SavedModel or frozen GraphDef holding an op
outside the pure-math allow-list (``WriteFile``, ``PrintV2`` to a file), a ``.keras`` config naming
``os.system`` — each refused before it runs, with the opt-in named; benign files load without it."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import parity  # noqa: E402
from parity.cli import main  # noqa: E402
from parity.errors import ModelError, UntrustedModel  # noqa: E402

X = np.ones((1, 3), np.float32)
SPEC = [tf.TensorSpec([1, 3], tf.float32)]


class WritesFile(tf.Module):
    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    @tf.function(input_signature=SPEC)
    def run(self, x):
        tf.io.write_file(self.target, tf.strings.as_string(tf.reduce_sum(x)))
        return tf.nn.relu(x) * 2.0


class PrintsToFile(tf.Module):
    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    @tf.function(input_signature=SPEC)
    def run(self, x):
        tf.print(x, output_stream=f"file://{self.target}")
        return x + 1.0


def _assert_cli_refuses(argv, capsys, *fragments: str) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in captured.err + captured.out
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err


@pytest.mark.parametrize("module, op", [(WritesFile, "WriteFile"), (PrintsToFile, "PrintV2")])
def test_a_saved_model_with_an_io_op_is_refused_unless_trusted(tmp_path, capsys, module, op):
    target = tmp_path / "written.txt"
    saved = tmp_path / "saved"
    obj = module(str(target))
    tf.saved_model.save(obj, str(saved), signatures=obj.run)

    with pytest.raises(UntrustedModel, match=rf"SavedModel holding ops outside parity's pure-math allow-list: {op} \(") as refused:
        parity.load(saved)
    assert "trust=True" in str(refused.value)
    _assert_cli_refuses(["taps", str(saved)], capsys, op, "--trust")
    assert not target.exists()

    assert main(["taps", str(saved), "--trust"]) == 0
    assert target.exists()  # what the refusal said the graph would do, it does


def test_a_frozen_graph_with_write_file_is_refused(tmp_path):
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    target = tmp_path / "written.txt"
    writer = WritesFile(str(target))  # tf.function holds its object weakly
    frozen = convert_variables_to_constants_v2(writer.run.get_concrete_function())
    tf.io.write_graph(frozen.graph.as_graph_def(), str(tmp_path), "evil.pb", as_text=False)
    tf.io.write_graph(frozen.graph.as_graph_def(), str(tmp_path), "evil.pbtxt", as_text=True)
    for name in ("evil.pb", "evil.pbtxt"):
        with pytest.raises(UntrustedModel, match=r"TensorFlow graph holding ops outside .*: WriteFile \("):
            parity.load(tmp_path / name)
    assert not target.exists()


def test_a_benign_saved_model_and_graph_load_without_trust(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"),
                              keras.layers.BatchNormalization(), keras.layers.Dense(2, activation="softmax")])
    model.export(str(tmp_path / "saved"), verbose=False)
    graph = parity.load(tmp_path / "saved")
    assert graph.kind.startswith("SavedModel")
    tf.io.write_graph(graph.graph_def, str(tmp_path), "frozen.pb", as_text=False)
    assert parity.diff(tmp_path / "frozen.pb", model, X).ok


@pytest.fixture
def plain_keras(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="relu", name="dense")])
    path = tmp_path / "plain.keras"
    model.save(path)
    return path


def _with_config(src, dst, change) -> None:
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(dst, "w") as out:
        for info in archive.infolist():
            data = archive.read(info.filename)
            if info.filename == "config.json":
                config = json.loads(data)
                change(config)
                data = json.dumps(config).encode()
            out.writestr(info, data)


def test_a_keras_config_naming_os_system_is_refused_without_a_traceback(plain_keras, tmp_path, capsys):
    target = tmp_path / "written"
    path = tmp_path / "evil.keras"

    def smuggle(config):
        dense = config["config"]["layers"][-1]
        dense["config"]["activation"] = {"module": "os", "class_name": "system",
                                         "config": f"touch {target}", "registered_name": None}

    _with_config(plain_keras, path, smuggle)
    with pytest.raises(UntrustedModel, match=r"config names code outside Keras: os.system \(Keras would import os\)"):
        parity.load(path)
    _assert_cli_refuses(["taps", str(path)], capsys, "os.system", "--trust")
    # trusted, Keras itself refuses the object: a ModelError, exit 2 with one line, not a TypeError trace
    with pytest.raises(ModelError, match="Keras cannot rebuild the model") as failed:
        parity.load(path, trust=True)
    assert not isinstance(failed.value, UntrustedModel)
    _assert_cli_refuses(["taps", str(path), "--trust"], capsys, "Keras cannot rebuild")
    assert not target.exists()


def test_an_unregistered_custom_layer_is_a_model_error(plain_keras, tmp_path):
    path = tmp_path / "custom.keras"

    def rename(config):
        layer = config["config"]["layers"][-1]
        layer.update(module=None, class_name="Doubler", registered_name="mypkg>Doubler")

    _with_config(plain_keras, path, rename)
    with pytest.raises(ModelError, match=r"Keras cannot rebuild the model .*Doubler") as failed:
        parity.load(path)
    assert not isinstance(failed.value, UntrustedModel)  # the code would be the caller's own, not the file's


def test_a_benign_keras_file_loads_without_trust(plain_keras):
    assert parity.load(plain_keras).get_layer("dense") is not None


def test_a_keras_2_h5_whose_op_layer_names_a_file_writer_is_refused(tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    import h5py

    inp = tf_keras.Input((3,), name="x")
    model = tf_keras.Model(inp, tf.clip_by_value(tf_keras.layers.Dense(2, name="fc")(inp), 0.0, 6.0))
    path = tmp_path / "clip.h5"
    model.save(path)
    assert isinstance(parity.load(path), tf_keras.Model)  # tf.clip_by_value: allowed without trust
    with h5py.File(path, "r+") as f:
        config = f.attrs["model_config"]
        config = config.decode() if isinstance(config, bytes) else config
        assert '"function": "clip_by_value"' in config
        f.attrs["model_config"] = config.replace('"function": "clip_by_value"', '"function": "io.write_file"')
    with pytest.raises(UntrustedModel, match=r"tf.io.write_file in the TFOpLambda layer .*\(outside parity's allow-list\)"):
        parity.load(path)


class SavesACheckpoint(tf.Module):
    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    @tf.function(input_signature=SPEC)
    def run(self, x):
        tf.raw_ops.SaveV2(prefix=self.target, tensor_names=["x"], shape_and_slices=[""], tensors=[x])
        return x * 3.0


def test_checkpoint_ops_are_allowed_only_in_the_saved_models_own_saver(tmp_path):
    # every SavedModel's saver holds SaveV2 (and loads without trust); the same op in a signature writes files
    target = tmp_path / "ckpt"
    saved = tmp_path / "saved"
    obj = SavesACheckpoint(str(target))
    tf.saved_model.save(obj, str(saved), signatures=obj.run)
    with pytest.raises(UntrustedModel, match=r"allow-list: SaveV2 \(SaveV2 in __inference_run"):
        parity.load(saved)
    assert parity.load(saved, trust=True).kind.startswith("SavedModel")


def test_a_keras_2_saved_model_with_a_lambda_needs_trust_as_a_keras_model(tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    inp = tf_keras.Input((3,))
    model = tf_keras.Model(inp, tf_keras.layers.Lambda(lambda t: t * 2, name="double")(tf_keras.layers.Dense(2)(inp)))
    model.save(tmp_path / "k2", save_format="tf")
    with pytest.raises(UntrustedModel, match=r"Keras 2 SavedModel whose layers hold Python code: a Lambda layer"):
        parity.load(tmp_path / "k2", keras=True)
    assert isinstance(parity.load(tmp_path / "k2", keras=True, trust=True), tf_keras.Model)
    assert parity.load(tmp_path / "k2").kind.startswith("SavedModel")  # as a graph it is pure math
