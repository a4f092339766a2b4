"""Weight parity on hand-made parameter records, without any framework: what the comparison
says of a faithful copy, a transposed or flipped kernel, swapped statistics, a missing bias, a
shape no transform fits, a scaled copy, and a dense layer after a flatten in the other order.

The two models are given as backends whose only door is :meth:`Backend.layer_params`: the
records are in the canonical (PyTorch) layout, as the torch and Keras backends read them."""

from __future__ import annotations

import numpy as np
import pytest

from parity.records import Alignment, LayerParams, Match, Tap, Transform, Unmatched
from parity.weights import weight_diagnoses, weight_parity

from .param_records import Records, keras_layer, p, rand, torch_layer


def tap(name, op, index, shape=(2, 1), layout=None, attrs=None):
    return Tap(name=name, op=op, index=index, shape=tuple(shape), dtype="float32", layout=layout, attrs=attrs or {})


def match(name, a_op, b_op, index=0, b_name=None):
    return Match(a=tap(name, a_op, index), b=tap(b_name or name, b_op, index), transform=Transform(), how="name")


def compare(a_layers, b_layers, matches, **options):
    return weight_parity(Records("torch", a_layers), Records("keras", b_layers), matches, **options)


def not_ok(params):
    return [d for d in params if d.status != "ok"]


# --- faithful copies ---------------------------------------------------------------------------


def test_a_faithful_conv_copy_is_ok_parameter_by_parameter():
    w, b = rand(8, 4, 3, 3), rand(8)
    params = compare({"conv": torch_layer("conv", "Conv2d", kernel=w, bias=b)},
                     {"conv": keras_layer("conv", "Conv2D", kernel=w.copy(), bias=b.copy())}, [match("conv", "Conv2d", "Conv2D")])
    assert [(d.a_layer, d.a_param, d.b_param, d.status, d.rel_err) for d in params] == [
        ("conv", "weight", "kernel", "ok", 0.0), ("conv", "bias", "bias", "ok", 0.0)]
    assert weight_diagnoses(params) == []


def test_a_bfloat16_copy_is_judged_at_bfloat16_precision():
    w = rand(6, 5)
    rounded = (w.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)  # what a bfloat16 copy keeps
    a = {"fc": torch_layer("dense", "Linear", kernel=w)}
    m = [match("fc", "Linear", "Dense")]
    as_bf16 = LayerParams("keras", "dense", "Dense", {"kernel": p("kernel", rounded, dtype="bfloat16")})
    (d,) = compare(a, {"fc": as_bf16}, m)
    assert d.status == "ok" and 0 < d.rel_err < 1.6e-2
    (d,) = compare(a, {"fc": keras_layer("dense", "Dense", kernel=rounded)}, m)  # the same values claimed float32
    assert d.status == "differs" and d.rel_err > 1e-6


def test_records_that_cannot_be_read_give_nothing():
    w = rand(4, 4)
    a = Records("torch", {"fc": torch_layer("dense", "Linear", kernel=w)})
    graph = Records("tflite", {}, reads=False)
    assert weight_parity(a, graph, [match("fc", "Linear", "FULLY_CONNECTED")]) == ()
    assert weight_parity(object(), a, [match("fc", "Linear", "Linear")]) == ()


def test_a_tap_that_is_no_layer_and_a_converter_fold_are_not_compared():
    w = rand(8, 4, 3, 3)
    a = {"conv": torch_layer("conv", "Conv2d", kernel=w), "bn": torch_layer("batchnorm", "BatchNorm2d", gamma=rand(8))}
    b = {"conv": keras_layer("conv", "Conv2D", kernel=w)}
    # B's one Conv2D holds A's Conv2d+BatchNorm (a fold): no one-to-one parameters; "relu" is no layer of B
    matches = [match("bn", "BatchNorm2d", "Conv2D", 1, b_name="conv"), match("relu", "ReLU", "ReLU", 2)]
    assert compare(a, b, matches) == ()


# --- the bugs ---------------------------------------------------------------------------------


def test_a_square_dense_weight_copied_without_transpose_is_transposed():
    w, b = rand(6, 6), rand(6)
    params = compare({"fc": torch_layer("dense", "Linear", kernel=w, bias=b)},
                     {"fc": keras_layer("dense", "Dense", kernel=w.T.copy(), bias=b)}, [match("fc", "Linear", "Dense")])
    (bad,) = not_ok(params)
    assert (bad.a_param, bad.b_param, bad.status) == ("weight", "kernel", "transposed")
    assert "kernel equals torch weight transposed the other way" in bad.message
    assert "square (6, 6)" in bad.message and "copy weight.T" in bad.message
    (diag,) = weight_diagnoses(params)
    assert (diag.code, diag.layer) == ("weight_transpose", "fc")
    assert diag.evidence["rel_err_alternative"] == 0.0 and diag.evidence["rel_err_as_copied"] == pytest.approx(bad.rel_err)


