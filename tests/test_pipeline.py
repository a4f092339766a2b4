"""The one pipeline: its options record, and the float32 noise floor (no framework needed)."""

from __future__ import annotations

import numpy as np
import pytest

import parity
from parity.errors import OptionError, ToleranceError
from parity.pipeline import NOISE_FLOOR_FACTOR, DiffOptions

from .helpers import Chain, ChainBackend

X = np.random.default_rng(0).standard_normal((64, 32)).astype("float32")
BIG = 1e5  # float32 spacing at 1e5 is 2**-7: adding and removing it rounds x to 1/128


def _pair(scale: float = 1.0, twin: bool = True):
    """A's layer adds and removes a large offset, an ill-conditioned float32 computation whose
    result is x to about 2e-3; B's conversion does the same with a smaller offset (another
    rounding of the same quantity); the float64 twin computes x exactly."""
    f32, half = np.float32(BIG), np.float32(BIG * 0.6)  # float32 spacing 2**-7 and 2**-8 there
    a_layers = [("cancel", lambda x: (x + f32) - f32), ("out", lambda x: x * np.float32(2))]
    b_layers = [("cancel", lambda x: np.float32(scale) * ((x + half) - half)), ("out", lambda x: x * np.float32(2))]
    f64 = [("cancel", lambda x: (np.asarray(x, np.float64) + BIG) - BIG), ("out", lambda x: x * 2.0)]
    return (ChainBackend(Chain("A", a_layers, f64 if twin else None, features=32)),
            ChainBackend(Chain("B", b_layers, features=32)))


def _floor() -> float:
    x64 = X.astype(np.float64)
    a32 = ((X + np.float32(BIG)) - np.float32(BIG)).astype(np.float64)
    return float(np.linalg.norm(a32 - x64) / np.linalg.norm(x64))


def test_a_layer_float32_cannot_compute_better_is_judged_at_its_noise_floor():
    a, b = _pair()
    floor = _floor()
    assert 1e-3 < floor < 1e-2  # the layer itself: float32 gives it no better than this
    plain = parity.diff(a, b, X, rtol=1e-3, atol=1e-5)  # a tolerance the user gave is theirs
    d = plain.layer("cancel")
    assert not d.ok and d.rel_err > 1e-3
    report = parity.diff(a, b, X)
    assert report.ok
    d = report.layer("cancel")
    assert d.rtol == pytest.approx(NOISE_FLOOR_FACTOR * floor, rel=1e-6)
    assert d.rel_err < d.rtol
    (note,) = [n for n in report.notes if "noise floor" in n]
    assert note.startswith("3 layer(s) judged at their float32 noise floor: model A in float32 differs from its "
                           f"float64 twin by up to {floor:.1e} there")
    assert note.endswith("not a conversion bug: cancel, out, output")  # the layer, the one after it, the output


def test_the_noise_floor_does_not_hide_a_real_bug_nor_apply_without_a_twin():
    a, b = _pair(scale=1.05)  # a 5% error: far above 4 × the floor
    report = parity.diff(a, b, X)
    assert not report.ok and report.first_divergence.a_name == "cancel"
    a, b = _pair(twin=False)  # no float64 twin: the per-dtype default stands
    report = parity.diff(a, b, X)
    assert not report.ok and not any("noise floor" in n for n in report.notes)


def test_options_are_one_record_refused_before_any_run():
    options = DiffOptions.build(rtol=1e-4, atol=1e-6, granularity="ops", seed=3, max_memory="1MB")
    assert (options.tolerances.rtol, options.tolerances.atol, options.granularity, options.seed) == (1e-4, 1e-6, "ops", 3)
    assert options.max_memory == 10**6 and options.user_tolerance
    with pytest.raises(OptionError, match=r"parity.search\(\) got unexpected keyword argument\(s\) rtoll; it accepts mapping, rtol"):
        DiffOptions.build(where="parity.search", rtoll=1e-3)
    with pytest.raises(OptionError, match="granularity must be one of modules, ops, got 'layers'"):
        DiffOptions.build(granularity="layers")
    with pytest.raises(ToleranceError, match="only rtol=0.001 was given; give atol too"):
        DiffOptions.build(rtol=1e-3)


