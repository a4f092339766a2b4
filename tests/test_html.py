"""The HTML report, the JSON schema, report comparison and Model Explorer export —
all from hand-made traces, so no framework is needed."""

from __future__ import annotations

import json
import re
from importlib import resources

import numpy as np
import pytest

import parity
from parity.detail import error_map
from parity.report.explorer import node_data
from parity.report.html import fold_set
from parity.report.regress import compare_reports
from parity.report.schema import schema_text

from .helpers import make_trace, nchw_to_nhwc

rng = np.random.default_rng(3)
X = rng.standard_normal((2, 4, 8, 6)).astype("float32")
EVIL = "<img src=x onerror=alert(1)>"


def pair(*, bug_rows=0, scale=1.0, name="conv", keras_name="conv2d", extra=0):
    """A conv → relu → fc pair; ``bug_rows`` perturbs B's last rows of the conv output."""
    y = np.maximum(X, 0)
    w = rng.standard_normal((y[0].size, 3)).astype("float32")
    xb = X.copy()
    if bug_rows:
        xb[:, :, -bug_rows:, :] += 0.5
    xb = xb * scale
    yb = np.maximum(xb, 0)
    specs_a = [(name, "Conv2d", X, "NCHW"), ("relu", "ReLU", y, "NCHW")]
    specs_b = [(keras_name, "Conv2D", nchw_to_nhwc(xb), "NHWC"), ("re_lu", "ReLU", nchw_to_nhwc(yb), "NHWC")]
    for i in range(extra):
        specs_a.append((f"block{i}", "ReLU", y + i, "NCHW"))
        specs_b.append((f"block{i}_k", "ReLU", nchw_to_nhwc(yb + i), "NHWC"))
    out_a, out_b = y.reshape(2, -1) @ w, yb.reshape(2, -1) @ w
    specs_a += [("fc", "Linear", out_a, "NC"), ("output", "output", out_a, "NC")]
    specs_b += [("dense", "Dense", out_b, "NC"), ("output", "output", out_b, "NC")]
    return parity.diff_traces(make_trace(specs_a), make_trace(specs_b, framework="keras"))


@pytest.fixture(scope="module")
def padding_bug():
    return pair(bug_rows=1)


def test_a_padding_bug_shows_as_a_bright_last_row(padding_bug):
    first = padding_bug.first_divergence
    assert first.a_name == "conv"
    emap = first.detail.error_map
    assert (emap.rows, emap.cols) == (8, 6)
    assert emap.border["last_row"] == pytest.approx(0.5, rel=1e-3)
    assert emap.border["interior"] == 0.0 and emap.border["first_row"] == 0.0
    assert emap.values[-1][0] == pytest.approx(0.5, rel=1e-3) and emap.values[0][0] == 0.0
    hist = first.detail.histogram
    assert sum(hist.counts_a) + hist.outside_a == X.size and len(hist.edges) == len(hist.counts_a) + 1


def test_error_maps_follow_the_layout_and_shrink_large_tensors():
    a = np.zeros((1, 3, 200, 100), np.float32)
    b = a.copy()
    b[:, :, :, -1] = 1.0  # last column
    emap = error_map(a, b, "NCHW")
    assert (emap.rows, emap.cols) == (200, 100)
    assert len(emap.values) == 64 and len(emap.values[0]) == 64
    assert emap.border["last_col"] == 1.0 and emap.border["first_col"] == 0.0
    nhwc = error_map(nchw_to_nhwc(a), nchw_to_nhwc(b), "NHWC")
    assert nhwc.border == emap.border
    assert error_map(a.reshape(3, -1), b.reshape(3, -1), "NC") is None


def test_html_names_the_divergence_and_draws_it(padding_bug, tmp_path):
    html = padding_bug.to_html(tmp_path / "deep" / "r.html")
    assert (tmp_path / "deep" / "r.html").read_text(encoding="utf-8") == html
    assert "<h1>✗ DIVERGES at conv (Conv2d ↔ Conv2D conv2d)" in html
    assert re.search(r'<tr id="row-0" class="bad first', html)
    # every point of the chart names its layer on hover and links to its row
    titles = re.findall(r'<g id="pt-(\d+)"[^>]*><title>([^<]*)</title>', html)
    assert [int(i) for i, _ in titles] == list(range(len(padding_bug.layers)))
    assert titles[0][1].startswith("#0 conv (Conv2d) ↔ conv2d: rel err") and "over tolerance" in titles[0][1]
    assert 'src="data:image/png;base64,' in html and "last row 5.0e-01" in html
    assert "default-src 'none'" in html  # the page may fetch nothing
    assert not re.search(r'(src|href)="(https?:)?//', html)
    for key in ("parity", "python", "numpy", "platform"):
        assert f'<span class="kv">{key} ' in html


