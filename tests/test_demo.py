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


# --- parity demo --chain -------------------------------------------------------------------------


def _artifact_cache():
    from tests.artifacts import CACHE

    return CACHE


def test_chain_demo_names_the_stage_and_layer_of_the_injected_bug(tmp_path):
    from parity.demo import run_chain_demo
    from parity._zoo.onnx2tf_chain import ONNX2TF_INSTALL, missing_onnx2tf_modules

    if missing_onnx2tf_modules():
        pytest.skip(f"onnx2tf cannot run ({', '.join(missing_onnx2tf_modules())} missing): {ONNX2TF_INSTALL}")
    buf = io.StringIO()
    code = run_chain_demo(out=tmp_path / "chain.json", work_dir=_artifact_cache(),
                          console=Console(file=buf, width=160, color_system=None))
    text = buf.getvalue()
    assert code == 0
    assert "✗ CHAIN BREAKS at saved_model (stage 2 of 4), layer block1.relu2 (ReLU6)" in text
    assert "inherited by tflite_fp32, tflite_fp16" in text
    assert "saved_model is the first stage that goes wrong, at block1.relu2 (ReLU6)" in text
    assert "onnx still computed block1.relu2 right; tflite_fp32, tflite_fp16 only inherit the error" in text
    assert "tflite_fp16 is float16: judged with its own tolerance" in text
    saved = json.loads((tmp_path / "chain.json").read_text())
    assert saved["schema"] == "parity.chain"
    assert saved["first_break"] == {"stage": "saved_model", "layer": "block1.relu2"}
    assert [s["name"] for s in saved["stages"]] == ["torch", "onnx", "saved_model", "tflite_fp32", "tflite_fp16"]
    assert [s["status"] for s in saved["stages"][1:]] == ["ok", "introduces", "inherits", "inherits"]
    assert saved["stages"][4]["precision"] == "float16" and saved["stages"][4]["tolerance"]["rtol"] == 1e-2
    row = next(r for r in saved["matrix"] if r["layer"] == "block1.relu2")
    assert [c["status"] for c in row["cells"]] == ["ok", "introduced", "inherited", "inherited"]
    relu1 = next(r for r in saved["matrix"] if r["layer"] == "block1.relu1")
    assert [c["status"] for c in relu1["cells"]] == ["ok", "ok", "ok", "quantisation"]
    html = (tmp_path / "chain.html").read_text()
    assert "CHAIN BREAKS at saved_model" in html and 'class="c-introduced"' in html


def test_chain_demo_without_onnx2tf_says_what_to_install(tmp_path, monkeypatch):
    import parity._zoo.onnx2tf_chain as o2t
    from parity.demo import run_chain_demo

    monkeypatch.setattr(o2t, "missing_onnx2tf_modules", lambda: ["onnx2tf"])
    buf = io.StringIO()
    code = run_chain_demo(out=tmp_path / "chain.json", console=Console(file=buf, width=200, color_system=None))
    text = buf.getvalue()
    assert code == 0
    assert "skipped:" in text and "onnx2tf is not installed" in text
    assert "pip install --no-deps onnx2tf==1.29.24" in text
    assert not (tmp_path / "chain.json").exists() and not (tmp_path / "chain-artifacts").exists()


def test_cli_demo_chain_option_runs_the_chain_demo(tmp_path, monkeypatch, capsys):
    import parity._zoo.onnx2tf_chain as o2t
    from parity.cli import main

    monkeypatch.setattr(o2t, "missing_onnx2tf_modules", lambda: ["onnx2tf", "sng4onnx"])
    assert main(["demo", "--chain", "--out", str(tmp_path / "c.json")]) == 0
    out = " ".join(capsys.readouterr().out.split())  # as one line, whatever the terminal's width
    assert "parity demo --chain" in out and "onnx2tf, sng4onnx are not installed" in out
    assert "pip install -e '.[torch,tf,onnx]'" in out