# --- a scale of the enclosing module folded into B's op (timm ConvNeXt's gamma, litert-torch) --

GAMMA = np.random.default_rng(1).uniform(0.2, 2.0, 32).astype("float32")
W1 = np.random.default_rng(2).standard_normal((32, 32)).astype("float32") / 6
W2 = np.random.default_rng(3).standard_normal((32, 32)).astype("float32") / 6


def _layer_scale_pair(b_fc2_scale: float = 1.0):
    """A's block runs ``fc1``, ``fc2``, then multiplies by its own ``gamma`` in its forward (no
    layer of its own) before ``proj``; B folded ``gamma`` into its ``fc2`` and names the block as
    fused into that tensor, as litert-torch does."""
    a_layers = [("block.fc1", lambda x: x @ W1), ("block.fc2", lambda x: x @ W2),
                ("proj", lambda x: np.tanh(x * GAMMA))]
    b_layers = [("block.fc1", lambda x: x @ W1), ("block.fc2", lambda x: (x @ (W2 * GAMMA)) * np.float32(b_fc2_scale)),
                ("proj", lambda x: np.tanh(x))]
    a = Chain("A", a_layers, features=32, params={"block": {"gamma": GAMMA}, "block.fc2": {"weight": W2}})
    b = Chain("B", b_layers, features=32, attrs={"block.fc2": {"fused_modules": ("block",)}})
    return ChainBackend(a), ChainBackend(b)


def test_a_scale_of_the_enclosing_module_that_b_folded_into_the_layer_is_fused_not_a_divergence():
    a, b = _layer_scale_pair()
    report = parity.diff(a, b, X)
    assert report.ok, report.summary()
    assert [d.a_name for d in report.layers if d.role != "output"] == ["block.fc1", "proj"]
    (fc2,) = [u for u in report.unmatched_a if u.name == "block.fc2"]
    assert fc2.reason == "fused"
    (note,) = [n for n in report.notes if "folded into B's op" in n]
    assert note.startswith("1 layer(s) of A are fused, not compared on their own: B's tensor is the layer's "
                           "output times a parameter of the module around it")
    assert "block.fc2 × block.gamma" in note


def test_a_kernel_scaled_by_mistake_under_a_folded_scale_is_still_flagged_at_its_layer():
    a, b = _layer_scale_pair(b_fc2_scale=1.05)  # B = A · gamma · 1.05: not the parameter
    report = parity.diff(a, b, X)
    assert not report.ok
    assert report.first_divergence.a_name == "block.fc2"
    assert not any("folded into B's op" in n for n in report.notes)


def test_where_model_a_cannot_show_the_parameter_the_scaled_layer_is_not_compared_and_says_why():
    a, b = _layer_scale_pair()
    a.model.params = None  # a backend that reads no parameters: no proof of the fold
    report = parity.diff(a, b, X)
    assert report.ok and "block.fc2" not in [d.a_name for d in report.layers]
    (fc2,) = [u for u in report.unmatched_a if u.name == "block.fc2"]
    assert fc2.reason.startswith("unsure: paired by name with block.fc2, which names block as fused into it, "
                                 "and B is A scaled per channel while the next layer and the outputs agree")
    assert not any("folded into B's op" in n for n in report.notes)
    a, b = _layer_scale_pair(b_fc2_scale=1.05)
    a.model.params = None
    report = parity.diff(a, b, X)  # the scaled kernel does not heal: still flagged, at its layer
    assert not report.ok and report.first_divergence.a_name == "block.fc2"


# --- an error born under tolerance, crossing it layers later --------------------------------

W = np.random.default_rng(4).standard_normal((32, 32)).astype("float32") / 6
OFFSET = np.float32(20.0)


def _born_pair(kernel_scale: float):
    """A's ``dense`` kernel is scaled by ``kernel_scale`` in B: under tolerance there (rel err
    ``kernel_scale − 1``); the next layer removes a large offset, so the same absolute error
    becomes a large relative one: it crosses tolerance at ``center``, which computes nothing wrong."""
    def layers(scale):
        return [("shift", lambda x: x + OFFSET), ("dense", lambda x: x @ (W * np.float32(scale))),
                ("center", lambda x: x - OFFSET * W.sum(axis=0)), ("out", lambda x: np.tanh(x))]
    return ChainBackend(Chain("A", layers(1.0), features=32)), ChainBackend(Chain("B", layers(kernel_scale), features=32))


