"""How far two tensors in the same layout are apart, computed in float64.

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


def _as_float64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == np.float64:
        return x
    if np.iscomplexobj(x):
        x = np.abs(x)
    return x.astype(np.float64)


def _norm(x: np.ndarray) -> float:
    flat = x.reshape(-1)
    return math.sqrt(float(np.dot(flat, flat)))


def compute_metrics(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> Metrics:
    """Metrics of ``b`` against the reference ``a`` (same shape, ``b`` already in ``a``'s layout)."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"compute_metrics needs equal shapes, got {np.shape(a)} and {np.shape(b)}")
    a64, b64 = _as_float64(a), _as_float64(b)
    n = int(a64.size)
    if n == 0:
        return Metrics(
            numel=0, rel_err=0.0, err_norm=0.0, max_abs=0.0, max_abs_index=None, mean_abs=0.0,
            cosine=1.0, mismatched=0, norm_a=0.0, norm_b=0.0, rms_a=0.0,
        )
    with np.errstate(all="ignore"):
        fin_a, fin_b = np.isfinite(a64), np.isfinite(b64)
        all_finite = bool(fin_a.all() and fin_b.all())
        nan_a = nan_b = inf_a = inf_b = nonfinite_mismatch = 0
        if all_finite:
            d = b64 - a64
            av, bv = a64, b64
        else:
            both = fin_a & fin_b
            isnan_a, isnan_b = np.isnan(a64), np.isnan(b64)
            nan_a, nan_b = int(isnan_a.sum()), int(isnan_b.sum())
            inf_a, inf_b = int((~fin_a & ~isnan_a).sum()), int((~fin_b & ~isnan_b).sum())
            agree = both | (isnan_a & isnan_b) | (~fin_a & ~isnan_a & (a64 == b64))
            nonfinite_mismatch = int(n - np.count_nonzero(agree))
            av, bv = np.where(both, a64, 0.0), np.where(both, b64, 0.0)
            d = bv - av
        abs_d = np.abs(d)
        err_norm = _norm(d)
        norm_a, norm_b = _norm(av), _norm(bv)
        flat_max = int(np.argmax(abs_d))
        max_abs = float(abs_d.reshape(-1)[flat_max])
        mismatched = int(np.count_nonzero(abs_d > atol + rtol * np.abs(av))) + nonfinite_mismatch
        mean_abs = float(abs_d.mean())
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
    if a64.ndim == 2 and a64.shape[1] > 1:
        rows_ok = np.isfinite(a64).all(axis=1) & np.isfinite(b64).all(axis=1)
        same = np.argmax(np.where(np.isnan(a64), -np.inf, a64), axis=1) == np.argmax(
            np.where(np.isnan(b64), -np.inf, b64), axis=1
        )
        argmax = float(np.mean(same & rows_ok))
    index = tuple(int(i) for i in np.unravel_index(flat_max, a64.shape)) if a64.ndim else ()
    return Metrics(
        numel=n,
        rel_err=float(rel_err),
        err_norm=float(err_norm),
        max_abs=max_abs,
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
