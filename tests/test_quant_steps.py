"""Quantized models judged by their quantization step (:mod:`parity.quantsteps`).

A small Keras CNN against its full-integer int8 TFLite conversion (a representative dataset),
and a small torch CNN exported to ONNX against its ``quantize_static`` QDQ model (a calibration
reader): every quantized layer's error in steps of its output scale, cumulative and alone, near
the rounding floor 1/√12 ≈ 0.29 when healthy; a range clipped on purpose (a TFLite tensor's scale
cut to a quarter in the flatbuffer; an ONNX tensor's range pinned by ``TensorQuantOverrides``)
flagged, named ``quant_range_clipped`` and listed for the converter's deny-list — and the ONNX
model re-quantized with that list is healthy again.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

import parity
from parity.quantsteps import ROUNDING_FLOOR, STEP_LIMIT
from parity.report.jsonio import load_report

SCHEMA = Path(parity.__file__).parent / "schemas" / "report.schema.json"
X_NHWC = np.random.default_rng(1).uniform(-1, 1, (8, 16, 16, 3)).astype("float32")
X_NCHW = np.random.default_rng(1).uniform(-1, 1, (8, 3, 16, 16)).astype("float32")


# --- TFLite -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def keras_cnn():
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inp = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(10, name="fc")(x)
    return keras.Model(inp, out, name="cnn")


def _representative():
    rng = np.random.default_rng(0)
    for _ in range(32):
        yield [rng.uniform(-1, 1, (1, 16, 16, 3)).astype("float32")]


def _int8_converter(model):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter


@pytest.fixture(scope="session")
def int8_tflite(keras_cnn):
    return _int8_converter(keras_cnn).convert()


def _scaled_tensor(content: bytes, part: str, factor: float) -> bytes:
    """The flatbuffer with the scale of the activation tensor whose name holds ``part`` divided
    by ``factor``: its range is clipped to 1/factor of the calibrated one."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    (tensor,) = [t for t in model.subgraphs[0].tensors if part in t.name.decode() and "Relu" in t.name.decode()]
    tensor.quantization.scale = [tensor.quantization.scale[0] / factor]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


@pytest.fixture(scope="session")
def tflite_reports(keras_cnn, int8_tflite):
    from parity.capture.tflite import TFLiteModel

    healthy = parity.diff(keras_cnn, TFLiteModel(int8_tflite, "cnn_int8.tflite"), X_NHWC)
    clipped = parity.diff(keras_cnn, TFLiteModel(_scaled_tensor(int8_tflite, "conv3", 4.0), "cnn_clipped.tflite"),
                          X_NHWC)
    return healthy, clipped


CONVS = ("conv1:activation", "conv2:activation", "conv3:activation")


def test_tflite_capture_records_scale_zero_point_axis_and_inputs(int8_tflite):
    from parity.capture.tflite import TFLiteModel

    trace = parity.capture(TFLiteModel(int8_tflite), X_NHWC)
    conv2 = next(t for t in trace.layers if "conv2" in t.name and t.op == "CONV_2D")
    q = conv2.attrs["quantized"]
    assert (q["dtype"], q["axis"], q["qmin"], q["qmax"], q["via"]) == ("int8", None, -128, 127, "tensor")
    assert q["zero_point"] == -128 and 0 < q["scale"] < 0.05  # after a ReLU: the range starts at 0
    conv1 = next(t for t in trace.layers if "conv1" in t.name and t.op == "CONV_2D")
    assert conv2.attrs["fed_by"] == (conv1.name,)
    assert next(t for t in trace.layers if t.op == "QUANTIZE").attrs["fed_by"] == ("<input 0>",)
    (out,) = trace.outputs  # float output DEQUANTIZE made of the dense layer's int8 tensor
    assert out.attrs["quantized"]["via"] == "DEQUANTIZE" and out.attrs["fed_by"] == (out.attrs["quantized"]["tensor"],)