def test_an_error_born_under_tolerance_is_flagged_where_it_is_born_when_its_cause_is_known_there():
    a, b = _born_pair(1.0006)
    report = parity.diff(a, b, X)
    dense, center = report.layer("dense"), report.layer("center")
    assert dense.rel_err == pytest.approx(6e-4, rel=0.05) and dense.rel_err < dense.allowed_rel  # under tolerance
    assert center.rel_err > center.allowed_rel  # where it crosses it
    assert not report.ok and report.first_divergence.a_name == "dense"
    assert [g.code for g in dense.diagnoses] == ["weight_scale"]
    (why,) = [r for r in dense.reasons if "born here" in r]
    assert why.startswith("under tolerance here (rel err 0.0006, allowed 0.001")
    assert "crosses it at center is born here: every layer before it is exact" in why


def test_where_no_cause_is_known_at_the_birth_the_first_layer_over_tolerance_stays_the_first_divergence():
    a, b = _born_pair(1.0006)
    # an error of the same size with no affine signature: no detector knows it
    b.model.layers[1] = ("dense", lambda x: (x @ W) * (1 + np.float32(8e-4) * np.sin(x @ W)))
    report = parity.diff(a, b, X)
    assert not report.ok and report.first_divergence.a_name == "center"
    dense = report.layer("dense")
    assert dense.ok and 1e-4 < dense.rel_err < dense.allowed_rel and not dense.diagnoses


# --- a fused projection of A against separate ones in B (GPT-2's c_attn vs keras-hub's q, k, v) --

WQ, WK, WV, WP = (np.random.default_rng(10 + i).standard_normal((32, 32)).astype("float32") / 6 for i in range(4))


def _qkv_pair(k_scale: float = 1.0, order: str = "qkv"):
    """A computes one ``qkv`` projection (96 features) then ``proj`` of it; B computes ``q``,
    ``k`` and ``v`` as three layers (in ``order``) and ``proj`` of the three."""
    wqkv = np.concatenate([WQ, WK, WV], axis=1)
    wproj = np.concatenate([WP, WP, WP], axis=0) / 3
    a_layers = [("embed", lambda x: x * np.float32(1.5)), ("qkv", lambda x: x @ wqkv), ("proj", lambda x: x @ wproj)]
    seen: dict[str, np.ndarray] = {}
    weights = {"q": WQ, "k": WK * np.float32(k_scale), "v": WV}

    def part(name):
        def fn(x):
            x = seen.setdefault("x", x)  # each of q, k, v reads the embedding
            seen[name] = x @ weights[name]
            return seen[name]
        return fn

    def proj(_):
        out = np.concatenate([seen["q"], seen["k"], seen["v"]], axis=1) @ wproj
        seen.clear()
        return out

    b_layers = [("embed", lambda x: x * np.float32(1.5)), *[(n, part(n)) for n in order], ("proj", proj)]
    return ChainBackend(Chain("A", a_layers, features=32)), ChainBackend(Chain("B", b_layers, features=32))


def test_a_fused_projection_is_compared_with_the_separate_projections_of_b_joined():
    a, b = _qkv_pair()
    report = parity.diff(a, b, X)
    assert report.ok, report.summary()
    qkv = report.layer("qkv")
    assert qkv.b_name == "q + k + v" and qkv.how == "split" and qkv.rel_err < 1e-6
    assert not report.unmatched_a and not [u for u in report.unmatched_b if u.name in ("q", "k", "v")]


def test_a_bug_in_one_of_the_separate_projections_is_flagged_at_the_fused_one():
    a, b = _qkv_pair(k_scale=1.05)
    report = parity.diff(a, b, X)
    assert not report.ok and report.first_divergence.a_name == "qkv"


def test_separate_projections_in_another_order_are_not_joined():
    a, b = _qkv_pair(order="kqv")
    report = parity.diff(a, b, X)
    assert "qkv" not in [d.a_name for d in report.layers]  # never compared with k + q + v
    assert {u.name for u in report.unmatched_b} >= {"k", "q", "v"}
