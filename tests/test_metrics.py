"""Metrics: exact numbers on small arrays, accuracy at tiny errors, and properties for any input."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from decimal import Decimal, localcontext

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from parity.metrics import compute_metrics, relative_error, verdict
from parity.records import tolerance_ratio

from .properties import prop


def test_known_scaling_and_positions():
    a = np.array([[1.0, -2.0, 0.0], [3.0, 0.5, 4.0]], dtype="float32")
    b = a * 1.01
    b[1, 2] = 4.5  # the largest difference
    m = compute_metrics(a, b, rtol=1e-3, atol=1e-5)
    d = (b.astype(np.float64) - a)
    assert m.rel_err == pytest.approx(np.linalg.norm(d) / np.linalg.norm(a.astype(np.float64)), rel=1e-6)
    assert m.max_abs == pytest.approx(0.5, rel=1e-6)
    assert m.max_abs_index == (1, 2)
    assert m.mean_abs == pytest.approx(np.abs(d).mean())
    # like torch.testing: |b−a| > atol + rtol·|a| for every nonzero element (0 stays equal)
    assert m.mismatched == 5
    assert m.numel == 6
    assert m.argmax_agreement == 1.0
    assert 0.99 < m.cosine < 1.0


def test_elementwise_relative_error_would_explode_where_norm_relative_does_not():
    a = np.array([1e-9, 1.0, 2.0])
    b = np.array([2e-9, 1.0, 2.0])
    m = compute_metrics(a, b, 1e-3, 1e-5)
    assert np.mean(np.abs((b - a) / a)) > 0.3  # the seed's check: 33%
    assert m.rel_err < 1e-9


def test_argmax_agreement_counts_rows():
    a = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    b = np.array([[0.1, 0.9], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    assert compute_metrics(a, b, 1e-3, 1e-5).argmax_agreement == 0.75
    assert compute_metrics(a[:, :1], b[:, :1], 1e-3, 1e-5).argmax_agreement is None
    assert compute_metrics(a.reshape(-1), b.reshape(-1), 1e-3, 1e-5).argmax_agreement is None


def test_nan_and_inf_patterns():
    a = np.array([1.0, np.nan, np.inf, 2.0, 3.0])
    b = np.array([1.0, np.nan, np.inf, np.nan, -np.inf])
    m = compute_metrics(a, b, 1e-3, 1e-5)
    assert (m.nan_a, m.nan_b, m.inf_a, m.inf_b) == (1, 2, 1, 2)
    assert m.nonfinite_mismatch == 2  # NaN↔NaN and +inf↔+inf agree; 2.0→NaN and 3.0→−inf do not
    assert m.rel_err == 0.0  # over the elements finite on both sides
    ok, reasons = verdict(m, 1e-3, 1e-5)
    assert not ok and "2 elements are NaN/Inf on one side only" in reasons[0]


def test_zero_reference():
    z = np.zeros(10)
    m = compute_metrics(z, z, 1e-3, 1e-5)
    assert (m.rel_err, m.cosine, m.max_abs) == (0.0, 1.0, 0.0)
    m = compute_metrics(z, np.full(10, 1e-7), 1e-3, 1e-5)
    assert m.rel_err == math.inf and m.cosine == 0.0
    assert verdict(m, 1e-3, 1e-5)[0]  # 1e-7 RMS is under atol 1e-5: a dead ReLU stays comparable
    assert not verdict(compute_metrics(z, np.full(10, 1e-3), 1e-3, 1e-5), 1e-3, 1e-5)[0]


def test_zero_size():
    m = compute_metrics(np.zeros((0, 3)), np.zeros((0, 3)), 1e-3, 1e-5)
    assert (m.numel, m.rel_err, m.max_abs, m.max_abs_index) == (0, 0.0, 0.0, None)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"\(2,\) and \(3,\)"):
        compute_metrics(np.zeros(2), np.zeros(3), 1e-3, 1e-5)


def test_verdict_text():
    a = np.ones(100)
    ok, reasons = verdict(compute_metrics(a, a * 1.05, 1e-3, 1e-5), 1e-3, 1e-5)
    assert not ok
    assert reasons[0].startswith("relative error 5.0e-02 exceeds rtol 1e-03 (50× the allowed error")
    logits_a = np.array([[0.0, 1.0], [1.0, 0.0]])
    logits_b = np.array([[0.0, 1.0], [0.0, 1.0]])
    m = compute_metrics(logits_a, logits_b, 10.0, 10.0)
    ok, reasons = verdict(m, 10.0, 10.0, min_argmax_agreement=1.0)
    assert not ok and reasons == ("argmax agrees on 50.0% of rows (at least 100.0% required)",)


@pytest.mark.parametrize("target", [1e-7, 1e-6, 1e-4])
def test_tiny_relative_errors_stay_accurate_at_size(target):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(1_000_000).astype(np.float32)
    noise = rng.standard_normal(a.size)
    b = (a + (target * np.linalg.norm(a) / np.linalg.norm(noise)) * noise).astype(np.float32)
    # the reference, exactly in long double
    d = b.astype(np.longdouble) - a.astype(np.longdouble)
    ref = float(np.sqrt(np.sum(d * d)) / np.sqrt(np.sum(a.astype(np.longdouble) ** 2)))
    m = compute_metrics(a, b, 1e-3, 1e-5)
    assert m.rel_err == pytest.approx(ref, rel=1e-2)
    assert 1 - m.cosine == pytest.approx(ref**2 / 2, rel=0.05)


float_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64]),
    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6),
    elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32),
)


@given(float_arrays)
@settings(max_examples=60, deadline=None)
def test_identical_arrays_have_zero_error(x):
    m = compute_metrics(x, x.copy(), 1e-3, 1e-5)
    assert m.rel_err == 0.0 and m.max_abs == 0.0 and m.mismatched == 0
    assert m.cosine == 1.0
    assert verdict(m, 1e-3, 1e-5)[0]


@given(float_arrays, float_arrays, st.floats(1e-3, 1e3))
@settings(max_examples=60, deadline=None)
def test_relative_error_is_invariant_to_scaling_both(x, y, scale):
    if x.shape != y.shape:
        y = np.resize(y, x.shape)
    x, y = x.astype(np.float64), y.astype(np.float64)
    m1 = compute_metrics(x, y, 1e-3, 1e-5)
    m2 = compute_metrics(x * scale, y * scale, 1e-3, 1e-5)
    if math.isinf(m1.rel_err):
        assert math.isinf(m2.rel_err)
    else:
        assert m2.rel_err == pytest.approx(m1.rel_err, rel=1e-9, abs=1e-300)


any_floats = hnp.arrays(
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
    elements=st.floats(allow_nan=True, allow_infinity=True, width=16),
)


@given(any_floats, any_floats)
@settings(max_examples=120, deadline=None)
def test_never_raises_or_warns_for_any_float_input(x, y):
    if x.shape != y.shape:
        y = np.resize(y, x.shape) if y.size else np.zeros(x.shape, y.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = compute_metrics(x, y, 1e-3, 1e-5)
        ok, reasons = verdict(m, 1e-3, 1e-5)
    assert m.numel == x.size
    assert ok == (not reasons)
    assert 0 <= m.mismatched <= max(m.numel, 0)


@given(hnp.arrays(np.int64, hnp.array_shapes(max_dims=2), elements=st.integers(-5, 5)))
@settings(max_examples=30, deadline=None)
def test_integer_arrays(x):
    m = compute_metrics(x, x, 0.0, 0.0)
    assert m.rel_err == 0.0 and m.mismatched == 0


def test_large_strided_float64_inputs_are_left_untouched_and_measured_exactly():
    rng = np.random.default_rng(5)
    a = -np.abs(rng.standard_normal((3, 300, 400)))  # float64, contiguous, larger than one block
    b = np.ascontiguousarray(np.transpose(a * (1 + 1e-7), (0, 2, 1))).transpose(0, 2, 1)  # a strided view
    before = a.copy()
    m = compute_metrics(a, b, 1e-3, 1e-5)
    np.testing.assert_array_equal(a, before)  # the caller's arrays are not written to
    d = (b - a).reshape(-1)
    assert m.err_norm == pytest.approx(np.sqrt(d @ d), rel=1e-12)
    assert m.rel_err == pytest.approx(1e-7, rel=1e-6)
    assert m.max_abs_index == np.unravel_index(np.argmax(np.abs(b - a)), a.shape)


def _reference(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> dict:
    """The figures straight from the definitions, on whole float64 copies."""
    a64, b64 = a.astype(np.float64), np.ascontiguousarray(b).astype(np.float64)
    fin = np.isfinite(a64) & np.isfinite(b64)
    d = np.where(fin, b64 - a64, 0.0)
    over = (np.abs(d) > atol + rtol * np.abs(np.where(fin, a64, 0.0))) | ~fin
    return {
        "rel_err": np.linalg.norm(d) / np.linalg.norm(np.where(fin, a64, 0.0)),
        "max_abs": np.abs(d).max(),
        "max_abs_index": tuple(int(i) for i in np.unravel_index(np.argmax(np.abs(d)), a.shape)),
        "mean_abs": np.abs(d).mean(),
        "mismatched": int(over.sum()),
    }


@pytest.mark.parametrize("shape", [(2, 64, 40, 40), (1, 8, 300, 300), (2, 3, 70000)])
def test_channels_last_b_read_through_a_transposed_view_matches_the_definitions(shape):
    """Model B's NHWC tensor compared through a transposed view (as compare() hands it over),
    across many blocks: every figure equals the whole-tensor float64 computation, and the
    largest difference is located in A's layout."""
    rng = np.random.default_rng(len(shape))
    a = rng.standard_normal(shape).astype(np.float32)
    perm = (0, *range(2, a.ndim), 1)  # A's layout → B's (NCHW → NHWC)
    back = tuple(np.argsort(perm))
    b_own = np.ascontiguousarray(a.transpose(perm) * np.float32(1 + 3e-4))
    b_own += rng.standard_normal(b_own.shape).astype(np.float32) * np.float32(1e-5)
    spot = tuple(max(s - 2, 0) for s in shape)  # a planted worst element near the end, in A's layout
    b_own[tuple(spot[i] for i in perm)] += 0.75
    b_view = b_own.transpose(back)
    assert not b_view.flags.c_contiguous
    m = compute_metrics(a, b_view, 1e-3, 1e-5)
    ref = _reference(a, b_view, 1e-3, 1e-5)
    assert m.max_abs_index == spot == ref["max_abs_index"]
    assert m.max_abs == pytest.approx(ref["max_abs"], rel=1e-6)
    assert m.rel_err == pytest.approx(ref["rel_err"], rel=1e-5)
    assert m.mean_abs == pytest.approx(ref["mean_abs"], rel=1e-5)
    assert m.mismatched == ref["mismatched"]
    assert m.numel == a.size