def test_healthy_int8_tflite_layers_sit_at_the_rounding_floor(tflite_reports):
    report, _ = tflite_reports
    assert report.ok
    for name in CONVS:
        q = report.layer(name).quant
        assert q is not None and q.ok and q.via == "tensor" and q.dtype == "int8"
        assert 0.2 <= q.local <= 0.4, (name, q.local)  # measured 0.27, 0.25, 0.32
        assert 0.25 <= q.cumulative <= 0.6, (name, q.cumulative)  # measured 0.32, 0.38, 0.53: rounding adds up
        assert q.local_note == "A's layer fed B's dequantized input" and q.steps == q.local
        assert q.clipped == 0.0 and q.limit == STEP_LIMIT
    # a max-pool picks one of its input's levels: alone it is exact
    assert report.layer("pool").quant.local == 0.0
    # every layer of the int8 model is judged in steps, the float tolerance would fail them all
    assert all(d.quant is not None for d in report.layers)
    assert all(d.rel_err > d.rtol for d in report.layers)
    assert report.quant is not None and report.quant.exclude == () and report.quant.option == ""
    assert report.quant.layers == len(report.layers) and report.quant.converter == "tflite"
    assert ROUNDING_FLOOR == pytest.approx(0.2887, abs=1e-4)


def test_a_clipped_tflite_range_is_flagged_named_and_listed(tflite_reports):
    _, report = tflite_reports
    flagged = [d.a_name for d in report.layers if not d.ok]
    assert flagged == ["conv3:activation"]
    conv3 = report.layer("conv3:activation")
    q = conv3.quant
    assert q.local > 50 and q.cumulative > 50  # measured 87 steps: a quarter of the range kept
    assert q.clipped == pytest.approx(0.249, abs=0.02)
    assert report.first_divergence is conv3
    assert re.fullmatch(r"\d+\.\d\d steps of its output scale \S+ \(alone\), over the limit of 1\.5 \(rounding "
                        r"alone gives 0\.29\)", conv3.reasons[0]), conv3.reasons
    # the layers after it are fed an input far off, yet alone each is at the floor
    for name in ("gap", "fc"):
        d = report.layer(name)
        assert d.ok and d.quant.cumulative > 10 and d.quant.local < 0.4
    (diag,) = [g for g in report.diagnoses if g.code == "quant_range_clipped"]
    assert diag.layer == "conv3:activation"
    assert diag.evidence["a_max"] == pytest.approx(3.5 * diag.evidence["range_max"], rel=0.05)  # A's max 0.68
    # without the clipped elements: 1.65 steps of the quartered scale (0.41 of the calibrated one)
    assert diag.evidence["steps_unclipped"] < 2.0 < 50 < diag.evidence["steps"]
    assert "sit at the highest level of [0, " in diag.message and "Calibrate with a representative dataset" in diag.message
    tensor = conv3.b_name
    assert "conv3" in tensor and q.exclude == (tensor,)
    assert report.quant.exclude == (tensor,)
    assert report.quant.option == f"tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=[{tensor!r}])"


def test_the_tflite_deny_list_names_tensors_the_debugger_keeps_float(keras_cnn, tflite_reports):
    tf = pytest.importorskip("tensorflow")
    _, report = tflite_reports
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(report.quant.exclude))
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=_int8_converter(keras_cnn), debug_dataset=_representative, debug_options=options)
    from parity.capture.tflite import TFLiteModel

    selective = parity.capture(TFLiteModel(debugger.get_nondebug_quantized_model()), X_NHWC)
    conv3 = [t for t in selective.layers if "conv3" in t.name and t.op == "CONV_2D"]
    assert conv3 and all("quantized" not in t.attrs for t in conv3)  # computed in float now
    conv2 = next(t for t in selective.layers if "conv2" in t.name and t.op == "CONV_2D")
    assert "quantized" in conv2.attrs


@pytest.fixture(scope="session")
def fused_report():
    """Conv, BatchNorm and ReLU as three Keras layers, one CONV_2D in the int8 TFLite model."""
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    from parity.capture.tflite import TFLiteModel

    keras.utils.set_random_seed(0)
    layers = keras.layers
    inp = keras.Input((16, 16, 3), name="image")
    x = inp
    for i, width in ((1, 8), (2, 16)):
        x = layers.Conv2D(width, 3, padding="same", name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inp, layers.Dense(10, name="fc")(x), name="bnnet")
    rng = np.random.default_rng(5)
    for name in ("bn1", "bn2"):
        bn = model.get_layer(name)
        bn.moving_mean.assign((0.1 * rng.normal(size=bn.moving_mean.shape[0])).astype("float32"))
        bn.moving_variance.assign(rng.uniform(0.5, 2, size=bn.moving_variance.shape[0]).astype("float32"))
    return parity.diff(model, TFLiteModel(_int8_converter(model).convert(), "bnnet_int8.tflite"), X_NHWC)


