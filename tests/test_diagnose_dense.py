"""The detectors that read a dense layer's parameters — ``flatten_order`` (dense rows in another
flatten order than B's input) and ``activation_approximation`` on the Dense after an activation
B computes inside — on hand-made traces and parameter records, without any framework.  The
records reach them through :func:`parity.diagnose.diagnose` given a pair of backends, or
directly on a :class:`~parity.diagnose.Context`."""

from __future__ import annotations

import numpy as np

from parity.align import align
from parity.compare import compare
from parity.diagnose import DETECTORS, Context, diagnose
from parity.diagnose.activation import FUNCTIONS
from parity.diagnose.dense import dense_params
from parity.records import LayerParams
from parity.tolerance import Tolerances

from .helpers import make_trace, nchw_to_nhwc
from .param_records import Records, keras_layer, p, rand, torch_layer

X = np.random.default_rng(1).uniform(0, 1, (4, 4, 3, 5)).astype(np.float32)  # N, C, H, W
W = rand(10, 60)  # torch's (out, in): the inputs in (C, H, W) order
BIAS = rand(10)
W_HWC = W.reshape(10, 4, 3, 5).transpose(0, 2, 3, 1).reshape(10, -1)  # the rows for an (H, W, C) flatten


def _flatten_pair(b_kernel):
    """torch: conv → flatten(C,H,W) → fc; Keras: conv → Flatten of NHWC (H,W,C) → fc with
    ``b_kernel`` (out, in) as its weights; and the records of both fc layers."""
    y_a = X.reshape(4, -1) @ W.T + BIAS
    flat_b = nchw_to_nhwc(X).reshape(4, -1)
    y_b = flat_b @ b_kernel.T + BIAS
    ta = make_trace([("conv", "Conv2d", X, "NCHW"), ("fc", "Linear", y_a, "NC"), ("out", "output", y_a, "NC")])
    tb = make_trace([("conv", "Conv2D", nchw_to_nhwc(X), "NHWC"),
                     ("flatten", "Flatten", flat_b, "N(HWC)", {"flat_from": (3, 5, 4)}),
                     ("fc", "Dense", y_b, "NC"), ("out", "output", y_b, "NC")], framework="keras")
    records = (Records("torch", {"fc": torch_layer("dense", "Linear", kernel=W, bias=BIAS)}),
               Records("keras", {"fc": keras_layer("dense", "Dense", kernel=b_kernel, bias=BIAS)}))
    return ta, tb, records


def _context(ta, tb, name):
    alignment = align(ta, tb)
    layers = {d.a_name: d for d in compare(alignment, Tolerances.build())}
    ordered = sorted(alignment.matches, key=lambda m: m.a.index)
    i = next(i for i, m in enumerate(ordered) if m.a.name == name)
    m = ordered[i]
    return Context(layer=layers[name], match=m, a=np.asarray(m.a.value), b=np.asarray(m.transform.apply(m.b.value)),
                   previous=ordered[i - 1] if i else None, alignment=alignment, layers=tuple(layers.values()))


def _run(ctx, code):
    return next((found for d in DETECTORS if d.code == code and d.applies(ctx) and (found := d.detect(ctx)) is not None), None)


def test_dense_params_of_a_record_is_the_kernel_in_by_out():
    kernel, bias = dense_params(torch_layer("dense", "Linear", kernel=W, bias=BIAS))
    assert kernel.shape == (60, 10) and kernel.dtype == np.float64
    np.testing.assert_array_equal(kernel, W.T.astype(np.float64))
    np.testing.assert_array_equal(bias, BIAS.astype(np.float64))
    assert dense_params((W.T, BIAS))[0].shape == (60, 10)
    assert dense_params(torch_layer("dense", "Linear", kernel=W, bias=rand(3)))[1] is None  # a bias that does not fit
    assert dense_params(torch_layer("conv", "Conv2d", kernel=rand(8, 4, 3, 3))) is None
    assert dense_params(None) is None


