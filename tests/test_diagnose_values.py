"""Detectors that read the recorded values: padding placed differently, axes in another order,
dense weights in another flatten order, a clamp on one side, an approximated activation.

Each bug is built on purpose (small torch models and their hand-made Keras twins, or
hand-made traces) and must be named on the right layer with the number that shows it; a
correct pair must give none of these diagnoses, even when every layer is examined."""

from __future__ import annotations

import numpy as np
import pytest

import parity
from parity.align import align
from parity.compare import compare
from parity.diagnose import DETECTORS, Context
from parity.diagnose import activation, dense, spatial  # noqa: F401 - registers the detectors
from parity.tolerance import Tolerances
from parity.weights import layer_params

from .helpers import make_trace, nchw_to_nhwc

CODES = ("padding_asymmetry", "layout", "flatten_order", "activation_clamp", "activation_approximation")


def _np(t):
    return t.detach().numpy()


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


@pytest.fixture(scope="module")
def zoo(torch, keras):
    """The test models and their Keras twins (parity._zoo imports torch and Keras when used)."""
    import parity._zoo

    return parity._zoo


def _seeded(torch, cls, *args, **kwargs):
    torch.manual_seed(0)
    return cls(*args, **kwargs).eval()


def _keras_seq(keras, layers, input_shape):
    model = keras.Sequential([keras.Input(input_shape), *layers])
    return model


def _codes(report, layer):
    """The codes of this file's detectors on ``layer`` (other modules register detectors too)."""
    return [d.code for d in report.layer(layer).diagnoses if d.code in CODES]


def _diag(report, layer, code):
    found = [d for d in report.layer(layer).diagnoses if d.code == code]
    assert found, f"{code} not on {layer}: {report.layer(layer).diagnoses}"
    return found[0]


def _contexts(trace_a, trace_b, params=None):
    """A Context for every matched pair (examined or not), as diagnose() would build it;
    ``params``: by A's layer name, the ``params_a``/``params_b`` records to give its Context."""
    alignment = align(trace_a, trace_b)
    layers = compare(alignment, Tolerances.build())
    ordered = sorted(alignment.matches, key=lambda m: m.a.index)
    by_a = {d.a_name: d for d in layers}
    out = {}
    for i, m in enumerate(ordered):
        if m.a.value is None or m.b.value is None:
            continue
        out[m.a.name] = Context(
            layer=by_a[m.a.name], match=m, a=np.asarray(m.a.value), b=np.asarray(m.transform.apply(m.b.value)),
            previous=ordered[i - 1] if i else None, alignment=alignment, **(params or {}).get(m.a.name, {}),
        )
    return out


def _run(ctx, code):
    """What the detectors of ``code`` find (several may give one code: activation_approximation on an
    activation layer, and on the Dense after an activation B computes inside)."""
    dets = [d for d in DETECTORS if d.code == code]
    assert dets, code
    return next((found for d in dets if d.applies(ctx) and (found := d.detect(ctx)) is not None), None)


# --- padding_asymmetry ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def strided_conv_pair(torch, keras):
    torch.manual_seed(0)
    tm = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
    ).eval()
    km = _keras_seq(
        keras,
        [keras.layers.Conv2D(8, 3, padding="same"), keras.layers.ReLU(), keras.layers.Conv2D(8, 3, strides=2, padding="same")],
        (16, 16, 3),
    )
    for k, t in ((km.layers[0], tm[0]), (km.layers[2], tm[2])):
        k.set_weights([_np(t.weight).transpose(2, 3, 1, 0), _np(t.bias)])
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype("float32")  # even: 'same' pads (0, 1)
    return tm, km, x


def test_same_padding_on_a_strided_conv_is_padding_asymmetry(strided_conv_pair):
    tm, km, x = strided_conv_pair
    report = parity.diff(tm, km, x)
    assert report.first_divergence.a_name == "2"
    assert report.layer("0").ok and report.layer("1").ok
    diag = _diag(report, "2", "padding_asymmetry")
    ev = diag.evidence
    # A (torch padding=1) pads 1 row/col at the top/left, B ('same', stride 2, even input) pads 0
    assert (ev["pad_top_a"], ev["pad_left_a"], ev["pad_top_b"], ev["pad_left_b"]) == (1, 1, 0, 0)
    assert ev["rel_err_b_vs_a_op_with_b_padding"] < 1e-5 < 0.1 < ev["rel_err_as_compared"]
    assert ev["rel_err_a_refit"] < 1e-5
    assert {"first_row", "last_row", "first_col", "last_col", "interior", "edge_to_interior"} <= set(ev)
    assert ev["edge_to_interior"] < 2  # a shifted grid errs everywhere, not on the border
    assert "ZeroPadding2D" in diag.message and "bottom/right" in diag.message
    assert _codes(report, "2") == ["padding_asymmetry"]


