"""parity.report.chain: a conversion chain's report in words, in a terminal, as HTML and as JSON —
on hand-made ChainReports, without any framework."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from rich.console import Console

from parity.chain import PRECISION_TOLERANCES, ChainReport, chain_matrix
from parity.report.chain import LEGEND, cell_text, guilty_cells, shown_rows, stage_line
from parity.report.jsonio import encode
from tests.helpers import (
    CHAIN_LAYERS,
    CHAIN_PRECISIONS,
    CHAIN_STAGES,
    chain_reports,
    layer_diffs,
    make_chain,
    make_layer_diff,
    make_report,
    make_trace,
)


def _text(report, width=200) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(report)
    return buf.getvalue()


def _inheriting_chain():
    """keras-bad introduces at stem_bn; the float16 stage only inherits (stem_relu)."""
    reports = chain_reports()
    rtol, atol = PRECISION_TOLERANCES["float16"]
    reports[2] = make_report(
        [make_layer_diff(0, "stem", 5e-3, rtol=rtol, atol=atol),
         make_layer_diff(2, "stem_relu", 4e-2, op="ReLU", rtol=rtol, atol=atol)],
        unmatched=[("stem_bn", "fused")], framework_b="tflite", rtol=rtol, atol=atol,
    )
    return make_chain(reports)


# --- words -------------------------------------------------------------------------------------


def test_the_verdict_names_the_stage_the_layer_and_the_numbers():
    head, *lines = make_chain().summary().splitlines()
    assert head == "✗ CHAIN BREAKS at keras-bad (stage 2 of 3), layer stem_bn (BatchNorm2d): rel err 5.0e-02 > rtol 1.0e-03"
    assert len(lines) == 3 and lines[0].startswith("  ✓ onnx (onnx): ok — ")
    assert _inheriting_chain().summary().splitlines()[0].endswith("rtol 1.0e-03; inherited by tflite16-bad")


def test_a_precision_stage_says_the_tolerance_it_was_judged_with():
    chain = make_chain()
    line = stage_line(chain, 3)
    assert line.startswith("✗ tflite16-bad (tflite, float16): introduces — judged with float16 tolerance "
                           "(rtol 0.01, atol 0.001) — ")
    assert line.endswith(chain.reports[2].summary()) and chain.stage_line(3) == line


def test_an_all_ok_chain_and_a_chain_that_compared_nothing():
    rtol, atol = PRECISION_TOLERANCES["float16"]
    ok16 = make_report(layer_diffs({name: 2e-3 for name, _ in CHAIN_LAYERS}, rtol=rtol, atol=atol), rtol=rtol, atol=atol)
    ok = make_chain([chain_reports()[0], ok16], ("torch", "onnx", "fp16"), ("float32", "float32", "float16"))
    assert ok.summary().splitlines()[0] == (
        "✓ CHAIN OK: torch → onnx → fp16: every stage matches torch (fp16 within expected quantisation error)"
    )
    nothing = make_report([], unmatched=[(name, "no counterpart") for name, _ in CHAIN_LAYERS[:-1]])
    broken = make_chain([chain_reports()[0], nothing], CHAIN_STAGES[:3], CHAIN_PRECISIONS[:3])
    assert str(broken).splitlines()[0] == "✗ CHAIN BREAKS at keras-bad: no layer of torch could be compared with it"


# --- the terminal --------------------------------------------------------------------------------


def test_the_matrix_marks_introduced_inherited_quantisation_and_blank_cells():
    text = _text(make_chain())
    assert "introduced by" in text and "tflite16-bad" in text and "(float16)" in text and LEGEND[:30] in text
    bn_line = next(line for line in text.splitlines() if " stem_bn " in line and "BatchNorm2d " in line)
    assert "5.0e-02 ✗ ◀" in bn_line and "keras-bad" in bn_line and "fused" in bn_line
    relu_line = next(line for line in text.splitlines() if " stem_relu " in line and "ReLU " in line)
    assert relu_line.count("✗ ←") == 1 and "4.0e-02 ✗ " in relu_line
    stem_line = next(line for line in text.splitlines() if re.match(r"^\s*0 stem\s", line))
    assert "5.0e-03 ≈" in stem_line and "1.0e-07 ✓" in stem_line
    fc_line = next(line for line in text.splitlines() if re.match(r"^\s*4 fc\s", line))
    assert " · " in fc_line and "2.0e-02 ✗" in fc_line and "no-match" in text
    wide = _text(make_chain(), width=2000)  # each stage's line after the legend, unwrapped
    assert all(line.strip() in wide.splitlines() for line in make_chain().summary().splitlines()[1:])


@pytest.mark.parametrize("width", [60, 100])
def test_narrow_terminals_keep_every_layer_name_and_cell(width):
    chain = make_chain()
    lines = _text(chain, width).splitlines()
    assert max(len(line) for line in lines) <= width
    guilty = guilty_cells(chain)
    # the float16 stage's guilty layer (stem_relu, first over tolerance) is inherited: no ◀ there
    assert guilty == {("stem_bn", "keras-bad")}
    for row in chain.matrix:
        (line,) = [x for x in lines if re.match(rf"^\s*{row.index} {re.escape(row.layer)}\s", x)]
        cells = [cell_text(c, (row.layer, c.stage) in guilty)[0] for c in row.cells]
        assert re.search(r"\s+".join(re.escape(c) for c in cells), line), (cells, line)
    if width == 60:
        assert any(x.startswith("left out to fit 60 columns: op, introduced by") for x in lines)


def test_cell_text_and_style():
    chain = make_chain()
    assert cell_text(chain.row("stem_bn").cell("keras-bad"), True) == ("5.0e-02 ✗ ◀", "bold red")
    assert cell_text(chain.row("stem_bn").cell("tflite16-bad")) == ("fused", "dim")
    assert cell_text(chain.row("fc").cell("keras-bad")) == ("·", "dim")
    assert cell_text(chain.row("stem").cell("tflite16-bad")) == ("5.0e-03 ≈", "cyan")
    assert cell_text(chain.row("stem").cell("onnx")) == ("1.0e-07 ✓", "green")


def _long_chain(n):
    """Two stages over ``n`` layers; b goes over tolerance from l10 on."""
    trace0 = make_trace([(f"l{i}", "Conv2d", np.zeros(100, dtype="float32"), None) for i in range(n)])
    report = make_report([make_layer_diff(i, f"l{i}", 1e-7 if i < 10 else 5e-2) for i in range(n)])
    matrix = chain_matrix(trace0, [report], ["a", "b"], ["float32", "float32"])
    return ChainReport(stages=("a", "b"), reports=(report,), matrix=matrix, precisions=("float32", "float32"))


def test_long_matrices_fold_rows_where_no_verdict_changes():
    chain = _long_chain(30)
    assert shown_rows(chain) == list(chain.matrix)  # 30 rows: under the limit of 40
    shown = [x if isinstance(x, tuple) else x.layer for x in shown_rows(chain, limit=20)]
    # kept: head, tail, and l10 (the guilty layer, where b's verdict changes) with a row each side
    assert shown == ["l0", "l1", "l2", (3, 6), "l9", "l10", "l11", (12, 15), "l27", "l28", "l29"]
    text = _text(_long_chain(50))  # the terminal view folds past 40 rows
    assert "… 6 rows as above …" in text and "… 35 rows as above …" in text
    assert re.search(r"^\s*47 l47\s", text, re.M) and not re.search(r"^\s*30 l30\s", text, re.M)


# --- JSON ----------------------------------------------------------------------------------------


def test_json_holds_stages_matrix_and_reports(tmp_path):
    chain = make_chain()
    text = chain.to_json(tmp_path / "deep" / "chain.json")
    assert (tmp_path / "deep" / "chain.json").read_text(encoding="utf-8") == text == chain.to_json()
    data = json.loads(text)
    assert list(data)[:2] == ["schema", "version"]
    assert data["schema"] == "parity.chain" and data["version"] == 1 and data["ok"] is False
    assert data["summary"] == chain.summary().splitlines()[0]
    assert data["first_break"] == {"stage": "keras-bad", "layer": "stem_bn"}
    assert [s["name"] for s in data["stages"]] == list(CHAIN_STAGES)
    assert [s.get("status") for s in data["stages"]] == [None, "ok", "introduces", "introduces"]
    assert [s["role"] for s in data["stages"]] == ["reference", "conversion", "conversion", "precision"]
    assert data["stages"][3]["tolerance"] == {"rtol": 0.01, "atol": 0.001} and data["stages"][1]["tolerance"] is None
    assert data["stages"][3]["precision_source"] == "given" and data["stages"][0]["model"]["framework"] == "torch"
    bn = next(r for r in data["matrix"] if r["layer"] == "stem_bn")
    assert bn["introduced_by"] == "keras-bad"
    assert [c["status"] for c in bn["cells"]] == ["ok", "introduced", "fused"]
    assert bn["cells"][2]["rel_err"] is None and bn["cells"][2]["label"] == "fused by the converter"
    stem16 = data["matrix"][0]["cells"][2]
    assert stem16["precision"] == "float16" and stem16["within_float32"] is False
    assert len(data["reports"]) == 3 and data["reports"][1]["schema"] == "parity.report"
    assert chain.to_dict() == data


def test_non_finite_errors_are_strict_json():
    report = make_report([make_layer_diff(0, "stem", float("inf"))])
    trace0 = make_trace([("stem", "Conv2d", np.zeros(100, dtype="float32"), None)])
    chain = ChainReport(stages=("a", "b"), reports=(report,), matrix=chain_matrix(trace0, [report], ["a", "b"],
                        ["float32", "float32"]), precisions=("float32", "float32"))
    data = json.loads(chain.to_json())  # allow_nan=False: would raise on a bare inf
    assert data["matrix"][0]["cells"][0]["rel_err"] == "inf"
    assert encode({"x": (np.float32(1.5), float("nan"))}) == {"x": [1.5, "nan"]}


# --- HTML ----------------------------------------------------------------------------------------


def test_html_is_self_contained_and_escaped(tmp_path):
    chain = make_chain()
    html = chain.to_html(tmp_path / "chain.html")
    assert (tmp_path / "chain.html").read_text(encoding="utf-8") == html
    assert html.startswith("<!DOCTYPE html>") and '<table class="matrix">' in html and html.endswith("</body></html>")
    assert "http://" not in html and "https://" not in html and "<script" not in html and "src=" not in html
    assert "CHAIN BREAKS at keras-bad" in html
    for line in chain.summary().splitlines()[1:]:
        assert line.strip().replace(">", "&gt;") in html
    assert "c-introduced" in html and "c-inherited" in html and "c-quantisation" in html
    assert 'title="expected quantisation error — tflite16-bad: b/stem (rtol 0.01, atol 0.001)"' in html
    weird = make_chain(stages=("<b>torch</b>", "onnx", "keras & co", "tflite16-bad"))
    page = weird.to_html()
    assert "<b>torch</b>" not in page and "&lt;b&gt;torch&lt;/b&gt;" in page and "keras &amp; co" in page
    fragment = weird._repr_html_()
    assert fragment.lstrip().startswith("<h1") and "<!DOCTYPE" not in fragment and "<style>" not in fragment
