"""The `parity` command line: diff on factories, exit codes, errors, show."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("keras")

from parity.cli import main  # noqa: E402

PAIR_MODULE = textwrap.dedent(
    """
    import torch
    from parity._zoo import ConvNet, randomize_bn, to_keras

    torch.manual_seed(0)
    _torch = randomize_bn(ConvNet().eval(), seed=1)

    def torch_model():
        return _torch

    def keras_buggy():
        return to_keras(_torch, bn_epsilon="keras-default")

    def keras_good():
        return to_keras(_torch, bn_epsilon="match")
    """
)


@pytest.fixture(scope="module")
def pair_module(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    (root / "cli_pair_module.py").write_text(PAIR_MODULE)
    sys.path.insert(0, str(root))
    x = np.random.default_rng(0).uniform(0, 1, (4, 1, 28, 28)).astype("float32")
    np.save(root / "batch.npy", x)
    yield root
    sys.path.remove(str(root))


def test_diff_flags_the_batchnorm_and_exits_1(pair_module, capsys):
    out_json = pair_module / "out" / "report.json"
    code = main(
        [
            "diff",
            "cli_pair_module:torch_model",
            "cli_pair_module:keras_buggy",
            "--inputs",
            str(pair_module / "batch.npy"),
            "--json",
            str(out_json),
            "--html",
            str(pair_module / "out" / "report.html"),
            "--model-explorer",
            str(pair_module / "out" / "node_data.json"),
        ]
    )
    assert code == 1
    text = capsys.readouterr().out
    assert "layer1.1" in text and "bn_epsilon" in text
    assert f"HTML report written to {pair_module / 'out' / 'report.html'}" in text
    assert '<tr id="row-1" class="bad first' in (pair_module / "out" / "report.html").read_text()
    node_data = json.loads((pair_module / "out" / "node_data.json").read_text())
    assert node_data["main"]["results"]["layer1_1"]["bgColor"] == "#ef9a9a"
    saved = json.loads(out_json.read_text())
    assert saved["schema"] == "parity.report"
    assert main(["show", str(out_json)]) == 1
    assert "layer1.1" in capsys.readouterr().out


def test_repro_reruns_a_saved_report_and_writes_the_layers_bundle(pair_module, tmp_path, capsys):
    batch = tmp_path / "batch.npy"
    batch.write_bytes((pair_module / "batch.npy").read_bytes())
    saved = tmp_path / "r.json"
    assert main(["diff", "cli_pair_module:torch_model", "cli_pair_module:keras_buggy", "--inputs", str(batch),
                 "--json", str(saved)]) == 1
    data = json.loads(saved.read_text())
    command, first_layer = data["command"], data["layers"][0]["a_name"]
    assert command == ["cli_pair_module:torch_model", "cli_pair_module:keras_buggy", "--inputs", str(batch.resolve())]
    capsys.readouterr()
    assert main(["repro", str(saved), "--out", str(tmp_path / "bundle")]) == 0
    assert "repro of layer1.1 written to" in capsys.readouterr().out
    assert (tmp_path / "bundle" / "repro.py").is_file()
    assert main(["repro", str(saved), "--layer", first_layer, "--out", str(tmp_path / "first")]) == 0  # a passing layer
    assert (tmp_path / "first" / "repro.py").is_file()
    # an unknown layer: refused before any model loads, with the names near it
    assert main(["repro", str(saved), "--layer", "layer1.7", "--out", str(tmp_path / "x")]) == 2
    assert "layer1.1" in capsys.readouterr().err
    # the inputs file changed since the report: refused, not a repro of other numbers
    np.save(batch, np.zeros((4, 1, 28, 28), "float32"))
    assert main(["repro", str(saved), "--out", str(tmp_path / "y")]) == 2
    assert "the inputs of this rerun differ from the report's" in capsys.readouterr().err


def test_repro_of_a_report_from_live_models_says_what_to_do(pair_module, tmp_path, capsys):
    import parity
    import cli_pair_module as pm

    report = parity.diff(pm.torch_model(), pm.keras_buggy(), np.load(pair_module / "batch.npy"))
    report.to_json(tmp_path / "live.json")
    assert main(["repro", str(tmp_path / "live.json"), "--out", str(tmp_path / "b")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "records no command to rerun: it was made from live models in Python" in err
    assert "report.save_repro(DIR, layer=...)" in err


def test_diff_of_a_correct_pair_exits_0(pair_module):
    code = main(["diff", "cli_pair_module:torch_model", "cli_pair_module:keras_good", "--inputs", str(pair_module / "batch.npy")])
    assert code == 0


def test_diff_against_float64_writes_the_reference_and_the_noise(pair_module, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["diff", "cli_pair_module:torch_model", "cli_pair_module:keras_good", "--inputs",
                 str(pair_module / "batch.npy"), "--reference", "float64", "--json", str(out)])
    assert code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "judged against a float64 twin of model A" in text and "× noise" in text
    saved = json.loads(out.read_text())
    assert saved["reference"]["kind"] == "float64" and all(d["ref_err"] is not None for d in saved["layers"])


def test_bad_model_spec_exits_2_with_a_message(pair_module, capsys):
    assert main(["diff", "cli_pair_module:nope", "cli_pair_module:keras_good"]) == 2
    err = capsys.readouterr().err
    assert "has no attribute 'nope'" in err
    assert main(["diff", "just_a_path.pt", "cli_pair_module:keras_good"]) == 2
    assert "package.module:factory" in capsys.readouterr().err


def test_only_rtol_is_refused(pair_module, capsys):
    code = main(["diff", "cli_pair_module:torch_model", "cli_pair_module:keras_good", "--rtol", "1e-3"])
    assert code == 2
    assert "atol" in capsys.readouterr().err


def test_missing_inputs_file(pair_module, capsys):
    code = main(["diff", "cli_pair_module:torch_model", "cli_pair_module:keras_good", "--inputs", "nope.npy"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_diff_takes_a_memory_budget_and_refuses_a_bad_one(tmp_path, capsys):
    from parity.cli import main

    # a malformed size is a usage error (exit 2) naming the value, before any model is loaded
    assert main(["diff", "nope.keras", "nope.onnx", "--max-memory", "lots"]) == 2
    assert "'lots'" in capsys.readouterr().err


def test_a_state_dict_without_a_factory_names_the_cli_flag(pair_module, tmp_path, capsys):
    import torch

    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "weights.pth")
    weights = str(tmp_path / "weights.pth")
    advice = ": weights without the model's code. Give the class that builds the model: {flag} package.module:Net"
    assert main(["diff", weights, "cli_pair_module:torch_model"]) == 2
    err = capsys.readouterr().err
    assert f"{weights!r} is a state_dict (2 tensors: weight, bias)" + advice.format(flag="--factory-a") in err
    assert main(["diff", "cli_pair_module:torch_model", weights]) == 2
    assert advice.format(flag="--factory-b") in capsys.readouterr().err
    assert main(["taps", weights]) == 2
    assert advice.format(flag="--factory") in capsys.readouterr().err


def test_taps_without_a_shape_speaks_of_the_one_model_and_suggests_shape(pair_module, capsys):
    assert main(["taps", "cli_pair_module:torch_model"]) == 2
    assert (
        "parity cannot make a random batch for one model whose input shape is not complete: "
        "cli_pair_module:torch_model declares x (None, 1, None, None). Give the shape with --shape, e.g. --shape 1,3,224,224, "
        "or a batch with --inputs FILE.npy."
    ) in capsys.readouterr().err
    assert main(["taps", "cli_pair_module:torch_model", "--shape", "1,1,28,28", "--filter", "layer1.1"]) == 0
    assert "layer1.1" in capsys.readouterr().out


def test_diff_help_names_every_format_a_model_loads_from(capsys):
    with pytest.raises(SystemExit):
        main(["diff", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for kind in ("package.module:factory", ".keras/.h5", ".pt (TorchScript)", ".pt2 (ExportedProgram)",
                 ".pth/.bin (state_dict", ".onnx", ".tflite", ".pb/.pbtxt", "SavedModel directory"):
        assert kind in out


def test_diff_writes_a_repro_of_the_batchnorm_that_reruns_it(pair_module, capsys):
    import re
    import subprocess

    bundle = pair_module / "repro-bn"
    code = main(["diff", "cli_pair_module:torch_model", "cli_pair_module:keras_buggy", "--inputs",
                 str(pair_module / "batch.npy"), "--repro", str(bundle)])
    assert code == 1
    assert f"repro of layer1.1 written to {bundle}" in capsys.readouterr().out
    meta = json.loads((bundle / "meta.json").read_text())
    assert meta["pieces"]["a"]["class"] == "BatchNorm2d" and meta["pieces"]["a"]["kwargs"]["eps"] == 1e-5
    assert json.loads((bundle / "b_layer.json").read_text())["config"]["epsilon"] == 1e-3
    done = subprocess.run([sys.executable, str(bundle / "repro.py")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    alone = float(re.search(r"alone on A's input: relative error ([0-9.e+-]+)", done.stdout).group(1))
    assert alone == pytest.approx(meta["own_err"], rel=1e-3) and alone > 1e-3


def test_an_empty_batch_exits_2_saying_so(pair_module, capsys):
    empty = pair_module / "empty.npy"
    np.save(empty, np.zeros((0, 1, 28, 28), np.float32))  # x[:0]: it was "compared" and passed
    code = main(["diff", "cli_pair_module:torch_model", "cli_pair_module:keras_good", "--inputs", str(empty)])
    assert code == 2
    assert "InputError: input 0 is empty (shape (0, 1, 28, 28)): a batch without samples compares nothing" in (
        " ".join(capsys.readouterr().err.split())
    )
