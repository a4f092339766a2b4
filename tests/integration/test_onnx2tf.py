"""torch → ONNX → onnx2tf (SavedModel, float32 TFLite, float16 TFLite) with the real converters.

The model is a small MobileNet-style CNN (ReLU6, BatchNorm with trained-like statistics),
exported with ``torch.onnx.export`` (BatchNorm folded into the Conv: "fused") and converted
by onnx2tf in a subprocess.  Three ONNX graphs go through onnx2tf: the faithful export, one
with the ReLU6 ``Clip`` of ``block1.relu2`` turned into a ``Relu`` (a converter forgetting the
clip), and one with the weight of ``block2.pw`` (folded with ``block2.bn2``) scaled by 1.25.
Converted artifacts are cached by the ONNX bytes, onnx2tf's version and its flags.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from .conftest import CACHE, match_rate, require

require("torch", "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")
require("tensorflow", "pip install tensorflow-cpu==2.21.0")
onnx = require("onnx", "pip install onnx==1.23.2")

import parity  # noqa: E402
from parity.chain import ChainBreak  # noqa: E402
from parity.errors import InputError  # noqa: E402
from parity.tolerance import DEFAULT_TOLERANCES  # noqa: E402
from parity._zoo.onnx2tf_chain import (  # noqa: E402
    ONNX2TF_INSTALL,
    ConversionError,
    convert_cached,
    convert_onnx2tf,
    export_onnx,
    missing_onnx2tf_modules,
    node_output,
    onnx2tf_flags,
    relu6_to_relu,
    scale_weight,
    tiny_mobilenet,
)

RELU_NODE = "/block1/relu2/Clip"  # torch block1.relu2
WEIGHT_NODE = "/block2/pw/Conv"  # torch block2.pw, with block2.bn2 folded in
WEIGHT_FACTOR = 1.25
STAGES = ["torch", "onnx", "saved_model", "tflite_fp32", "tflite_fp16"]
FP16 = DEFAULT_TOLERANCES["float16"]
TIMINGS: dict[str, float] = {}


def _onnx2tf_ready() -> None:
    missing = missing_onnx2tf_modules()
    if missing:
        require(missing[0], ONNX2TF_INSTALL)  # skips (fails under PARITY_REQUIRE_CONVERTERS=1)


def _convert(kind: str, model) -> dict:
    """onnx2tf's outputs for ONNX ``model``, from the cache when it was converted before."""
    t0 = time.perf_counter()
    out = convert_cached(model.SerializeToString(), CACHE)
    TIMINGS[kind] = time.perf_counter() - t0
    return out


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    _onnx2tf_ready()
    model, x = tiny_mobilenet(seed=0)
    path = export_onnx(model, x, tmp_path_factory.mktemp("onnx") / "m.onnx")
    return model, x, onnx.load(str(path))


@pytest.fixture(scope="module")
def faithful(net):
    return _convert("faithful", net[2])


@pytest.fixture(scope="module")
def relu_bug(net):
    import torch

    model, x, proto = net
    # the injected bug is visible only where ReLU6 actually clips: check the input exceeds 6
    with torch.no_grad():
        pre = model.block1.bn2(model.block1.pw(model.block1.relu1(model.block1.bn1(model.block1.dw(model.stem(torch.from_numpy(x)))))))
    assert float(pre.max()) > 6.5, "the test input never reaches ReLU6's clip at block1.relu2"
    return _convert("relu6->relu", relu6_to_relu(proto, RELU_NODE))


@pytest.fixture(scope="module")
def weight_bug(net):
    return _convert("scaled weight", scale_weight(net[2], WEIGHT_NODE, WEIGHT_FACTOR))


def test_the_mapping_parity_align_proposes_is_reused(net, faithful, tmp_path):
    """``parity align torch m_float32.tflite --write`` writes the pairs it found; diff reuses them."""
    from parity.cli import main
    from parity.loading import load_mapping

    model, x, _ = net
    path = tmp_path / "tflite.toml"
    shape = ",".join(str(n) for n in x.shape)
    code = main(["align", "parity._zoo.onnx2tf_chain:tiny_mobilenet_model", str(faithful["tflite_fp32"]),
                 "--shape", shape, "--write", str(path)])
    assert code == 0
    proposed = load_mapping(path)
    assert sorted(proposed) == ["block1.relu1", "block1.relu2", "block2.relu1", "block2.relu2", "fc", "pool", "stem.2"]
    report = parity.diff(model, faithful["tflite_fp32"], x, mapping=proposed)
    assert report.ok and {d.how for d in report.layers if d.role != "output"} == {"mapping"}


