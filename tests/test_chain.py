"""parity.chain: a torch model, its ONNX export, a Keras twin, its float32 and float16 TFLite
conversions compared in one run — the layer × stage matrix, the stage that introduces a bug and
the ones that inherit it, precision stages, deterministic JSON, HTML and the CLI."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("tensorflow")
pytest.importorskip("keras")
pytest.importorskip("onnxruntime")

import parity  # noqa: E402
from parity.chain import PRECISION_TOLERANCES, ChainBreak, ChainReport, Stage, chain  # noqa: E402
from parity.cli import add_chain_command, run_chain_command  # noqa: E402
from parity.errors import InputError, OptionError, ToleranceError  # noqa: E402
from parity._zoo import DeepResNet, randomize_bn, to_keras  # noqa: E402

X = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype("float32")
NAMES = ["torch", "onnx", "keras", "tflite32", "tflite16"]
BUG_NAMES = ["torch", "onnx", "keras-bad", "tflite32-bad", "tflite16-bad"]


def _tflite(keras_model, path, *, fp16=False, int8=False):
    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    if fp16 or int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if fp16:
        converter.target_spec.supported_types = [tf.float16]
    path.write_bytes(converter.convert())
    return str(path)


@pytest.fixture(scope="module")
def torch_model():
    torch.manual_seed(0)
    return randomize_bn(DeepResNet(1)).eval()


@pytest.fixture(scope="module")
def files(torch_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    onnx_path = root / "model.onnx"
    torch.onnx.export(torch_model, (torch.from_numpy(X),), str(onnx_path), dynamo=False)
    good, bad = to_keras(torch_model), to_keras(torch_model, bn_epsilon="keras-default")
    return {
        "root": root,
        "onnx": str(onnx_path),
        "keras": good,
        "keras_bad": bad,
        "tflite32": _tflite(good, root / "model.tflite"),
        "tflite16": _tflite(good, root / "model_fp16.tflite", fp16=True),
        "tflite32_bad": _tflite(bad, root / "bad.tflite"),
        "tflite16_bad": _tflite(bad, root / "bad_fp16.tflite", fp16=True),
        "pt2": _pt2(torch_model, root / "model.pt2"),
    }


def _pt2(torch_model, path):
    torch.export.save(torch.export.export(torch_model, (torch.from_numpy(X),)), str(path))
    return str(path)


def _good_stages(torch_model, files):
    return [torch_model, files["onnx"], files["keras"], files["tflite32"], files["tflite16"]]


def _bad_stages(torch_model, files):
    return [torch_model, files["onnx"], files["keras_bad"], files["tflite32_bad"], files["tflite16_bad"]]


@pytest.fixture(scope="module")
def good(torch_model, files):
    return parity.chain(_good_stages(torch_model, files), X, names=NAMES)


@pytest.fixture(scope="module")
def bad(torch_model, files):
    return parity.chain(_bad_stages(torch_model, files), X, names=BUG_NAMES)


# --- the faithful chain ----------------------------------------------------------------------


def test_matrix_has_a_row_per_torch_layer_in_execution_order(good, torch_model):
    assert isinstance(good, ChainReport)
    assert good.stages == tuple(NAMES) and len(good.reports) == 4
    trace = parity.capture(torch_model, X)
    assert [r.layer for r in good.matrix] == trace.names
    assert [r.op for r in good.matrix] == [t.op for t in trace.taps]
    assert all(len(r.cells) == 4 and [c.stage for c in r.cells] == NAMES[1:] for r in good.matrix)
    # the keras twin matches every layer; ONNX and TFLite fold convolutions/BatchNorms away: blank cells
    assert all(r.cell("keras").compared for r in good.matrix)
    assert good.row("stem").cell("onnx").status == "fused" and good.row("stem").cell("onnx").rel_err is None
    assert good.row("stem_bn").cell("tflite32").status == "fused"
    relu = good.row("stem_relu").cell("tflite32")
    assert relu.compared and relu.b_name and relu.rel_err < 1e-5


def test_faithful_stages_agree_and_the_chain_is_ok(good):
    assert good.ok and good.first_break is None
    assert good.stage_status[:3] == ("ok", "ok", "ok")
    for name in ("onnx", "keras", "tflite32"):
        cells = [r.cell(name) for r in good.matrix if r.cell(name).compared]
        assert cells and all(c.status == "ok" and c.label == "ok" and c.precision is None for c in cells)
    assert all(r.introduced_by is None for r in good.matrix)
    assert good.summary().startswith("✓ CHAIN OK: torch → onnx → keras → tflite32 → tflite16")


def test_float16_stage_is_judged_with_float16_tolerance(good):
    assert good.precisions == ("float32", "float32", "float32", "float32", "float16")
    assert good.precision_sources[4].startswith("detected: ") and "float16" in good.precision_sources[4]
    assert good.stage_status[3] == "ok (expected quantisation error)"
    report = good.report("tflite16")
    assert report.ok and (report.rtol, report.atol) == (1e-2, 1e-3)
    assert all((d.rtol, d.atol) == (1e-2, 1e-3) for d in report.layers)
    cells = [r.cell("tflite16") for r in good.matrix if r.cell("tflite16").compared]
    assert cells and all(c.status == "quantisation" and c.label == "expected quantisation error" for c in cells)
    assert all(c.precision == "float16" and c.within_float32 is not None for c in cells)
    # float16 weights really do cost precision: far more error than the float32 conversion
    assert max(c.rel_err for c in cells) > 10 * max(r.cell("tflite32").rel_err or 0 for r in good.matrix)
    assert "tflite16 within expected quantisation error" in good.summary()
    assert any("tflite16 is judged as float16" in n for n in good.notes)


def test_stage_zero_and_every_stage_are_captured_once(torch_model, files, monkeypatch):
    from parity.capture.keras import KerasBackend
    from parity.capture.onnx import OnnxBackend
    from parity.capture.tflite import TFLiteBackend
    from parity.capture.torch import TorchBackend

    calls: dict[str, int] = {}
    for cls in (TorchBackend, OnnxBackend, KerasBackend, TFLiteBackend):
        original = cls.capture

        def counted(self, inputs, *, containers=False, _original=original, _name=cls.__name__):
            calls[_name] = calls.get(_name, 0) + 1
            shapes = [a.shape for a in (inputs.values() if isinstance(inputs, dict) else inputs)]
            calls.setdefault(f"{_name} shapes", shapes)
            return _original(self, inputs, containers=containers)

        monkeypatch.setattr(cls, "capture", counted)
    report = parity.chain([torch_model, files["onnx"], files["keras"], files["tflite32"]], X)
    assert report.ok
    assert {k: v for k, v in calls.items() if "shapes" not in k} == {
        "TorchBackend": 1, "OnnxBackend": 1, "KerasBackend": 1, "TFLiteBackend": 1,
    }
    # each stage got the inputs in its own layout
    assert calls["TorchBackend shapes"] == calls["OnnxBackend shapes"] == [(2, 3, 16, 16)]
    assert calls["KerasBackend shapes"] == calls["TFLiteBackend shapes"] == [(2, 16, 16, 3)]
    assert report.reports[2].inputs.conversions == ("NCHW→NHWC",)


# --- a bug in the middle of the chain -----------------------------------------------------


def test_bug_is_introduced_by_the_keras_twin_and_inherited_after_it(bad):
    assert not bad.ok
    assert bad.first_break == ChainBreak("keras-bad", "stem_bn") == ("keras-bad", "stem_bn")
    assert bad.stage_status == ("ok", "introduces", "inherits", "inherits")
    bn = bad.row("stem_bn")
    assert bn.introduced_by == "keras-bad"
    assert bn.cell("onnx").status == "ok" and bn.cell("keras-bad").status == "introduced"
    assert bn.cell("keras-bad").label == "over tolerance, introduced here"
    # the TFLite conversions of the buggy twin carry the error on: inherited, not introduced
    relu = bad.row("stem_relu")
    assert relu.cell("keras-bad").status == "introduced"
    assert relu.cell("tflite32-bad").status == "inherited"
    assert relu.cell("tflite16-bad").status == "inherited"
    assert relu.cell("tflite16-bad").label == "beyond expected quantisation error, inherited from an earlier stage"
    for name in ("tflite32-bad", "tflite16-bad"):
        assert not any(r.cell(name).status == "introduced" for r in bad.matrix)
        assert any(r.cell(name).status == "inherited" for r in bad.matrix)
    assert all(r.introduced_by in (None, "keras-bad") for r in bad.matrix)
    assert bad.row("stem").introduced_by is None  # the convolution before the BatchNorm is fine
    head = bad.summary().splitlines()[0]
    assert head.startswith("✗ CHAIN BREAKS at keras-bad (stage 2 of 4), layer stem_bn (BatchNorm2d)")
    assert head.endswith("inherited by tflite32-bad, tflite16-bad")


def test_a_later_stage_that_recovers_introduces_nothing(torch_model, files):
    report = parity.chain([torch_model, files["keras_bad"], files["tflite32"]], X, names=["t", "bad", "good"])
    assert report.stage_status == ("introduces", "ok")
    assert report.first_break == ("bad", "stem_bn")


def test_rich_table_marks_introducing_stage_and_quantisation(bad, good):
    from rich.console import Console

    console = Console(record=True, width=220, color_system=None)
    console.print(bad)
    text = console.export_text()
    assert "introduced by" in text and "tflite16-bad" in text and "(float16)" in text
    bn_line = next(line for line in text.splitlines() if " stem_bn " in line and "BatchNorm2d " in line)
    assert "✗ ◀" in bn_line and "keras-bad" in bn_line and "fused" in bn_line
    relu_line = next(line for line in text.splitlines() if " stem_relu " in line and "ReLU " in line)
    assert relu_line.count("✗ ←") == 2
    console = Console(record=True, width=220, color_system=None)
    console.print(good)
    text = console.export_text()
    assert "≈" in text and "expected quantisation error" in text and "✗" not in text.split("✓ within")[0]


@pytest.mark.parametrize("width", [80, 120])
def test_the_matrix_keeps_every_layer_name_and_cell_in_narrow_terminals(bad, width):
    import re

    from rich.console import Console

    from parity.report.chain import cell_text, guilty_cells

    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(bad)
    lines = buf.getvalue().splitlines()
    assert max(len(line) for line in lines) <= width
    for row in bad.matrix:
        (line,) = [x for x in lines if re.match(rf"^\s*{row.index} {re.escape(row.layer)}\s", x)]
        cells = [cell_text(c, (row.layer, c.stage) in guilty_cells(bad))[0] for c in row.cells]
        assert re.search(r"\s+".join(re.escape(c) for c in cells), line), (cells, line)  # every stage, in order
    if width == 80:
        assert any(x.startswith("left out to fit 80 columns: op, introduced by") for x in lines)


def test_keras_pairs_by_name_whose_values_agree_are_confident(good):
    from parity.report.console import match_summary

    keras = good.report("keras")
    n = keras.coverage[0]
    assert any(d.ambiguous for d in keras.layers)  # (2, 16, 16, 16): the shape fits NCHW and NHWC
    assert match_summary(keras) == f"{n} by name; confidence ≥ 0.9 for {n} of {n}"


def test_long_matrices_fold_rows_where_no_verdict_changes(bad, good):
    from parity.report.chain import shown_rows

    assert shown_rows(bad) == list(bad.matrix)  # short: every row
    shown = shown_rows(bad, limit=5)
    # kept: head, tail, the guilty stem_bn and the rows around where keras-bad's verdict changes
    assert [x if isinstance(x, tuple) else x.layer for x in shown] == [
        "stem", "stem_bn", "stem_relu", (3, 6), "pool", "fc", "output",
    ]
    assert any(isinstance(x, tuple) for x in shown_rows(good, limit=5))


# --- files -----------------------------------------------------------------------------------


def test_json_is_deterministic(torch_model, files, tmp_path):
    # without the float16 TFLite stage: TFLiteBackend records the never-written outputs of a float16
    # model's weight DEQUANTIZE ops under XNNPACK (uninitialised memory), so that stage's notes vary
    stages = _bad_stages(torch_model, files)[:4]
    first = parity.chain(stages, X, names=BUG_NAMES[:4]).to_json(tmp_path / "a.json")
    second = parity.chain(stages, X, names=BUG_NAMES[:4]).to_json(tmp_path / "b.json")
    assert first == second
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_json_holds_stages_matrix_and_reports(bad):
    data = json.loads(bad.to_json())
    assert data["schema"] == "parity.chain" and data["version"] == 1 and data["ok"] is False
    assert data["first_break"] == {"stage": "keras-bad", "layer": "stem_bn"}
    assert [s["name"] for s in data["stages"]] == BUG_NAMES
    assert [s.get("status") for s in data["stages"]] == [None, "ok", "introduces", "inherits", "inherits"]
    assert data["stages"][4]["precision"] == "float16" and data["stages"][4]["tolerance"] == {"rtol": 0.01, "atol": 0.001}
    assert len(data["matrix"]) == len(bad.matrix) and len(data["reports"]) == 4
    bn = next(r for r in data["matrix"] if r["layer"] == "stem_bn")
    assert bn["introduced_by"] == "keras-bad"
    assert [c["status"] for c in bn["cells"]] == ["ok", "introduced", "fused", "fused"]
    assert bn["cells"][2]["rel_err"] is None
    assert data["reports"][1]["schema"] == "parity.report"


def test_html_is_self_contained_and_escaped(bad, torch_model, files, tmp_path):
    html = bad.to_html(tmp_path / "chain.html")
    assert (tmp_path / "chain.html").read_text(encoding="utf-8") == html
    assert html.startswith("<!DOCTYPE html>") and "<table class=\"matrix\">" in html
    assert "http://" not in html and "https://" not in html and "<script" not in html and "src=" not in html
    assert "CHAIN BREAKS at keras-bad" in html
    for line in bad.summary().splitlines()[1:]:  # each stage's summary line, escaped
        assert line.strip().replace(">", "&gt;") in html
    assert "c-introduced" in html and "c-inherited" in html and "expected quantisation error" in html
    weird = parity.chain([torch_model, files["keras"]], X, names=["<b>torch</b>", "keras & co"])
    page = weird.to_html()
    assert "<b>torch</b>" not in page and "&lt;b&gt;torch&lt;/b&gt;" in page and "keras &amp; co" in page
    assert weird._repr_html_().lstrip().startswith("<h1")


# --- precision hints and detection --------------------------------------------------------------


def test_precision_hint_judges_a_stage_with_that_precision(torch_model, files):
    hinted = parity.chain([torch_model, files["tflite32"]], X, precision=[None, "fp16"])
    assert hinted.precisions[1] == "float16" and hinted.precision_sources[1] == "given"
    assert (hinted.reports[0].rtol, hinted.reports[0].atol) == (1e-2, 1e-3)
    assert hinted.ok and hinted.stage_status == ("ok (expected quantisation error)",)
    # a Stage record carries a hint too, and an explicit float32 hint makes a float16 model a plain stage
    plain = parity.chain([torch_model, Stage(files["tflite16"], name="f16", precision="float32")], X)
    assert plain.stages[1] == "f16" and plain.precisions[1] == "float32"
    as_dict = parity.chain([{"model": torch_model, "name": "t"}, {"model": files["tflite16"], "precision": "half"}], X)
    assert as_dict.stages == ("t", "model_fp16.tflite") and as_dict.precision_sources[1] == "given"
    assert all(c.status in ("ok", "fused") for r in plain.matrix for c in r.cells)
    assert plain.reports[0].rtol is None  # per-dtype defaults (float32)
    with pytest.raises(ToleranceError, match="precision 'int4'"):
        parity.chain([torch_model, files["tflite32"]], X, precision={1: "int4"})


def test_int8_tflite_is_detected_as_a_precision_stage(torch_model, files):
    path = _tflite(files["keras"], files["root"] / "model_int8.tflite", int8=True)
    report = parity.chain([torch_model, path], X)
    assert report.precisions[1] == "int8" and "quantized" in report.precision_sources[1]
    assert report.ok and report.stage_status == ("ok (expected quantisation error)",)
    assert (report.reports[0].rtol, report.reports[0].atol) == PRECISION_TOLERANCES["int8"]


def test_user_tolerance_applies_to_full_precision_stages_and_loosens_precision_ones(torch_model, files):
    report = parity.chain([torch_model, files["keras"], files["tflite16"]], X, rtol=1e-6, atol=1e-8)
    assert (report.reports[0].rtol, report.reports[0].atol) == (1e-6, 1e-8)
    assert (report.reports[1].rtol, report.reports[1].atol) == (1e-2, 1e-3)  # the looser of the two
    with pytest.raises(ToleranceError, match="only rtol"):
        parity.chain([torch_model, files["keras"]], X, rtol=1e-3)


def test_bad_arguments(torch_model, files):
    with pytest.raises(InputError, match="at least two stages"):
        parity.chain([torch_model], X)
    with pytest.raises(InputError, match="one per stage"):
        parity.chain([torch_model, files["keras"]], X, names=["a"])
    with pytest.raises(InputError, match="unique"):
        parity.chain([torch_model, files["keras"]], X, names=["a", "a"])
    with pytest.raises(OptionError, match="mappings"):
        parity.chain([torch_model, files["keras"]], X, mapping={"fc": "fc"})
    with pytest.raises(parity.ModelError):
        parity.chain([torch_model, str(files["root"] / "missing.onnx")], X)


def test_default_names_are_file_names_and_model_names(torch_model, files):
    report = parity.chain([torch_model, files["onnx"], files["keras"], files["keras"]], X)
    assert report.stages == ("torch:DeepResNet", "model.onnx", "keras:deep_resnet", "keras:deep_resnet#2")


# --- the function and the command line -------------------------------------------------------


def test_parity_chain_is_the_function_and_light():
    import inspect

    assert parity.chain is chain and parity.ChainReport is ChainReport and parity.Stage is Stage
    assert inspect.isfunction(chain) and inspect.signature(chain).return_annotation in (ChainReport, "ChainReport")
    code = (
        "import sys, parity.chain\n"
        "print(' '.join(m for m in ('torch', 'tensorflow', 'keras', 'onnx', 'onnxruntime', 'jinja2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []


def _cli(argv, capsys):
    from rich.console import Console

    parser = argparse.ArgumentParser(prog="parity")
    add_chain_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["chain", *argv])
    buffer = io.StringIO()
    code = run_chain_command(args, Console(file=buffer, width=200, color_system=None))
    return code, buffer.getvalue(), capsys.readouterr().err


def test_cli_all_ok_writes_json_and_html(files, tmp_path, capsys):
    out_json, out_html = tmp_path / "c.json", tmp_path / "c.html"
    code, out, err = _cli(
        [files["pt2"], files["onnx"], files["tflite32"], files["tflite16"], "--names", "pt2,onnx,tfl32,tfl16",
         "--shape", "2,3,16,16", "--json", str(out_json), "--html", str(out_html)],
        capsys,
    )
    assert code == 0, out + err
    assert "✓ CHAIN OK: pt2 → onnx → tfl32 → tfl16" in out and "(float16)" in out
    assert json.loads(out_json.read_text())["stages"][3]["status"] == "ok (expected quantisation error)"
    assert out_html.read_text().startswith("<!DOCTYPE html>")
    assert "JSON chain report written to" in out


def test_cli_divergence_exits_1(files, tmp_path, capsys):
    np.save(tmp_path / "x.npy", X)
    code, out, _ = _cli([files["pt2"], files["tflite32_bad"], "--inputs", str(tmp_path / "x.npy")], capsys)
    assert code == 1
    assert "✗ CHAIN BREAKS at bad.tflite" in out and "◀" in out


def test_cli_usage_and_load_errors_exit_2(files, tmp_path, capsys):
    code, out, err = _cli([files["pt2"], str(tmp_path / "nope.tflite"), "--shape", "2,3,16,16"], capsys)
    assert code == 2 and "ModelError" in err and "nope.tflite" in err and out == ""
    code, _, err = _cli([files["onnx"], files["tflite32"], "--names", "a,b,c"], capsys)
    assert code == 2 and "--names gives 3 name(s) for 2 models" in err
    code, _, err = _cli([files["onnx"]], capsys)
    assert code == 2 and "at least two models" in err
    code, _, err = _cli([files["onnx"], files["tflite32"], "--precision", "oops"], capsys)
    assert code == 2 and "STAGE=DTYPE" in err