def test_html_is_deterministic_and_survives_a_json_round_trip(padding_bug, tmp_path):
    padding_bug.to_json(tmp_path / "r.json")
    again = parity.load_report(tmp_path / "r.json")
    assert again == padding_bug
    assert again.to_html() == padding_bug.to_html()


def test_names_from_a_model_are_escaped_everywhere(tmp_path):
    report = pair(bug_rows=1, name=EVIL, keras_name=EVIL + "$x$")
    html = report.to_html()
    assert EVIL not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    compact = report._repr_html_()
    assert EVIL not in compact and "&lt;img src=x onerror=alert(1)&gt;" in compact


def test_the_notebook_view_is_compact(padding_bug):
    compact = padding_bug._repr_html_()
    assert "<script" not in compact and "<svg" not in compact
    assert "✗ DIVERGES at conv" in compact and 'class="bad first' in compact


def test_long_tables_fold_but_keep_the_divergence_and_outputs():
    report = pair(bug_rows=0, extra=60)
    fold = fold_set(report.layers)
    n = len(report.layers)
    assert report.ok and n == 64 and len(fold) == n - 10  # first five and last five rows stay
    html = report.to_html()
    assert f"show all {n} layers ({len(fold)} folded)" in html
    assert html.count('folded"') + html.count("folded ") >= len(fold)


def test_the_published_schema_is_current_and_validates_reports(padding_bug):
    jsonschema = pytest.importorskip("jsonschema")
    published = resources.files("parity").joinpath("schemas/report.schema.json").read_text(encoding="utf-8")
    assert published == schema_text(), "run: python -m parity.report.schema > parity/schemas/report.schema.json"
    schema = json.loads(published)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(json.loads(padding_bug.to_json()))
    broken = json.loads(padding_bug.to_json())
    broken["layers"][0]["metrics"]["rel_err"] = "big"
    assert not validator.is_valid(broken)


def test_compare_reports_names_the_layer_that_got_worse(tmp_path, capsys):
    old, new = pair(), pair(scale=1.01)
    comparison = compare_reports(old, new)
    assert comparison.regressed
    assert {c.a_name: c.status for c in comparison.changes}["conv"] == "now fails"
    assert comparison.summary().startswith("✗ REGRESSION: old passes, new diverges")
    same = compare_reports(old, pair())
    assert not same.regressed and {c.status for c in same.changes} == {"same"}
    fewer = pair(name="stem")  # A's layer renamed: 'conv' is no longer compared
    gone = compare_reports(old, fewer)
    assert gone.regressed and any("not compared now: conv" in n for n in gone.notes)

    from parity.cli import main

    old.to_json(tmp_path / "old.json")
    new.to_json(tmp_path / "new.json")
    assert main(["compare-reports", str(tmp_path / "old.json"), str(tmp_path / "new.json")]) == 1
    out = capsys.readouterr().out
    assert "✗ REGRESSION" in out and re.search(r"conv\s+Conv2d\s+.*now fails", out)
    assert main(["compare-reports", str(tmp_path / "old.json"), str(tmp_path / "old.json")]) == 0
    assert main(["show", str(tmp_path / "new.json"), "--html", str(tmp_path / "new.html")]) == 1
    assert (tmp_path / "new.html").read_text(encoding="utf-8") == new.to_html()


def test_model_explorer_node_data_colours_each_layer_by_its_verdict(padding_bug, tmp_path):
    data = padding_bug.to_model_explorer(tmp_path / "nd.json")
    assert json.loads((tmp_path / "nd.json").read_text()) == data
    results = data["main"]["results"]
    assert set(results) == {"conv2d", "re_lu", "dense", "output"}
    assert results["conv2d"]["bgColor"] == "#ef9a9a"
    assert results["conv2d"]["value"] == pytest.approx(padding_bug.layer("conv").rel_err)
    on_a = node_data(padding_bug, side="a", graph_id="g")
    assert set(on_a["g"]["results"]) == {"conv", "relu", "fc", "output"}
    assert [t["value"] for t in on_a["g"]["thresholds"]][:2] == [1e-4, 1e-3]
    with pytest.raises(parity.ParityError, match="side must be 'a' or 'b'"):
        node_data(padding_bug, side="c")