def test_nonfinite_values_deep_inside_a_large_permuted_tensor_are_counted():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 32, 64, 64)).astype(np.float32)  # 262144 elements: several blocks
    b_own = np.ascontiguousarray(a.transpose(0, 2, 3, 1)).copy()
    b_own[1, 60, 3, 5] = np.nan  # A index (1, 5, 60, 3)
    b_own[0, 1, 2, 3] = np.inf
    a[0, 7, 7, 7] = -np.inf
    b_own[0, 7, 7, 7] = -np.inf  # agrees: −inf on both sides
    b_own[1, 2, 2, 2] += 1.0  # the largest finite difference, A index (1, 2, 2, 2)
    m = compute_metrics(a, b_own.transpose(0, 3, 1, 2), 1e-3, 1e-5)
    assert (m.nan_a, m.nan_b, m.inf_a, m.inf_b) == (0, 1, 1, 2)
    assert m.nonfinite_mismatch == 2
    assert m.mismatched == 3  # the two one-sided non-finite elements and the +1.0
    assert m.max_abs_index == (1, 2, 2, 2) and m.max_abs == pytest.approx(1.0)
    assert m.rel_err == pytest.approx(1.0 / np.linalg.norm(np.where(np.isfinite(a), a, 0).astype(np.float64)), rel=1e-5)


