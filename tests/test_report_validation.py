"""Saved reports are input: a file that is not a report parity wrote is a ReportFormatError
naming the field (its JSON path) and what belongs there, and the CLI exits 2 with one line —
never 1, which tells CI the models diverge."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

import parity
from parity.cli import main
from parity.errors import OutputError, ReportFormatError
from parity.records import Diagnosis
from parity.report.jsonio import MAX_DEPTH, load_report, report_from_dict
from tests.helpers import make_layer_diff, make_report

SCHEMA = Path(parity.__file__).parent / "schemas" / "report.schema.json"


def valid_report():
    layers = [make_layer_diff(0, "conv", 1e-6), make_layer_diff(1, "bn", 5e-2, op="BatchNorm2d")]
    diagnosis = Diagnosis(code="bn_epsilon", layer="bn", message="eps", evidence={"ratio": 2.5})
    layers[1] = layers[1].__class__(**{**layers[1].__dict__, "diagnoses": (diagnosis,), "confidence": 0.9})
    return make_report(layers, unmatched=[("extra", "no-match")])


@pytest.fixture
def data():
    return valid_report().to_dict()


def broken(data, path, value=None, *, delete=False):
    """A deep copy of ``data`` with ``path`` (keys and indices) set to ``value`` or deleted."""
    data = copy.deepcopy(data)
    node = data
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


CASES = [
    # (id, path, value or DELETE, the message's tail)
    ("index 1e12", ("layers", 0, "index"), 1e12,
     "at $.layers[0].index expected an index of the layer list (0 to 1), got 1000000000000."),
    ("fractional index", ("layers", 0, "index"), 0.5, "at $.layers[0].index expected an integer ≥ 0, got 0.5."),
    ("index past the list", ("layers", 1, "index"), 10**12,
     "at $.layers[1].index expected an index of the layer list (0 to 1), got 1000000000000."),
    ("negative count", ("layers", 0, "metrics", "mismatched"), -3,
     "at $.layers[0].metrics.mismatched expected an integer ≥ 0, got -3."),
    ("negative numel", ("layers", 1, "metrics", "numel"), -1, "at $.layers[1].metrics.numel expected an integer ≥ 0, got -1."),
    ("missing field", ("layers", 0, "metrics"), "DELETE",
     "at $.layers[0].metrics: missing (LayerDiff requires metrics)."),
    ("missing top-level field", ("inputs",), "DELETE", "at $.inputs: missing (Report requires inputs)."),
    ("string for a number", ("layers", 0, "metrics", "rel_err"), "big",
     "at $.layers[0].metrics.rel_err expected a number (or \"inf\", \"-inf\", \"nan\"), got a string 'big'."),
    ("number for a string", ("layers", 0, "a_name"), 3, "at $.layers[0].a_name expected a string, got 3."),
    ("bool for a count", ("layers", 0, "metrics", "numel"), True, "at $.layers[0].metrics.numel expected an integer ≥ 0, got true."),
    ("object for a list", ("layers",), {}, "at $.layers expected an array, got an object."),
    ("unknown field", ("layers", 0, "evil"), 1,
     "at $.layers[0].evil: LayerDiff has no such field (its fields: index, a_name, b_name, op, b_op, shape, "
     "b_shape, dtype, transform, ambiguous, how, metrics, rtol, atol, ok, reasons, role, diagnoses, detail, "
     "own_err, own_method, baseline_err, drift, confidence, noise, ref_err, quant)."),
    ("infinite tolerance", ("layers", 0, "rtol"), "inf", "at $.layers[0].rtol expected a finite number, got a string 'inf'."),
    ("negative tolerance", ("layers", 0, "atol"), -1e-5, "at $.layers[0].atol expected a number ≥ 0, got -1e-05."),
    ("confidence over 1", ("layers", 1, "confidence"), 7, "at $.layers[1].confidence expected a number from 0 to 1, got 7."),
    ("negative shape", ("unmatched", 0, "shape", 0), -100, "at $.unmatched[0].shape[0] expected an integer ≥ 0, got -100."),
    ("evidence not a number", ("layers", 1, "diagnoses", 0, "evidence", "ratio"), [1],
     "at $.layers[1].diagnoses[0].evidence.ratio expected a number (or \"inf\", \"-inf\", \"nan\"), got an array of 1."),
    ("null for a record", ("a",), None, "at $.a expected an object (ModelInfo), got null."),
    ("count past 2**53", ("layers", 0, "metrics", "numel"), 1e308,
     "at $.layers[0].metrics.numel expected an integer of at most 2**53 (9,007,199,254,740,992), got "
     + repr(int(1e308))[:37] + "…."),
    ("huge name", ("layers", 0, "b_name"), "x" * 100_001,
     "at $.layers[0].b_name expected a string of at most 100,000 characters, got 100,001."),
]


@pytest.mark.parametrize("path, value, tail", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_crafted_field_is_refused_naming_it(data, tmp_path, capsys, path, value, tail):
    bad = broken(data, path, delete=value == "DELETE") if value == "DELETE" else broken(data, path, value)
    file = tmp_path / "bad.json"
    file.write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(ReportFormatError) as info:
        load_report(file)
    assert str(info.value) == f"report {str(file)!r} is not a valid parity report: {tail}"
    assert main(["show", str(file)]) == 2
    err = capsys.readouterr().err
    assert err == f"parity: ReportFormatError: report {str(file)!r} is not a valid parity report: {tail}\n"


def test_the_published_schema_refuses_the_structural_cases_too(data):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.validate(data, schema)  # a report parity wrote is valid
    structural = {"fractional index", "missing field", "missing top-level field", "string for a number", "number for a string",
                  "bool for a count", "object for a list", "unknown field", "evidence not a number", "null for a record"}
    for name, path, value, _ in CASES:
        if name in structural:
            bad = broken(data, path, delete=True) if value == "DELETE" else broken(data, path, value)
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(bad, schema)


def write(tmp_path, text: str | bytes) -> Path:
    file = tmp_path / "r.json"
    if isinstance(text, bytes):
        file.write_bytes(text)
    else:
        file.write_text(text, encoding="utf-8")
    return file


def test_200k_levels_of_nesting_is_an_error_not_a_recursion_error(tmp_path, capsys):
    prefix = '{"schema": "parity.report", "version": 1, "a": '
    file = write(tmp_path, prefix + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(ReportFormatError) as info:
        load_report(file)
    assert str(info.value) == (
        f"report {str(file)!r} is not a valid parity report: nested more than {MAX_DEPTH} levels deep "
        f"(at character {len(prefix) + MAX_DEPTH - 1:,}); a parity report nests at most {MAX_DEPTH}."
    )
    assert main(["show", str(file)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_brackets_inside_strings_do_not_count_as_nesting(tmp_path):
    report = make_report([make_layer_diff(0, "[" * 100 + "{" * 100, 1e-6)])
    report.to_json(tmp_path / "r.json")
    assert load_report(tmp_path / "r.json").layers[0].a_name == "[" * 100 + "{" * 100


@pytest.mark.parametrize(
    "text, message",
    [
        ("hello", "is not valid JSON: Expecting value: line 1 column 1 (char 0)."),
        ("", "is empty: not a parity report (write one with `parity diff --json`)."),
        ("  \n", "is empty: not a parity report (write one with `parity diff --json`)."),
        (b"\xff\xfe{}", "is not UTF-8 text (byte 0): not a parity report."),
        ("[1, 2]", "is not a parity report: $.schema is 'an array of 2', expected 'parity.report'. "
                   "Give a file written by report.to_json() or `parity diff --json`."),
        ('{"schema": "parity.report", "version": 3}',
         "has schema version 3; this parity reads versions up to 2. Upgrade parity to read it."),
        ('{"schema": "parity.report", "version": "1"}',
         "is not readable: at $.version expected an integer ≥ 1, got a string '1'."),
        ('{"schema": "parity.report", "version": 1, "rtol": NaN}',
         "is not valid JSON: NaN is not JSON (parity writes non-finite numbers as the strings \"inf\", \"-inf\", \"nan\")."),
    ],
    ids=["not json", "empty", "blank", "not utf-8", "an array", "future version", "version a string", "NaN literal"],
)
def test_a_file_that_is_no_report_is_refused(tmp_path, capsys, text, message):
    file = write(tmp_path, text)
    with pytest.raises(ReportFormatError) as info:
        load_report(file)
    assert str(info.value) == f"report {str(file)!r} {message}"
    assert main(["show", str(file)]) == 2
    assert capsys.readouterr().err == f"parity: ReportFormatError: report {str(file)!r} {message}\n"


def test_compare_reports_exits_2_on_a_broken_report(data, tmp_path, capsys):
    good = tmp_path / "good.json"
    valid_report().to_json(good)
    bad = write(tmp_path, json.dumps(broken(data, ("layers", 0, "metrics", "numel"), -5)))
    for argv in (["compare-reports", str(good), str(bad)], ["compare-reports", str(bad), str(good)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert err.endswith("at $.layers[0].metrics.numel expected an integer ≥ 0, got -5.\n")


def test_a_directory_is_not_a_report(tmp_path):
    with pytest.raises(ReportFormatError, match=r"is a directory, not a report file\.$"):
        load_report(tmp_path)


def test_a_valid_report_round_trips(tmp_path, capsys):
    report = valid_report()
    report.to_json(tmp_path / "r.json")
    assert load_report(tmp_path / "r.json") == report
    assert report_from_dict(report.to_dict()) == report
    assert main(["show", str(tmp_path / "r.json")]) == 1  # it diverges at bn: 1, the report is fine
    assert "DIVERGES at bn" in capsys.readouterr().out


def test_non_finite_errors_still_load(tmp_path):
    data = broken(valid_report().to_dict(), ("layers", 1, "metrics", "rel_err"), "inf")
    report = report_from_dict(data)
    assert report.layers[1].metrics.rel_err == float("inf")


def test_an_unwritable_output_path_is_a_parity_error_naming_it(tmp_path, capsys):
    report = tmp_path / "r.json"
    valid_report().to_json(report)
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "r.html"  # its parent is a file: no user, root included, can write it
    assert main(["show", str(report), "--html", str(target)]) == 2
    err = capsys.readouterr().err
    assert err == (f"parity: OutputError: cannot write {str(target)!r}: {str(tmp_path / 'file')!r} is not a directory. "
                   "Give a path in a directory you can write to.\n")
    with pytest.raises(OutputError) as info:
        valid_report().to_json(target)
    assert isinstance(info.value, OSError) and info.value.path == target


@pytest.mark.skipif(getattr(__import__("os"), "geteuid", lambda: 1)() == 0, reason="root writes a read-only directory")
def test_a_read_only_directory_is_a_parity_error(tmp_path, capsys):
    report = tmp_path / "r.json"
    valid_report().to_json(report)
    ro = tmp_path / "reports"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["show", str(report), "--json", str(ro / "out.json")]) == 2
        err = capsys.readouterr().err
        assert err == (f"parity: OutputError: cannot write {str(ro / 'out.json')!r}: Permission denied. "
                       "Give a path in a directory you can write to.\n")
    finally:
        ro.chmod(0o700)


def test_a_permission_denied_is_a_parity_error_naming_the_path(tmp_path, capsys, monkeypatch):
    import errno

    report = tmp_path / "r.json"
    valid_report().to_json(report)
    target = tmp_path / "reports" / "out.html"

    def denied(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_text", denied)  # what a read-only directory does, for root too
    assert main(["show", str(report), "--html", str(target)]) == 2
    assert capsys.readouterr().err == (
        f"parity: OutputError: cannot write {str(target)!r}: Permission denied. Give a path in a directory you can write to.\n"
    )


def full_report():
    """A report holding every record kind: heat map, histogram, input specs, parameters."""
    from parity.records import ErrorMap, Histogram, InputSpec, LayerDetail, ModelInfo, ParamDiff

    base = valid_report()
    detail = LayerDetail(
        histogram=Histogram(edges=(0.0, 0.5, 1.0), counts_a=(3, 4), counts_b=(4, 3), outside_a=1),
        error_map=ErrorMap(rows=2, cols=2, values=((0.0, 0.25), (float("inf"), 1.0)),
                           border={"first_row": 0.1, "interior": float("nan")}),
    )
    layers = (base.layers[0], base.layers[1].__class__(**{**base.layers[1].__dict__, "detail": detail,
                                                            "own_err": 0.04, "own_method": "replay"}))
    a = ModelInfo("torch", "2", "Net", "nn.Module", 10,
                  input_spec=(InputSpec("x", (None, 3, 8, 8), layout="NCHW"), InputSpec("mask", (1,), required=False)))
    report = base.__class__(**{
        **base.__dict__, "a": a, "layers": layers, "notes": ("a note",), "environment": {"parity": "0", "numpy": "2"},
        "params": (ParamDiff("conv", "conv", "weight", "kernel", "differs", 0.5, "scaled"),
                   ParamDiff("bn", "bn", "running_var", "moving_variance", "missing")),
        "rtol": 1e-3, "atol": 1e-5,
    })
    return report


def test_a_report_holding_every_record_round_trips_and_fits_the_schema(tmp_path):
    report = full_report()
    report.to_json(tmp_path / "r.json")
    back = load_report(tmp_path / "r.json")
    assert back.to_json() == report.to_json()
    assert back.a.input_spec[0].shape == (None, 3, 8, 8)
    assert "border mean |b−a|: first row 1.0e-01, last row –, first col –, last col –, interior nan" in back.to_html()
    assert "DIVERGES at bn" in str(back)
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(report.to_dict(), json.loads(SCHEMA.read_text(encoding="utf-8")))


def test_the_command_exits_2_with_one_line_and_no_traceback(tmp_path):
    import os
    import subprocess
    import sys

    bad = write(tmp_path, json.dumps(broken(valid_report().to_dict(), ("layers", 0, "index"), 1e12)))
    root = Path(parity.__file__).resolve().parent.parent
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from parity.cli import main; sys.exit(main(sys.argv[1:]))", "show", str(bad)],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(root)}, timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr == (f"parity: ReportFormatError: report {str(bad)!r} is not a valid parity report: "
                          "at $.layers[0].index expected an index of the layer list (0 to 1), got 1000000000000.\n")


DETAIL = ("layers", 1, "detail")


@pytest.mark.parametrize(
    "path, value, tail",
    [
        (DETAIL + ("histogram", "counts_b"), [1, 2, 3],
         "at $.layers[1].detail.histogram.counts_b expected one count per bin (2), got an array of 3."),
        (DETAIL + ("histogram", "edges"), [0.0], "at $.layers[1].detail.histogram.edges expected at least 2 bin edges, got an array of 1."),
        (DETAIL + ("histogram", "edges"), [0.0, "inf", 2.0],
         "at $.layers[1].detail.histogram.edges[1] expected a finite number, got a string 'inf'."),
        (DETAIL + ("error_map", "values"), [[1.0, 2.0], [3.0]],
         "at $.layers[1].detail.error_map.values[1] expected a row of 2 values, got an array of 1."),
        (DETAIL + ("error_map", "values"), [], "at $.layers[1].detail.error_map.values expected 1 to 64 rows, got an array of 0."),
        (DETAIL + ("error_map", "values"), [[0.0] * 65], "at $.layers[1].detail.error_map.values[0] expected a row of 1 to 64 values, got an array of 65."),
        (DETAIL + ("error_map", "rows"), -2, "at $.layers[1].detail.error_map.rows expected an integer ≥ 0, got -2."),
        (("a", "input_spec", 0, "shape", 0), "x",
         "at $.a.input_spec[0].shape[0] expected an integer ≥ 0 or null, got a string 'x'."),
        (("params", 0, "rel_err"), {}, 'at $.params[0].rel_err expected a number (or "inf", "-inf", "nan") or null, got an object.'),
    ],
    ids=["counts per bin", "one edge", "infinite edge", "ragged heat map", "empty heat map", "wide heat map",
         "negative rows", "shape of a string", "object for an error"],
)
def test_a_crafted_detail_is_refused_naming_it(tmp_path, path, value, tail):
    file = write(tmp_path, json.dumps(broken(full_report().to_dict(), path, value)))
    with pytest.raises(ReportFormatError) as info:
        load_report(file)
    assert str(info.value) == f"report {str(file)!r} is not a valid parity report: {tail}"