def _accounted(report) -> float:
    """Model A's layers compared, or absent from B for a reason (fused by the converter, or
    one-sided like Flatten), over all of A's layers."""
    compared, total = report.coverage
    explained = sum(1 for u in report.unmatched_a if u.reason in ("fused", "one-sided"))
    return (compared + explained) / total


# --- (a) the faithful conversion ---------------------------------------------------------------


@pytest.mark.parametrize(
    "a_side, stage",
    [
        ("torch", "onnx"),
        ("onnx", "saved_model"),
        ("onnx", "tflite_fp32"),
        ("onnx", "tflite_fp16"),
        ("torch", "tflite_fp32"),
        ("torch", "tflite_fp16"),
    ],
)
def test_faithful_conversion_matches_with_automatic_alignment(net, faithful, a_side, stage):
    model, x, _ = net
    a = model if a_side == "torch" else faithful["onnx"]
    tol = {"rtol": FP16[0], "atol": FP16[1]} if stage == "tflite_fp16" else {}
    report = parity.diff(a, faithful[stage], x, **tol)  # the plain path: automatic alignment
    rate, accounted = match_rate(report), _accounted(report)
    worst = max(d.rel_err for d in report.layers)
    print(f"{a_side} → {stage}: matched {report.coverage[0]}/{report.coverage[1]} ({rate:.0%}), "
          f"with fused/one-sided {accounted:.0%}, max rel err {worst:.1e}")
    assert report.ok, str(report)
    assert accounted >= 0.8, f"{a_side} → {stage}: only {accounted:.0%} of A's layers matched or explained"
    # what is not compared was folded away by a converter (Conv+BN, Conv+ReLU6) or is a reshape
    for u in report.unmatched_a:
        assert u.reason in ("fused", "one-sided"), (u.name, u.reason)
        assert u.op in ("Conv2d", "BatchNorm2d", "Conv", "Flatten"), (u.name, u.op)
    if stage in ("onnx", "saved_model"):  # nothing fused beyond the exporter's Conv+BN fold
        assert rate >= (0.7 if a_side == "torch" else 0.99), rate
    # every ReLU6 output survives every conversion and is compared
    relu6 = [d for d in report.layers if d.op in ("ReLU6", "Clip")]
    assert len(relu6) == 5
    if stage == "tflite_fp16":
        assert worst > DEFAULT_TOLERANCES["float32"][0], "float16 error should exceed float32's tolerance"
    else:
        assert worst < 1e-5


def test_torch_to_onnx_fuses_exactly_the_convolutions(net, faithful):
    model, x, _ = net
    report = parity.diff(model, faithful["onnx"], x)
    fused = sorted(u.name for u in report.unmatched_a if u.reason == "fused")
    assert fused == ["block1.dw", "block1.pw", "block2.dw", "block2.pw", "stem.0"]
    # the BatchNorm output is what the ONNX Conv (with the folded BN) computes
    assert report.layer("block1.bn2").b_name == "/block1/pw/Conv_output_0"


def test_torch_to_saved_model_calls_the_split_convolutions_fused(net, faithful):
    # onnx2tf writes each Conv (BatchNorm folded in) as a bias-less tf.nn.convolution plus an Add
    # of the bias: the torch Conv2d has no counterpart, its BatchNorm pairs with the Add
    model, x, _ = net
    report = parity.diff(model, faithful["saved_model"], x)
    print(f"torch → saved_model: {report.coverage}, {match_rate(report):.0%}")
    assert report.ok, str(report)
    assert report.layer("block1.bn2").b_name.endswith("tf.math.add_2/Add:0")
    assert report.layer("block1.relu2").b_name.endswith("tf.nn.relu6_2/Relu6:0")
    fused = sorted(u.name for u in report.unmatched_a if u.reason == "fused")
    assert fused == ["block1.dw", "block1.pw", "block2.dw", "block2.pw", "stem.0"]
    assert match_rate(report) >= 0.7 and _accounted(report) == 1.0


