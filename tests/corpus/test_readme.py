"""The README's corpus table is computed from the rows of a run, not typed by hand."""

from __future__ import annotations

import pytest

from tests.corpus.cases import Row
from tests.corpus.readme import BEGIN, END, rewrite, table
from tests.corpus.run import merged


def row(case, bug=None, *, passed=True, layers=10, compared=8, accounted=1, verdict="ok", excluded=None,
        measured="abc1234 2026-12-02"):
    source, model, route = case.split("/")
    return Row(case, source, model, route, bug, layers, compared, accounted, layers - compared - accounted, 1e-6,
               verdict, "ok" if bug is None else "x", passed, 1.0, excluded=excluded, measured=measured)


ROWS = [
    row("timm/resnet18/onnx"), row("timm/resnet18/onnx", "scaled-kernel"),
    row("timm/vit/onnx", layers=20, compared=10, accounted=2, passed=False, verdict="diverges at blocks.0 (-)"),
    row("timm/vit/onnx", "scaled-kernel", passed=False, verdict="diverges at blocks.1 (-)"),
    row("timm/dla/onnx", verdict="excluded: export failed", excluded="export failed"),
    row("hf/bert/pt-tf", verdict="crash: KeyError", passed=False, layers=0, compared=0, accounted=0),
]


def test_the_table_counts_each_route_and_names_a_false_divergence():
    text = table(ROWS)
    lines = text.splitlines()
    timm = next(line for line in lines if line.startswith("| timm | onnx |"))
    # resnet18 9/10 and vit 12/20 accounted: median 75%, min 60%; the excluded dla is not a pair run
    assert timm == ("| timm | onnx | 3 | 1/2 (**false divergence: vit**) | 1/2 | 75%, 60% | 0 | abc1234 |")
    hf = next(line for line in lines if line.startswith("| hf |"))
    assert "| 0/1 |" in hf and hf.endswith("| 1 | abc1234 |")  # a crash is no false divergence, but counted
    assert lines[-1] == ("3 (model, route) pairs; 1 of 3 faithful pairs ok, 1 of 2 injected bugs found at their "
                         "layer, 1 excluded (see `reports/corpus.md`).")


def test_rewrite_replaces_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# intro\n\n{BEGIN}\nold table\n{END}\n\nafter\n")
    assert rewrite(readme, ROWS)
    text = readme.read_text()
    assert text.startswith("# intro\n\n" + BEGIN + "\n| source |") and text.endswith(END + "\n\nafter\n")
    assert "old table" not in text
    assert not rewrite(readme, ROWS)  # already up to date
    readme.write_text("no markers")
    with pytest.raises(SystemExit, match="no <!-- corpus-table:begin -->"):
        rewrite(readme, ROWS)


def test_a_merged_run_keeps_earlier_rows_it_did_not_judge_again():
    old = [row("timm/resnet18/onnx", measured="old 2026-11-30"), row("timm/vit/onnx", measured="old 2026-11-30")]
    new = [row("timm/vit/onnx", measured="new 2026-12-02")]
    out = merged(old, new)
    assert [(r.case, r.measured) for r in out] == [("timm/resnet18/onnx", "old 2026-11-30"),
                                                   ("timm/vit/onnx", "new 2026-12-02")]


def test_combine_writes_one_report_from_runs_made_side_by_side(tmp_path):
    import json

    from tests.corpus.run import main, write_reports

    faithful, bugs, out = tmp_path / "faithful", tmp_path / "bugs", tmp_path / "out"
    write_reports([row("timm/resnet18/onnx"), row("timm/vit/onnx", measured="old 2026-12-01")], faithful)
    write_reports([row("timm/resnet18/onnx", "scaled-kernel"), row("timm/vit/onnx")], bugs)
    assert main(["--combine", str(faithful), str(bugs), "--reports", str(out)]) == 0
    rows = json.loads((out / "corpus.json").read_text())["rows"]
    assert sorted((r["case"], r["bug"] or "", r["measured"]) for r in rows) == [
        ("timm/resnet18/onnx", "", "abc1234 2026-12-02"), ("timm/resnet18/onnx", "scaled-kernel", "abc1234 2026-12-02"),
        ("timm/vit/onnx", "", "abc1234 2026-12-02")]  # the later directory's row of a pair judged twice
    with pytest.raises(SystemExit):
        main(["--combine", str(tmp_path / "nothing"), "--reports", str(out)])
