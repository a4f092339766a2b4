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
squares would overflow or underflow float32, is redone in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .records import Metrics, tolerance_ratio

__all__ = ["compute_metrics", "relative_error", "verdict"]


#: elements per block: big enough that the per-block Python overhead is small beside the
#: arithmetic, small enough that a block of both sides and their difference stays in cache
_BLOCK = 1 << 17
#: a float32 block whose sum of squares is below this (yet not zero) may have underflowed
_TINY32 = 1e-30


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


@dataclass
class _Sums:
    sq_d: float = 0.0
    sq_a: float = 0.0
    sq_b: float = 0.0
    sum_abs: float = 0.0
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
        return False  # NaN/Inf inside, or squares past float32's range
    if ab.dtype == np.float32:
        for s, x in ((sq_a, ab), (sq_b, bb), (sq_d, d)):
            if s < _TINY32 and x.any():
                return False  # squares may have underflowed
    acc.sq_d += sq_d
    acc.sq_a += sq_a
    acc.sq_b += sq_b
    np.abs(d, out=d)
    top = acc.take_max(d, block)
    acc.sum_abs += float(d.sum())  # pairwise summation of non-negative terms: accurate in float32
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
    """One block in float64, with NaN/Inf counted and left out of the sums."""
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
    d = b64 - a64
    acc.sq_d += float(np.dot(d, d))
    acc.sq_a += float(np.dot(a64, a64))
    acc.sq_b += float(np.dot(b64, b64))
    np.abs(d, out=d)
    acc.take_max(d, block)
    acc.sum_abs += float(d.sum())
    acc.mismatched += int(np.count_nonzero(d > atol + rtol * np.abs(a64)))


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
    work = _work_dtype(a, b)
    acc = _Sums()
    buf = np.empty(min(n, _BLOCK), dtype=work)
    with np.errstate(all="ignore"):
        for index in _block_slices(shape, b.strides):
            ab = np.asarray(a[index], dtype=work, order="C").reshape(-1)
            bb = np.asarray(b[index], dtype=work, order="C").reshape(-1)
            if not _fast_block(acc, index, ab, bb, buf[: ab.size], rtol, atol):
                _float64_block(acc, index, ab.astype(np.float64), bb.astype(np.float64), rtol, atol)
    acc.mismatched += acc.nonfinite_mismatch
    err_norm, norm_a, norm_b = math.sqrt(acc.sq_d), math.sqrt(acc.sq_a), math.sqrt(acc.sq_b)
    rel_err = _ratio(err_norm, norm_a)
    if norm_a == 0.0 and norm_b == 0.0:
        cosine = 1.0
    elif norm_a == 0.0 or norm_b == 0.0:
        cosine = 0.0
    else:
        # from the explicit difference: accurate where 1 − cos is tiny
        cosine = (norm_a * norm_a + norm_b * norm_b - err_norm * err_norm) / (2.0 * norm_a * norm_b)
        cosine = float(min(1.0, max(-1.0, cosine)))
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
        mean_abs=acc.sum_abs / n,
        cosine=cosine,
        mismatched=acc.mismatched,
        norm_a=float(norm_a),
        norm_b=float(norm_b),
        rms_a=float(norm_a / math.sqrt(n)),
        nan_a=acc.nan_a,
        nan_b=acc.nan_b,
        inf_a=acc.inf_a,
        inf_b=acc.inf_b,
        nonfinite_mismatch=acc.nonfinite_mismatch,
        argmax_agreement=argmax,
    )


def _ratio(err_norm: float, norm_a: float) -> float:
    """``‖b−a‖/‖a‖``: 0 where the tensors are equal (all-zero ones too), inf where only ``a`` is zero."""
    if err_norm == 0.0:
        return 0.0
    return math.inf if norm_a == 0.0 else err_norm / norm_a


def relative_error(a: Any, b: Any) -> float:
    """The norm-relative error ``‖b−a‖₂/‖a‖₂`` of two arrays of one shape — 0 where they are
    equal (all zeros too), inf where only ``a`` is all zeros, and inf where the shapes differ
    (they cannot hold the same tensor).

    The difference is formed in the arrays' precision (float32 stays float32, exactly rounded)
    and its squares summed in float64, without a float64 copy.  A NaN or Inf makes the result
    NaN or inf; :func:`compute_metrics` counts non-finite values apart and measures the rest.

    >>> relative_error(np.array([3.0, 4.0]), np.array([3.0, 4.5]))
    0.1
    """
    a, b = _real(a), _real(b)
    if a.shape != b.shape:
        return math.inf
    work = _work_dtype(a, b)
    a = a.astype(work, copy=False).ravel()
    d = (b.astype(work, copy=False).ravel() - a)
    with np.errstate(over="ignore", invalid="ignore"):
        norm_a = math.sqrt(float(np.einsum("i,i->", a, a, dtype=np.float64)))
        err_norm = math.sqrt(float(np.einsum("i,i->", d, d, dtype=np.float64)))
    return _ratio(err_norm, norm_a)


def verdict(
    m: Metrics, rtol: float, atol: float, *, min_argmax_agreement: float | None = None
) -> tuple[bool, tuple[str, ...]]:
    """Pass or fail, and why: ``rms(b−a) ≤ atol + rtol·rms(a)``, no NaN/Inf pattern
    differences, and (when asked) enough rows whose argmax agrees."""
    reasons: list[str] = []
    ratio = tolerance_ratio(m, rtol, atol)
    if ratio > 1.0:
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
