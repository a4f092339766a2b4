"""PyTorch → Keras 2 by nobuco: a pair made by a real converter that only runs on Keras 2.

nobuco 0.17.0 needs TensorFlow 2.15 and its bundled Keras 2.15, which cannot live beside
this project's TensorFlow 2.21 / Keras 3, so the conversion and the diff run in a second
venv (``make keras2``): ``nobuco_pair.py`` builds a small CNN (conv+BN+ReLU6, a
depthwise-separable block, pooling, linear), converts it with nobuco, plants each bug in
the converted Keras model and writes parity's report JSON for each variant; this test
reads those reports back with ``parity.load_report`` and checks what a user relies on:
the faithful pair passes layer by layer, and each bug is flagged at its own torch layer
with the diagnosis that names it.

The run (~25 s cold, mostly TensorFlow start-up) is cached by a content hash of the script,
every file of the parity package and the Keras 2 venv's installed distributions, so any
change to parity's code re-runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import parity

from .conftest import CACHE, cached_dir, content_key, match_rate

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("nobuco_pair.py")
VENV = Path(os.environ.get("PARITY_KERAS2_VENV", ROOT / ".venv-keras2"))
MAKE = "make keras2"

#: the torch layers nobuco_pair.py plants its bugs behind (its BN_LAYER and RELU6_LAYER)
BN_LAYER = "block.dw_bn"
RELU6_LAYER = "block.dw_act"

TIMINGS: dict[str, float] = {}


def _site_packages() -> Path | None:
    found = sorted((VENV / "lib").glob("python3*/site-packages"))
    return found[0] if found else None


def _require_keras2_venv() -> Path:
    """The Keras 2 venv's python, or skip (fail under PARITY_REQUIRE_CONVERTERS=1) with the make line."""
    python = VENV / "bin" / "python"
    site = _site_packages()
    missing = [name for name in ("nobuco", "tensorflow_cpu", "torch")
               if site is None or not any(site.glob(f"{name}-*.dist-info"))]
    if python.exists() and not missing:
        return python
    what = f"{VENV} is missing" if not python.exists() else f"{VENV} lacks {', '.join(missing)}"
    message = (f"nobuco runs only on Keras 2 (TensorFlow 2.15), in its own venv: {what}. "
               f"Create it with `{MAKE}`.")
    if os.environ.get("PARITY_REQUIRE_CONVERTERS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _cache_key() -> str:
    """Whatever decides the reports: the script, parity's own files, the venv's distributions."""
    parts: list[str | Path] = [SCRIPT]
    for path in sorted((ROOT / "parity").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            parts += [str(path.relative_to(ROOT)), path]
    site = _site_packages()
    parts.append(" ".join(sorted(p.name for p in site.glob("*.dist-info"))) if site else "")
    return content_key(*parts)


def _run_script(python: Path, out: Path) -> None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))  # this checkout's parity
    env.pop("PARITY_REQUIRE_CONVERTERS", None)
    proc = subprocess.run([str(python), str(SCRIPT), str(out)], env=env, cwd=out,
                          capture_output=True, text=True, timeout=600)
    (out / "stdout.txt").write_text(proc.stdout)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise RuntimeError(f"{SCRIPT.name} failed under {python} (exit {proc.returncode}):\n{tail}")


@pytest.fixture(scope="module")
def runs() -> Path:
    python = _require_keras2_venv()
    key = _cache_key()
    TIMINGS["cached"] = float((CACHE / f"nobuco-keras2-{key}" / ".complete").exists())
    start = time.perf_counter()
    out = cached_dir("nobuco-keras2", key, lambda d: _run_script(python, d))
    TIMINGS["nobuco_pair"] = time.perf_counter() - start
    return out


@pytest.fixture(scope="module")
def meta(runs) -> dict:
    return json.loads((runs / "meta.json").read_text())


def report(runs: Path, variant: str) -> parity.Report:
    return parity.load_report(runs / f"{variant}.json")


def test_the_pair_is_torch_against_keras_2(runs, meta):
    r = report(runs, "none")
    assert (r.a.framework, r.b.framework) == ("torch", "keras")
    assert r.b.framework_version.startswith("2.15"), r.b.framework_version
    assert meta["versions"]["tensorflow"].startswith("2.15")
    # nobuco itself says the conversion is faithful at the output
    assert meta["output_max_abs_diff"] < 1e-5
    # ChannelOrder.TENSORFLOW: the Keras model takes NHWC and parity converts A's NCHW for it
    assert r.inputs.conversions == ("NCHW→NHWC",)