def test_same_padding_on_side_a_is_padding_asymmetry_too(strided_conv_pair):
    tm, km, x = strided_conv_pair
    report = parity.diff(km, tm, nchw_to_nhwc(x))  # Keras as model A
    first = report.first_divergence
    assert first.b_name == "2"
    ev = _diag(report, first.a_name, "padding_asymmetry").evidence
    assert (ev["pad_top_a"], ev["pad_left_a"], ev["pad_top_b"], ev["pad_left_b"]) == (0, 0, 1, 1)


def test_the_explicit_pad_fix_passes(strided_conv_pair, keras):
    tm, _, x = strided_conv_pair
    fixed = _keras_seq(
        keras,
        [keras.layers.Conv2D(8, 3, padding="same"), keras.layers.ReLU(), keras.layers.ZeroPadding2D(((1, 1), (1, 1))),
         keras.layers.Conv2D(8, 3, strides=2, padding="valid")],
        (16, 16, 3),
    )
    for k, t in ((fixed.layers[0], tm[0]), (fixed.layers[3], tm[2])):
        k.set_weights([_np(t.weight).transpose(2, 3, 1, 0), _np(t.bias)])
    assert parity.diff(tm, fixed, x).ok


def test_same_padding_on_a_strided_max_pool_is_padding_asymmetry(torch, keras):
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.MaxPool2d(3, stride=2, padding=1)).eval()
    km = _keras_seq(keras, [keras.layers.Conv2D(4, 3, padding="same"), keras.layers.MaxPooling2D(3, strides=2, padding="same")],
                    (12, 12, 3))
    km.layers[0].set_weights([_np(tm[0].weight).transpose(2, 3, 1, 0), _np(tm[0].bias)])
    x = np.random.default_rng(1).standard_normal((2, 3, 12, 12)).astype("float32")
    report = parity.diff(tm, km, x)
    assert report.first_divergence.a_name == "1"
    ev = _diag(report, "1", "padding_asymmetry").evidence
    assert (ev["pad_top_a"], ev["pad_top_b"]) == (1, 0)
    assert ev["rel_err_b_vs_a_op_with_b_padding"] < 1e-6


def test_error_on_the_last_row_and_column_only_is_padding_asymmetry():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 8, 8)).astype("float32")
    a = rng.standard_normal((2, 4, 8, 8)).astype("float32")
    b = a.copy()
    b[:, :, -1, :] += 0.5  # a pad row/column at the bottom/right on B only
    b[:, :, :, -1] += 0.5
    ta = make_trace([("pre", "ReLU", x, "NCHW"), ("conv", "Conv2d", a, "NCHW"), ("out", "output", a, "NCHW")])
    tb = make_trace([("pre", "ReLU", nchw_to_nhwc(x), "NHWC"), ("conv", "Conv2D", nchw_to_nhwc(b), "NHWC"),
                     ("out", "output", nchw_to_nhwc(b), "NHWC")], framework="keras")
    report = parity.diff_traces(ta, tb)
    diag = _diag(report, "conv", "padding_asymmetry")
    ev = diag.evidence
    assert ev["last_row"] == pytest.approx(0.5 + 0.5 / 8) and ev["last_col"] == pytest.approx(0.5 + 0.5 / 8)
    assert ev["first_row"] == pytest.approx(0.5 / 8) and ev["interior"] == 0.0
    assert "edge_to_interior" not in ev  # no finite ratio over a clean interior: evidence stays strict JSON
    assert "last row, last col" in diag.message


# --- layout -----------------------------------------------------------------------------------


