"""`parity demo` tells the seed's story: untrained pair within tolerance, trained pair flagged
at the BatchNorm with the epsilon named, report written."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

pytest.importorskip("torch")
pytest.importorskip("keras")
pytest.importorskip("sklearn")

from parity.demo import run_demo  # noqa: E402


def test_demo_flags_batchnorm_only_when_trained(tmp_path):
    buf = io.StringIO()
    code = run_demo(epochs=3, out=tmp_path / "demo.json", console=Console(file=buf, width=120, color_system=None))
    text = buf.getvalue()
    assert code == 0
    untrained, trained = text.split("parity.diff(trained torch")
    assert "✓ PARITY" in untrained and "error jumps" in untrained and "at layer1.1 (BatchNorm2d)" in untrained
    assert "✗ DIVERGES at layer1.1 (BatchNorm2d ↔ BatchNormalization layer1_1)" in trained
    assert "bn_epsilon at layer1.1" in trained and "B declares 1e-03" in trained
    assert "note: layer1.1 (BatchNorm2d): its error is" in trained and "larger than in the baseline pair" in trained
    assert "held-out accuracy of the trained PyTorch model" in text
    saved = json.loads((tmp_path / "demo.json").read_text())
    bn = next(layer for layer in saved["layers"] if layer["a_name"] == "layer1.1")
    assert bn["drift"] > 10 and bn["baseline_err"] < 1e-3
    assert saved["diagnoses"][0]["code"] == "bn_epsilon"
    assert saved["diagnoses"][0]["evidence"]["eps_b_fitted"] == pytest.approx(1e-3, rel=0.05)
    assert (tmp_path / "demo-untrained.json").exists()
    html = (tmp_path / "demo.html").read_text()
    assert 'id="row-1" class="bad first' in html and "bn_epsilon" in html
