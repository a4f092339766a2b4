"""How far two tensors in the same layout are apart: one fused, blocked pass.

The headline number is the norm-relative error ``‖b−a‖₂/‖a‖₂``: unlike the
element-wise ``mean(|b−a|/|a|)`` of hand-written checks it does not explode
where ``a`` is near zero (every ReLU output).

Every figure comes from one pass over both tensors, a block at a time, in the
tensors' own precision (float32 stays float32: no whole-tensor float64 copy).
The difference is formed explicitly — a float32 subtraction is correctly
rounded, so ``b−a`` carries a relative error of at most 2⁻²⁴ — and its squares
are summed, never ``‖a‖²+‖b‖²−2a·b``, whose cancellation would wipe out
relative errors below ~1e-4.  The squares of a block (at most :data:`_BLOCK`
non-negative terms, so no cancellation either) are summed by BLAS and the
block sums accumulated in float64: relative errors down to 1e-7 and below come
out accurate to well under 1%.  A block holding NaN/Inf, or values whose
squares would overflow or underflow the work precision, is redone in float64
with every sum of squares *scaled*: a block is divided by a power of two near
its largest magnitude before squaring (exact), and the sums are kept as
``scale²·ssq`` pairs, so ``1e154`` (whose square overflows float64) or
``1e-200`` (whose square underflows) are measured like any other number and
no figure is ever NaN.  A difference past float64's range (``1e308`` against
``−1e308``) makes ``max_abs``/``err_norm`` inf, while ``rel_err`` and the
verdict, computed from the scaled sums, stay finite and right.

Non-finite elements, deliberately:

* NaN or ±inf on one side only, or a different infinity, is a *mismatch*:
  counted in ``nonfinite_mismatch`` and ``mismatched``, and the layer fails.
* The same infinity at the same place on both sides (a ``-inf`` attention
  mask, a ``log(0)``), and NaN at the same place on both sides, *agree*: both
  models computed the same thing there.  These elements are counted
  (``nan_a``/``inf_a``/…, shown in the report) but left out of the norms,
  which measure the elements finite on both sides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .records import Metrics, tolerance_ratio

__all__ = ["compute_metrics", "relative_error", "verdict"]


#: elements per block: big enough that the per-block Python overhead is small beside the
#: arithmetic, small enough that a block of both sides and their difference stays in cache
_BLOCK = 1 << 17
#: a block whose sum of squares is below this (yet not zero) may have underflowed, per work dtype
_TINY = {np.dtype(np.float32): 1e-30, np.dtype(np.float64): 1e-280}


def _real(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return np.abs(x) if np.iscomplexobj(x) else x


def _work_dtype(a: np.ndarray, b: np.ndarray) -> np.dtype:
    """float32 when both sides fit in it exactly (float16/bfloat16-widened/float32), else float64."""
    small = (np.float16, np.float32)
    if a.dtype.type in small and b.dtype.type in small:
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _block_slices(shape: tuple[int, ...], strides_b: tuple[int, ...]):
    """Index tuples (ints and slices) of blocks of about :data:`_BLOCK` elements covering ``shape``.

    The blocks follow model B's memory order (``strides_b``: B's view in A's axes): the
    axes B keeps outermost are fixed or sliced, the innermost are taken whole, so a
    block of B is one contiguous piece of its memory even when B is transposed into
    A's layout (NHWC → NCHW), and its transpose into A's order happens in cache.
    A's block is a few long contiguous runs."""
    n = math.prod(shape)
    if len(shape) == 0 or n <= _BLOCK:
        yield ()
        return
    order = sorted(range(len(shape)), key=lambda ax: -abs(strides_b[ax]))  # B's memory order, outermost first
    inner = n
    for k, ax in enumerate(order):
        inner //= shape[ax]
        if inner <= _BLOCK:
            break
    step = max(1, _BLOCK // max(1, inner))
    fixed = order[:k]
    for idx in np.ndindex(*(shape[ax] for ax in fixed)):
        for lo in range(0, shape[ax], step):
            index: list[Any] = [slice(None)] * len(shape)
            for f, i in zip(fixed, idx):
                index[f] = i
            index[ax] = slice(lo, lo + step)
            yield tuple(index)


def _global_index(index: tuple, shape: tuple[int, ...], k: int) -> tuple[int, ...]:
    """Position in the whole tensor of element ``k`` (C order) of block ``index``."""
    if not index:
        return tuple(int(i) for i in np.unravel_index(k, shape)) if shape else ()
    block_shape = [len(range(*sl.indices(n))) for sl, n in zip(index, shape) if isinstance(sl, slice)]
    local = iter(np.unravel_index(k, block_shape))
    return tuple(int(sl) if not isinstance(sl, slice) else int(sl.indices(n)[0] + next(local)) for sl, n in zip(index, shape))


def _ldexp(x: float, exp: int) -> float:
    """``x·2**exp``, inf (not OverflowError) past float64's range."""
    try:
        return math.ldexp(x, exp)
    except OverflowError:
        return math.inf


class _SumSq:
    """A sum of squares kept as ``(2**exp)² · ssq`` (LAPACK's ``dnrm2`` idea, with an integer
    exponent so that the scale itself cannot overflow): adding terms of any magnitude neither
    overflows nor underflows, and a ratio of two norms is taken without forming either."""

    __slots__ = ("exp", "ssq")

    def __init__(self) -> None:
        self.exp, self.ssq = 0, 0.0

    def add(self, ssq: float, exp: int = 0) -> None:
        if ssq == 0.0:
            return
        if self.ssq == 0.0:
            self.exp, self.ssq = exp, ssq
        elif exp > self.exp:
            self.ssq = math.ldexp(self.ssq, 2 * (self.exp - exp)) + ssq
            self.exp = exp
        else:
            self.ssq += math.ldexp(ssq, 2 * (exp - self.exp))

    def norm(self) -> float:
        """The norm (inf only when it is past float64's range)."""
        return _ldexp(math.sqrt(self.ssq), self.exp)

    def norm_in(self, exp: int) -> float:
        """The norm in units of ``2**exp``."""
        return _ldexp(math.sqrt(self.ssq), self.exp - exp)

    def rms(self, n: int) -> float:
        return _ldexp(math.sqrt(self.ssq / n), self.exp)

    def over(self, other: "_SumSq") -> float:
        """``self.norm() / other.norm()`` for a non-zero ``other``, without overflow."""
        # each root apart: the quotient of the two sums may overflow where that of the roots does not
        return _ldexp(math.sqrt(self.ssq) / math.sqrt(other.ssq), self.exp - other.exp)


def _exponent_of(x: float) -> int:
    """``e`` with ``2**e`` in (x/2, x] for a positive x: dividing by it is exact and brings x
    into [1, 2)."""
    return math.frexp(x)[1] - 1


def _scaled_ssq(x: np.ndarray) -> tuple[float, int]:
    """``(ssq, exp)`` with ``Σx² = (2**exp)²·ssq``, for a finite float64 block."""
    top = float(np.max(np.abs(x))) if x.size else 0.0
    if top == 0.0:
        return 0.0, 0
    exp = _exponent_of(top)
    xs = np.ldexp(x, -exp)
    return float(np.dot(xs, xs)), exp


@dataclass
class _Sums:
    sq_d: _SumSq = field(default_factory=_SumSq)
    sq_a: _SumSq = field(default_factory=_SumSq)
    sq_b: _SumSq = field(default_factory=_SumSq)
    #: number of elements of the whole tensor (the mean is summed block by block, never overflowing)
    n: int = 1
    mean_abs: float = 0.0
    max_abs: float = -1.0
    #: (block index, position inside the block) of the largest |b−a|
    where_max: tuple = ((), 0)
    mismatched: int = 0
    nan_a: int = 0
    nan_b: int = 0
    inf_a: int = 0
    inf_b: int = 0
    nonfinite_mismatch: int = 0

    def take_max(self, d_abs: np.ndarray, block: tuple) -> float:
        """The block's largest ``|b−a|`` (kept, with its position, when it is the largest yet)."""
        k = int(np.argmax(d_abs))
        top = float(d_abs[k])
        if top > self.max_abs:
            self.max_abs, self.where_max = top, (block, k)
        return top


def _fast_block(acc: _Sums, block: tuple, ab: np.ndarray, bb: np.ndarray, d: np.ndarray, rtol: float, atol: float) -> bool:
    """One block in the work precision; False (nothing accumulated) when it must be redone in float64."""
    np.subtract(bb, ab, out=d)
    sq_d, sq_a, sq_b = float(np.dot(d, d)), float(np.dot(ab, ab)), float(np.dot(bb, bb))
    if not math.isfinite(sq_d + sq_a + sq_b):
        return False  # NaN/Inf inside, or squares (or the difference) past the work dtype's range
    tiny = _TINY[ab.dtype]
    for s, x in ((sq_a, ab), (sq_b, bb), (sq_d, d)):
        if s < tiny and x.any():
            return False  # squares may have underflowed
    acc.sq_d.add(sq_d)
    acc.sq_a.add(sq_a)
    acc.sq_b.add(sq_b)
    np.abs(d, out=d)
    top = acc.take_max(d, block)
    acc.mean_abs += float(d.sum()) / acc.n  # pairwise summation of non-negative terms: accurate in float32
    if top > atol:  # else no element can exceed atol + rtol·|a|
        over = d > atol
        n_over = int(np.count_nonzero(over))
        if n_over * 8 < d.size:  # few candidates: test just those
            idx = np.flatnonzero(over)
            acc.mismatched += int(np.count_nonzero(d[idx] > atol + rtol * np.abs(ab[idx])))
        elif n_over:
            bound = np.abs(ab)
            bound *= rtol
            bound += atol
            acc.mismatched += int(np.count_nonzero(np.greater(d, bound, out=over)))
    return True


def _float64_block(acc: _Sums, block: tuple, a64: np.ndarray, b64: np.ndarray, rtol: float, atol: float) -> None:
    """One block in float64, scaled, with NaN/Inf counted and left out of the sums."""
    fin_a, fin_b = np.isfinite(a64), np.isfinite(b64)
    if not (fin_a.all() and fin_b.all()):
        both = fin_a & fin_b
        isnan_a, isnan_b = np.isnan(a64), np.isnan(b64)
        acc.nan_a += int(isnan_a.sum())
        acc.nan_b += int(isnan_b.sum())
        acc.inf_a += int((~fin_a & ~isnan_a).sum())
        acc.inf_b += int((~fin_b & ~isnan_b).sum())
        agree = both | (isnan_a & isnan_b) | (~fin_a & ~isnan_a & (a64 == b64))
        acc.nonfinite_mismatch += int(a64.size - np.count_nonzero(agree))
        a64, b64 = np.where(both, a64, 0.0), np.where(both, b64, 0.0)
    top = max(float(np.max(np.abs(a64))), float(np.max(np.abs(b64))))
    if top == 0.0:
        acc.take_max(np.zeros(a64.size), block)
        return
    unit = _exponent_of(top)  # one scale 2**unit for both sides: their difference cannot overflow
    a_s, b_s = np.ldexp(a64, -unit), np.ldexp(b64, -unit)
    d_s = b_s - a_s
    for sums, x, exp0 in ((acc.sq_a, a64, 0), (acc.sq_b, b64, 0), (acc.sq_d, d_s, unit)):
        ssq, exp = _scaled_ssq(x)  # each side on its own scale: a tiny side does not underflow
        sums.add(ssq, exp + exp0)
    np.abs(d_s, out=d_s)
    acc.mismatched += int(np.count_nonzero(d_s > _ldexp(atol, -unit) + rtol * np.abs(a_s)))
    acc.mean_abs += _ldexp(float(d_s.sum()) / acc.n, unit)  # inf only past float64's range
    acc.take_max(np.ldexp(d_s, unit), block)


def _argmax_agreement(a: np.ndarray, b: np.ndarray, nonfinite: bool) -> float:
    """Share of rows of 2-D tensors whose largest entry sits at the same column (rows with
    NaN/Inf never agree)."""
    if not nonfinite:
        return float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
    rows_ok = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    same = np.argmax(np.where(np.isnan(a), -np.inf, a), axis=1) == np.argmax(np.where(np.isnan(b), -np.inf, b), axis=1)
    return float(np.mean(same & rows_ok))


def compute_metrics(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> Metrics:
    """Metrics of ``b`` against the reference ``a`` (same shape, ``b`` already in ``a``'s layout).

    ``b`` may be a strided view (model B's tensor transposed into A's layout): each
    block of it is gathered once, never the whole tensor."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"compute_metrics needs equal shapes, got {np.shape(a)} and {np.shape(b)}")
    shape = tuple(np.shape(a))
    a, b = _real(a), _real(b)
    n = int(a.size)
    if n == 0:
        return Metrics(
            numel=0, rel_err=0.0, err_norm=0.0, max_abs=0.0, max_abs_index=None, mean_abs=0.0,
            cosine=1.0, mismatched=0, norm_a=0.0, norm_b=0.0, rms_a=0.0,
        )
    acc = _accumulate(a, b, rtol, atol)
    acc.mismatched += acc.nonfinite_mismatch
    err_norm, norm_a, norm_b = acc.sq_d.norm(), acc.sq_a.norm(), acc.sq_b.norm()
    rel_err = _scaled_ratio(acc.sq_d, acc.sq_a)
    cosine = _cosine(acc)
    argmax = None
    if len(shape) == 2 and shape[1] > 1:
        nonfinite = bool(acc.nan_a or acc.nan_b or acc.inf_a or acc.inf_b)
        argmax = _argmax_agreement(a, b, nonfinite)
    block, k = acc.where_max
    index = _global_index(block, shape, k)
    return Metrics(
        numel=n,
        rel_err=float(rel_err),
        err_norm=float(err_norm),
        max_abs=max(acc.max_abs, 0.0),
        max_abs_index=index,
        mean_abs=acc.mean_abs,
        cosine=cosine,
        mismatched=acc.mismatched,
        norm_a=float(norm_a),
        norm_b=float(norm_b),
        rms_a=acc.sq_a.rms(n),
        nan_a=acc.nan_a,
        nan_b=acc.nan_b,
        inf_a=acc.inf_a,
        inf_b=acc.inf_b,
        nonfinite_mismatch=acc.nonfinite_mismatch,
        argmax_agreement=argmax,
    )


def _accumulate(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> _Sums:
    """The sums of one pass over both tensors (equal shapes, ``b`` possibly a strided view)."""
    work = _work_dtype(a, b)
    acc = _Sums(n=max(int(a.size), 1))
    buf = np.empty(min(int(a.size), _BLOCK), dtype=work)
    with np.errstate(all="ignore"):
        for index in _block_slices(tuple(np.shape(a)), b.strides):
            ab = np.asarray(a[index], dtype=work, order="C").reshape(-1)
            bb = np.asarray(b[index], dtype=work, order="C").reshape(-1)
            if not _fast_block(acc, index, ab, bb, buf[: ab.size], rtol, atol):
                _float64_block(acc, index, ab.astype(np.float64), bb.astype(np.float64), rtol, atol)
    return acc


def _scaled_ratio(err: _SumSq, ref: _SumSq) -> float:
    """``‖b−a‖/‖a‖``: 0 where the tensors are equal (all-zero ones too), inf where only ``a`` is zero."""
    if err.ssq == 0.0:
        return 0.0
    return math.inf if ref.ssq == 0.0 else err.over(ref)


def _cosine(acc: _Sums) -> float:
    """cos(a, b) from the explicit difference (accurate where 1 − cos is tiny), in units of the
    largest of the three norms so that no square overflows; 1 for two zero tensors, 0 for one.
    Where one tensor is orders of magnitude smaller than the other the difference is nearly the
    larger one and the angle is imprecise (still within [−1, 1]); rel_err says that case."""
    sa, sb, sd = acc.sq_a, acc.sq_b, acc.sq_d
    if sa.ssq == 0.0 and sb.ssq == 0.0:
        return 1.0
    if sa.ssq == 0.0 or sb.ssq == 0.0:
        return 0.0
    unit = max(x.exp for x in (sa, sb, sd) if x.ssq)
    na, nb, nd = sa.norm_in(unit), sb.norm_in(unit), sd.norm_in(unit)
    if na * nb == 0.0:
        return 0.0  # one side is 1e-300 of the other: no angle can be read from these norms
    cosine = (na * na + nb * nb - nd * nd) / (2.0 * na * nb)
    return float(min(1.0, max(-1.0, cosine)))


def relative_error(a: Any, b: Any) -> float:
    """The norm-relative error ``‖b−a‖₂/‖a‖₂`` of two arrays of one shape — 0 where they are
    equal (all zeros too), inf where only ``a`` is all zeros, and inf where the shapes differ
    (they cannot hold the same tensor).

    Measured as :func:`compute_metrics` measures it (scaled sums: never NaN, no overflow).
    NaN/Inf on one side only, or different infinities, make it inf (the arrays differ
    wildly); NaN/Inf identical on both sides are left out, like in :func:`compute_metrics`.

    >>> relative_error(np.array([3.0, 4.0]), np.array([3.0, 4.5]))
    0.1
    """
    a, b = _real(a), _real(b)
    if a.shape != b.shape:
        return math.inf
    if a.size == 0:
        return 0.0
    acc = _accumulate(a, b, 0.0, 0.0)
    if acc.nonfinite_mismatch:
        return math.inf
    return _scaled_ratio(acc.sq_d, acc.sq_a)


def verdict(
    m: Metrics, rtol: float, atol: float, *, min_argmax_agreement: float | None = None
) -> tuple[bool, tuple[str, ...]]:
    """Pass or fail, and why: ``rms(b−a) ≤ atol + rtol·rms(a)``, no NaN/Inf pattern
    differences, and (when asked) enough rows whose argmax agrees."""
    reasons: list[str] = []
    ratio = tolerance_ratio(m, rtol, atol)
    if math.isnan(ratio) or math.isnan(m.rel_err):  # e.g. a hand-edited report: never a pass
        reasons.append("the error could not be measured (NaN): the layer cannot pass")
    elif ratio > 1.0:
        reasons.append(
            f"relative error {m.rel_err:.1e} exceeds rtol {rtol:.0e} "
            f"({ratio:,.0f}× the allowed error, atol {atol:.0e} included)"
        )
    if m.nonfinite_mismatch:
        reasons.append(
            f"{m.nonfinite_mismatch} elements are NaN/Inf on one side only "
            f"(NaN A/B {m.nan_a}/{m.nan_b}, Inf A/B {m.inf_a}/{m.inf_b})"
        )
    if (
        min_argmax_agreement is not None
        and m.argmax_agreement is not None
        and m.argmax_agreement < min_argmax_agreement
    ):
        reasons.append(
            f"argmax agrees on {100 * m.argmax_agreement:.1f}% of rows (at least "
            f"{100 * min_argmax_agreement:.1f}% required)"
        )
    return not reasons, tuple(reasons)