def test_float32_squares_that_would_underflow_or_overflow_are_redone_in_float64():
    rng = np.random.default_rng(4)
    for scale in (1e-25, 1e25):  # squares leave float32's range on both ends
        a = (rng.standard_normal(300_000) * scale).astype(np.float32)
        b = (a * np.float32(1 + 1e-3)).astype(np.float32)
        ref = _reference(a, b, 1e-3, 0.0)
        m = compute_metrics(a, b, 1e-3, 0.0)
        assert math.isfinite(m.rel_err) and m.rel_err == pytest.approx(ref["rel_err"], rel=1e-5)
        assert m.norm_a == pytest.approx(np.linalg.norm(a.astype(np.float64)), rel=1e-6)


def test_relative_error_is_the_norm_ratio_and_agrees_with_compute_metrics():
    assert relative_error(np.array([3.0, 4.0]), np.array([3.0, 4.5])) == pytest.approx(0.1, rel=1e-12)
    rng = np.random.default_rng(5)
    a = rng.standard_normal((3, 7, 5)).astype(np.float32)
    b = (a * (1 + 1e-6 * rng.standard_normal(a.shape))).astype(np.float32)
    ref = np.linalg.norm(b.astype(np.float64) - a) / np.linalg.norm(a.astype(np.float64))
    assert 1e-7 < relative_error(a, b) == pytest.approx(ref, rel=1e-6)
    assert relative_error(a, b) == pytest.approx(compute_metrics(a, b, 1e-3, 1e-5).rel_err, rel=1e-6)