def test_height_and_width_swapped_by_a_transpose_is_layout(torch, keras):
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    # a transpose Keras cannot follow (a Permute layer it would): B's ReLU is still declared NHWC
    swap = keras.layers.Lambda(lambda t: keras.ops.transpose(t, (0, 2, 1, 3)))
    km = _keras_seq(keras, [keras.layers.Conv2D(4, 3, padding="same"), swap, keras.layers.ReLU()], (8, 8, 3))
    km.layers[0].set_weights([_np(tm[0].weight).transpose(2, 3, 1, 0), _np(tm[0].bias)])
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype("float32")
    report = parity.diff_traces(parity.capture(tm, x), parity.capture(km, nchw_to_nhwc(x)))
    assert report.layer("0").ok and not report.layer("1").ok
    diag = _diag(report, "1", "layout")
    ev = diag.evidence
    assert (ev["perm_0"], ev["perm_1"], ev["perm_2"], ev["perm_3"]) == (0, 1, 3, 2)
    assert ev["rel_err_best_permutation"] < 1e-6 and ev["rel_err_as_compared"] > 0.5
    assert "H and W swapped" in diag.message and "laid out as NWHC, not the NHWC it declares" in diag.message
    # parity.diff replays B's ReLU on A's input, finds it right and leaves it undiagnosed; the output is diagnosed
    live = parity.diff(tm, km, x)
    assert _diag(live, "output", "layout").evidence["perm_3"] == 2


def test_channels_first_declared_channels_last_when_c_equals_h_equals_w_is_layout():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 8, 8)).astype("float32")
    a = rng.standard_normal((2, 8, 8, 8)).astype("float32")
    ta = make_trace([("pre", "ReLU", x, "NCHW"), ("conv", "Conv2d", a, "NCHW"), ("out", "output", a[:, :, 0, 0], "NC")])
    # B's backend says NHWC but the tensor is still NCHW: the shape cannot tell
    tb = make_trace([("pre", "ReLU", nchw_to_nhwc(x), "NHWC"), ("conv", "Conv2D", a, "NHWC"),
                     ("out", "output", a[:, :, 0, 0], "NC")], framework="keras")
    report = parity.diff_traces(ta, tb)
    assert report.layer("conv").ambiguous
    diag = _diag(report, "conv", "layout")
    assert diag.evidence["ambiguous_shape"] == 1.0
    assert diag.evidence["rel_err_best_permutation"] == 0.0
    assert "laid out as NCHW, not the NHWC it declares" in diag.message


# --- flatten_order ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def convnet(torch, zoo):
    return zoo.randomize_bn(_seeded(torch, zoo.ConvNet), seed=1)


@pytest.fixture(scope="module")
def digits():
    return np.random.default_rng(0).uniform(0, 1, (4, 1, 28, 28)).astype("float32")


def test_dense_weights_not_reordered_after_flatten_is_flatten_order(convnet, digits, zoo):
    km = zoo.to_keras(convnet, bn_epsilon="match", flatten="naive")
    report = parity.diff(convnet, km, digits)
    assert report.first_divergence.a_name == "fc"
    ctxs = _contexts(parity.capture(convnet, digits), parity.capture(km, nchw_to_nhwc(digits)))
    ctx = ctxs["fc"]
    assert _run(ctx, "flatten_order") is None  # without the layers' weights the tensors cannot show it
    for key, model in (("params_a", convnet), ("params_b", km)):
        ctx.params_a = ctx.params_b = None
        setattr(ctx, key, layer_params(model, "fc"))
        diag = _run(ctx, "flatten_order")
        assert diag is not None and diag.layer == "fc", key
        ev = diag.evidence
        assert ev["rel_err_after_reordering"] < 1e-5 and ev["rel_err_a_recomputed"] < 1e-5
        assert ev["rel_err_as_compared"] > 0.1
        assert (ev["order_a_0"], ev["order_a_1"], ev["order_a_2"]) == (1, 2, 3)  # C, H, W
        assert (ev["order_b_0"], ev["order_b_1"], ev["order_b_2"]) == (2, 3, 1)  # H, W, C
        assert "HWC order while its weights expect CHW" in diag.message


def test_correctly_reordered_dense_is_not_flatten_order(convnet, digits, zoo):
    km = zoo.to_keras(convnet, bn_epsilon="match", flatten="reorder")
    ctxs = _contexts(parity.capture(convnet, digits), parity.capture(km, nchw_to_nhwc(digits)))
    ctx = ctxs["fc"]
    ctx.params_a = layer_params(convnet, "fc")
    assert _run(ctx, "flatten_order") is None


# --- activations ------------------------------------------------------------------------------


