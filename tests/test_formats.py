"""Comparisons across the formats a converted model lives in, loaded by path: a model
against its own ONNX export, TFLite conversion and SavedModel, found faithful with automatic
alignment; a bug injected into the converted artifact found at the right layer; the CLI
driven in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import parity

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from parity._zoo import DeepResNet, randomize_bn  # noqa: E402

X = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype("float32")


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return randomize_bn(DeepResNet(2).eval(), seed=1)


@pytest.fixture(scope="module")
def onnx_file(resnet, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "resnet.onnx"
    torch.onnx.export(resnet, (torch.from_numpy(X),), str(path), dynamo=False)
    return path


def test_a_torch_model_matches_its_onnx_export_without_a_mapping(resnet, onnx_file):
    report = parity.diff(resnet, onnx_file, X)
    assert report.ok, str(report)
    # both exporters fold BatchNorm into the convolution: the ONNX Conv output is the BN output
    assert report.layer("stem_bn").b_op == "Conv" and report.layer("blocks.1.bn2").b_op == "Conv"
    fused = {u.name for u in report.unmatched_a if u.reason == "fused"}
    assert fused == {"stem", "blocks.0.conv1", "blocks.0.conv2", "blocks.1.conv1", "blocks.1.conv2"}
    assert not [u for u in report.unmatched if u.reason == "no-match"]
    compared, total = report.coverage
    assert compared / total >= 0.7  # the rest are the fused convolutions, named above


def test_op_level_capture_pairs_the_residual_add_with_the_onnx_add(resnet, onnx_file):
    report = parity.diff(resnet, onnx_file, X, granularity="ops")
    assert report.ok
    add = report.layer("blocks.1:add#0")
    assert (add.op, add.b_op) == ("add", "Add") and add.rel_err < 1e-5


def test_a_bug_injected_into_the_onnx_graph_is_found_at_its_layer(resnet, onnx_file, tmp_path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_file))
    # scale the weights of the second block's first (BN-folded) convolution by 1.05
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and "blocks.1/conv1" in n.name)
    init = next(i for i in model.graph.initializer if i.name == conv.input[1])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.05, init.name))
    onnx.save(model, str(tmp_path / "bad.onnx"))
    report = parity.diff(resnet, tmp_path / "bad.onnx", X)
    assert report.first_divergence.a_name == "blocks.1.bn1"
    assert report.first_divergence.rel_err == pytest.approx(0.05, rel=0.05)
    assert report.layer("blocks.0.relu2").ok


@pytest.fixture(scope="module")
def keras_pair(tmp_path_factory):
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    from parity._zoo import to_keras

    torch.manual_seed(1)
    source = randomize_bn(DeepResNet(1).eval(), seed=2)
    model = to_keras(source)
    root = tmp_path_factory.mktemp("keras")
    (root / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    model.export(str(root / "saved"), verbose=False)
    del keras
    return model, root


def test_a_keras_model_matches_its_tflite_conversion(keras_pair):
    model, root = keras_pair
    x = np.transpose(X, (0, 2, 3, 1)).copy()
    report = parity.diff(model, root / "model.tflite", x)
    assert report.ok, str(report)
    assert report.b.kind == "TFLite flatbuffer"
    assert report.layer("stem_relu").b_op == "CONV_2D"  # Conv+BN+ReLU fused into one kernel
    assert {u.reason for u in report.unmatched_a} <= {"fused", "one-sided"}


def test_a_keras_model_matches_its_savedmodel(keras_pair):
    model, root = keras_pair
    x = np.transpose(X, (0, 2, 3, 1)).copy()
    report = parity.diff(model, root / "saved", x)
    assert report.ok, str(report)
    assert report.b.kind.startswith("SavedModel")
    compared, total = report.coverage
    assert compared == total and all(d.how in ("scope", "output") for d in report.layers)


def run_cli(*args, cwd=None):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "parity.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def test_the_cli_exit_codes_and_json_in_a_subprocess(resnet, onnx_file, tmp_path):
    torch.jit.save(torch.jit.trace(resnet, torch.from_numpy(X)), tmp_path / "resnet.pt")
    np.save(tmp_path / "x.npy", X)
    ok = run_cli("diff", str(tmp_path / "resnet.pt"), str(onnx_file), "--inputs", str(tmp_path / "x.npy"),
                 "--json", str(tmp_path / "ok.json"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "✓ PARITY" in ok.stdout
    assert json.loads((tmp_path / "ok.json").read_text())["a"]["kind"] == "TorchScript"

    bad_eps = randomize_bn(DeepResNet(2).eval(), seed=1)
    bad_eps.load_state_dict(resnet.state_dict())
    bad_eps.stem_bn.eps = 1e-3
    torch.jit.save(torch.jit.trace(bad_eps, torch.from_numpy(X)), tmp_path / "bad.pt")
    diverges = run_cli("diff", str(tmp_path / "bad.pt"), str(onnx_file), "--inputs", str(tmp_path / "x.npy"))
    assert diverges.returncode == 1 and "DIVERGES at stem_bn" in diverges.stdout

    usage = run_cli("diff", str(tmp_path / "nope.onnx"), str(onnx_file))
    assert usage.returncode == 2 and usage.stdout == ""
    assert f"parity: ModelError: model file '{tmp_path / 'nope.onnx'}' does not exist." in usage.stderr

    taps = run_cli("taps", str(onnx_file), "--inputs", str(tmp_path / "x.npy"), "--filter", "*Relu*")
    assert taps.returncode == 0 and "/stem_relu/Relu_output_0" in taps.stdout


def test_align_proposes_a_mapping_that_diff_reuses(resnet, onnx_file, tmp_path, capsys):
    from parity.cli import main

    torch.jit.save(torch.jit.trace(resnet, torch.from_numpy(X)), tmp_path / "resnet.pt")
    np.save(tmp_path / "x.npy", X)
    mapping = tmp_path / "map.toml"
    args = [str(tmp_path / "resnet.pt"), str(onnx_file), "--inputs", str(tmp_path / "x.npy")]
    assert main(["align", *args, "--write", str(mapping)]) == 0
    out = capsys.readouterr().out
    assert "matched 12 of 17 layers of A (71%)" in out
    text = mapping.read_text()
    assert '"stem_bn" = "/stem/Conv_output_0"' in text and '# "stem" = ?  # fused: Conv2d' in text
    assert main(["diff", *args, "--map", str(mapping)]) == 0
    assert "(12 by mapping; confidence ≥ 0.9 for 12 of 12)" in " ".join(capsys.readouterr().out.split())


def test_random_inputs_take_the_batch_a_fixed_batch_export_declares(resnet, tmp_path):
    path = tmp_path / "b1.onnx"
    torch.onnx.export(resnet, (torch.from_numpy(X[:1]),), str(path), dynamo=False)
    report = parity.diff(resnet, path)  # no inputs: a seeded batch shaped as the export declares
    assert report.ok and report.inputs.shapes_a == ((1, 3, 16, 16),)