def test_a_layer_b_fuses_from_three_of_a_is_measured_alone_through_all_three(fused_report):
    report = fused_report
    assert report.ok
    for i in (1, 2):
        q = report.layer(f"relu{i}").quant
        assert q.local_note == f"A's 3 layers B's op computes (conv{i}, bn{i}, relu{i}), fed B's dequantized input"
        assert 0.2 <= q.local <= 0.35  # measured 0.24, 0.24
    assert {u.name for u in report.unmatched_a if u.reason == "fused"} == {"conv1", "bn1", "conv2", "bn2"}


# --- ONNX QDQ ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def float_onnx(tmp_path_factory):
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime.quantization")
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 10)).eval()
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.from_numpy(X_NCHW[:1]),), buf, opset_version=17, dynamo=False,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    path = tmp_path_factory.mktemp("qdq") / "float.onnx"
    path.write_bytes(buf.getvalue())
    return path, onnx.load_from_string(buf.getvalue()), net


def _qdq(float_path: Path, out: Path, **options):
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"image": rng.uniform(-1, 1, (1, 3, 16, 16)).astype("float32")} for _ in range(16)])

        def get_next(self):
            return next(self.batches, None)

    options = {"per_channel": True, **options}
    quantize_static(str(float_path), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, **options)
    return onnx.load(str(out))


#: the range of the second conv's (ReLU'd) output pinned to [0, 0.05]: A reaches 0.6 there
CLIP = {"extra_options": {"TensorQuantOverrides": {"/3/Relu_output_0": [{"rmin": np.float32(0.0),
                                                                         "rmax": np.float32(0.05)}]}}}


@pytest.fixture(scope="session")
def onnx_reports(float_onnx):
    path, model, _ = float_onnx
    healthy = parity.diff(model, _qdq(path, path.with_name("qdq.onnx")), X_NCHW)
    clipped = parity.diff(model, _qdq(path, path.with_name("clipped.onnx"), **CLIP), X_NCHW)
    return healthy, clipped


def test_onnx_capture_reads_the_qdq_nodes(onnx_reports):
    healthy, _ = onnx_reports
    dq = healthy.layer("/3/Relu_output_0")  # A's ReLU ↔ B's DequantizeLinear after the fused Conv
    assert dq.b_name == "/3/Relu_output_0_DequantizeLinear_Output"
    q = dq.quant
    assert (q.via, q.dtype, q.zero_point, q.axis) == ("DequantizeLinear", "int8", -128, None)
    assert q.exclude == ("/2/Conv",)  # the node of the float model that computes it
    before_q = healthy.layer("/2/Conv_output_0")  # B's Conv output, rounded by the QuantizeLinear next
    assert before_q.quant.via == "QuantizeLinear" and before_q.quant.scale == q.scale
    # the Conv's int8 kernel: a scale per output channel, each channel using the whole range
    assert before_q.quant.weight_per_channel is True and before_q.quant.weight_levels == (127,) * 16
    assert dq.quant.weight_levels == (127,) * 16  # the same layer, read at its DequantizeLinear


def test_healthy_onnx_qdq_layers_sit_at_the_rounding_floor(onnx_reports):
    report, _ = onnx_reports
    assert report.ok and report.quant.exclude == () and report.quant.converter == "onnxruntime"
    for name in ("/1/Relu_output_0", "/3/Relu_output_0", "/5/Relu_output_0", "logits"):
        q = report.layer(name).quant
        assert 0.2 <= q.local <= 0.35, (name, q.local)  # measured 0.25, 0.28, 0.23, 0.28
        assert 0.25 <= q.cumulative <= 0.5, (name, q.cumulative)  # measured 0.29, 0.42, 0.40, 0.27
        assert q.local_note == "A's graph piece fed B's dequantized input"
    assert report.layer("output").quant.local == report.layer("logits").quant.local  # the output is its layer


