"""``parity.evaluate`` end to end: the trained digits ConvNet against its hand-made Keras twin
(BatchNorm epsilon bug) and the fixed twin over the held-out digits, and a torch-only pair
(tests/evaluate_models.py) for the data kinds, Ctrl-C, checkpoints, the CLI and the plugin."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

pytest.importorskip("torch")
pytest.importorskip("keras")
pytest.importorskip("sklearn")

import parity  # noqa: E402
from parity.errors import DataError, LabelsError  # noqa: E402
from parity.evaluation.stats import mcnemar_exact  # noqa: E402
from tests import evaluate_models  # noqa: E402

SCHEMA = Path(parity.__file__).parent / "schemas" / "evaluation.schema.json"


@pytest.fixture(scope="session")
def digits_pair():
    import torch

    from parity._zoo import ConvNet, load_digits_28, to_keras, train_convnet

    torch.manual_seed(0)
    model, _ = train_convnet(ConvNet(), epochs=3, seed=0)
    _, _, x_test, y_test = load_digits_28(seed=0)
    buggy = to_keras(model, bn_epsilon="keras-default", flatten="permute")
    fixed = to_keras(model, bn_epsilon="match", flatten="permute")
    return model, buggy, fixed, x_test, y_test


def _plain(model, keras_model, x):
    import torch

    with torch.no_grad():
        a = model(torch.from_numpy(x)).numpy()
    b = np.asarray(keras_model(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), training=False))
    return a, b


@pytest.fixture(scope="session")
def buggy_result(digits_pair):
    model, buggy, _, x, y = digits_pair
    return parity.evaluate(model, buggy, (x, y), batch_size=64)


def test_the_batchnorm_epsilon_bug_is_flagged_over_the_data_with_the_numbers_of_a_plain_run(digits_pair, buggy_result):
    model, buggy, _, x, y = digits_pair
    r = buggy_result
    assert not r.ok and r.first_divergence == "layer1.1"
    assert r.layer("layer1.0")["ok"] and not r.layer("layer1.1")["ok"]
    bn = r.layer("layer1.1")
    assert bn["over_tolerance"] == len(x) and 0.03 < bn["rel_err"] < 0.1
    a, b = _plain(model, buggy, x)
    top_a, top_b = a.argmax(1), b.argmax(1)
    out = r.output
    assert out["samples"] == len(x) == r.samples
    assert out["top1_agreement"] == pytest.approx(np.mean(top_a == top_b))
    acc = out["accuracy"]
    assert acc["a"] == pytest.approx(np.mean(top_a == y)) and acc["b"] == pytest.approx(np.mean(top_b == y))
    a_only = int(np.sum((top_a == y) & (top_b != y)))
    b_only = int(np.sum((top_a != y) & (top_b == y)))
    assert (acc["a_right_b_wrong"], acc["a_wrong_b_right"]) == (a_only, b_only)
    assert acc["mcnemar_p"] == mcnemar_exact(a_only, b_only)
    # the worst samples are the largest output errors of a plain run, in order
    rel = np.linalg.norm((b - a).astype(np.float64), axis=1) / np.linalg.norm(a.astype(np.float64), axis=1)
    assert [w.index for w in r.worst] == list(np.argsort(-rel, kind="stable")[: len(r.worst)])
    assert [w.index for w in r.disagreements] == list(np.flatnonzero(top_a != top_b))


def test_a_worst_sample_diffs_layer_by_layer_and_names_the_cause(buggy_result, digits_pair):
    worst = buggy_result.worst[0]
    np.testing.assert_array_equal(worst.inputs[0], digits_pair[3][worst.index:worst.index + 1])
    report = worst.diff()
    assert report.first_divergence.a_name == "layer1.1"
    assert report.diagnoses[0].code == "bn_epsilon"


def test_with_the_epsilon_fixed_the_models_agree_and_the_difference_is_not_significant(digits_pair):
    model, _, fixed, x, y = digits_pair
    r = parity.evaluate(model, fixed, (x, y), batch_size=64)
    assert r.ok and r.first_divergence is None
    assert r.output["top1_agreement"] == 1.0
    assert r.output["accuracy"]["difference"] == 0.0 and r.output["accuracy"]["mcnemar_p"] == 1.0
    assert all(x["over_tolerance"] == 0 for x in r.layers)


def test_outputs_only_counts_the_outputs_as_all_does(digits_pair, buggy_result):
    model, buggy, _, x, y = digits_pair
    fast = parity.evaluate(model, buggy, (x, y), batch_size=64, layers="outputs")
    assert [x["a_name"] for x in fast.layers] == ["output"]
    assert fast.layers[0] == buggy_result.layer("output")
    assert fast.outputs == buggy_result.outputs
    globbed = parity.evaluate(model, buggy, (x, y), batch_size=64, layers="layer1.*")
    assert [x["a_name"] for x in globbed.layers] == ["layer1.0", "layer1.1", "layer1.2", "output"]
    with pytest.raises(parity.ParityError, match=r"layers pattern 'conv\*' matches no compared layer of model A; "
                                                 r"the compared layers are: layer1\.0, layer1\.1"):
        parity.evaluate(model, buggy, (x, y), layers="conv*")


def test_json_validates_and_the_terminal_and_html_show_the_verdict(buggy_result, tmp_path, digits_pair):
    jsonschema = pytest.importorskip("jsonschema")
    path = buggy_result.to_json(tmp_path / "ev.json")
    data = json.loads(path.read_text())
    jsonschema.validate(data, json.loads(SCHEMA.read_text()))
    assert data["first_divergence"] == "layer1.1" and data["samples_dir"] == "ev-samples"
    w = buggy_result.worst[0]
    np.testing.assert_array_equal(np.load(tmp_path / "ev-samples" / f"sample-{w.index:06d}.npy"),
                                  digits_pair[3][w.index:w.index + 1])
    again = parity.load_evaluation(path)
    assert again.to_json_text("ev-samples") == path.read_text()
    assert again.worst[0].diff(digits_pair[0], digits_pair[1]).first_divergence.a_name == "layer1.1"
    text = buggy_result.render_text(width=140)
    assert "✗ DIVERGES at layer1.1 (over the data)" in text
    assert "first divergence over the data: layer1.1 (BatchNorm2d ↔ BatchNormalization layer1_1)" in text
    acc = buggy_result.output["accuracy"]
    assert f"exact McNemar p = {acc['mcnemar_p']:.3g}" in text
    assert f"accuracy: A {100 * acc['a']:.2f}%, B {100 * acc['b']:.2f}%" in text
    html = buggy_result.to_html(tmp_path / "ev.html").read_text()
    assert 'class="bad first"' in html and "<svg" in html and "McNemar p" in html


def test_bad_batches_are_refused_naming_the_batch_and_the_samples(digits_pair):
    model, buggy, _, x, y = digits_pair
    bad = x[:96].copy()
    bad[40, 0, 3, 3] = np.nan
    with pytest.raises(DataError, match=r"batch 1 \(samples 32–63\): input 0 holds 1 NaN and 0 Inf values"):
        parity.evaluate(model, buggy, bad, batch_size=32)
    with pytest.raises(DataError, match=r"batch 0 \(samples 0–31\): model A \(ConvNet, torch\) takes input .x. in NCHW.*got shape \(32, 28, 28, 1\)\. The shape looks like NHWC"):
        parity.evaluate(model, buggy, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    with pytest.raises(LabelsError, match=r"holds 448 labels for 449 samples"):
        parity.evaluate(model, buggy, x, labels=y[:-1])


# --- a torch-only pair: data kinds, Ctrl-C, checkpoints, CLI, plugin -----------------------------


A = "tests.evaluate_models:convnet"
B = "tests.evaluate_models:convnet_eps"


@pytest.fixture(scope="session")
def torch_data(tmp_path_factory):
    x, y = evaluate_models.digits(160)
    root = tmp_path_factory.mktemp("evaluate-data")
    np.savez(root / "val.npz", x=x, labels=y)
    chunks = root / "chunks"
    chunks.mkdir()
    for i, lo in enumerate(range(0, 160, 48)):
        np.save(chunks / f"{i:03d}.npy", x[lo:lo + 48])
    np.save(chunks / "labels.npy", y)
    return x, y, root


def _body(result) -> dict:
    d = result.as_dict()
    del d["data"]["source"], d["summary"]
    return d


def test_every_kind_of_data_gives_the_same_statistics(torch_data):
    torch = pytest.importorskip("torch")
    x, y, root = torch_data
    reference = parity.evaluate(A, B, (x, y), batch_size=32)
    assert reference.first_divergence == "layer1.1"
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
                                         batch_size=32)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 160, 32)]
    for data in (root / "val.npz", root / "chunks", loader, batches, (b for b in batches)):
        got = parity.evaluate(A, B, data, batch_size=32)
        body, ref = _body(got), _body(reference)
        if data is loader or not isinstance(data, Path):
            ref["data"]["batch_size"] = body["data"]["batch_size"]  # read in order: no batch size of ours
        assert body == ref, data


def test_ctrl_c_stops_with_the_statistics_so_far(torch_data):
    x, y, _ = torch_data

    def batches():
        for i in range(0, 160, 32):
            if i == 96:
                raise KeyboardInterrupt
            yield x[i:i + 32], y[i:i + 32]

    r = parity.evaluate(A, B, batches())
    assert r.partial and r.samples == 96 and r.batches == 3
    assert "interrupted after 3 batches (96 samples)" in r.notes[0]
    assert "[partial: interrupted]" in r.summary()


def test_resume_from_a_checkpoint_gives_the_uninterrupted_result(torch_data, tmp_path):
    x, y, root = torch_data
    whole = parity.evaluate(A, B, root / "val.npz", batch_size=16)
    ckpt = tmp_path / "run.ckpt.json"
    first = parity.evaluate(A, B, root / "val.npz", batch_size=16, checkpoint=ckpt, checkpoint_every=2, max_batches=6)
    assert first.samples == 96 and json.loads(ckpt.read_text())["next_batch"] == 6
    resumed = parity.evaluate(A, B, root / "val.npz", batch_size=16, resume=ckpt)
    assert resumed.to_json_text() == whole.to_json_text()
    assert [w.inputs[0].tobytes() for w in resumed.worst] == [w.inputs[0].tobytes() for w in whole.worst]
    with pytest.raises(DataError, match=r"checkpoint .* was written for another run \(batch_size: 16 then, 32 now\)"):
        parity.evaluate(A, B, root / "val.npz", batch_size=32, resume=ckpt)


def test_cli_evaluate_writes_the_reports_and_diffs_the_worst_sample(torch_data, tmp_path, monkeypatch, capsys):
    from parity.cli import main

    _, _, root = torch_data
    monkeypatch.setattr("rich.console.Console.width", 160, raising=False)
    code = main(["evaluate", A, B, "--data", str(root / "val.npz"), "--json", str(tmp_path / "e.json"),
                 "--html", str(tmp_path / "e.html"), "--diff-worst", "--batch-size", "40"])
    out = capsys.readouterr().out
    assert code == 1
    assert "✗ DIVERGES at layer1.1 (over the data): 160 samples" in out
    assert "parity diff on sample" in out and "bn_epsilon at layer1.1" in out
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["data"]["batches"] == 4 and saved["first_divergence"] == "layer1.1"
    assert (tmp_path / "e.html").is_file() and (tmp_path / "e-samples").is_dir()
    assert main(["evaluate", A, A, "--data", str(root / "val.npz"), "--min-agreement", "1"]) == 0
    assert main(["evaluate", A, B, "--data", str(tmp_path / "nope.npz")]) == 2
    assert "DataError: --data" in capsys.readouterr().err


def test_a_pair_table_with_data_runs_the_dataset_under_pytest_parity(torch_data, pytester):
    _, _, root = torch_data
    pytester.makefile(".toml", parity=f"""