def _dense_act_pair(torch, keras, torch_act, keras_act, seed=0):
    torch.manual_seed(seed)
    tm = torch.nn.Sequential(torch.nn.Linear(16, 32), torch_act).eval()
    km = _keras_seq(keras, [keras.layers.Dense(32), keras_act], (16,))
    km.layers[0].set_weights([_np(tm[0].weight).T, _np(tm[0].bias)])
    return tm, km


def test_relu_against_relu6_is_activation_clamp(torch, keras):
    tm, km = _dense_act_pair(torch, keras, torch.nn.ReLU(), keras.layers.ReLU(max_value=6.0))
    x = (np.random.default_rng(5).standard_normal((8, 16)) * 10).astype("float32")  # pre-activations beyond 6
    report = parity.diff(tm, km, x)
    assert report.first_divergence.a_name == "1" and report.layer("0").ok
    diag = _diag(report, "1", "activation_clamp")
    ev = diag.evidence
    assert ev["bound"] == pytest.approx(6.0) and ev["b_clamps"] == 1.0
    assert ev["mismatch_frac_within_bound"] == 0.0 and ev["mismatch_frac_beyond_bound"] > 0.99
    assert ev["input_bound"] > 6.0
    assert "ReLU6" in diag.message
    assert _codes(report, "1") == ["activation_clamp"]


def test_mobilenet_relu6_converted_to_relu_is_activation_clamp_on_a(torch, zoo):
    model = zoo.randomize_bn(_seeded(torch, zoo.MobileNetBlock, 8, 16, 2), seed=2)
    x = (np.random.default_rng(1).standard_normal((2, 8, 16, 16)) * 20).astype("float32")
    report = parity.diff(model, zoo.to_keras(model, relu6="relu"), x)
    diag = _diag(report, "relu1", "activation_clamp")
    assert diag.evidence["bound"] == pytest.approx(6.0) and diag.evidence["b_clamps"] == 0.0
    assert diag.evidence["mismatch_frac_within_bound"] == 0.0


@pytest.fixture(scope="module")
def gelu_pair(torch, keras):
    return _dense_act_pair(
        torch, keras, torch.nn.GELU(), keras.layers.Activation(lambda t: keras.activations.gelu(t, approximate=True))
    )


def test_exact_gelu_against_tanh_gelu_is_activation_approximation(gelu_pair):
    tm, km = gelu_pair
    x = (np.random.default_rng(6).standard_normal((8, 16)) * 3).astype("float32")
    # the two GELUs differ by ~1e-4 relative: under float32's default tolerance, over a strict one
    assert parity.diff(tm, km, x).ok
    report = parity.diff(tm, km, x, rtol=1e-6, atol=1e-8)
    assert report.first_divergence.a_name == "1"
    diag = _diag(report, "1", "activation_approximation")
    ev = diag.evidence
    assert ev["rel_err_b_vs_gelu_tanh"] < 1e-5 and ev["rel_err_a_vs_a_function"] < 1e-5
    assert ev["rel_err_b_vs_gelu"] > 1e-5
    assert "A computes GELU (exact, erf)" in diag.message and "B computes GELU (tanh approximation)" in diag.message
    assert "approximate" in diag.message
    assert _codes(report, "1") == ["activation_approximation"]


def test_sigmoid_against_hard_sigmoid_is_activation_approximation(torch, keras):
    tm, km = _dense_act_pair(torch, keras, torch.nn.Sigmoid(), keras.layers.Activation("hard_sigmoid"))
    report = parity.diff(tm, km, np.random.default_rng(7).standard_normal((8, 16)).astype("float32"))
    diag = _diag(report, "1", "activation_approximation")
    assert diag.evidence["rel_err_b_vs_hard_sigmoid"] < 1e-5
    assert diag.evidence["rel_err_b_vs_sigmoid"] > 1e-2
    assert "B computes hard sigmoid" in diag.message


# --- correct pairs give none of these ---------------------------------------------------------


_TWIN_ACTIVATIONS = {
    "gelu": (lambda t: t.nn.GELU(), lambda k: k.layers.Activation(lambda v: k.activations.gelu(v, approximate=False))),
    "gelu_tanh": (lambda t: t.nn.GELU(approximate="tanh"),
                  lambda k: k.layers.Activation(lambda v: k.activations.gelu(v, approximate=True))),
    "sigmoid": (lambda t: t.nn.Sigmoid(), lambda k: k.layers.Activation("sigmoid")),
    "hard_sigmoid": (lambda t: t.nn.Hardsigmoid(), lambda k: k.layers.Activation("hard_sigmoid")),
    "swish": (lambda t: t.nn.SiLU(), lambda k: k.layers.Activation("swish")),
    "hard_swish": (lambda t: t.nn.Hardswish(), lambda k: k.layers.Activation("hard_swish")),
}