def test_a_clipped_onnx_range_is_flagged_named_and_listed(onnx_reports, float_onnx):
    _, report = onnx_reports
    flagged = [d.a_name for d in report.layers if not d.ok]
    # the clipped tensor (and the Conv before its QuantizeLinear, in the clipped scale's units);
    # the logits after it: its input is far off (46 steps), so it inherits and is not listed
    assert flagged == ["/2/Conv_output_0", "/3/Relu_output_0", "logits", "output"]
    relu = report.layer("/3/Relu_output_0")
    assert relu.quant.local > 100 and relu.quant.clipped == pytest.approx(0.427, abs=0.03)
    logits = report.layer("logits").quant
    assert logits.input_steps > 10 and not logits.born_here
    # named once, at the first of the layer's two pairs: B's Conv output before its QuantizeLinear
    # (judged as the quantizer keeps it: the folded ReLU at 0, the range's top clipping)
    (diag,) = [g for g in report.diagnoses if g.code == "quant_range_clipped"]
    assert diag.layer == "/2/Conv_output_0" == report.first_divergence.a_name
    assert "sit at the highest level of [0, 0.05]" in diag.message
    assert diag.evidence["range_max"] == pytest.approx(0.05, abs=1e-3) and diag.evidence["a_max"] > 0.5
    # the Conv that computes it, and the Conv that reads it: ONNX Runtime quantizes a tensor
    # any quantized node reads
    assert report.quant.exclude == ("/2/Conv", "/4/Conv")
    assert report.quant.option == "quantize_static(..., nodes_to_exclude=['/2/Conv', '/4/Conv'])"
    # re-quantized with that list (the pinned range still asked for), the model is healthy again
    path, model, _ = float_onnx
    fixed = parity.diff(model, _qdq(path, path.with_name("fixed.onnx"), nodes_to_exclude=list(report.quant.exclude),
                                    **CLIP), X_NCHW)
    assert fixed.quant.exclude == ()
    assert fixed.layer("logits").quant.cumulative < 0.4


# --- the report -------------------------------------------------------------------------


