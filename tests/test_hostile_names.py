"""Names are data: a name holding escape sequences, bidi overrides or rich markup is shown with
those characters made visible — in the terminal, the HTML page, compare-reports, the CLI's
messages — and kept exact in the JSON."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

import parity
from parity.cli import main
from parity.errors import MappingError
from parity.options import exit_on_parity_error
from parity.records import Diagnosis, UnmatchedLayer
from parity.report.console import render_failure_text, render_text
from parity.report.html import render_compact_html, render_html
from parity.report.regress import compare_reports
from parity.report.text import displayed, shown
from tests.helpers import make_layer_diff, make_report, make_trace

#: erases the line, returns the cursor, and prints a fake verdict
ERASER = "\x1b[2K\r✔ models match"
#: Trojan Source: what follows U+202E reads right to left
BIDI = "stem\u202eVNOC.relu"
MARKUP = "head[bold red]FAKE[/]"

#: what the reader sees instead
ERASER_SHOWN = "\\x1b[2K\\x0d✔ models match"
BIDI_SHOWN = "stem\\u202eVNOC.relu"

RAW = ("\x1b", "\r", "\u202e")


def hostile_report():
    layers = [
        make_layer_diff(0, ERASER, 1e-6, b_name=BIDI),
        make_layer_diff(1, BIDI, 5e-2, b_name="b\u2066zero\u200bwidth\u2069"),
        make_layer_diff(2, MARKUP, 5e-2, op="Lin\x85ear"),
    ]
    diagnosis = Diagnosis(code="bn_epsilon", layer=BIDI, message=f"epsilon of {ERASER} differs", evidence={"ratio": 2.0})
    layers[1] = layers[1].__class__(**{**layers[1].__dict__, "diagnoses": (diagnosis,)})
    report = make_report(layers, unmatched=[(f"extra{ERASER}", "no-match")])
    return report.__class__(**{**report.__dict__, "diagnoses": (diagnosis,), "notes": (f"note on {BIDI}",)})


def assert_clean(text: str) -> None:
    for ch in RAW + ("\u2066", "\u200b", "\u2069", "\x85"):
        assert ch not in text, f"{ch!r} reached the output"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("features.0/Conv2D:0", "features.0/Conv2D:0"),
        ("layer ünïcode 名前", "layer ünïcode 名前"),
        (ERASER, ERASER_SHOWN),
        (BIDI, BIDI_SHOWN),
        ("a\u2066b\u2069\u200e\u200f\u200b\ufeff", "a\\u2066b\\u2069\\u200e\\u200f\\u200b\\ufeff"),
        ("tab\there\nnew\x7f\x9b", "tab\\x09here\\x0anew\\x7f\\x9b"),
        ("line\u2028para\u2029", "line\\u2028para\\u2029"),
        ("tag\U000e0041", "tag\\U000e0041"),
    ],
)
def test_shown_makes_hidden_characters_visible(name, expected):
    assert shown(name) == expected
    assert shown(shown(name)) == expected  # renderers may apply it twice


def test_a_clean_report_is_displayed_as_is():
    report = make_report([make_layer_diff(0, "conv", 1e-6)])
    assert displayed(report) is report


def test_terminal_shows_escapes_not_control_characters():
    report = hostile_report()
    text = render_text(report, width=200)
    assert_clean(text)
    assert ERASER_SHOWN in text and BIDI_SHOWN in text
    assert "b\\u2066zero\\u200bwidth\\u2069" in text and "Lin\\x85ear" in text
    assert MARKUP in text  # markup in a name is text, not style
    assert text.splitlines()[0] == (
        f"✗ DIVERGES at {BIDI_SHOWN} (Conv2d ↔ Conv2d b\\u2066zero\\u200bwidth\\u2069): rel err 5.0e-02 > rtol 1.0e-03 "
        "— 2 of 3 layers over tolerance"
    )
    assert f"bn_epsilon at {BIDI_SHOWN}: epsilon of {ERASER_SHOWN} differs" in text
    assert f"note: note on {BIDI_SHOWN}" in text
    assert f"extra{ERASER_SHOWN} (BatchNorm2d)" in text
    assert report.summary() == text.splitlines()[0]


def test_terminal_with_colour_emits_only_its_own_escapes():
    buf = io.StringIO()
    Console(file=buf, width=200, force_terminal=True, color_system="truecolor").print(hostile_report())
    text = buf.getvalue()
    assert "\x1b[2K" not in text and "\r" not in text and "\u202e" not in text
    assert "FAKE" in text and "[bold red]" in text


def test_failure_text_of_the_plugin_and_assert_parity_is_clean():
    report = hostile_report()
    text = render_failure_text(report, width=200)
    assert_clean(text)
    assert f"first divergence: {BIDI_SHOWN} (Conv2d)" in text
    from parity.api import mismatch_message

    assert_clean(mismatch_message(report))


def test_html_isolates_names_and_shows_escapes():
    report = hostile_report()
    for page in (render_html(report), render_compact_html(report)):
        assert_clean(page)
        assert "<bdi>stem\\u202eVNOC.<wbr>relu</bdi>" in page  # the table: breakable and isolated
        assert "<bdi>\\x1b[2K\\x0d✔ models match</bdi>" in page
        assert '<b class="name"><bdi>stem\\u202eVNOC.relu</bdi></b>' in page  # first divergence, diagnosis
        assert "<bdi>head[bold red]FAKE[/<wbr>]</bdi>" in page
    assert f"<title>parity: ✗ DIVERGES at {BIDI_SHOWN} " in render_html(report)


def test_json_keeps_the_exact_names(tmp_path):
    report = hostile_report()
    data = json.loads(report.to_json(tmp_path / "r.json"))
    assert [d["a_name"] for d in data["layers"]] == [ERASER, BIDI, MARKUP]
    assert data["diagnoses"][0]["message"] == f"epsilon of {ERASER} differs"
    back = parity.load_report(tmp_path / "r.json")
    assert [d.a_name for d in back.layers] == [ERASER, BIDI, MARKUP]
    assert back.layers[1].b_name == "b\u2066zero\u200bwidth\u2069"


def test_show_and_compare_reports_on_the_command_line(tmp_path, capsys):
    report = hostile_report()
    report.to_json(tmp_path / "old.json")
    assert main(["show", str(tmp_path / "old.json")]) == 1
    out = capsys.readouterr().out
    assert_clean(out)
    assert ERASER_SHOWN in out
    clean = make_report([make_layer_diff(0, "conv", 1e-6)])
    clean.to_json(tmp_path / "new.json")
    assert main(["compare-reports", str(tmp_path / "old.json"), str(tmp_path / "new.json")]) == 1
    out = capsys.readouterr().out
    assert_clean(out)
    assert f"{ERASER_SHOWN}" in out and "gone" in out and MARKUP in out


def test_compare_reports_renders_names_shown():
    old = hostile_report()
    new = make_report([make_layer_diff(0, ERASER, 1.0, op="Conv\u202e2d")])
    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None).print(compare_reports(old, new))
    text = buf.getvalue()
    assert_clean(text)
    assert f"{ERASER_SHOWN}  Conv\\u202e2d" in text


def test_taps_lists_names_shown(monkeypatch, capsys):
    import parity.api

    trace = make_trace([(ERASER, "Conv\u202e", [[1.0]], None), (MARKUP, "Relu", [[1.0]], None)], name=f"Net{ERASER}")
    monkeypatch.setattr(parity.api, "capture", lambda *a, **k: trace)
    monkeypatch.setattr(parity.cli, "_model", lambda *a, **k: object())
    monkeypatch.setattr(parity.cli, "require_arg_files", lambda *a, **k: None)
    assert main(["taps", "x.onnx", "--shape", "1,1"]) == 0
    out = capsys.readouterr().out
    assert_clean(out)
    lines = out.splitlines()
    assert lines[0] == f"Net{ERASER_SHOWN} · torch 0 · test · 2 of 2 tensors"
    assert lines[1] == f"0\t{ERASER_SHOWN}\tConv\\u202e\t1×1\tfloat64\t–"
    assert lines[2] == f"1\t{MARKUP}\tRelu\t1×1\tfloat64\t–"


def test_taps_table_in_a_terminal_is_clean():
    from parity.cli import _print_taps

    trace = make_trace([(ERASER, "Conv", [[1.0]], None), (MARKUP, "Relu", [[1.0]], None)])
    buf = io.StringIO()
    _print_taps(trace, None, Console(file=buf, width=200, force_terminal=True, color_system=None))
    text = buf.getvalue()
    assert_clean(text)
    assert ERASER_SHOWN in text and MARKUP in text


def test_an_error_naming_a_hostile_layer_is_one_clean_line(capsys):
    assert exit_on_parity_error(MappingError(f"model A has no layer {ERASER!s}; closest: {BIDI}")) == 2
    err = capsys.readouterr().err
    assert_clean(err)
    assert err == f"parity: MappingError: model A has no layer {ERASER_SHOWN}; closest: {BIDI_SHOWN}\n"


def test_chain_matrix_shows_names():
    from tests.helpers import make_chain

    chain = make_chain()
    first = chain.matrix[0]
    evil_row = first.__class__(**{**first.__dict__, "layer": ERASER, "op": MARKUP})
    chain = chain.__class__(**{**chain.__dict__, "matrix": (evil_row, *chain.matrix[1:])})
    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None).print(chain)
    text = buf.getvalue()
    assert_clean(text)
    assert ERASER_SHOWN in text and MARKUP in text
    page = chain.to_html()
    assert_clean(page)
    assert f"<td class=\"l\"><bdi>{ERASER_SHOWN}</bdi></td>" in page


def test_unmatched_layers_in_html_are_isolated():
    report = make_report([make_layer_diff(0, "conv", 1.0)])
    report = report.__class__(**{**report.__dict__, "unmatched": (
        UnmatchedLayer(side="a", name=BIDI, op="BatchNorm2d", shape=(1,), reason="no-match"),)})
    page = render_html(report)
    assert f'<span class="name"><bdi>{BIDI_SHOWN}</bdi></span>' in page
    assert f'<td class="name"><bdi>{BIDI_SHOWN}</bdi></td>' in page


def _onnx_model(path, first: str, second_op: str = "Neg") -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], [first], name=first), helper.make_node(second_op, [first], ["y"], name="neg")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_onnx_tensor_names_reach_taps_and_diff_shown(tmp_path, capsys):
    """The issue's case: an ONNX tensor named to erase the verdict line and print a fake one."""
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    _onnx_model(a, ERASER)
    _onnx_model(b, BIDI)
    assert main(["taps", str(a)]) == 0
    out = capsys.readouterr().out
    assert_clean(out)
    assert f"0\t{ERASER_SHOWN}\tRelu\t1×4\tfloat32\t–" in out.splitlines()
    html = tmp_path / "r.html"
    assert main(["diff", str(a), str(b), "--html", str(html), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert_clean(out)
    assert ERASER_SHOWN in out and BIDI_SHOWN in out
    page = html.read_text(encoding="utf-8")
    assert_clean(page)
    assert f"<bdi>{ERASER_SHOWN}</bdi>" in page
    layer = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))["layers"][0]
    assert (layer["a_name"], layer["b_name"]) == (ERASER, BIDI)


pytest_plugins = ["pytester"]


def test_the_plugins_messages_show_names(pytester):
    _onnx_model(pytester.path / "a.onnx", ERASER)
    _onnx_model(pytester.path / "b.onnx", ERASER, second_op="Abs")  # B diverges at y
    pytester.makefile(".toml", pyproject=(
        '[tool.parity.pairs."evil\\u001b[2K"]\na = "a.onnx"\nb = "b.onnx"\ninputs = { shape = [1, 4], seed = 0 }\n'
    ))
    result = pytester.runpytest("--parity", "-p", "no:cacheprovider")  # in-process: this worktree's parity
    result.assert_outcomes(failed=1)
    text = result.stdout.str()
    assert "\x1b[2K" not in text and "\r" not in text.replace("\r\n", "\n")
    result.stdout.fnmatch_lines([
        "*first divergence: y (Neg) in A*",
        "*= parity =*",
        "*✗ evil\\x1b[2K: ✗ DIVERGES at y (Neg ↔ Abs y)*",
    ])
    assert ERASER_SHOWN in text