def test_conv_kernels_with_kh_kw_swapped_or_flipped_are_transposed():
    w = rand(8, 4, 3, 3)
    (bad,) = not_ok(compare({"c": torch_layer("conv", "Conv2d", kernel=w)},
                            {"c": keras_layer("conv", "Conv2D", kernel=np.transpose(w, (0, 1, 3, 2)))},
                            [match("c", "Conv2d", "Conv2D")]))
    assert bad.status == "transposed" and "height and width axes are swapped" in bad.message
    assert "weight.permute(2, 3, 1, 0)" in bad.message and bad.rel_err > 0.1

    w = rand(8, 4, 3, 5)  # kh ≠ kw: only the flip fits
    (bad,) = not_ok(compare({"c": torch_layer("conv", "Conv2d", kernel=w)},
                            {"c": keras_layer("conv", "Conv2D", kernel=w[..., ::-1, ::-1].copy())},
                            [match("c", "Conv2d", "Conv2D")]))
    assert bad.status == "transposed" and "flipped spatially" in bad.message


def test_running_mean_and_variance_swapped_is_bn_statistics():
    g, be, mean, var = rand(8), rand(8), rand(8), np.abs(rand(8)) + 0.5
    params = compare({"bn": torch_layer("batchnorm", "BatchNorm2d", gamma=g, beta=be, mean=mean, var=var)},
                     {"bn": keras_layer("batchnorm", "BatchNormalization", gamma=g, beta=be, mean=var, var=mean)},
                     [match("bn", "BatchNorm2d", "BatchNormalization")])
    assert [(d.a_param, d.b_param, d.status) for d in not_ok(params)] == [
        ("running_mean", "moving_mean", "swapped"), ("running_var", "moving_variance", "swapped")]
    assert all("running_mean and running_var swapped" in d.message for d in not_ok(params))
    (diag,) = weight_diagnoses(params)
    assert (diag.code, diag.layer) == ("bn_statistics", "bn")
    assert diag.evidence["rel_err_alternative[running_mean]"] == 0.0
    assert "Copy running_mean into moving_mean" in diag.message


def test_weight_and_bias_swapped_is_weight_mismatch():
    g, be = rand(6), rand(6)
    params = compare({"ln": torch_layer("norm", "LayerNorm", gamma=g, beta=be)},
                     {"ln": keras_layer("norm", "LayerNormalization", gamma=be, beta=g)}, [match("ln", "LayerNorm", "LayerNormalization")])
    assert [d.status for d in params] == ["swapped", "swapped"]
    assert "weight and bias swapped" in params[0].message
    assert [(d.code, d.layer) for d in weight_diagnoses(params)] == [("weight_mismatch", "ln")]


def test_a_bias_on_one_side_only_is_missing_unless_it_is_zero():
    w, b = rand(16, 8, 1, 1), np.linspace(-1, 1, 16).astype(np.float32)
    m = [match("pw", "Conv2d", "Conv2D")]
    b_side = {"pw": keras_layer("conv", "Conv2D", kernel=w)}
    params = compare({"pw": torch_layer("conv", "Conv2d", kernel=w, bias=b)}, b_side, m)
    (bad,) = not_ok(params)
    assert (bad.a_param, bad.b_param, bad.status) == ("bias", "", "missing")
    assert bad.message.startswith("bias missing: A's 'pw' (torch) has a bias")
    assert "B's 'pw' (keras) (Conv2D) has none; build B's layer with use_bias=True" in bad.message
    assert [(d.code, d.layer) for d in weight_diagnoses(params)] == [("weight_mismatch", "pw")]

    params = compare({"pw": torch_layer("conv", "Conv2d", kernel=w, bias=np.zeros(16, np.float32))}, b_side, m)
    assert not_ok(params) == [] and "the same as none" in params[1].message

    (bad,) = not_ok(compare({"pw": torch_layer("conv", "Conv2d", kernel=w, bias=b)},
                            {"pw": keras_layer("conv", "Conv2D", kernel=w, bias=np.zeros(16, np.float32))}, m))
    assert bad.status == "missing" and "bias missing: B's 'pw' (keras) has bias all zeros" in bad.message


def test_a_kernel_no_transform_fits_is_shape():
    (bad,) = compare({"c": torch_layer("conv", "Conv2d", kernel=rand(8, 4, 3, 3))},
                     {"c": keras_layer("conv", "Conv2D", kernel=rand(8, 4, 5, 5))}, [match("c", "Conv2d", "Conv2D")])
    assert bad.status == "shape" and bad.rel_err is None
    assert "which no transform makes fit weight (8, 4, 3, 3)" in bad.message


def test_how_a_parameter_differs_is_said():
    w, var = rand(8, 4, 3, 3), np.abs(rand(8)) + 0.5
    params = compare(
        {"c": torch_layer("conv", "Conv2d", kernel=w), "bn": torch_layer("batchnorm", "BatchNorm2d", var=var)},
        {"c": keras_layer("conv", "Conv2D", kernel=w * 0.5), "bn": keras_layer("batchnorm", "BatchNormalization", var=np.sqrt(var))},
        [match("c", "Conv2d", "Conv2D", 0), match("bn", "BatchNorm2d", "BatchNormalization", 1)],
    )
    (conv, bn) = params
    assert conv.status == "differs" and "scaled by 0.5" in conv.message and conv.rel_err == pytest.approx(0.5)
    assert bn.status == "differs" and "standard deviation" in bn.message
    assert sorted((d.code, d.layer) for d in weight_diagnoses(params)) == [("weight_mismatch", "bn"), ("weight_mismatch", "c")]