def test_the_quantized_verdict_round_trips_through_json_and_the_schema(tflite_reports, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    _, report = tflite_reports
    path = tmp_path / "clipped.json"
    report.to_json(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.validate(data, json.loads(SCHEMA.read_text(encoding="utf-8")))
    assert data["version"] == 2
    back = load_report(path)
    assert back.quant == report.quant
    assert [d.quant for d in back.layers] == [d.quant for d in report.layers]
    assert back.to_json() == report.to_json()


def test_a_version_1_report_still_loads(tflite_reports, tmp_path):
    _, report = tflite_reports
    data = report.to_dict()
    data["version"] = 1
    del data["quant"]
    for layer in data["layers"]:
        del layer["quant"]
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(data, json.loads(SCHEMA.read_text(encoding="utf-8")))  # the schema reads version 1 too
    old = load_report(path)
    assert old.schema_version == 1 and old.quant is None and all(d.quant is None for d in old.layers)


def test_the_terminal_shows_steps_and_the_deny_list(tflite_reports):
    from parity.report.console import render_text

    healthy, clipped = tflite_reports
    text = render_text(clipped, width=200)
    tensor = clipped.layer("conv3:activation").b_name
    q = clipped.layer("conv3:activation").quant
    assert text.startswith(f"✗ DIVERGES at conv3:activation (relu ↔ CONV_2D {tensor}): {q.steps:.2f} steps of its "
                           "int8 scale > 1.5 — 1 of 6 layers over tolerance; the model output within it")
    (header,) = [line for line in text.splitlines() if line.startswith("# A layer")]
    assert re.search(r"own err +steps +max abs", header)  # the column
    assert f"{q.local:.2f}/{q.cumulative:.2f}" in text
    assert "(a quantized layer: judged in steps of its scale, not by the float tolerance)" in text
    assert f"  quantized: {q.local:.2f} steps of its scale alone ({q.cumulative:.2f} cumulative); A's layer fed B's" in text
    assert "steps: a quantized layer's error in steps of its output scale (RMSE/scale), alone/cumulative" in text
    assert (f"quantized conv3:activation (CONV_2D {tensor}): {q.local:.2f} steps of its scale alone "
            f"({q.cumulative:.2f} cumulative), 24.9% clipped at its range") in text
    assert ("keep in float (TFLite's quantization debugger, worst first): "
            f"tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=[{tensor!r}])") in text
    ok = render_text(healthy, width=200)
    worst = max((d for d in healthy.layers if d.role != "output"), key=lambda d: d.quant.steps)
    assert worst.a_name == "fc"  # the dense head: 0.85 alone, a test input a little past its range
    assert f"; 6 quantized layers within 1.5 steps of their scale (worst {worst.quant.steps:.2f} at fc)" in ok
    assert "keep in float" not in ok


def test_float_pairs_show_no_steps(tmp_path):
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    report = parity.diff(net, net, np.ones((2, 4), "float32"))
    assert report.quant is None and all(d.quant is None for d in report.layers)
    from parity.report.console import render_text

    assert "steps" not in render_text(report, width=200)


def test_the_html_report_shows_steps_and_the_deny_list(tflite_reports):
    _, report = tflite_reports
    html = report.to_html()
    q = report.layer("conv3:activation").quant
    assert 'steps <span class="op">alone/cum</span></th>' in html
    assert f'class="num steps ownbad">{q.local:.2f}/{q.cumulative:.2f}</td>' in html
    assert '<section id="quantized">' in html
    tensor = report.layer("conv3:activation").b_name
    assert (f'<code class="deny-list">tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=[&#39;{tensor}'
            "&#39;])</code>") in html


def test_compare_reports_judges_quantized_layers_in_steps(tflite_reports, tmp_path, capsys):
    from parity.cli import main
    from parity.report.regress import compare_reports

    healthy, clipped = tflite_reports
    comparison = compare_reports(healthy, clipped)
    changes = {c.a_name: c for c in comparison.changes}
    conv3 = changes["conv3:activation"]
    assert conv3.status == "now fails"
    assert conv3.old_steps == healthy.layer("conv3:activation").quant.steps
    assert conv3.new_ratio == pytest.approx(clipped.layer("conv3:activation").quant.steps / STEP_LIMIT)
    # the layers after it are judged alone, not by the error they inherit: the pooling stays at the
    # floor; the dense head, fed values inside its range now, is 2.6× better (0.85 → 0.32 steps)
    assert changes["gap"].status == "same" and changes["fc"].status == "better"
    assert {c.status for c in comparison.changes} == {"same", "now fails", "better"}
    tensor = clipped.layer("conv3:activation").b_name
    assert f"layers to keep in float (quantized, over 1.5 steps): none before, {tensor} now" in comparison.notes
    healthy.to_json(tmp_path / "old.json")
    clipped.to_json(tmp_path / "new.json")
    assert main(["compare-reports", str(tmp_path / "old.json"), str(tmp_path / "new.json")]) == 1
    out = capsys.readouterr().out
    assert re.search(rf"conv3:activation\s+.*{conv3.old_steps:.2f} → {conv3.new_steps:.2f}\s+now fails", out), out


@pytest.fixture(scope="session")
def starved_onnx(tmp_path_factory):
    """The float CNN with a dead output channel of huge weights in its second conv (40× the
    others', a bias of −1000: always off after the ReLU), so one weight scale per tensor leaves
    the other 15 channels ±3 levels."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime.quantization")
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 10)).eval()
    with torch.no_grad():
        net[2].weight[0] *= 40.0
        net[2].bias[0] = -1000.0
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.from_numpy(X_NCHW[:1]),), buf, opset_version=17, dynamo=False,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    path = tmp_path_factory.mktemp("starved") / "float.onnx"
    path.write_bytes(buf.getvalue())
    model = onnx.load_from_string(buf.getvalue())
    per_tensor = parity.diff(model, _qdq(path, path.with_name("per_tensor.onnx"), per_channel=False), X_NCHW)
    per_channel = parity.diff(model, _qdq(path, path.with_name("per_channel.onnx")), X_NCHW)
    return per_tensor, per_channel


def test_per_tensor_weights_that_starve_channels_are_named_quant_granularity(starved_onnx):
    per_tensor, per_channel = starved_onnx
    assert [d.a_name for d in per_tensor.layers if not d.ok] == ["/2/Conv_output_0", "/3/Relu_output_0"]
    q = per_tensor.layer("/3/Relu_output_0").quant
    assert q.weight_per_channel is False and q.weight_levels == (127,) + (3,) * 15
    assert q.local == pytest.approx(6.15, abs=0.3) and q.clipped == 0.0  # measured 6.15 steps alone
    (diag,) = per_tensor.diagnoses
    assert (diag.code, diag.layer) == ("quant_granularity", "/2/Conv_output_0")
    assert diag.evidence["starved_channels"] == 15 and diag.evidence["min_levels"] == 3
    assert ("with one scale for all 16 output channels (per tensor), and their ranges differ 42×: 15 channel(s) "
            "(1, 2, 3, 4, 5, 6, 7, 8, …) reach only ±3 of the ±127 levels") in diag.message
    assert "quantize_static(..., per_channel=True)" in diag.message
    assert per_tensor.quant.exclude == ("/2/Conv",)
    # quantized per channel, as the diagnosis says, the same layer is at the floor
    fixed = per_channel.layer("/3/Relu_output_0").quant
    assert fixed.ok and fixed.weight_per_channel is True and fixed.local < 0.35
    assert per_channel.ok and per_channel.quant.exclude == ()


def test_no_granularity_or_clipping_is_named_on_healthy_models(onnx_reports, tflite_reports):
    for report in (onnx_reports[0], tflite_reports[0]):
        assert not [g for g in report.diagnoses if g.code.startswith("quant_")]


# --- hand-made traces: the arithmetic alone ---------------------------------------------


def _fake_quant(x: np.ndarray, scale: np.ndarray, zero_point: int) -> np.ndarray:
    return ((np.clip(np.round(x / scale) + zero_point, -128, 127) - zero_point) * scale).astype("float32")


def _traces(scale, axis, a_value, b_value, qmax=127):
    from parity.records import ModelInfo, Tap, Trace

    q = {"dtype": "int8", "scale": scale, "zero_point": 0, "axis": axis, "qmin": -128, "qmax": qmax, "via": "tensor",
         "tensor": "conv;relu"}
    tap_a = Tap("conv", "Conv2d", 0, a_value.shape, "float32", "NHWC", a_value)
    tap_b = Tap("conv;relu", "CONV_2D", 0, b_value.shape, "float32", "NHWC", b_value, attrs={"quantized": q})
    return (Trace((tap_a,), ModelInfo("keras", "3", "float", "keras functional")),
            Trace((tap_b,), ModelInfo("tflite", "2", "int8.tflite", "TFLite flatbuffer")))


def test_per_channel_scales_are_applied_along_their_axis():
    a = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 3)).astype("float32") * np.array([1.0, 10.0, 100.0], "float32")
    scale = np.array([1.0, 10.0, 100.0]) / 127
    b = _fake_quant(a, scale, 0)
    report = parity.diff_traces(*_traces(scale.tolist(), 3, a, b), mapping={"conv": "conv;relu"})
    q = report.layer("conv").quant
    # uniform values rounded to a grid: 1/√12 steps in every channel's own scale
    assert q.cumulative == pytest.approx(ROUNDING_FLOOR, abs=0.01) and q.axis == 3 and q.ok
    # no live model: nothing runs alone, the cumulative figure is judged
    assert q.local is None and q.steps == q.cumulative
    assert q.local_note == "not measurable: B's trace does not say which tensor this op reads"
    # read with one scale (their mean) the same tensor is off the floor: √(Σ s_c²/36) / mean(s) = 0.45
    per_tensor = parity.diff_traces(*_traces(float(scale.mean()), None, a, b), mapping={"conv": "conv;relu"})
    assert per_tensor.layer("conv").quant.cumulative == pytest.approx(
        np.sqrt(np.sum(scale**2) / 36) / scale.mean(), abs=0.03)


def test_a_range_clipped_by_hand_is_flagged_on_its_cumulative_figure():
    a = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 3)).astype("float32")
    scale = 0.5 / 127  # the grid ends at 0.5: half of A's values are past it
    report = parity.diff_traces(*_traces(scale, None, a, _fake_quant(a, np.float64(scale), 0)), mapping={"conv": "conv;relu"})
    d = report.layer("conv")
    assert not d.ok and d.quant.clipped == np.mean(a > 127 * scale + scale)  # past the top level by a step
    assert d.quant.cumulative == pytest.approx(np.sqrt(np.mean(np.maximum(a - 127 * scale, 0) ** 2 / scale**2)), rel=0.02)
    assert report.quant.exclude == ("conv;relu",)
    assert d.reasons == (f"{d.quant.cumulative:.2f} steps of its output scale {scale:.3g} (cumulative), over the limit "
                         "of 1.5 (rounding alone gives 0.29)",)


def test_a_torch_model_against_its_clipped_qdq_export_gives_the_same_deny_list(float_onnx):
    path, _, net = float_onnx
    report = parity.diff(net, _qdq(path.parent / "float.onnx", path.with_name("clipped_t.onnx"), **CLIP), X_NCHW)
    # torch's modules: Conv "2" alone (B's Conv before its QuantizeLinear), Conv "2" + ReLU "3" (B's Conv, its
    # ReLU folded into the range) — both measured by running the modules alone on B's dequantized input
    conv, relu = report.layer("2").quant, report.layer("3").quant
    assert conv.local_note == "A's layer fed B's dequantized input"
    assert relu.local_note == "A's 2 layers B's op computes (2, 3), fed B's dequantized input"
    assert relu.local > 100 and not relu.ok
    assert [(g.code, g.layer) for g in report.diagnoses] == [("quant_range_clipped", "2")]
    assert report.quant.exclude == ("/2/Conv", "/4/Conv")
