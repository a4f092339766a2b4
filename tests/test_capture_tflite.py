"""TFLite capture: a Keras 3 model converted with TFLiteConverter.from_keras_model, run by the
TFLite interpreter; op taps in execution order, outputs, resizing, quantized and NaN models, errors."""

from __future__ import annotations

import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import parity  # noqa: E402
from parity.capture.tflite import TFLiteBackend, TFLiteModel, is_tflite  # noqa: E402
from parity.errors import CaptureError, InputError, ModelError  # noqa: E402

X = np.random.default_rng(0).standard_normal((2, 12, 12, 3)).astype("float32")


def _keras_model(moving_variance=None):
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inp = keras.Input((12, 12, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", name="conv")(inp)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(max_value=6.0, name="relu6")(x)
    y = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.Add(name="add")([x, y])
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(5, name="fc")(x)
    model = keras.Model(inp, out, name="tiny")
    rng = np.random.default_rng(1)
    bn = model.get_layer("bn")
    bn.moving_mean.assign(rng.normal(size=8).astype("float32"))
    var = rng.uniform(0.5, 2.0, size=8) if moving_variance is None else np.full(8, moving_variance)
    bn.moving_variance.assign(var.astype("float32"))
    return model


def _convert(model, **flags):
    # Keras 3 + TF 2.21: from_keras_model works (it exports a SavedModel-like artifact itself)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    for key, value in flags.items():
        setattr(converter, key, value)
    return converter.convert()


@pytest.fixture(scope="module")
def keras_model():
    return _keras_model()


@pytest.fixture(scope="module")
def content(keras_model):
    return _convert(keras_model)


@pytest.fixture(scope="module")
def tflite_path(content, tmp_path_factory):
    path = tmp_path_factory.mktemp("tflite") / "tiny.tflite"
    path.write_bytes(content)
    return path


@pytest.fixture(scope="module")
def trace(content):
    return TFLiteBackend(TFLiteModel(content, name="tiny.tflite")).capture([X])


def test_accepts_wrapper_and_flatbuffer_bytes_only(content):
    assert is_tflite(content)
    assert TFLiteBackend.accepts(TFLiteModel(content))
    assert TFLiteBackend.accepts(content)
    assert not TFLiteBackend.accepts(b"not a model at all")
    assert not TFLiteBackend.accepts("tiny.tflite")
    assert isinstance(TFLiteBackend(content).model, TFLiteModel)


def test_op_taps_in_execution_order_with_nhwc_layouts(trace):
    layers = trace.layers
    ops = [t.op for t in layers]
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "FULLY_CONNECTED"):
        assert op in ops
    assert ops.index("CONV_2D") < ops.index("DEPTHWISE_CONV_2D") < ops.index("ADD") < ops.index("FULLY_CONNECTED")
    for t in layers:
        if t.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD"):
            assert t.shape == (2, 12, 12, 8)
            assert t.layout == "NHWC"
            assert t.dtype == "float32"
    # names are TFLite's tensor names exactly: the conv carries the fused BN/ReLU6 names
    conv = next(t for t in layers if t.op == "CONV_2D")
    assert "conv" in conv.name and ";" in conv.name
    # no constants (weights are 4-D too but not batch-first 12x12) and no input tensor
    assert all(t.shape[0] == 2 for t in layers)
    assert len(set(trace.names)) == len(trace.names)
    # values are copies owned by the trace
    assert all(t.value is not None and t.value.flags.owndata for t in layers)


def test_output_tap_equals_keras(trace, keras_model):
    (out,) = trace.outputs
    assert out.name == "output" and out.role == "output" and out.layout == "NC"
    np.testing.assert_allclose(out.value, keras_model(X, training=False).numpy(), atol=1e-5, rtol=1e-5)
    # the intermediate ADD tensor equals Keras' add layer too
    keras_trace = parity.capture(keras_model, X)
    add = next(t for t in trace.layers if t.op == "ADD")
    np.testing.assert_allclose(add.value, keras_trace["add"].value, atol=1e-5)


def test_other_batch_resizes_and_dict_inputs_by_name(content, keras_model):
    backend = TFLiteBackend(TFLiteModel(content))
    x5 = np.random.default_rng(2).standard_normal((5, 12, 12, 3)).astype("float32")
    trace = backend.capture({"image": x5})
    assert trace.outputs[0].shape == (5, 5)
    assert trace.input_shapes == ((5, 12, 12, 3),)
    np.testing.assert_allclose(trace.outputs[0].value, keras_model(x5).numpy(), atol=1e-5)
    assert any("resized" in n for n in trace.notes)


def test_dtype_is_cast_with_a_note(content):
    trace = TFLiteBackend(content).capture([X.astype("float64")])
    assert any("cast to float32" in n for n in trace.notes)


def test_info_and_input_spec(content):
    backend = TFLiteBackend(TFLiteModel(content, name="tiny.tflite"))
    info = backend.info()
    assert info.framework == "tflite" and info.kind == "TFLite flatbuffer" and info.name == "tiny.tflite"
    assert info.framework_version
    assert info.param_count and info.param_count > 0
    (spec,) = backend.input_spec()
    assert spec.shape == (None, 12, 12, 3)
    assert spec.dtype == "float32" and spec.layout == "NHWC"
    assert spec.name == "image"


def test_from_path(tflite_path):
    model = TFLiteModel.from_path(tflite_path)
    assert model.name == "tiny.tflite"
    assert TFLiteBackend(model).capture([X]).outputs[0].shape == (2, 5)


def test_missing_file_and_wrong_bytes_raise_model_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        TFLiteModel.from_path(tmp_path / "nope.tflite")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(ModelError, match=r"not a TFLite flatbuffer.*TFL3.*zip"):
        TFLiteModel.from_path(bad)
    with pytest.raises(ModelError, match="TFL3"):
        TFLiteModel(b"\0" * 16)


def test_wrong_rank_count_and_size_raise_input_error(content):
    backend = TFLiteBackend(content)
    with pytest.raises(InputError, match=r"rank 4.*image.*\(N, 12, 12, 3\)"):
        backend.capture([X[0]])
    with pytest.raises(InputError, match="takes 1 input"):
        backend.capture([X, X])
    with pytest.raises(InputError, match="only the batch size|Only the batch size"):
        backend.capture([np.transpose(X, (0, 3, 1, 2))])  # NCHW given to an NHWC model
    with pytest.raises(InputError, match="image"):
        backend.capture({"pixels": X, "other": X})


def test_nan_model_is_recorded_not_raised():
    # a negative moving variance makes BN compute sqrt(<0): the converter bakes NaN in
    content = _convert(_keras_model(moving_variance=-1.0))
    trace = TFLiteBackend(content).capture([X])
    assert np.isnan(trace.outputs[0].value).all()
    assert any("NaN" in n for n in trace.notes)


def test_precision_is_read_from_the_flatbuffer(keras_model, content):
    assert TFLiteBackend(content).precision() == ("float32", "detected: no float16 or quantized tensors")
    fp16 = _convert(keras_model, optimizations=[tf.lite.Optimize.DEFAULT],
                    target_spec=tf.lite.TargetSpec(supported_types=[tf.float16]))
    precision, how = TFLiteBackend(fp16).precision()
    # conv, depthwise and dense kernels and biases are stored as float16 (at least the three kernels)
    assert precision == "float16" and int(how.split()[1]) >= 3 and how.endswith("float16 tensor(s) in the flatbuffer")


def test_int8_model_is_dequantized(keras_model):
    def representative():
        rng = np.random.default_rng(3)
        for _ in range(8):
            yield [rng.standard_normal((1, 12, 12, 3)).astype("float32")]

    content = _convert(
        keras_model,
        optimizations=[tf.lite.Optimize.DEFAULT],
        representative_dataset=representative,
        target_spec=tf.lite.TargetSpec(supported_ops=[tf.lite.OpsSet.TFLITE_BUILTINS_INT8]),
        inference_input_type=tf.int8,
        inference_output_type=tf.int8,
    )
    backend = TFLiteBackend(content)
    assert backend.input_spec()[0].dtype == "int8"
    precision, how = backend.precision()
    assert precision == "int8" and re.fullmatch(r"detected: \d+ quantized integer tensor\(s\) in the flatbuffer", how)
    trace = backend.capture([X])
    out = trace.outputs[0]
    assert out.dtype == "float32" and out.attrs["quantized"]["dtype"] == "int8"
    (note,) = [n for n in trace.notes if n.startswith("input ")]
    assert "parity quantized the float32 input with its declared scale" in note
    ref = keras_model(X).numpy()
    assert np.abs(out.value - ref).max() < 0.1 * np.abs(ref).max() + 0.1
    # inputs beyond the range the model was calibrated for are clipped by quantizing: B sees another
    # input than A there, and the note counts them
    interp = tf.lite.Interpreter(model_content=content)
    scale, zp = interp.get_input_details()[0]["quantization"]
    big = X * 40
    outside = int(np.count_nonzero((big < (-128 - zp) * scale - scale / 2) | (big > (127 - zp) * scale + scale / 2)))
    assert outside > 0
    (note,) = [n for n in backend.capture([big]).notes if n.startswith("input ")]
    assert f"{outside} of {big.size} input values lie outside that range and were clipped" in note


def test_a_float_input_a_cast_would_change_is_refused_for_a_raw_integer_input():
    """A uint8 input with no scale (the model rescales pixel bytes itself): whole numbers in 0..255 are
    cast and fed; fractions would be truncated to 0 — another input than A's — and are refused."""
    inp = keras.Input((6, 6, 3), dtype="uint8")
    model = keras.Model(inp, keras.layers.Conv2D(4, 3)(keras.layers.Rescaling(1 / 255.0)(inp)))
    backend = TFLiteBackend(_convert(model))
    assert backend.input_spec()[0].dtype == "uint8"
    pixels = np.random.default_rng(0).integers(0, 256, (1, 6, 6, 3)).astype("float32")
    trace = backend.capture([pixels])
    assert np.allclose(trace.outputs[0].value, model(pixels.astype("uint8")).numpy(), atol=1e-5)
    with pytest.raises(InputError, match=r"is uint8 with no scale or zero point .* holds \d+ of 108 values a cast to "
                                         r"uint8 would change .* whole numbers in 0\.\.255"):
        backend.capture([pixels / 255])


def test_diff_against_keras_is_ok(keras_model, content):
    report = parity.diff(keras_model, TFLiteBackend(TFLiteModel(content, name="tiny.tflite")), X)
    assert report.ok
    assert report.outputs and report.outputs[0].ok


def test_capture_error_on_interpreter_failure():
    # a flatbuffer header with nothing behind it: the interpreter refuses it
    with pytest.raises((CaptureError, ModelError)):
        TFLiteBackend(TFLiteModel(b"\x18\0\0\0TFL3" + b"\0" * 40)).capture([X])


# --- litert-torch names and padding constants ------------------------------------------------

_ROOT = "timm.models.mobilenetv3.MobileNetV3"
_SE = (f"{_ROOT}/torch.nn.modules.container.Sequential_blocks/torch.nn.modules.container.Sequential_0/"
       "timm.models._efficientnet_blocks.DepthwiseSeparableConv_0/timm.models._efficientnet_blocks.SqueezeExcite_se")
_GATE = f"{_SE}/torch.nn.modules.activation.Hardsigmoid_gate"
_EXPAND = f"{_SE}/torch.nn.modules.conv.Conv2d_conv_expand"


def test_litert_torch_names_give_the_torch_module_paths():
    from parity.capture.tflite import torch_module_paths

    assert torch_module_paths(f"{_GATE};;{_EXPAND};2") == ["blocks.0.0.se.gate", "blocks.0.0.se.conv_expand"]
    assert torch_module_paths(f"{_ROOT}/timm.layers.norm_act.BatchNormAct2d_bn1;") == ["bn1"]
    assert torch_module_paths(f"{_ROOT};") == [""]  # an op of the root module's own forward
    # TF-made names are not module paths
    assert torch_module_paths("model_1/conv1_bn_1/batchnorm/add_1;model_1/conv1_1/convolution") is None
    assert torch_module_paths("mobilenet_0.25_128/conv1_relu/Relu6") is None
    assert torch_module_paths("serving_default_input:0") is None


def test_litert_hard_sigmoid_output_is_the_last_op_of_its_fused_name():
    # litert-torch lowers hard-sigmoid to CONV_2D+RELU6 (6·gate, ";1") then MUL by 1/6 (";2"), under one
    # fused name: only the MUL is the gate's output; the CONV_2D is an intermediate, never paired
    from parity.capture.tflite import _torch_module_scopes

    pool = f"{_SE};"
    reduce_ = f"{_SE}/torch.nn.modules.activation.ReLU_act1;;{_SE}/torch.nn.modules.conv.Conv2d_conv_reduce;"
    scopes = _torch_module_scopes([
        (pool, "MEAN"), (reduce_, "CONV_2D"), (f"{_GATE};;{_EXPAND};1", "CONV_2D"), (f"{_GATE};;{_EXPAND};2", "MUL"),
        (f"{_SE};;{_GATE};;{_EXPAND};", "MUL"),
    ])
    conv6, gate, se = scopes[2], scopes[3], scopes[4]
    assert conv6["partial"] and "module_outputs" not in conv6
    assert gate["module_outputs"] == ("blocks.0.0.se.gate",) and "partial" not in gate
    assert gate["fused_modules"] == ("blocks.0.0.se.conv_expand",)
    assert "blocks.0.0.se" in se["module_outputs"] and scopes[1]["module_outputs"] == ("blocks.0.0.se.act1",)


def test_litert_module_own_step_and_repeated_calls():
    from parity.capture.tflite import _torch_module_scopes

    bn = f"{_ROOT}/timm.layers.norm_act.BatchNormAct2d_bn1"
    act = f"{bn}/torch.nn.modules.activation.Hardswish_act"
    stem = f"{_ROOT}/torch.nn.modules.conv.Conv2d_conv_stem"
    scopes = _torch_module_scopes([
        (f"{stem};", "TRANSPOSE"), (f"{stem};1", "PAD"), (f"{bn};;{stem};2", "CONV_2D"), (f"{act};", "HARD_SWISH"),
        (f"{_ROOT}/torch.nn.modules.activation.ReLU_act2;", "RELU"), (f"{act};1", "HARD_SWISH"),
    ])
    # the stem conv was fused into the BatchNorm's CONV_2D: its own ops only moved and padded the input
    assert scopes[0]["partial"] and scopes[1]["partial"]
    # BatchNormAct2d: its own step (before its act child) ends at the CONV_2D; the module at the act
    assert scopes[2]["module_own"] == ("bn1",) and scopes[3]["module_outputs"] == ("bn1", "bn1.act")
    # a module called again after another one ran: its second call is bn1#1, as torch names it
    assert scopes[5]["module_outputs"] == ("bn1#1", "bn1.act#1")


def test_minus_inf_padding_before_max_pool_is_not_a_defect():
    # what litert-torch writes before a max-pool: PADV2 with a -inf constant (TF's converter would
    # write -FLT_MAX, so a sentinel constant is converted and its bytes set to -inf in the flatbuffer)
    sentinel = np.float32(-1234.5678)

    @tf.function(input_signature=[tf.TensorSpec((1, 6, 6, 2), tf.float32)])
    def pooled(x):
        padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=sentinel)
        return tf.nn.max_pool2d(padded, 3, 2, "VALID")

    content = tf.lite.TFLiteConverter.from_concrete_functions([pooled.get_concrete_function()], pooled).convert()
    assert content.count(sentinel.tobytes()) == 1
    content = content.replace(sentinel.tobytes(), np.float32(-np.inf).tobytes())
    x = np.random.default_rng(0).standard_normal((1, 6, 6, 2)).astype("float32")
    trace = TFLiteBackend(content).capture([x])
    pad = next(t for t in trace.taps if t.op.startswith("PAD"))
    assert np.isneginf(pad.value).any() and pad.attrs["padding_constant"] and pad.attrs["partial"]
    assert not any("NaN or Inf" in n for n in trace.notes)
    assert np.isfinite(trace.outputs[0].value).all()


def test_a_model_with_select_tf_ops_is_refused_with_how_to_convert_it(tmp_path):
    @tf.function(input_signature=[tf.TensorSpec([2, 3, 3], tf.float32)])
    def det(x):
        return tf.linalg.det(x) * 2.0

    conv = tf.lite.TFLiteConverter.from_concrete_functions([det.get_concrete_function()], det)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    path = tmp_path / "flex.tflite"
    path.write_bytes(conv.convert())
    with pytest.raises(CaptureError) as err:
        parity.capture(str(path), np.eye(3, dtype="float32")[None].repeat(2, axis=0))
    msg = str(err.value)
    assert "uses Select TensorFlow (Flex) ops" in msg and "'flex.tflite'" in msg
    assert "supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]" in msg