def test_faithful_conversion_passes_layer_by_layer(runs, meta):
    r = report(runs, "none")
    rate = match_rate(r)
    worst = max(r.layers, key=lambda d: d.rel_err)
    print(f"\nnobuco faithful pair: {rate:.0%} of torch layers matched ({r.coverage[0]}/{r.coverage[1]}); "
          f"max rel err {worst.rel_err:.2e} at {worst.a_name}; conversion {meta['convert_s']:.2f} s; "
          f"{'cached' if TIMINGS.get('cached') else 'Keras 2 run'} {TIMINGS.get('nobuco_pair', 0.0):.1f} s")
    assert r.ok, str(r)
    assert r.first_divergence is None
    assert rate >= 0.8, [u.name for u in r.unmatched_a]
    assert worst.rel_err < 1e-5
    # weight parity found every parameter of the aligned layers equal
    assert r.params and all(p.status == "ok" for p in r.params), [p for p in r.params if p.status != "ok"]
    # the aligner paired torch's modules with nobuco's generically named layers of the same kind
    kinds = {"conv": "Conv2D", "bn": "BatchNormalization", "block.dw": "DepthwiseConv2D",
             BN_LAYER: "BatchNormalization", "block.pw": "Conv2D", "pool": "MaxPooling2D",
             "gap": "GlobalAveragePooling2D", "fc": "Dense"}
    assert {name: r.layer(name).b_op for name in kinds} == kinds
    # nobuco turns nn.ReLU6 into a tf.clip_by_value op layer: that is what torch's ReLU6 meets
    assert r.layer(RELU6_LAYER).b_name == meta["injected"]["relu6"]
    assert r.layer(BN_LAYER).b_name == meta["injected"]["bn_var"]


def test_wrong_bn_variance_is_flagged_at_its_layer(runs, meta):
    r = report(runs, "bn_var")
    first = r.first_divergence
    assert not r.ok
    assert first is not None and first.a_name == BN_LAYER, str(r)
    assert first.b_name == meta["injected"]["bn_var"]
    before = [d for d in r.layers if d.index < first.index]
    assert before and all(d.ok for d in before)
    assert first.own_err is not None and first.own_err > first.allowed_rel  # its own error, not inherited
    codes = [d.code for d in first.diagnoses]
    assert "weight_mismatch" in codes, codes
    msg = first.diagnoses[codes.index("weight_mismatch")].message
    assert "running_var" in msg and "moving_variance" in msg, msg
    wrong = [(p.a_layer, p.a_param, p.status) for p in r.params if p.status != "ok"]
    assert wrong == [(BN_LAYER, "running_var", "differs")]


def test_relu6_made_relu_is_flagged_as_a_lost_clip(runs, meta):
    r = report(runs, "relu6")
    first = r.first_divergence
    assert not r.ok
    assert first is not None and first.a_name == RELU6_LAYER, str(r)
    assert first.b_name == meta["injected"]["relu6"]
    assert all(d.ok for d in r.layers if d.index < first.index)
    codes = [d.code for d in first.diagnoses]
    assert codes[:1] == ["activation_clamp"], codes
    clamp = first.diagnoses[0]
    assert clamp.evidence["bound"] == pytest.approx(6.0)
    assert clamp.evidence["b_clamps"] == 0.0  # A (torch's ReLU6) clips, B no longer does
    assert clamp.evidence["mismatch_frac_within_bound"] == 0.0
    assert "ReLU6 vs ReLU" in clamp.message
    # the weights are untouched: parity must not blame them
    assert all(p.status == "ok" for p in r.params)


@pytest.mark.parametrize("variant", ["keras_file", "h5_file"])
def test_saved_conversion_loads_by_path_and_passes(runs, variant):
    """The converted model saved as Keras 2 ``.keras`` / ``.h5`` and diffed by path: parity.load
    reads it under Keras 2 and the pairing is the live model's, layer for layer."""
    r, live = report(runs, variant), report(runs, "none")
    assert r.ok, str(r)
    assert r.b.framework_version.startswith("2.15")
    assert r.coverage == live.coverage
    assert [(d.a_name, d.b_name) for d in r.layers] == [(d.a_name, d.b_name) for d in live.layers]


def test_reports_render(runs):
    """The reports written under Keras 2 render in this venv (text and HTML)."""
    r = report(runs, "relu6")
    text = str(r)
    assert RELU6_LAYER in text
    assert RELU6_LAYER in r.to_html()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-s"]))