@pytest.mark.parametrize("act", sorted(_TWIN_ACTIVATIONS))
def test_the_same_activation_on_both_sides_is_no_approximation_even_when_examined(torch, keras, act):
    """Each function activation_approximation tells apart, on both sides: the pair passes, and the
    detector, run on every layer (not only flagged ones), finds nothing."""
    t_act, k_act = _TWIN_ACTIVATIONS[act]
    tm, km = _dense_act_pair(torch, keras, t_act(torch), k_act(keras))
    x = (np.random.default_rng(8).standard_normal((8, 16)) * 3).astype("float32")
    report = parity.diff(tm, km, x)
    assert report.ok and not report.diagnoses
    ctxs = _contexts(parity.capture(tm, x), parity.capture(km, x))
    assert "1" in ctxs
    for name, ctx in ctxs.items():
        assert _run(ctx, "activation_approximation") is None, name


@pytest.mark.parametrize("which", ["convnet", "mobilenet"])
def test_correct_pairs_give_no_value_diagnosis_even_when_every_layer_is_examined(which, convnet, digits, torch, zoo):
    if which == "convnet":
        model, x = convnet, digits
        km = zoo.to_keras(model, bn_epsilon="match")
    else:
        model = zoo.randomize_bn(_seeded(torch, zoo.MobileNetBlock, 8, 16, 2), seed=2)
        x = (np.random.default_rng(1).standard_normal((2, 8, 16, 16)) * 20).astype("float32")
        km = zoo.to_keras(model, bn_epsilon="match")
    report = parity.diff(model, km, x)
    assert report.ok and not [d for d in report.diagnoses if d.code in CODES]
    params = {"fc": {"params_a": layer_params(model, "fc"), "params_b": layer_params(km, "fc")}} if which == "convnet" else {}
    ctxs = _contexts(parity.capture(model, x), parity.capture(km, nchw_to_nhwc(x)), params)
    assert len(ctxs) >= 4
    for name, ctx in ctxs.items():
        for code in CODES:
            assert _run(ctx, code) is None, (name, code)


# --- padding_asymmetry wherever the layer sits: refitted from the layer's own recorded input --


def _torch_kernel(t):
    return _np(t.weight).transpose(2, 3, 1, 0)


def _padding_twin(keras, tm, where: str, fixed: bool):
    """The Keras twin of a :func:`padding_positions` model: 'same' on the stride-2 layer `down`
    (the bug), or, ``fixed``, the symmetric pad torch's padding=1 is, then 'valid'."""
    L = keras.layers
    inp = keras.Input((16, 16, 3))

    def down(y):
        pad = "valid" if fixed else "same"
        if fixed:
            y = L.ZeroPadding2D(((1, 1), (1, 1)), name="pad")(y)
        if where == "depthwise after an add":
            return L.DepthwiseConv2D(3, strides=2, padding=pad, name="down")(y)
        return L.Conv2D(8, 3, strides=2, padding=pad, name="down")(y)

    if where == "first layer":
        out = L.Conv2D(8, 3, padding="same", name="conv")(L.ReLU(name="act")(down(inp)))
        convs = ("down", "conv")
    else:
        y = L.ReLU(name="act")(L.Conv2D(8, 3, padding="same", name="stem")(inp))
        out = down(L.Add(name="add")([y, L.Conv2D(8, 3, padding="same", name="branch")(y)]))
        convs = ("stem", "branch", "down")
    km = keras.Model(inp, out)
    for name in convs:
        t = getattr(tm, name)
        w = _np(t.weight)
        if t.groups > 1:  # depthwise: torch (C, 1, kh, kw) → Keras (kh, kw, C, 1)
            w = w.transpose(2, 3, 0, 1)
        else:
            w = w.transpose(2, 3, 1, 0)
        km.get_layer(name).set_weights([w, _np(t.bias)])
    return km


POSITIONS = ("first layer", "after a residual add", "depthwise after an add")