# --- (b) injected bugs are found at the right layer ---------------------------------------------


def test_relu6_turned_relu_is_found_at_that_relu6(net, faithful, relu_bug):
    model, x, proto = net
    for stage in ("saved_model", "tflite_fp32"):
        report = parity.diff(model, relu_bug[stage], x)  # automatic alignment
        assert not report.ok
        first = report.first_divergence
        assert first.a_name == "block1.relu2", (stage, str(report))
        assert first.rel_err > 1e-2
        for before in ("stem.2", "block1.relu1"):
            assert report.layer(before).ok, (stage, before)
    # against its own input, the SavedModel is flagged at the very Clip
    report = parity.diff(faithful["onnx"], relu_bug["saved_model"], x)
    assert report.first_divergence.a_name == node_output(proto, RELU_NODE)


def test_scaled_weight_is_found_at_its_layer(net, faithful, weight_bug):
    model, x, proto = net
    report = parity.diff(model, weight_bug["saved_model"], x)  # automatic alignment
    first = report.first_divergence
    # the scaled weight is the folded Conv+BN; the first tensor carrying it is block2.bn2's
    assert first.a_name == "block2.bn2", str(report)
    # the weight ×1.25, the (folded) bias unscaled: a relative error just under 0.25
    assert 0.6 * (WEIGHT_FACTOR - 1) < first.rel_err < WEIGHT_FACTOR - 1
    assert report.layer("block2.relu1").ok
    # TFLite fuses the Conv, the BN and the ReLU6: the fused tensor is block2.relu2's
    report = parity.diff(model, weight_bug["tflite_fp32"], x)
    assert report.first_divergence.a_name == "block2.relu2", str(report)
    assert report.layer("block2.relu1").ok


# --- (c) the chain in one run -------------------------------------------------------------------


def _chain(net, onnx_path, later: dict, fp16_from: dict | None = None):
    model, x, _ = net
    fp16 = (fp16_from or later)["tflite_fp16"]
    stages = [model, onnx_path, later["saved_model"], later["tflite_fp32"], fp16]
    return parity.chain(stages, x, names=STAGES)  # automatic alignment throughout


def test_chain_of_the_faithful_conversion_is_ok(net, faithful):
    t0 = time.perf_counter()
    report = _chain(net, faithful["onnx"], faithful)
    print(f"faithful chain: {time.perf_counter() - t0:.1f} s; conversions: {TIMINGS}")
    assert report.ok, str(report)
    assert report.first_break is None
    assert report.stage_status == ("ok", "ok", "ok", "ok (expected quantisation error)")
    assert report.precisions[4] == "float16" and report.precisions[3] == "float32"
    fp16 = [row.cell("tflite_fp16") for row in report.matrix if row.cell("tflite_fp16").compared]
    assert fp16 and all(c.status == "quantisation" and c.label == "expected quantisation error" for c in fp16)
    # judged at float16's tolerance: some cells would fail float32's
    assert any(c.within_float32 is False for c in fp16)
    assert all(c.rtol == FP16[0] for c in fp16)
    for stage in STAGES[1:]:
        rep = report.report(stage)
        worst = max(d.rel_err for d in rep.layers)
        print(f"  {stage}: {rep.coverage[0]}/{rep.coverage[1]} compared ({match_rate(rep):.0%}), max rel err {worst:.1e}")
    assert "✓ CHAIN OK" in str(report) and "tflite_fp16 within expected quantisation error" in str(report)


def test_chain_says_which_stage_introduced_the_relu_bug(net, faithful, relu_bug):
    # stage 1 is the faithful ONNX; onnx2tf "forgot" the clip: its outputs come from the bad graph
    report = _chain(net, faithful["onnx"], relu_bug)
    assert report.first_break == ChainBreak("saved_model", "block1.relu2"), str(report)
    assert report.stage_status == ("ok", "introduces", "inherits", "inherits")
    row = report.row("block1.relu2")
    assert [c.status for c in row.cells] == ["ok", "introduced", "inherited", "inherited"]
    assert row.introduced_by == "saved_model"
    assert row.cell("tflite_fp16").label == "beyond expected quantisation error, inherited from an earlier stage"
    for earlier in ("stem.2", "block1.relu1"):
        assert report.row(earlier).ok
    text = str(report)
    assert "✗ CHAIN BREAKS at saved_model (stage 2 of 4), layer block1.relu2 (ReLU6)" in text
    assert "inherited by tflite_fp32, tflite_fp16" in text