def test_layers_of_unknown_kinds_are_compared_by_identical_names():
    alpha = rand(4)
    params = compare({"act": LayerParams("torch", "generic", "PReLU", {"weight": p("weight", alpha)})},
                     {"act": LayerParams("keras", "generic", "PReLU", {"alpha": p("alpha", alpha), "weight": p("weight", -alpha)})},
                     [match("act", "PReLU", "PReLU")])
    (d,) = params
    assert (d.a_param, d.b_param, d.status) == ("weight", "weight", "differs") and "scaled by -1" in d.message


# --- a dense layer after a flatten -----------------------------------------------------------


def _flatten_pair(b_kernel):
    """torch: conv (NCHW 4×3×5) → fc; Keras: conv (NHWC) → Flatten (H,W,C) → fc."""
    ta = [tap("conv", "Conv2d", 0, (2, 4, 3, 5), "NCHW"), tap("fc", "Linear", 1, (2, 10), "NC")]
    tb = [tap("conv", "Conv2D", 0, (2, 3, 5, 4), "NHWC"),
          tap("flatten", "Flatten", 1, (2, 60), "N(HWC)", {"flat_from": (3, 5, 4)}), tap("fc", "Dense", 2, (2, 10), "NC")]
    alignment = Alignment(
        matches=(Match(ta[0], tb[0], Transform(kind="permute", perm=(0, 3, 1, 2)), "name"), Match(ta[1], tb[2], Transform(), "name")),
        unmatched=(Unmatched(tb[1], "b", "one-sided"),),
    )
    return {"fc": torch_layer("dense", "Linear", kernel=W_FC)}, {"fc": keras_layer("dense", "Dense", kernel=b_kernel)}, alignment


W_FC = rand(10, 60)  # (out, in), the inputs in torch's (C, H, W) order
W_FC_HWC = W_FC.reshape(10, 4, 3, 5).transpose(0, 2, 3, 1).reshape(10, -1)


def test_dense_rows_in_the_order_b_flattens_are_ok():
    a, b, alignment = _flatten_pair(W_FC_HWC)
    assert not_ok(compare(a, b, alignment)) == []


def test_dense_rows_not_reordered_after_a_flatten_are_flatten_order():
    a, b, alignment = _flatten_pair(W_FC)
    params = compare(a, b, alignment)
    (bad,) = not_ok(params)
    assert (bad.a_param, bad.b_param, bad.status) == ("weight", "kernel", "transposed")
    assert "B flattens its input in (H,W,C) order" in bad.message
    assert "weight.reshape(10, 4, 3, 5).transpose(0, 2, 3, 1).reshape(10, -1).T" in bad.message
    (diag,) = weight_diagnoses(params)
    assert (diag.code, diag.layer) == ("flatten_order", "fc")
    assert diag.evidence["rel_err_alternative"] == 0.0 and diag.evidence["rel_err_as_copied"] > 0.5

    # the matches alone hide B's Flatten: either order is accepted, with a note
    (fc,) = compare(a, b, alignment.matches)
    assert fc.status == "ok" and "pass the whole Alignment" in fc.message


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_weights_rounded_to_half_precision_are_named(half):
    """keras-hub's Mistral conversion keeps every weight rounded to float16: 2e-4 from A's."""
    import ml_dtypes

    w = rand(6, 5)
    rounded = w.astype(np.float16 if half == "float16" else ml_dtypes.bfloat16).astype(np.float32)
    (d,) = compare({"fc": torch_layer("dense", "Linear", kernel=w)}, {"fc": keras_layer("dense", "Dense", kernel=rounded)},
                   [match("fc", "Linear", "Dense")])
    assert d.status == "differs" and f"kernel of B's 'fc' (keras) is weight of A's 'fc' (torch) rounded to {half}: every value equals A's in {half}" in d.message
    (g,) = weight_diagnoses([d])
    assert g.code == "weight_precision" and g.layer == "fc" and "Load the weights in float32" in g.message
    from parity.diagnose.params import weight_code
    from parity.records import ParamDiff

    read_back = ParamDiff(**{f: getattr(d, f) for f in ("a_layer", "b_layer", "a_param", "b_param", "status",
                                                          "rel_err", "message")})
    assert weight_code(read_back) == "weight_precision"  # from a saved report's words
    (same,) = compare({"fc": torch_layer("dense", "Linear", kernel=rounded)},
                      {"fc": keras_layer("dense", "Dense", kernel=rounded.copy())}, [match("fc", "Linear", "Dense")])
    assert same.status == "ok"