def test_relative_error_of_zeros_and_of_different_shapes():
    zeros = np.zeros((2, 3), np.float32)
    assert relative_error(zeros, zeros) == 0.0
    assert relative_error(zeros, zeros + 1e-3) == math.inf  # a is zero, b is not: never "close"
    assert relative_error(zeros, np.zeros((3, 2), np.float32)) == math.inf  # cannot be the same tensor
    big = np.full(10, 1e25, np.float32)  # squares beyond float32's range are summed in float64
    assert relative_error(big, big * np.float32(1.001)) == pytest.approx(1e-3, rel=1e-4)


# --- soundness: never NaN, never a pass that hides a wild element, right at any magnitude -------------

_WILD = [np.inf, -np.inf, np.nan, 1.34e154, -1.34e154, 1e308, -1e308, 1.7976931348623157e308, 5e-324, 1e-200, 0.0, 1.0]
_ELEMENTS = st.one_of(st.floats(width=64), st.sampled_from(_WILD))
_FINITE = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=64),
                    st.sampled_from([v for v in _WILD if np.isfinite(v)]))


def _pair(elements, dtypes=(np.float64, np.float32)):
    """Two arrays of one shape and dtype; ``b`` often a perturbed copy of ``a``."""
    shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5)

    def build(spec):
        shape, dtype = spec
        arr = hnp.arrays(np.float64, shape, elements=elements)
        return st.tuples(arr, arr, st.integers(0, 2), st.just(dtype))

    def mix(t):
        a, b, how, dtype = t
        if how == 1:  # b is a with a few elements replaced
            b = np.where(np.arange(a.size).reshape(a.shape) % 3 == 0, b, a)
        elif how == 2:
            b = a.copy()
        with np.errstate(over="ignore"):  # float32: what overflows is inf, deliberately
            return a.astype(dtype), b.astype(dtype)

    return st.tuples(shapes, st.sampled_from(dtypes)).flatmap(build).map(mix)