@pytest.fixture(scope="module")
def padding_positions(torch, keras):
    """Three torch models whose stride-2 layer `down` (torch padding=1) sits where the pair
    before it is not its input — the first layer, after a residual add, a depthwise conv after
    an add — and their Keras twins, with the bug ('same', an even input: the bottom/right only)
    and fixed."""
    nn = torch.nn

    class First(nn.Module):
        def __init__(self):
            super().__init__()
            self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.act = nn.ReLU()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            return self.conv(self.act(self.down(x)))

    class AfterAdd(nn.Module):
        def __init__(self, depthwise: bool):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.act = nn.ReLU()
            self.branch = nn.Conv2d(8, 8, 3, padding=1)
            self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8 if depthwise else 1)

        def forward(self, x):
            y = self.act(self.stem(x))
            return self.down(y + self.branch(y))  # the add is no module: the pair before `down` is `branch`

    out = {}
    for where in POSITIONS:
        torch.manual_seed(0)
        tm = (First() if where == "first layer" else AfterAdd(where.startswith("depthwise"))).eval()
        out[where] = (tm, _padding_twin(keras, tm, where, fixed=False), _padding_twin(keras, tm, where, fixed=True))
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype("float32")
    return out, x


@pytest.mark.parametrize("where", POSITIONS)
def test_same_padding_is_named_wherever_the_strided_layer_sits(padding_positions, where):
    pairs, x = padding_positions
    tm, km, _ = pairs[where]
    report = parity.diff(tm, km, x)
    assert report.first_divergence.a_name == "down"
    diag = _diag(report, "down", "padding_asymmetry")
    ev = diag.evidence
    assert (ev["pad_top_a"], ev["pad_left_a"], ev["pad_top_b"], ev["pad_left_b"]) == (1, 1, 0, 0)
    assert ev["rel_err_b_vs_a_op_with_b_padding"] < 1e-5 < 0.1 < ev["rel_err_as_compared"]
    assert ev["rel_err_a_refit"] < 1e-5
    assert "its own recorded input" in diag.message
    assert [g.code for g in report.layer("down").diagnoses] == ["padding_asymmetry"]


@pytest.mark.parametrize("where", POSITIONS)
def test_the_symmetric_pad_twins_of_the_padding_positions_pass_undiagnosed(padding_positions, where):
    pairs, x = padding_positions
    tm, _, fixed = pairs[where]
    report = parity.diff(tm, fixed, x)
    assert report.ok, report.first_divergence
    assert not report.diagnoses


# --- a second bug, born later, is named too ------------------------------------------------


@pytest.fixture(scope="module")
def two_bugs(torch, keras):
    """A torch chain and a Keras twin with two independent bugs: conv 0's kernel scaled by 1.5,
    and activation 3 clipped at 6 (ReLU6 for ReLU) where its input reaches well above 6."""
    torch.manual_seed(0)
    tm = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 4, 3, padding=1),
    ).eval()
    L = keras.layers
    km = _keras_seq(keras, [L.Conv2D(8, 3, padding="same"), L.ReLU(), L.Conv2D(8, 3, padding="same"),
                            L.ReLU(max_value=6.0), L.Conv2D(4, 3, padding="same")], (12, 12, 3))
    for k, t, scale in ((km.layers[0], tm[0], 1.5), (km.layers[2], tm[2], 1.0), (km.layers[4], tm[4], 1.0)):
        k.set_weights([_np(t.weight).transpose(2, 3, 1, 0) * scale, _np(t.bias) * scale])
    x = 12.0 * np.random.default_rng(4).standard_normal((2, 3, 12, 12)).astype("float32")
    return tm, km, x


def test_a_second_independent_bug_is_also_born_here(two_bugs):
    import torch

    tm, km, x = two_bugs
    with torch.no_grad():
        pre = tm[:3](torch.from_numpy(x)).numpy()
    assert pre.max() > 6.5  # the clip bites
    report = parity.diff(tm, km, x)
    assert report.first_divergence.a_name == "0"
    born = report.born_here
    assert [d.a_name for d in born] == ["0", "3"]
    assert born[1].own_method == "replay" and born[1].own_err > 10 * born[1].allowed_rel
    assert [d.a_name for d in report.layers if not d.ok][:5] == ["0", "1", "2", "3", "4"]  # 1, 2, 4 inherit
    assert "activation_clamp" in [g.code for g in report.layer("3").diagnoses]
    from parity.report.console import render_text

    text = render_text(report, width=160)
    assert "also born here: 3 (ReLU) ↔ " in text and "activation_clamp" in text
    from parity.report.html import render_html

    assert 'id="also-born"' in render_html(report)


