"""The aligner on hand-made traces: mapping, names, order+shape, layouts, one-sided layers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume
from hypothesis import strategies as st

from parity.align import align, normalize_name, op_family
from parity.errors import MappingError
from parity.layout import candidate_transforms, input_transform, permutation
from parity.records import Tap

from .helpers import make_trace, nchw_to_nhwc
from .properties import prop

rng = np.random.default_rng(0)
X = rng.standard_normal((2, 4, 6, 5)).astype("float32")
Y = np.maximum(X, 0)
FLAT_A = Y.reshape(2, -1)  # torch: flatten NCHW
FLAT_B = nchw_to_nhwc(Y).reshape(2, -1)  # keras: flatten NHWC
W = rng.standard_normal((120, 3)).astype("float32")
OUT = FLAT_A @ W


def torch_trace():
    return make_trace(
        [
            ("layer1.0", "Conv2d", X, "NCHW"),
            ("layer1.1", "ReLU", Y, "NCHW"),
            ("drop", "Dropout", Y, "NCHW"),
            ("fc", "Linear", OUT, "NC"),
            ("output", "output", OUT, "NC"),
        ]
    )


def keras_trace(*, permute=True):
    specs = [
        ("conv", "Conv2D", nchw_to_nhwc(X), "NHWC"),
        ("relu", "ReLU", nchw_to_nhwc(Y), "NHWC"),
    ]
    if permute:
        specs.append(("permute", "Permute", Y, "NCHW"))
        specs.append(("flatten", "Flatten", FLAT_A, "N(CHW)", {"flat_from": (4, 6, 5)}))
    else:
        specs.append(("flatten", "Flatten", FLAT_B, "N(HWC)", {"flat_from": (6, 5, 4)}))
    specs += [("dense", "Dense", OUT, "NC"), ("output", "output", OUT, "NC")]
    return make_trace(specs, framework="keras")


def test_values_match_tensors_across_layouts_whatever_their_names():
    al = align(torch_trace(), keras_trace())
    pairs = [(m.a.name, m.b.name, m.transform.label, m.how) for m in al.matches]
    assert pairs == [
        ("layer1.0", "conv", "NHWC→NCHW", "value"),
        ("layer1.1", "relu", "NHWC→NCHW", "value"),
        ("fc", "dense", "identity", "value"),
        ("output", "output", "identity", "output"),
    ]
    assert all(m.confidence >= 0.9 for m in al.matches)
    for m in al.matches:
        np.testing.assert_array_equal(m.transform.apply(m.b.value), m.a.value)


def test_order_and_shape_match_across_layouts_when_values_disagree():
    # B diverges from its first layer on: no value agrees, so order + shape + op family pair them
    ta = torch_trace()
    tb = keras_trace()
    noisy = [
        (t.name, t.op, (t.value + np.random.default_rng(1).standard_normal(t.value.shape)).astype("float32"), t.layout, t.attrs)
        for t in tb.taps
    ]
    al = align(ta, make_trace(noisy, framework="keras"))
    pairs = [(m.a.name, m.b.name, m.transform.label, m.how) for m in al.matches]
    assert pairs == [
        ("layer1.0", "conv", "NHWC→NCHW", "order"),
        ("layer1.1", "relu", "NHWC→NCHW", "order"),
        ("fc", "dense", "identity", "order"),
        ("output", "output", "identity", "output"),
    ]
    # same family and shape, values unrelated: a middling pairing, not a confident one
    assert all(0.5 <= m.confidence < 0.9 for m in al.matches[:3]), [m.confidence for m in al.matches]
    # one-sided ops are kept and labelled, not lost
    assert {(u.side, u.tap.name, u.reason) for u in al.unmatched} == {
        ("a", "drop", "one-sided"),
        ("b", "permute", "one-sided"),
        ("b", "flatten", "one-sided"),
    }


def test_flattened_tensors_are_reordered_between_layouts():
    a = make_trace([("flat", "Flatten", FLAT_A, "N(CHW)", {"flat_from": (4, 6, 5)})])
    b = make_trace([("flatten", "Flatten", FLAT_B, "N(HWC)", {"flat_from": (6, 5, 4)})], "keras")
    (m,) = align(a, b).matches
    assert m.transform.kind == "reflatten"
    assert m.transform.label == "N(HWC)→N(CHW)"
    np.testing.assert_array_equal(m.transform.apply(m.b.value), FLAT_A)


def test_explicit_mapping_wins_over_order():
    al = align(torch_trace(), keras_trace(), mapping={"layer1.1": "conv"})
    by_a = {m.a.name: (m.b.name, m.how) for m in al.matches}
    assert by_a["layer1.1"] == ("conv", "mapping")
    # order matching continues around the anchor and does not reuse "conv"
    assert by_a.get("layer1.0", (None,))[0] != "conv"


def test_mapping_to_missing_layer_lists_closest_names():
    with pytest.raises(MappingError) as err:
        align(torch_trace(), keras_trace(), mapping={"layer1.1": "rleu"})
    msg = str(err.value)
    assert "'rleu'" in msg and "model B" in msg and "relu" in msg


def test_mapping_with_incompatible_shapes_is_refused():
    with pytest.raises(MappingError, match="no layout transform"):
        align(torch_trace(), keras_trace(), mapping={"layer1.0": "dense"})


def test_normalised_names_match_before_order():
    a = make_trace([("block.0", "Conv2d", X, "NCHW"), ("block.1", "Conv2d", Y, "NCHW")])
    # B lists them in the other order; names still pair them
    b = make_trace(
        [("block_1", "Conv2D", nchw_to_nhwc(Y), "NHWC"), ("block_0", "Conv2D", nchw_to_nhwc(X), "NHWC")],
        "keras",
    )
    al = align(a, b)
    assert {(m.a.name, m.b.name, m.how) for m in al.matches} == {
        ("block.0", "block_0", "name"),
        ("block.1", "block_1", "name"),
    }
    assert normalize_name("layer1.0/conv1:0") == "layer1_0_conv1"


def test_fused_activation_matches_by_value_not_by_op():
    # Keras fused the ReLU into its conv: its conv output equals torch's ReLU output
    a = make_trace([("conv", "Conv2d", X, "NCHW"), ("relu", "ReLU", Y, "NCHW")])
    b = make_trace([("conv_relu", "Conv2D", nchw_to_nhwc(Y), "NHWC")], "keras")
    (m,) = align(a, b).matches
    assert (m.a.name, m.b.name) == ("relu", "conv_relu")


def test_layer_on_one_side_only_does_not_lose_sync():
    z = rng.standard_normal((2, 4, 6, 5)).astype("float32")
    a = make_trace(
        [("c1", "Conv2d", X, "NCHW"), ("c2", "Conv2d", z, "NCHW"), ("c3", "Conv2d", X * 2, "NCHW")]
    )
    b = make_trace([("k1", "Conv2D", nchw_to_nhwc(X), "NHWC"), ("k3", "Conv2D", nchw_to_nhwc(X * 2), "NHWC")], "keras")
    al = align(a, b)
    assert [(m.a.name, m.b.name) for m in al.matches] == [("c1", "k1"), ("c3", "k3")]
    assert [(u.tap.name, u.reason) for u in al.unmatched] == [("c2", "no-match")]


def test_equal_dimensions_are_marked_ambiguous():
    cube = rng.standard_normal((2, 3, 3, 3)).astype("float32")
    a = Tap("a", "Conv2d", 0, cube.shape, "float32", "NCHW", cube)
    b = Tap("b", "Conv2D", 0, cube.shape, "float32", "NHWC", nchw_to_nhwc(cube))
    (t,) = candidate_transforms(a, b)
    assert t.label == "NHWC→NCHW" and t.ambiguous
    np.testing.assert_array_equal(t.apply(b.value), cube)
    c = Tap("c", "Conv2d", 0, X.shape, "float32", "NCHW", X)
    d = Tap("d", "Conv2D", 0, (2, 6, 5, 4), "float32", "NHWC", nchw_to_nhwc(X))
    (t2,) = candidate_transforms(c, d)
    assert not t2.ambiguous


def test_unknown_layouts_try_identity_then_swap():
    a = Tap("a", "X", 0, (2, 7, 3), "float32", None, np.zeros((2, 7, 3)))
    b = Tap("b", "X", 0, (2, 3, 7), "float32", None, np.zeros((2, 3, 7)))
    (t,) = candidate_transforms(a, b)
    assert t.perm == (0, 2, 1)
    assert candidate_transforms(a, Tap("c", "X", 0, (2, 5, 4), "float32", None, np.zeros((2, 5, 4)))) == []


def test_input_transform_and_permutation():
    assert permutation("NCHW", "NHWC") == (0, 2, 3, 1)
    t = input_transform((8, 1, 28, 28), "NCHW", (None, 28, 28, 1), "NHWC")
    assert t.label == "NCHW→NHWC" and not t.ambiguous
    assert input_transform((8, 3, 28, 28), "NCHW", (None, 28, 28, 1), "NHWC") is None
    assert input_transform((8, 28, 28, 1), "NHWC", (None, 28, 28, 1), "NHWC").label == "identity"


def test_op_families():
    assert op_family("Conv2d") == op_family("Conv2D") == op_family("DepthwiseConv2D") == "conv"
    assert op_family("BatchNorm2d") == op_family("BatchNormalization") == "batchnorm"
    assert op_family("Linear") == op_family("Dense") == "dense"
    assert op_family("ReLU6") == op_family("ReLU") == op_family("Activation") == "activation"


def test_mapping_values_may_be_tf_names_globs_or_regexes():
    y = np.maximum(X, 0)
    a = make_trace([("features.0", "Conv2d", X, "NCHW"), ("features.1", "ReLU6", y, "NCHW")])
    b = make_trace(
        [
            ("net/conv1/Conv2D:0", "Conv2D", nchw_to_nhwc(X), "NHWC"),
            ("net/conv1_relu/Relu6:0", "Relu6", nchw_to_nhwc(y), "NHWC"),
            ("net/conv2_relu/Relu6:0", "Relu6", nchw_to_nhwc(y), "NHWC"),
        ],
        "tf-graph",
    )
    for target in ("net/conv1_relu/Relu6:0", "import/net/conv1_relu/Relu6:0", "import/*/conv1_relu*/Relu6:0", "re:conv1_relu"):
        alignment = align(a, b, {"features.1": target})
        assert {m.a.name: m.b.name for m in alignment.matches}["features.1"] == "net/conv1_relu/Relu6:0"
    with pytest.raises(MappingError, match=r"matches 2 tensors of model B .*net/conv1_relu/Relu6:0, net/conv2_relu/Relu6:0. Make it match exactly one"):
        align(a, b, {"features.1": "*/Relu6:0"})
    with pytest.raises(MappingError, match=r"no recorded tensor of that name \(or matching that pattern\). Closest names in model B "
                                           r"\(by name, op and position: 'features.1' is a ReLU6 in model A\): net/conv1_relu/Relu6:0 \(Relu6, #1\)"):
        align(a, b, {"features.1": "net/conv1_relu/Relu:0"})
    with pytest.raises(MappingError, match="not a valid regex"):
        align(a, b, {"features.1": "re:conv1_relu("})


def test_value_matching_refuses_a_tensor_two_candidates_reproduce():
    # B computes A's conv output twice under other names (a converter's duplicate): values
    # cannot say which one is A's, so neither is taken by value
    a = make_trace([("conv", "Conv2d", X, "NCHW"), ("out", "output", Y, "NCHW")])
    b = make_trace(
        [("k1", "Conv2D", nchw_to_nhwc(X), "NHWC"), ("k2", "Conv2D", nchw_to_nhwc(X), "NHWC"), ("o", "output", nchw_to_nhwc(Y), "NHWC")],
        framework="keras",
    )
    al = align(a, b)
    conv = next(m for m in al.matches if m.a.name == "conv")
    assert conv.how == "order" and conv.confidence < 0.9


def test_values_choose_the_transform_when_the_shape_fits_several_layouts():
    cube = rng.standard_normal((2, 5, 5, 5)).astype("float32")
    a = make_trace([("conv", "Conv2d", cube, None), ("out", "output", cube.sum(axis=(2, 3)), "NC")])
    b = make_trace(
        [("c", "Conv2D", np.transpose(cube, (0, 2, 3, 1)).copy(), None), ("o", "output", cube.sum(axis=(2, 3)), "NC")],
        framework="keras",
    )
    m = next(m for m in align(a, b).matches if m.a.name == "conv")
    np.testing.assert_array_equal(m.transform.apply(m.b.value), cube)
    assert m.transform.ambiguous


def test_a_layer_folded_into_the_next_pair_is_called_fused():
    # torch Conv → BatchNorm → ReLU; the converter emits one conv with BN folded and ReLU fused
    bn = X * 0.5 + 0.1
    a = make_trace(
        [("conv", "Conv2d", X, "NCHW"), ("bn", "BatchNorm2d", bn, "NCHW"), ("act", "ReLU", np.maximum(bn, 0), "NCHW"),
         ("out", "output", np.maximum(bn, 0), "NCHW")]
    )
    b = make_trace(
        [("model/t_7", "CONV_2D", nchw_to_nhwc(np.maximum(bn, 0)), "NHWC"), ("o", "output", nchw_to_nhwc(np.maximum(bn, 0)), "NHWC")],
        framework="tflite",
    )
    al = align(a, b)
    assert [(m.a.name, m.b.name, m.how) for m in al.matches] == [("act", "model/t_7", "value"), ("out", "o", "output")]
    assert {u.tap.name: u.reason for u in al.unmatched if u.side == "a"} == {"conv": "fused", "bn": "fused"}


def test_reports_give_the_confidence_and_call_out_weak_pairings(tmp_path):
    import parity
    from parity.report.jsonio import load_report

    # B's only candidate for A's conv is an op of another family with unrelated values
    other = rng.standard_normal(X.shape).astype("float32")
    a = make_trace([("conv", "Conv2d", X, "NCHW"), ("out", "output", Y.sum(axis=(2, 3)), "NC")])
    b = make_trace([("gate", "Sigmoid", other, "NCHW"), ("o", "output", other.sum(axis=(2, 3)), "NC")], framework="keras")
    report = parity.diff_traces(a, b)
    d = report.layer("conv")
    assert d.b_name == "gate" and d.how == "order" and d.confidence < 0.5
    text = " ".join(str(report).split())
    assert "1 weak pairing(s) (confidence < 0.5): conv ↔ gate (0.40)" in text
    assert "(1 by order; confidence ≥ 0.9 for 0 of 1)" in text
    assert "weak match" in report.to_html()
    report.to_json(tmp_path / "r.json")
    assert load_report(tmp_path / "r.json").layer("conv").confidence == d.confidence


def test_an_unrelated_pair_before_one_that_agrees_is_two_different_tensors():
    # onnx2tf splits a conv into a bias-less convolution and an Add of the bias; torch's conv
    # (before its BatchNorm, which the exporter folded) has no counterpart: errors do not heal,
    # so a conv pair with unrelated values right before a pair that agrees is not a pair
    bn = X * 0.5 + 0.1
    a = make_trace([("conv", "Conv2d", X, "NCHW"), ("bn", "BatchNorm2d", bn, "NCHW"), ("out", "output", bn.mean(axis=(2, 3)), "NC")])
    b = make_trace(
        [("m/tf.nn.convolution/convolution:0", "Conv2D", nchw_to_nhwc(bn - 0.1 + rng.standard_normal(bn.shape).astype("float32")), "NHWC"),
         ("m/tf.math.add/Add:0", "AddV2", nchw_to_nhwc(bn), "NHWC", {"constant_operand": True}),
         ("o", "output", bn.mean(axis=(2, 3)), "NC")],
        framework="tf",
    )
    al = align(a, b)
    assert [(m.a.name, m.b.name, m.how) for m in al.matches] == [("bn", "m/tf.math.add/Add:0", "value"), ("out", "o", "output")]
    assert {u.tap.name: u.reason for u in al.unmatched if u.side == "a"} == {"conv": "fused"}
    # and when B's Add diverges too (a bug), the BatchNorm still pairs with the bias Add by order:
    # an Add of a constant is an affine step, not a merge of two branches
    broken = make_trace(
        [(t.name, t.op, t.value * 1.3 if "Add" in t.name or t.name == "o" else t.value, t.layout, t.attrs) for t in b.taps],
        framework="tf",
    )
    d = {m.a.name: m.b.name for m in align(a, broken).matches}
    assert d["bn"] == "m/tf.math.add/Add:0"


def test_a_fused_tflite_tensor_pairs_with_the_activation_it_ends_with():
    # the ReLU6 became a ReLU in the converted model: no value agrees any more, and the fused
    # CONV_2D+RELU tensor must still pair with torch's activation, not with its conv
    bn = X * 5 + 0.1
    a = make_trace(
        [("pw", "Conv2d", X, "NCHW"), ("bn", "BatchNorm2d", bn, "NCHW"), ("act", "ReLU6", np.clip(bn, 0, 6), "NCHW"),
         ("out", "output", np.clip(bn, 0, 6).mean(axis=(2, 3)), "NC")]
    )
    relu = nchw_to_nhwc(np.maximum(bn, 0))
    assert np.any(bn > 6)
    b = make_trace(
        [("m/tf.nn.relu/Relu;m/tf.math.add_2/Add;m/tf.nn.convolution_1/convolution;Const_81", "CONV_2D", relu, "NHWC"),
         ("o", "output", relu.mean(axis=(1, 2)), "NC")],
        framework="tflite",
    )
    al = align(a, b)
    assert {m.a.name: m.how for m in al.matches} == {"act": "order", "out": "output"}
    assert {u.tap.name: u.reason for u in al.unmatched if u.side == "a"} == {"pw": "fused", "bn": "fused"}


def test_a_pair_by_name_whose_values_agree_is_confident_even_when_the_shape_fits_several_layouts():
    cube = rng.standard_normal((2, 5, 5, 5)).astype("float32")
    a = make_trace([("conv", "Conv2d", cube, "NCHW")])
    agree = make_trace([("conv", "Conv2D", nchw_to_nhwc(cube), "NHWC")], framework="keras")
    m = next(m for m in align(a, agree).matches if m.a.name == "conv")
    assert m.how == "name" and m.transform.ambiguous and m.confidence == 0.95
    # values that disagree leave the layout unsettled: the same pair by name is less sure
    noise = rng.standard_normal(cube.shape).astype("float32")
    differ = make_trace([("conv", "Conv2D", nchw_to_nhwc(noise), "NHWC")], framework="keras")
    m = next(m for m in align(a, differ).matches if m.a.name == "conv")
    assert m.how == "name" and m.transform.ambiguous and m.confidence == 0.8


def test_a_mistyped_mapping_name_is_hinted_by_op_and_position_not_spelling_alone():
    rng = np.random.default_rng(0)

    def x(*shape):
        return rng.standard_normal(shape).astype("float32")

    a = make_trace([("conv1", "Conv2d", x(1, 4, 8, 8), "NCHW"), ("bn1", "BatchNorm2d", x(1, 4, 8, 8), "NCHW"),
                    ("relu1", "ReLU", x(1, 4, 8, 8), "NCHW"), ("conv2", "Conv2d", x(1, 4, 8, 8), "NCHW"),
                    ("relu2", "ReLU", x(1, 4, 8, 8), "NCHW"), ("fc", "Linear", x(1, 10), "NC"), ("out", "output", x(1, 10), "NC")])
    b = make_trace([("model/conv2d/BiasAdd", "Conv2D", x(1, 8, 8, 4), "NHWC"),
                    ("model/batch_normalization/FusedBatchNormV3", "FusedBatchNormV3", x(1, 8, 8, 4), "NHWC"),
                    ("model/re_lu/Relu", "Relu", x(1, 8, 8, 4), "NHWC"), ("model/conv2d_1/BiasAdd", "Conv2D", x(1, 8, 8, 4), "NHWC"),
                    ("model/re_lu_1/Relu", "Relu", x(1, 8, 8, 4), "NHWC"), ("model/dense/BiasAdd", "MatMul", x(1, 10), "NC"),
                    ("out", "output", x(1, 10), "NC")], "tf-graph")
    # spelled, 'model/conv2d_1/Relu' is nearest the conv's BiasAdd; A's relu2 is a ReLU, fifth of six
    with pytest.raises(MappingError) as err:
        align(a, b, {"relu2": "model/conv2d_1/Relu"})
    assert (
        "Closest names in model B (by name, op and position: 'relu2' is a ReLU in model A): "
        "model/re_lu_1/Relu (Relu, #4), model/re_lu/Relu (Relu, #2), model/conv2d_1/BiasAdd (Conv2D, #3)."
    ) in str(err.value)
    # the A side of an entry is ranked against its B tensor the same way
    with pytest.raises(MappingError) as err:
        align(a, b, {"cnv2": "model/conv2d_1/BiasAdd"})
    assert "Closest names in model A (by name, op and position: 'model/conv2d_1/BiasAdd' is a Conv2D in model B): " \
           "conv2 (Conv2d, #3), conv1 (Conv2d, #0)" in str(err.value)


def _healing_traces(*, output_b):
    """A pair whose middle tensors are unrelated (B's are other tensors of the same shapes) while
    the layers after them — and the outputs, unless ``output_b`` says otherwise — agree."""
    mid_a = [rng.standard_normal(Y.shape).astype("float32") for _ in range(2)]
    mid_b = [rng.standard_normal(Y.shape).astype("float32") for _ in range(2)]  # not the same quantities
    a = make_trace([("conv", "Conv2d", X, "NCHW"), ("relu", "ReLU", Y, "NCHW"), ("block.mid", "Conv2d", mid_a[0], "NCHW"),
                    ("block.mid2", "Conv2d", mid_a[1], "NCHW"), ("fc", "Linear", OUT, "NC"), ("output", "output", OUT, "NC")])
    b = make_trace([("c", "Conv2D", nchw_to_nhwc(X), "NHWC"), ("r", "ReLU", nchw_to_nhwc(Y), "NHWC"),
                    ("m1", "Conv2D", nchw_to_nhwc(mid_b[0]), "NHWC"), ("m2", "Conv2D", nchw_to_nhwc(mid_b[1]), "NHWC"),
                    ("d", "Dense", OUT, "NC"), ("output", "output", output_b, "NC")], framework="keras")
    return a, b


def test_a_pair_by_order_whose_values_are_unrelated_and_that_heals_is_not_compared_but_unsure():
    from parity.api import diff_traces

    report = diff_traces(*_healing_traces(output_b=OUT))
    assert report.ok and report.first_divergence is None
    assert "block.mid" not in [d.a_name for d in report.layers]
    (mid,) = [u for u in report.unmatched_a if u.name == "block.mid"]
    # (the pair right before an agreeing one was already dropped: errors do not heal)
    assert mid.reason.startswith("unsure: paired by order with m1, but the values are unrelated (rel err 1.")
    assert [u.name for u in report.unmatched_b if u.reason.startswith("unsure")] == ["m1"]
    assert [d.index for d in report.layers] == list(range(len(report.layers)))


def test_a_disagreeing_pair_is_kept_when_the_outputs_disagree_too():
    from parity.api import diff_traces

    report = diff_traces(*_healing_traces(output_b=OUT * 1.1))
    assert not report.ok
    assert report.first_divergence.a_name == "block.mid"
    assert not [u for u in report.unmatched if u.reason.startswith("unsure")]


def _litert_se_pair(gate_b):
    """torch's SE gate (conv_expand → Hardsigmoid) and a litert-torch-style B: CONV_2D+RELU6 holding
    6·gate (an intermediate of the gate module), then the MUL by 1/6 that ends the gate call."""
    pre = X[:, :, :1, :1] * 3
    gate = np.clip(pre + 3, 0, 6) / 6
    a = make_trace(
        [("se.conv_expand", "Conv2d", pre, "NCHW"), ("se.gate", "Hardsigmoid", gate, "NCHW"),
         ("se.act2", "ReLU", np.maximum(gate - 0.5, 0), "NCHW"), ("out", "output", gate.mean(axis=(2, 3)), "NC")]
    )
    named = {"module": "se.gate", "fused_modules": ("se.conv_expand",)}
    b = make_trace(
        [("g;;e;1", "CONV_2D", nchw_to_nhwc(6 * gate), "NHWC", {**named, "partial": True}),
         ("g;;e;2", "MUL", nchw_to_nhwc(gate_b(gate)), "NHWC", {**named, "module_outputs": ("se.gate",)}),
         ("a;", "RELU", nchw_to_nhwc(np.maximum(gate_b(gate) - 0.5, 0)), "NHWC",
          {"module": "se.act2", "module_outputs": ("se.act2",), "module_unsure": ("se.act2",)}),
         ("o", "output", gate.mean(axis=(2, 3)), "NC")],
        framework="tflite",
    )
    return a, b


def test_module_paths_in_b_pair_the_tensor_that_ends_the_module_call():
    a, b = _litert_se_pair(lambda g: g)
    al = align(a, b)
    assert {m.a.name: (m.b.name, m.how) for m in al.matches if m.how != "output"} == {
        "se.gate": ("g;;e;2", "name"), "se.act2": ("a;", "name")}
    reasons = {u.tap.name: u.reason for u in al.unmatched}
    assert reasons == {"se.conv_expand": "fused", "g;;e;1": "one-sided"}


def test_module_paths_pair_a_diverging_gate_and_drop_an_unsure_pairing_whose_values_differ():
    # a bug in B's gate: still the gate's tensor by name (it is compared and diverges), never the
    # CONV_2D intermediate; B's act2 is marked unsure and now disagrees: not compared, not guessed
    a, b = _litert_se_pair(lambda g: 1.5 * g)
    al = align(a, b)
    pairs = {m.a.name: m.b.name for m in al.matches if m.how != "output"}
    assert pairs == {"se.gate": "g;;e;2"}
    assert "se.act2" in {u.tap.name for u in al.unmatched if u.side == "a"}


def test_a_conv_whose_batchnorm_b_folded_in_stays_unpaired_when_the_batchnorm_is_wrong():
    # tf2onnx folds Conv2D + BatchNorm into one Conv; with the BatchNorm's statistics lost, no value
    # agrees, and B's Conv must still pair with A's BatchNorm (it computes it), never with A's raw conv
    bn = X * 0.5 + 2.0
    wrong = X * 0.9 + 0.05  # statistics 0 / 1: closer to the raw conv than to the right BatchNorm
    a = make_trace([("conv", "Conv2D", X, "NCHW"), ("bn", "BatchNormalization", bn, "NCHW"),
                    ("relu", "ReLU", np.maximum(bn, 0), "NCHW"), ("out", "output", np.maximum(bn, 0).mean(axis=(2, 3)), "NC")],
                   framework="keras")
    b = make_trace([("Conv__12:0", "Conv", wrong, "NCHW"), ("m/relu_1/Relu:0", "Relu", np.maximum(wrong, 0), "NCHW"),
                    ("o", "output", np.maximum(wrong, 0).mean(axis=(2, 3)), "NC")], framework="onnx")
    al = align(a, b)
    assert {m.a.name: m.b.name for m in al.matches if m.how == "order"} == {"bn": "Conv__12:0", "relu": "m/relu_1/Relu:0"}
    assert {u.tap.name: u.reason for u in al.unmatched if u.side == "a"} == {"conv": "fused"}
    # a depthwise conv's BatchNorm kept as Mul + Add: there B's conv is A's conv
    b2 = make_trace([("dw:0", "Conv", X * 1.1, "NCHW"), ("bn/mul_1:0", "Mul", X * 0.55, "NCHW", {"constant_operand": True}),
                     ("bn/add_1:0", "Add", wrong, "NCHW", {"constant_operand": True}),
                     ("o", "output", np.maximum(wrong, 0).mean(axis=(2, 3)), "NC")], framework="onnx")
    assert {m.a.name: m.b.name for m in align(a, b2).matches}["conv"] == "dw:0"


def test_a_name_shared_across_op_families_pairs_only_when_the_values_agree():
    # Keras records a Dense with a softmax as the logits ``predictions`` and ``predictions:activation``;
    # tf2onnx names the graph output after the layer: ``predictions`` holds the softmax
    logits = rng.standard_normal((2, 10)).astype("float32")
    soft = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    a = make_trace([("gap", "GlobalAveragePooling2D", X.mean(axis=(2, 3)), "NC"), ("predictions", "Dense", logits, "NC"),
                    ("predictions:activation", "softmax", soft, "NC"), ("output", "output", soft, "NC")], framework="keras")
    b = make_trace([("m/gap_1/Mean:0", "ReduceMean", X.mean(axis=(2, 3)), "NC"), ("m/predictions_1/MatMul:0", "MatMul", logits, "NC"),
                    ("predictions", "Softmax", soft, "NC"), ("out", "output", soft, "NC")], framework="onnx")
    pairs = {m.a.name: m.b.name for m in align(a, b).matches}
    assert pairs["predictions"] == "m/predictions_1/MatMul:0"
    assert pairs["predictions:activation"] == "predictions"


def test_a_wrong_layer_before_an_agreeing_parallel_branch_stays_paired():
    # torchvision's BasicBlock runs its downsample conv after bn2: the downsample agreeing says
    # nothing about bn2; the sum (and the ReLU after it) disagree again, so bn2's error did not heal
    bn2, bn2_wrong = X * 0.5 + 0.1, X * 0.2 + 0.4
    ds = X[:, ::-1] * 0.3
    a = make_trace([("bn2", "BatchNorm2d", bn2, "NCHW"), ("down", "Conv2d", ds, "NCHW"),
                    ("relu", "ReLU", np.maximum(bn2 + ds, 0), "NCHW"), ("out", "output", np.maximum(bn2 + ds, 0).mean(axis=(2, 3)), "NC")])
    b = make_trace([("batch_normalization_7", "BatchNormalization", nchw_to_nhwc(bn2_wrong), "NHWC"),
                    ("conv2d_9", "Conv2D", nchw_to_nhwc(ds), "NHWC"),
                    ("re_lu_5", "ReLU", nchw_to_nhwc(np.maximum(bn2_wrong + ds, 0)), "NHWC"),
                    ("o", "output", np.maximum(bn2_wrong + ds, 0).mean(axis=(2, 3)), "NC")], framework="keras")
    pairs = {m.a.name: m.b.name for m in align(a, b).matches}
    assert pairs["bn2"] == "batch_normalization_7"


def _rescaled_embedding_traces(*, output_b, after_b=1.0):
    """A pair by name whose first tensors differ by a constant factor — transformers' XGLM scales
    its token embeddings by √d inside the PyTorch module and outside it in TF — while the next
    layer and, unless ``output_b`` says otherwise, the outputs agree."""
    emb = rng.standard_normal((2, 7, 16)).astype("float32")
    hid = np.tanh(emb)
    out = hid.mean(axis=1)
    a = make_trace([("embed_tokens", "Embedding", emb * 4.0, "NTC"), ("layers.0", "Linear", hid, "NTC"),
                    ("output", "output", out, "NC")])
    b = make_trace([("embed_tokens", "Embedding", emb, "NTC"), ("layers.0", "Dense", hid * after_b, "NTC"),
                    ("output", "output", out if output_b is None else output_b, "NC")], framework="keras")
    return a, b


def _unsure(a, b, same_params):
    from parity.align import unsure_pairs
    from parity.compare import compare
    from parity.tolerance import Tolerances

    alignment = align(a, b)
    return unsure_pairs(alignment, compare(alignment, Tolerances.build()), same_params)


def test_a_pair_by_name_that_is_a_scaled_copy_and_heals_is_unsure_when_its_weights_are_equal():
    alignment, layers = _unsure(*_rescaled_embedding_traces(output_b=None), lambda m: True)
    assert [d.a_name for d in layers] == ["layers.0", "output"] and all(d.ok for d in layers)
    (emb,) = [u for u in alignment.unmatched_a if u.tap.name == "embed_tokens"]
    assert emb.reason.startswith("unsure: paired by name with embed_tokens, but B is A × 0.25 (cos 1.000000)")
    assert "not the same quantity" in emb.reason


def test_a_scaled_copy_whose_weights_differ_or_are_unknown_stays_a_divergence():
    # ALBERT with a kernel ×1.05 before a LayerNorm: the norm erases the scale, everything after
    # agrees to rounding, but the weights say it is a bug; without the models nothing says it is not
    from parity.api import diff_traces

    for same_params in (lambda m: False, None):
        alignment, layers = _unsure(*_rescaled_embedding_traces(output_b=None), same_params)
        assert not next(d for d in layers if d.a_name == "embed_tokens").ok
        assert not [u for u in alignment.unmatched if u.reason.startswith("unsure")]
    assert diff_traces(*_rescaled_embedding_traces(output_b=None)).first_divergence.a_name == "embed_tokens"


def test_a_scaled_copy_with_equal_weights_is_unsure_even_when_a_later_bug_moves_the_outputs():
    # XGLM with a kernel scaled in a later block: the embedding is still not the same quantity
    alignment, layers = _unsure(*_rescaled_embedding_traces(output_b=np.ones((2, 16), "float32")), lambda m: True)
    assert "embed_tokens" not in [d.a_name for d in layers]
    assert not next(d for d in layers if d.role == "output").ok
    assert [u.tap.name for u in alignment.unmatched_a if u.reason.startswith("unsure")] == ["embed_tokens"]


def test_a_scaled_pair_by_name_whose_effect_only_fades_below_tolerance_is_still_a_divergence():
    # a kernel ×1.05 before a residual and a LayerNorm: what follows is within tolerance but
    # not equal (1e-4), unlike a scale one side applies outside the layer (agrees to rounding)
    alignment, layers = _unsure(*_rescaled_embedding_traces(output_b=None, after_b=1 + 2e-4), lambda m: True)
    assert not next(d for d in layers if d.a_name == "embed_tokens").ok
    assert not [u for u in alignment.unmatched if u.reason.startswith("unsure")]


def test_a_pair_dropped_while_aligning_because_errors_do_not_heal_says_why():
    # B's tensor paired by order with A's conv holds other values, and the pair after it agrees:
    # the pair is dropped; nothing of B's family folded A's conv, so it is "unsure", not "fused"
    mid_a, mid_b = (rng.standard_normal(Y.shape).astype("float32") for _ in range(2))
    a = make_trace([("conv", "Conv2d", X, "NCHW"), ("relu", "ReLU", Y, "NCHW"), ("block.mid", "Conv2d", mid_a, "NCHW"),
                    ("fc", "Linear", OUT, "NC"), ("output", "output", OUT, "NC")])
    b = make_trace([("c", "Conv2D", nchw_to_nhwc(X), "NHWC"), ("r", "ReLU", nchw_to_nhwc(Y), "NHWC"),
                    ("m1", "Sigmoid", nchw_to_nhwc(mid_b), "NHWC"), ("d", "Dense", OUT, "NC"),
                    ("output", "output", OUT, "NC")], framework="keras")
    al = align(a, b)
    assert "block.mid" not in [m.a.name for m in al.matches]
    reasons = {(u.side, u.tap.name): u.reason for u in al.unmatched}
    assert reasons[("a", "block.mid")] == "unsure: paired by order with m1, but the values are unrelated while the next 2 pairs agree"
    assert reasons[("b", "m1")] == "unsure: paired by order with A's block.mid, but the values are unrelated while the next 2 pairs agree"


def test_named_model_outputs_pair_by_name_and_an_output_handed_back_channels_first_is_compared():
    # transformers' TF ResNet returns last_hidden_state (2, 32, 1, 1) channels-first, like torch,
    # while a Keras tensor of rank 4 is NHWC by convention: no permutation fits, the shapes are
    # equal, so the outputs are compared as they are; and dict outputs pair by their names
    hidden = rng.standard_normal((2, 32, 1, 1)).astype("float32")
    pooled = rng.standard_normal((2, 32, 1, 1)).astype("float32")
    a = make_trace([("conv", "Conv2d", X, "NCHW"), ("output[last_hidden_state]", "output", hidden, "NCHW"),
                    ("output[pooler_output]", "output", pooled, "NCHW")])
    b = make_trace([("c", "Conv2D", nchw_to_nhwc(X), "NHWC"), ("output[pooler_output]", "output", pooled, "NHWC"),
                    ("output[last_hidden_state]", "output", hidden, "NHWC")], framework="keras")
    al = align(a, b)
    outs = {m.a.name: (m.b.name, m.how, m.transform.label) for m in al.matches if m.how == "output"}
    assert outs == {
        "output[last_hidden_state]": ("output[last_hidden_state]", "output", "identity (shapes equal; the declared layouts do not fit)"),
        "output[pooler_output]": ("output[pooler_output]", "output", "identity (shapes equal; the declared layouts do not fit)"),
    }
    assert not [u for u in al.unmatched if u.tap.role == "output"]


def test_layers_of_a_that_b_computes_inside_one_of_its_layers_are_accounted_for_not_missing():
    # transformers' TF ResNet applies the ReLU inside its conv layer's call: B records the
    # normalisation and then the next convolution, nothing in between; A's ReLU module is computed
    # inside B's layer (not "no-match"), and so are the embeddings before B's first recorded tensor
    from parity.api import diff_traces

    emb = rng.standard_normal(X.shape).astype("float32")
    bn = X * 0.5 + 0.1
    relu = np.maximum(bn, 0)
    nxt = relu * 2.0
    a = make_trace([("embed", "Embedding", emb, "NCHW"), ("norm", "BatchNorm2d", bn, "NCHW"), ("act", "ReLU", relu, "NCHW"),
                    ("next", "Conv2d", nxt, "NCHW"), ("output", "output", nxt.mean(axis=(2, 3)), "NC")])
    b = make_trace([("m/norm", "BatchNormalization", nchw_to_nhwc(bn), "NHWC"),
                    ("m/next", "Conv2D", nchw_to_nhwc(nxt), "NHWC"),
                    ("output", "output", nxt.mean(axis=(2, 3)), "NC")], framework="keras")
    report = diff_traces(a, b)
    assert report.ok
    assert {u.name: u.reason for u in report.unmatched_a} == {"embed": "inside", "act": "inside"}
    assert ("2 layer(s) of A are computed inside one layer of B, which records no tensor there, so nothing of B can be "
            "compared with them (the layer of B that holds them is compared): embed (Embedding, inside m/norm "
            "BatchNormalization), act (ReLU, inside m/next Conv2D).") in report.notes


def test_dict_outputs_one_side_alone_returns_are_left_unpaired_not_shifted():
    # transformers' PyTorch BART returns encoder_last_hidden_state where its TF twin returns
    # other keys first: the names both give pair, and nothing is paired by position
    h = rng.standard_normal((2, 5)).astype("float32")
    e = rng.standard_normal((2, 5)).astype("float32")
    a = make_trace([("fc", "Linear", h, "NC"), ("output[last_hidden_state]", "output", h, "NC"),
                    ("output[encoder_last_hidden_state]", "output", e, "NC")])
    b = make_trace([("d", "Dense", h, "NC"), ("output[past]", "output", e * 3, "NC"),
                    ("output[last_hidden_state]", "output", h, "NC")], framework="keras")
    al = align(a, b)
    assert [(m.a.name, m.b.name) for m in al.matches if m.how == "output"] == [("output[last_hidden_state]", "output[last_hidden_state]")]
    assert {u.tap.name for u in al.unmatched if u.tap.role == "output"} == {"output[encoder_last_hidden_state]", "output[past]"}


def test_an_activation_b_applies_inside_a_layer_before_its_dropout_is_accounted_for():
    # BART's TF layer applies its activation as a function, then a Dropout layer (an identity at
    # inference) that B records: that tap holds no counterpart, so A's activation is "inside"
    from parity.api import diff_traces

    fc1 = rng.standard_normal((2, 8)).astype("float32")
    act = np.maximum(fc1, 0)
    fc2 = act @ rng.standard_normal((8, 4)).astype("float32")
    a = make_trace([("fc1", "Linear", fc1, "NC"), ("act", "GELUActivation", act, "NC"), ("fc2", "Linear", fc2, "NC"),
                    ("output", "output", fc2, "NC")])
    b = make_trace([("m/fc1", "Dense", fc1, "NC"), ("m/activation_dropout", "Dropout", act, "NC"),
                    ("m/fc2", "Dense", fc2, "NC"), ("output", "output", fc2, "NC")], framework="keras")
    report = diff_traces(a, b)
    assert report.ok and {u.name: u.reason for u in report.unmatched_a} == {"act": "inside"}


def test_rows_behind_a_unit_batch_axis_are_the_same_rows():
    # litert-torch computes a Linear on (1, B·T, d): torch's (B, T, d), reshaped in row order
    value = rng.standard_normal((2, 17, 12)).astype("float32")
    a = Tap(name="qkv", op="Linear", index=0, shape=(2, 17, 12), dtype="float32", layout=None, value=value)
    b = Tap(name="fc", op="FULLY_CONNECTED", index=0, shape=(1, 34, 12), dtype="float32", layout=None,
            value=value.reshape(1, 34, 12))
    (t,) = candidate_transforms(a, b)
    assert t.kind == "reshape" and t.label == "reshape (1, 34)→(2, 17) (rows)"
    assert np.array_equal(t.apply(b.value), value)
    c = Tap(name="x", op="Dense", index=0, shape=(1, 17, 24), dtype="float32", layout=None,
            value=np.zeros((1, 17, 24), "float32"))
    assert not [t for t in candidate_transforms(a, c) if t.kind == "reshape"]  # other features: not rows


def test_a_scaled_copy_paired_by_order_that_heals_exactly_is_unsure():
    # NFNet's pre-activation: B's tensor after ``act(x) * beta`` is paired (by direction) with A's act:
    # B is A × 1.0194 exactly, the next layer agrees to rounding and so do the outputs
    from parity.api import diff_traces

    act = np.abs(rng.standard_normal((2, 8)).astype("float32"))
    nxt = act @ rng.standard_normal((8, 4)).astype("float32")
    a = make_trace([("stem", "Linear", X.reshape(2, -1)[:, :8], "NC"), ("act1", "SiLU", act, "NC"),
                    ("conv1", "Linear", nxt, "NC"), ("output", "output", nxt, "NC")])
    b = make_trace([("s", "Gemm", X.reshape(2, -1)[:, :8], "NC"), ("mul_9", "Mul", act * np.float32(1.0194), "NC"),
                    ("c", "Gemm", nxt, "NC"), ("output", "output", nxt, "NC")], framework="onnx")
    report = diff_traces(a, b)
    assert report.ok
    (u,) = [u for u in report.unmatched_a if u.name == "act1"]
    assert u.reason.startswith("unsure: paired by value with mul_9, but B is A × 1.019 (cos 1.000000)")


# --- properties: whatever the names, a faithful chain pairs every layer with its counterpart ---------

_A_OPS = {4: ["Conv2d", "BatchNorm2d", "ReLU"], 2: ["Linear", "ReLU", "Tanh"]}
_B_OPS = {"Conv2d": "Conv2D", "BatchNorm2d": "BatchNormalization", "ReLU": "ReLU", "Linear": "Dense",
          "Tanh": "Activation"}


@st.composite
def _chains(draw):
    """Model A's chain (NCHW / NC tensors) and model B's: other names, NHWC, the same values
    (optionally with B drifting by a constant factor from one layer on: it diverges there)."""
    n = draw(st.integers(1, 10))
    seed = draw(st.integers(0, 2**16))
    r = np.random.default_rng(seed)
    specs_a, specs_b = [], []
    for i in range(n):
        rank = draw(st.sampled_from([4, 2]))
        shape = (2, *draw(st.lists(st.integers(1, 5), min_size=rank - 1, max_size=rank - 1)))
        assume(np.prod(shape) >= 4)
        value = r.standard_normal(shape).astype(np.float32)
        op = draw(st.sampled_from(_A_OPS[rank]))
        layout = "NCHW" if rank == 4 else "NC"
        specs_a.append((f"features.{i}", op, value, layout))
        b_value, b_layout = (nchw_to_nhwc(value), "NHWC") if rank == 4 else (value, "NC")
        specs_b.append((f"{_B_OPS[op].lower()}_{i + 7}", _B_OPS[op], b_value, b_layout))
    out = r.standard_normal((2, 3)).astype(np.float32)
    specs_a.append(("output", "output", out, "NC"))
    specs_b.append(("output", "output", out, "NC"))
    return specs_a, specs_b


@prop(_chains(), fast=25, deep=1000)
def test_a_faithful_chain_in_another_layout_and_other_names_pairs_every_layer_with_its_own(chains):
    specs_a, specs_b = chains
    al = align(make_trace(specs_a), make_trace(specs_b, framework="keras"))
    pairs = {m.a.name: m.b.name for m in al.matches}
    expected = {a[0]: b[0] for a, b in zip(specs_a, specs_b)}
    assert pairs == expected, (pairs, expected)
    for m in al.matches:
        assert np.array_equal(m.transform.apply(m.b.value), m.a.value)
    assert not al.unmatched


@prop(_chains(), st.integers(0, 9), fast=25, deep=1000)
def test_a_chain_that_diverges_from_one_layer_on_still_pairs_every_layer_in_order(chains, first_bad):
    specs_a, specs_b = chains
    first_bad = min(first_bad, len(specs_a) - 2)
    bad = [(n, op, v * np.float32(1.5) if i >= first_bad else v, lay) for i, (n, op, v, lay) in enumerate(specs_b)]
    al = align(make_trace(specs_a), make_trace(bad, framework="keras"))
    pairs = {m.a.name: m.b.name for m in al.matches}
    expected = {a[0]: b[0] for a, b in zip(specs_a, specs_b)}
    assert pairs == expected, (pairs, expected, [(u.side, u.tap.name, u.reason) for u in al.unmatched])


def test_alignment_work_grows_linearly_with_depth(monkeypatch):
    """A 1000-layer MLP pair with other names did not align in 170 s: every same-shape pair was
    scored, for value matching and for the order DP.  The pairs scored one by one now grow
    with depth (not its square); the figures are in benchmarks/align_depth.py."""
    from benchmarks.align_depth import pair

    import parity.align as align_module

    counts = {"similarity": 0, "score": 0}
    real_similarity, real_score = align_module.similarity, align_module._Pairing.score

    def counted_similarity(*args, **kwargs):
        counts["similarity"] += 1
        return real_similarity(*args, **kwargs)

    def counted_score(self, a, b):
        counts["score"] += 1
        return real_score(self, a, b)

    monkeypatch.setattr(align_module, "similarity", counted_similarity)
    monkeypatch.setattr(align_module._Pairing, "score", counted_score)
    work = {}
    for case in ("faithful", "noise"):
        for depth in (150, 300):
            counts.update(similarity=0, score=0)
            al = align(*pair(depth, 4, case))
            assert len(al.matches) == 2 * depth + (case == "faithful")  # every layer paired (noise: not the output twice)
            work[case, depth] = counts["similarity"] + counts["score"]
    for case in ("faithful", "noise"):
        assert work[case, 300] <= 2.2 * work[case, 150], work  # all pairs: 4×
    # a score (with the similarity it takes) per cell of a band of about 2·48 taps, not of all 600²
    assert work["noise", 300] < 2 * 600 * 110 < 2 * 600 * 600 / 5, work


def test_tensors_whose_squares_overflow_still_pair_by_value():
    """Values of 1e154 and up: the sample norms overflowed, every similarity was 0 and nothing
    paired by value."""
    v = np.random.default_rng(1).standard_normal((2, 6, 4, 4)) * 1e160
    w = np.random.default_rng(2).standard_normal((2, 6, 4, 4)) * 1e-160
    ta = make_trace([("conv", "Conv2d", v, "NCHW"), ("bn", "BatchNorm2d", w, "NCHW"), ("output", "output", w, "NCHW")])
    tb = make_trace([("c", "Conv2D", nchw_to_nhwc(v), "NHWC"), ("b", "BatchNormalization", nchw_to_nhwc(w), "NHWC"),
                     ("output", "output", nchw_to_nhwc(w), "NHWC")], framework="keras")
    al = align(ta, tb)
    assert [(m.a.name, m.b.name, m.how) for m in al.matches[:2]] == [("conv", "c", "value"), ("bn", "b", "value")]