def test_chain_flags_fp16_stage_beyond_quantisation_error(net, faithful, weight_bug):
    # everything faithful except the float16 TFLite, which carries the scaled weight
    report = _chain(net, faithful["onnx"], faithful, fp16_from=weight_bug)
    assert report.first_break == ChainBreak("tflite_fp16", "block2.relu2"), str(report)
    assert report.stage_status == ("ok", "ok", "ok", "introduces")
    bad = report.row("block2.relu2").cell("tflite_fp16")
    assert bad.label == "beyond expected quantisation error, introduced here"
    assert bad.rel_err > 10 * FP16[0]
    assert report.row("block2.relu1").cell("tflite_fp16").label == "expected quantisation error"


# --- the conversion helpers ---------------------------------------------------------------------


def test_keep_nchw_input_converts_with_an_nchw_signature(net):
    """``-k input``: the converted models take the NCHW batch as is (no layout change at the input)."""
    import tensorflow as tf

    model, x, proto = net
    assert onnx2tf_flags(keep_nchw=["input"])[-2:] == ["-k", "input"]
    out = convert_cached(proto.SerializeToString(), CACHE, keep_nchw=["input"])
    signature = tf.saved_model.load(str(out["saved_model"])).signatures["serving_default"]
    assert tuple(signature.structured_input_signature[1]["input"].shape) == x.shape  # (2, 3, 32, 32): NCHW
    report = parity.diff(model, out["tflite_fp32"], x)
    assert report.ok, str(report)
    assert report.layer("block1.relu2").rel_err < 1e-5


def test_failed_conversion_raises_with_onnx2tf_log(tmp_path):
    _onnx2tf_ready()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not an ONNX protobuf")
    with pytest.raises(ConversionError) as info:
        convert_onnx2tf(broken, tmp_path / "out", timeout=300)
    err = info.value
    assert err.returncode not in (0, None)
    assert "onnx2tf exited with status" in str(err) and "Its log ends:" in str(err)
    assert err.log_tail.strip() and err.command[1:3] == ("-m", "onnx2tf")
    assert not (tmp_path / "out" / "saved_model").exists()


def test_missing_onnx_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist; export the model first"):
        convert_onnx2tf(tmp_path / "nope.onnx", tmp_path)


def test_injection_helpers_refuse_wrong_nodes(net):
    proto = net[2]
    with pytest.raises(InputError, match="is a Conv, not the Clip of a ReLU6"):
        relu6_to_relu(proto, "/block1/pw/Conv")
    with pytest.raises(InputError, match="has no node '/block9/relu2/Clip'; closest:"):
        relu6_to_relu(proto, "/block9/relu2/Clip")
    bad = scale_weight(proto, WEIGHT_NODE, 2.0)
    from onnx import numpy_helper

    name = next(n.input[1] for n in proto.graph.node if n.name == WEIGHT_NODE)
    w0 = next(numpy_helper.to_array(i) for i in proto.graph.initializer if i.name == name)
    w1 = next(numpy_helper.to_array(i) for i in bad.graph.initializer if i.name == name)
    np.testing.assert_allclose(w1, 2.0 * w0)


def test_missing_converter_is_named_with_the_install_line(tmp_path, monkeypatch):
    import parity._zoo.onnx2tf_chain as o2t
    from parity.errors import ParityError

    (tmp_path / "m.onnx").write_bytes(b"\0")
    monkeypatch.setattr(o2t, "missing_onnx2tf_modules", lambda: ["onnx2tf", "sng4onnx"])
    with pytest.raises(o2t.ConverterNotInstalled) as info:
        convert_onnx2tf(tmp_path / "m.onnx", tmp_path / "out")
    assert isinstance(info.value, ParityError) and isinstance(info.value, ImportError)
    assert "onnx2tf, sng4onnx not installed" in str(info.value) and ONNX2TF_INSTALL in str(info.value)