def test_a_padding_bug_after_another_bug_is_named_on_its_replayed_output(torch, keras):
    """Two independent bugs: conv 0's kernel scaled by 1.5, then the stride-2 conv 2 converted as
    'same' (bottom/right only) for torch padding=1 — its input is already wrong, and the second bug
    is named from B's layer fed A's recorded input."""
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                             torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.ReLU()).eval()
    L = keras.layers
    km = _keras_seq(keras, [L.Conv2D(8, 3, padding="same"), L.ReLU(), L.Conv2D(8, 3, strides=2, padding="same"),
                            L.ReLU()], (16, 16, 3))
    for k, t, scale in ((km.layers[0], tm[0], 1.5), (km.layers[2], tm[2], 1.0)):
        k.set_weights([_np(t.weight).transpose(2, 3, 1, 0) * scale, _np(t.bias) * scale])
    x = np.random.default_rng(5).standard_normal((2, 3, 16, 16)).astype("float32")
    report = parity.diff(tm, km, x)
    assert [d.a_name for d in report.born_here] == ["0", "2"]
    assert "weight_scale" in [g.code for g in report.layer("0").diagnoses]
    second = report.layer("2")
    assert second.own_method == "replay" and second.own_err > 0.1
    ev = _diag(report, "2", "padding_asymmetry").evidence
    assert (ev["pad_top_a"], ev["pad_left_a"], ev["pad_top_b"], ev["pad_left_b"]) == (1, 1, 0, 0)
    assert ev["rel_err_b_vs_a_op_with_b_padding"] < 1e-5


def test_inherited_errors_are_not_born_here(strided_conv_pair):
    tm, km, x = strided_conv_pair
    report = parity.diff(tm, km, x)  # one bug at layer 2: the output only inherits it
    assert [d.a_name for d in report.born_here] == ["2"]


# --- pool_semantics ----------------------------------------------------------------------


def _avg_pool_pair(torch, keras, *, stride: int, include_pad: bool, size: int = 12):
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1),
                             torch.nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=include_pad)).eval()
    km = _keras_seq(keras, [keras.layers.Conv2D(4, 3, padding="same"),
                            keras.layers.AveragePooling2D(3, strides=stride, padding="same")], (size, size, 3))
    km.layers[0].set_weights([_np(tm[0].weight).transpose(2, 3, 1, 0), _np(tm[0].bias)])
    x = np.random.default_rng(5).standard_normal((2, 3, size, size)).astype("float32") + 1.0
    return tm, km, x


def test_avg_pool_counting_the_padding_on_one_side_is_pool_semantics(torch, keras):
    tm, km, x = _avg_pool_pair(torch, keras, stride=1, include_pad=True)
    report = parity.diff(tm, km, x)
    assert report.first_divergence.a_name == "1"
    diag = _diag(report, "1", "pool_semantics")
    ev = diag.evidence
    assert ev["a_counts_padding"] == 1.0
    assert (ev["pad_top_a"], ev["pad_top_b"]) == (1, 1)  # the same windows: only the divisor differs
    assert ev["rel_err_b_vs_a_pool_with_b_divisor"] < 1e-5 < 1e-2 < ev["rel_err_as_compared"]
    assert "count_include_pad=False" in diag.message
    assert "padding_asymmetry" not in [g.code for g in report.layer("1").diagnoses]


def test_strided_same_avg_pool_names_the_divisor_and_the_padding(torch, keras):
    tm, km, x = _avg_pool_pair(torch, keras, stride=2, include_pad=True)
    report = parity.diff(tm, km, x)
    ev = _diag(report, "1", "pool_semantics").evidence
    assert (ev["pad_top_a"], ev["pad_left_a"], ev["pad_top_b"], ev["pad_left_b"]) == (1, 1, 0, 0)
    assert ev["rel_err_b_vs_a_pool_with_b_divisor"] < 1e-5


def test_avg_pool_excluding_the_padding_on_both_sides_passes(torch, keras):
    tm, km, x = _avg_pool_pair(torch, keras, stride=1, include_pad=False)
    report = parity.diff(tm, km, x)
    assert report.ok and not report.diagnoses