def test_rows_not_reordered_are_flatten_order_from_either_sides_records():
    ta, tb, (rec_a, rec_b) = _flatten_pair(W)  # B's kernel copied with the transpose only
    ctx = _context(ta, tb, "fc")
    assert _run(ctx, "flatten_order") is None  # without the layers' parameters the tensors cannot show it
    for side, record in (("a", rec_a.layers["fc"]), ("b", rec_b.layers["fc"])):
        ctx.params_a, ctx.params_b = (record, None) if side == "a" else (None, record)
        diag = _run(ctx, "flatten_order")
        assert diag is not None and diag.layer == "fc", side
        ev = diag.evidence
        assert ev["rel_err_after_reordering"] < 1e-5 and ev["rel_err_a_recomputed"] < 1e-5
        assert ev["rel_err_as_compared"] > 0.1
        assert (ev["order_a_0"], ev["order_a_1"], ev["order_a_2"]) == (1, 2, 3)  # C, H, W
        assert (ev["order_b_0"], ev["order_b_1"], ev["order_b_2"]) == (2, 3, 1)  # H, W, C
        assert ev["weights_from_b"] == (1.0 if side == "b" else 0.0)
        assert "HWC order while its weights expect CHW" in diag.message


def test_rows_reordered_for_b_are_not_flatten_order():
    ta, tb, (rec_a, rec_b) = _flatten_pair(W_HWC)
    ctx = _context(ta, tb, "fc")
    ctx.params_a, ctx.params_b = rec_a.layers["fc"], rec_b.layers["fc"]
    assert _run(ctx, "flatten_order") is None


def test_diagnose_reads_the_records_through_the_backends():
    ta, tb, records = _flatten_pair(W)
    alignment = align(ta, tb)
    layers = compare(alignment, Tolerances.build())
    _, without = diagnose(alignment, layers)
    assert "flatten_order" not in [d.code for d in without]
    _, found = diagnose(alignment, layers, records)
    assert [(d.code, d.layer) for d in found if d.code == "flatten_order"] == [("flatten_order", "fc")]
    # a side whose parameters cannot be read (a graph format) lends nothing; the other side still does
    graph = Records("tflite", {}, reads=False)
    _, found = diagnose(alignment, layers, (graph, records[1]))
    assert [d.code for d in found if d.code == "flatten_order"] == ["flatten_order"]
    _, found = diagnose(alignment, layers, (graph, graph))
    assert "flatten_order" not in [d.code for d in found]


def test_an_activation_b_computes_inside_its_dense_is_named_from_bs_records():
    """A: fc1 → GELU (exact) → fc2; B: fc1 → fc2, the tanh GELU computed inside (not a layer)."""
    rng = np.random.default_rng(6)
    h = (rng.standard_normal((8, 16)) * 3).astype(np.float32)
    w2, b2 = rand(12, 16), rand(12)
    gelu, gelu_tanh = FUNCTIONS["gelu"][1], FUNCTIONS["gelu_tanh"][1]
    act = gelu(h.astype(np.float64)).astype(np.float32)
    y_a = act @ w2.T + b2
    y_b = gelu_tanh(h.astype(np.float64)).astype(np.float32) @ w2.T + b2
    ta = make_trace([("fc1", "Linear", h, "NC"), ("act", "GELU", act, "NC"), ("fc2", "Linear", y_a, "NC"),
                     ("out", "output", y_a, "NC")])
    tb = make_trace([("fc1", "Dense", h, "NC"), ("fc2", "Dense", y_b, "NC"), ("out", "output", y_b, "NC")],
                    framework="keras")
    alignment = align(ta, tb)
    layers = compare(alignment, Tolerances.build(rtol=1e-6, atol=1e-8))
    b_side = Records("keras", {"fc2": LayerParams("keras", "dense", "Dense", {
        "kernel": p("kernel", w2, raw=(16, 12)), "bias": p("bias", b2)})})
    a_side = Records("torch", {})
    _, found = diagnose(alignment, layers, (a_side, b_side))
    (diag,) = [d for d in found if d.code == "activation_approximation"]
    assert diag.layer == "fc2"
    assert "Different activation functions at 'act' (GELU)" in diag.message
    assert "A computes GELU (exact, erf)" in diag.message and "GELU (tanh approximation) of the same input" in diag.message
    ev = diag.evidence
    assert ev["rel_err_b_vs_b_function_then_dense"] < 1e-5 < ev["rel_err_b_vs_a_function_then_dense"]
    _, without = diagnose(alignment, layers, (a_side, Records("keras", {})))  # no records of B's fc2: no evidence
    assert "activation_approximation" not in [d.code for d in without if d.layer == "fc2"]