def _nonfinite_patterns_differ(a, b) -> bool:
    a, b = a.astype(np.float64), b.astype(np.float64)
    fa, fb = np.isfinite(a), np.isfinite(b)
    same = (fa & fb) | (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))
    return not bool(same.all())


@prop(_pair(_ELEMENTS), fast=60, deep=4000)
def test_no_figure_is_ever_nan_and_a_one_sided_or_misplaced_nonfinite_element_fails(pair):
    a, b = pair
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = compute_metrics(a, b, 1e-3, 1e-5)
        ok, reasons = verdict(m, 1e-3, 1e-5)
        ratio = tolerance_ratio(m, 1e-3, 1e-5)
    figures = {k: getattr(m, k) for k in ("rel_err", "err_norm", "max_abs", "mean_abs", "cosine", "norm_a",
                                          "norm_b", "rms_a")}
    if m.argmax_agreement is not None:
        figures["argmax_agreement"] = m.argmax_agreement
    figures["tolerance_ratio"] = ratio
    assert not [k for k, v in figures.items() if math.isnan(v)], (figures, a, b)
    assert -1.0 <= m.cosine <= 1.0 and m.rel_err >= 0.0 and 0 <= m.mismatched <= m.numel
    if _nonfinite_patterns_differ(a, b):
        assert not ok and m.nonfinite_mismatch > 0
        assert math.isinf(relative_error(a, b))
    if np.array_equal(a, b, equal_nan=True):
        assert ok and m.rel_err == 0.0 and m.max_abs == 0.0 and m.mismatched == 0
    assert ok == (not reasons)


def _exact(a, b, rtol, atol):
    """rel_err and tolerance ratio from the definitions, in 50-digit decimals (no overflow)."""
    with localcontext() as ctx:
        ctx.prec = 50
        da = [Decimal(float(x)) for x in a.astype(np.float64).ravel()]
        db = [Decimal(float(x)) for x in b.astype(np.float64).ravel()]
        err = sum(((y - x) ** 2 for x, y in zip(da, db)), Decimal(0)).sqrt()
        norm_a = sum((x * x for x in da), Decimal(0)).sqrt()
        rel = Decimal("Infinity") if norm_a == 0 and err else (Decimal(0) if not err else err / norm_a)
        allowed = Decimal(atol) * Decimal(len(da)).sqrt() + Decimal(rtol) * norm_a
        ratio = err / allowed if allowed else (Decimal(0) if not err else Decimal("Infinity"))
        return float(rel), ratio


@prop(_pair(_FINITE, dtypes=(np.float64,)), fast=60, deep=4000)
def test_finite_pairs_of_any_magnitude_measure_their_exact_error_and_pass_exactly_when_within_tolerance(pair):
    a, b = pair
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = compute_metrics(a, b, 1e-3, 1e-5)
    rel, ratio = _exact(a, b, 1e-3, 1e-5)
    if math.isinf(rel) or rel > 1.797e308:  # past float64's range, or at its edge (rounds either way)
        assert math.isinf(m.rel_err) or m.rel_err > 1.797e308
    else:
        assert m.rel_err == pytest.approx(rel, rel=1e-9, abs=1e-300)
        assert relative_error(a, b) == pytest.approx(rel, rel=1e-9, abs=1e-300)
    assert -1.0 <= m.cosine <= 1.0
    if abs(ratio - 1) > Decimal("1e-9"):
        assert verdict(m, 1e-3, 1e-5)[0] == (ratio <= 1), (float(ratio), m)