[pairs.digits_eps]
a = "{A}"
b = "{B}"
data = "{root / 'val.npz'}"
layers = "outputs"
min_agreement = 0.5

[pairs.digits_same]
a = "{A}"
b = "{A}"
data = "{root / 'val.npz'}"
max_accuracy_drop = 0.0
""")
    pytester.syspathinsert(str(Path(__file__).resolve().parents[1]))
    result = pytester.runpytest_inprocess("--parity", "-p", "parity.plugin", "parity.toml")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*✗ DIVERGES at output (over the data): 160 samples*", "*✓ digits_same*"])


def test_the_dataset_demo_flags_batchnorm_and_passes_the_fixed_pair(tmp_path):
    from parity.evaluation.demo import run_dataset_demo

    buf = io.StringIO()
    code = run_dataset_demo(out=tmp_path / "ds.json", console=Console(file=buf, width=150, color_system=None))
    text = buf.getvalue()
    assert code == 0
    bug, fixed = text.split("keras with epsilon 1e-5")
    assert "✗ DIVERGES at layer1.1 (over the data): 449 samples" in bug
    assert "exact McNemar p =" in bug and "worst samples (largest output error)" in bug
    assert "bn_epsilon at layer1.1" in bug
    assert "✓ PARITY: 449 samples, top-1 agreement 100.00%" in fixed
    assert "McNemar p = 1 (not significant); every layer within tolerance" in fixed
    saved = json.loads((tmp_path / "ds.json").read_text())
    assert saved["first_divergence"] == "layer1.1" and not saved["ok"]
    assert json.loads((tmp_path / "ds-fixed.json").read_text())["ok"]
    assert (tmp_path / "ds.html").is_file()


def test_parity_show_renders_a_saved_evaluation(buggy_result, tmp_path, capsys):
    from parity.cli import main

    path = buggy_result.to_json(tmp_path / "ev.json")
    assert main(["show", str(path), "--html", str(tmp_path / "again.html")]) == 1
    assert "✗ DIVERGES at layer1.1 (over the data)" in capsys.readouterr().out
    assert 'class="bad first"' in (tmp_path / "again.html").read_text()
