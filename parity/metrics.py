"""How far two tensors in the same layout are apart, computed in float64 (block by block).

The headline number is the norm-relative error ``‖b−a‖₂/‖a‖₂``: unlike the
element-wise ``mean(|b−a|/|a|)`` of hand-written checks it does not explode
where ``a`` is near zero (every ReLU output).  The difference is formed
explicitly, so relative errors down to 1e-7 and below stay accurate (no
``‖a‖²+‖b‖²−2a·b`` cancellation).
"""

from __future__ import annotations

import math

import numpy as np

from .records import Metrics, tolerance_ratio

__all__ = ["compute_metrics", "verdict"]


#: elements per block: the float64 work happens a block at a time, in cache, never on whole tensors
_BLOCK = 1 << 18


def _real(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return np.abs(x) if np.iscomplexobj(x) else x


def _blocks(a: np.ndarray, b: np.ndarray):
    """``(offset, a64, b64)``: flat float64 blocks of both tensors in A's element order.

    Blocks are slices along the leading axes, widened with ``order="C"`` so a strided
    view (B transposed into A's layout) is transposed and widened in one copy per block."""
    n = a.size
    if a.ndim <= 1 or n <= _BLOCK:
        fa, fb = a.reshape(-1), b.reshape(-1)
        for lo in range(0, n, _BLOCK):
            yield lo, fa[lo : lo + _BLOCK].astype(np.float64), np.asarray(fb[lo : lo + _BLOCK], dtype=np.float64)
        return
    per_row = n // a.shape[0]
    if per_row <= _BLOCK or a.ndim == 2:
        rows = max(1, _BLOCK // max(1, per_row))
        for lo in range(0, a.shape[0], rows):
            a64 = np.asarray(a[lo : lo + rows], dtype=np.float64, order="C").reshape(-1)
            b64 = np.asarray(b[lo : lo + rows], dtype=np.float64, order="C").reshape(-1)
            yield lo * per_row, a64, b64
        return
    # one sample is larger than a block: slice the second axis too
    per_sub = per_row // a.shape[1]
    step = max(1, _BLOCK // max(1, per_sub))
    for i in range(a.shape[0]):
        for lo in range(0, a.shape[1], step):
            a64 = np.asarray(a[i, lo : lo + step], dtype=np.float64, order="C").reshape(-1)
            b64 = np.asarray(b[i, lo : lo + step], dtype=np.float64, order="C").reshape(-1)
            yield i * per_row + lo * per_sub, a64, b64


def compute_metrics(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> Metrics:
    """Metrics of ``b`` against the reference ``a`` (same shape, ``b`` already in ``a``'s layout).

    One pass over both tensors in blocks: each block is widened to float64, its
    difference formed explicitly and its sums accumulated in float64, so the
    figures equal a whole-tensor float64 computation without its memory."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"compute_metrics needs equal shapes, got {np.shape(a)} and {np.shape(b)}")
    shape = np.shape(a)
    a, b = _real(a), _real(b)
    n = int(a.size)
    if n == 0:
        return Metrics(
            numel=0, rel_err=0.0, err_norm=0.0, max_abs=0.0, max_abs_index=None, mean_abs=0.0,
            cosine=1.0, mismatched=0, norm_a=0.0, norm_b=0.0, rms_a=0.0,
        )
    sq_d = sq_a = sq_b = sum_abs = 0.0
    max_abs, flat_max = -1.0, 0
    mismatched = nan_a = nan_b = inf_a = inf_b = nonfinite_mismatch = 0
    with np.errstate(all="ignore"):
        for lo, a64, b64 in _blocks(a, b):
            fin_a, fin_b = np.isfinite(a64), np.isfinite(b64)
            if not (fin_a.all() and fin_b.all()):
                both = fin_a & fin_b
                isnan_a, isnan_b = np.isnan(a64), np.isnan(b64)
                nan_a += int(isnan_a.sum())
                nan_b += int(isnan_b.sum())
                inf_a += int((~fin_a & ~isnan_a).sum())
                inf_b += int((~fin_b & ~isnan_b).sum())
                agree = both | (isnan_a & isnan_b) | (~fin_a & ~isnan_a & (a64 == b64))
                nonfinite_mismatch += int(a64.size - np.count_nonzero(agree))
                a64, b64 = np.where(both, a64, 0.0), np.where(both, b64, 0.0)
            d = b64 - a64
            sq_d += float(np.dot(d, d))
            sq_a += float(np.dot(a64, a64))
            sq_b += float(np.dot(b64, b64))
            np.abs(d, out=d)
            k = int(np.argmax(d))
            if d[k] > max_abs:
                max_abs, flat_max = float(d[k]), lo + k
            sum_abs += float(d.sum())
            # a64 may be a view of the caller's float64 array: never written to
            mismatched += int(np.count_nonzero(d > atol + rtol * np.abs(a64)))
    mismatched += nonfinite_mismatch
    err_norm, norm_a, norm_b = math.sqrt(sq_d), math.sqrt(sq_a), math.sqrt(sq_b)
    mean_abs = sum_abs / n
    av2 = bv2 = None
    if len(shape) == 2 and shape[1] > 1:
        av2 = np.asarray(a, dtype=np.float64)
        bv2 = np.asarray(b, dtype=np.float64)
    if err_norm == 0.0:
        rel_err = 0.0
    elif norm_a == 0.0:
        rel_err = math.inf
    else:
        rel_err = err_norm / norm_a
    if norm_a == 0.0 and norm_b == 0.0:
        cosine = 1.0
    elif norm_a == 0.0 or norm_b == 0.0:
        cosine = 0.0
    else:
        # from the explicit difference: accurate where 1 − cos is tiny
        cosine = (norm_a * norm_a + norm_b * norm_b - err_norm * err_norm) / (2.0 * norm_a * norm_b)
        cosine = float(min(1.0, max(-1.0, cosine)))
    argmax = None
    if av2 is not None and bv2 is not None:
        rows_ok = np.isfinite(av2).all(axis=1) & np.isfinite(bv2).all(axis=1)
        same = np.argmax(np.where(np.isnan(av2), -np.inf, av2), axis=1) == np.argmax(
            np.where(np.isnan(bv2), -np.inf, bv2), axis=1
        )
        argmax = float(np.mean(same & rows_ok))
    index = tuple(int(i) for i in np.unravel_index(flat_max, shape)) if len(shape) else ()
    return Metrics(
        numel=n,
        rel_err=float(rel_err),
        err_norm=float(err_norm),
        max_abs=max(max_abs, 0.0),
        max_abs_index=index,
        mean_abs=mean_abs,
        cosine=cosine,
        mismatched=mismatched,
        norm_a=float(norm_a),
        norm_b=float(norm_b),
        rms_a=float(norm_a / math.sqrt(n)),
        nan_a=nan_a,
        nan_b=nan_b,
        inf_a=inf_a,
        inf_b=inf_b,
        nonfinite_mismatch=nonfinite_mismatch,
        argmax_agreement=argmax,
    )


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