def test_squares_past_float64s_range_are_measured_not_nan_and_the_layer_fails():
    """The issue's case: 1.34e154² overflows float64; the error norm was inf, the norm inf,
    rel_err inf/inf = NaN and the verdict ``ok=True``."""
    a = np.array([1.34e154, 1.34e154, 1.0])
    b = np.array([1.34e154, 1.34e154 * 1.5, 1.0])
    m = compute_metrics(a, b, 1e-3, 1e-5)
    norm_a = 1.34e154 * math.sqrt(2)  # √(2·1.34e154² + 1) in float64
    assert m.norm_a == pytest.approx(norm_a, rel=1e-12)
    assert m.err_norm == pytest.approx(0.67e154, rel=1e-12)
    assert m.rel_err == pytest.approx(0.5 / math.sqrt(2), rel=1e-12)
    assert m.cosine == pytest.approx(2.5 / math.sqrt(2 * (1 + 2.25)), rel=1e-12)
    ok, reasons = verdict(m, 1e-3, 1e-5)
    assert not ok and reasons[0].startswith("relative error 3.5e-01 exceeds rtol 1e-03 (354× the allowed error")


def test_a_difference_past_float64s_range_keeps_rel_err_and_the_verdict():
    a, b = np.array([1e308, 1.0]), np.array([-1e308, 1.0])  # b − a is −2e308: no float64 holds it
    m = compute_metrics(a, b, 1e-3, 1e-5)
    assert m.rel_err == pytest.approx(2.0, rel=1e-12) and m.cosine == pytest.approx(-1.0)
    assert m.max_abs == math.inf and m.max_abs_index == (0,)  # larger than any float64, said as inf
    assert tolerance_ratio(m, 1e-3, 1e-5) == pytest.approx(2000.0, rel=1e-9)
    assert not verdict(m, 1e-3, 1e-5)[0]
    # tiny numbers whose squares underflow are measured too
    m = compute_metrics(np.array([1e-200, 2e-200]), np.array([1e-200, 3e-200]), 0.0, 0.0)
    assert m.rel_err == pytest.approx(1 / math.sqrt(5), rel=1e-12)


def test_the_same_infinity_at_the_same_place_agrees_and_anything_else_nonfinite_fails():
    a = np.array([-np.inf, 1.0, 2.0])  # a masked attention score: −inf on both sides is the same tensor
    m = compute_metrics(a, a.copy(), 1e-3, 1e-5)
    assert verdict(m, 1e-3, 1e-5)[0] and (m.inf_a, m.inf_b, m.nonfinite_mismatch, m.rel_err) == (1, 1, 0, 0.0)
    for b in ([np.inf, 1.0, 2.0], [-1e308, 1.0, 2.0], [np.nan, 1.0, 2.0], [1.0, -np.inf, 2.0]):
        m = compute_metrics(a, np.array(b), 1e-3, 1e-5)
        ok, reasons = verdict(m, 1e-3, 1e-5)
        assert not ok and m.nonfinite_mismatch >= 1 and "NaN/Inf on one side only" in reasons[-1], b
    assert relative_error(a, np.array([np.inf, 1.0, 2.0])) == math.inf


def test_a_nan_tolerance_ratio_never_passes():
    """A Metrics holding NaN (a hand-edited report, an old one) fails rather than passes."""
    m = compute_metrics(np.ones(3), np.ones(3), 1e-3, 1e-5)
    nan = replace(m, rel_err=math.nan, err_norm=math.nan)
    ok, reasons = verdict(nan, 1e-3, 1e-5)
    assert not ok and reasons == ("the error could not be measured (NaN): the layer cannot pass",)
    assert tolerance_ratio(replace(m, rel_err=math.inf, err_norm=math.inf, norm_a=math.inf), 1e-3, 1e-5) == math.inf


def test_a_flagged_layer_holding_values_near_float64s_limit_still_gets_its_pictures():
    from parity.detail import layer_detail

    a = np.array([[[[1e308, -1e308], [1.0, np.inf]]]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        detail = layer_detail(a, -a, "NCHW")  # hi − lo of the histogram overflowed: ValueError
    assert detail.histogram.edges[0] == -1e308 and detail.histogram.edges[-1] == 1e308
    assert sum(detail.histogram.counts_a) == 3 and detail.histogram.outside_a == 1  # the inf
    assert detail.error_map is not None and detail.error_map.values == ((0.0, 0.0), (2.0, 0.0))
