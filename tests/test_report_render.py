"""Reports render for people (rich text) and machines (versioned JSON), from records alone."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import parity
from parity.metrics import compute_metrics, verdict
from parity.records import InputsSummary, LayerDiff, ModelInfo, Report, UnmatchedLayer
from parity.report.console import render_text
from parity.report.jsonio import report_from_dict


def layer(i, name, op, err, b_name=None, b_op=None, numel=100):
    a = np.linspace(1, 2, numel)
    m = compute_metrics(a, a * (1 + err), 1e-3, 1e-5)
    ok, reasons = verdict(m, 1e-3, 1e-5)
    return LayerDiff(
        index=i, a_name=name, b_name=b_name or name.replace(".", "_"), op=op, b_op=b_op or op,
        shape=(4, 25), b_shape=(4, 25), dtype="float32", transform="identity", ambiguous=False,
        how="order", metrics=m, rtol=1e-3, atol=1e-5, ok=ok, reasons=reasons,
        role="output" if op == "output" else "layer",
    )


def report_of(layers, unmatched=()):
    info_a = ModelInfo("torch", "2.13.0", "Net", "nn.Module", 1234, was_training=True)
    info_b = ModelInfo("keras", "3.15.1", "net", "keras functional", 1234)
    inputs = InputsSummary(((4, 1, 5, 5),), ((4, 5, 5, 1),), ("float32",), ("NCHW→NHWC",), "given")
    return Report(a=info_a, b=info_b, layers=tuple(layers), unmatched=tuple(unmatched), inputs=inputs, rtol=None, atol=None)


@pytest.fixture
def small():
    return report_of(
        [
            layer(0, "conv", "Conv2d", 1e-7),
            layer(1, "bn", "BatchNorm2d", 5e-2, b_op="BatchNormalization"),
            layer(2, "relu", "ReLU", 5e-2),
            layer(3, "fc[bold]", "Linear", 4e-2),
            layer(4, "output", "output", 4e-2),
        ],
        unmatched=[
            UnmatchedLayer("b", "flatten", "Flatten", (4, 25), "one-sided"),
            UnmatchedLayer("a", "extra", "Conv2d", (4, 25), "no-match"),
        ],
    )


def test_render_shows_verdict_table_detail_and_unmatched(small):
    text = render_text(small, width=120)
    first = text.splitlines()[0]
    assert first.startswith("✗ DIVERGES at bn (BatchNorm2d ↔ BatchNormalization bn): rel err 5.0e-02 > rtol 1.0e-03")
    assert "3 of 4 layers over tolerance, and the model output" in small.summary()  # outputs counted apart
    bn_row = next(line for line in text.splitlines() if line.startswith("2 "))
    assert "◀" in bn_row and "5.0e-02" in bn_row
    assert "was in training mode; compared in eval()" in text
    assert "mismatched elements: 100 / 100 (100.0%)" in text
    assert "fc[bold]" in text  # model names are shown literally, never parsed as markup
    assert "unmatched in B, present on this side only (expected in conversions): flatten (Flatten)" in text
    assert "unmatched in A, NOT COMPARED: no counterpart found: extra (Conv2d)" in text
    assert (  # one count of A's layers everywhere; the model output said apart
        "converted for B: NCHW→NHWC · compared 4 of 5 layers of A (80%; 1 not compared) (4 by order), and the model output"
        in " ".join(text.split())
    )


def test_passing_report_and_empty_report():
    ok = report_of([layer(0, "conv", "Conv2d", 1e-7), layer(1, "fc", "Linear", 2e-7)])
    assert ok.ok and ok.summary().startswith("✓ PARITY: 2 layers match within tolerance (max rel err 2.0e-07 at fc)")
    empty = report_of([])
    assert not empty.ok
    assert "NOTHING COMPARED" in empty.summary() and "not a pass" in empty.summary()


def test_long_models_fold_around_the_first_divergence():
    layers = [layer(i, f"l{i}", "Conv2d", 1e-7) for i in range(30)]
    layers += [layer(30, "l30", "BatchNorm2d", 5e-2)]
    layers += [layer(i, f"l{i}", "Conv2d", 5e-2) for i in range(31, 60)]
    text = render_text(report_of(layers), width=120)
    rows = [line.split()[1] for line in text.splitlines() if line[:2].strip().isdigit()]
    assert rows == ["l0", "l1", "l2", "l26", "l27", "l28", "l29", "l30", "l31", "l32", "l33", "l34", "l57", "l58", "l59"]
    assert "… 23 layers (all ✓) …" in text
    assert "… 22 layers (22 ✗) …" in text


def test_error_jump_within_tolerance_is_pointed_out():
    r = report_of([layer(0, "conv", "Conv2d", 5e-8), layer(1, "bn", "BatchNorm2d", 4.9e-4), layer(2, "relu", "ReLU", 4.9e-4)])
    assert r.ok
    assert "error jumps 9,800× at bn (BatchNorm2d): 5.0e-08 → 4.9e-04 — within tolerance, but more than round-off" in render_text(r, 120)


def test_json_round_trip_and_stable_bytes(small, tmp_path):
    text = small.to_json(tmp_path / "sub" / "r.json")
    assert text == small.to_json()  # identical reports, identical bytes
    data = json.loads(text)
    assert (data["schema"], data["version"]) == ("parity.report", 2)
    back = parity.load_report(tmp_path / "sub" / "r.json")
    assert back == small
    assert back.first_divergence.a_name == "bn"


def test_non_finite_floats_survive_as_strict_json():
    a = np.zeros(4)
    m = compute_metrics(a, np.ones(4), 1e-3, 1e-5)
    assert math.isinf(m.rel_err)
    d = layer(0, "z", "ReLU", 0.0)
    from dataclasses import replace

    r = report_of([replace(d, metrics=m, ok=False)])
    text = r.to_json()
    assert '"rel_err": "inf"' in text
    assert math.isinf(report_from_dict(json.loads(text)).layers[0].metrics.rel_err)


def test_unknown_schema_or_newer_version_is_refused(small):
    data = small.to_dict()
    with pytest.raises(parity.ReportFormatError, match="reads versions up to 2"):
        report_from_dict({**data, "version": 99})
    with pytest.raises(parity.ReportFormatError, match="not a parity report"):
        report_from_dict({"schema": "other"})
    with pytest.raises(parity.ReportFormatError, match="does not exist"):
        parity.load_report("nope.json")
