"""Metrics between two tensors in the same layout, in float64 (temporary minimal version)."""

from __future__ import annotations

import numpy as np

from .records import Metrics, tolerance_ratio


def compute_metrics(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> Metrics:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    a64 = np.asarray(a, dtype=np.float64)
    b64 = np.asarray(b, dtype=np.float64)
    fa, fb = np.isfinite(a64), np.isfinite(b64)
    both = fa & fb
    with np.errstate(all="ignore"):
        d = np.where(both, b64 - a64, 0.0)
        ad = np.abs(d)
        ea = float(np.sqrt(np.dot(d.ravel(), d.ravel())))
        av = np.where(both, a64, 0.0).ravel()
        bv = np.where(both, b64, 0.0).ravel()
        na, nb = float(np.sqrt(np.dot(av, av))), float(np.sqrt(np.dot(bv, bv)))
        rel = 0.0 if ea == 0 else (ea / na if na > 0 else float("inf"))
        if na == 0 and nb == 0:
            cos = 1.0
        elif na == 0 or nb == 0:
            cos = 0.0
        else:
            cos = float(np.clip((na * na + nb * nb - ea * ea) / (2 * na * nb), -1, 1))
        nonfin = int(np.count_nonzero(~(both | (np.isnan(a64) & np.isnan(b64)) | (np.isinf(a64) & (a64 == b64)))))
        mism = int(np.count_nonzero(ad > atol + rtol * np.abs(np.where(both, a64, 0.0)))) + nonfin
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(ad)), a.shape)) if a.size else None
        arg = None
        if a.ndim == 2 and a.shape[1] > 1 and a.shape[0] > 0:
            arg = float(np.mean(np.argmax(np.nan_to_num(a64, nan=-np.inf), 1) == np.argmax(np.nan_to_num(b64, nan=-np.inf), 1)))
    n = int(a.size)
    return Metrics(
        numel=n, rel_err=float(rel), err_norm=ea, max_abs=float(ad.max()) if n else 0.0, max_abs_index=idx,
        mean_abs=float(ad.mean()) if n else 0.0, cosine=cos, mismatched=mism, norm_a=na, norm_b=nb,
        rms_a=na / np.sqrt(max(n, 1)), nan_a=int(np.isnan(a64).sum()), nan_b=int(np.isnan(b64).sum()),
        inf_a=int(np.isinf(a64).sum()), inf_b=int(np.isinf(b64).sum()), nonfinite_mismatch=nonfin,
        argmax_agreement=arg,
    )


def verdict(m: Metrics, rtol: float, atol: float, *, min_argmax_agreement=None):
    reasons = []
    r = tolerance_ratio(m, rtol, atol)
    if r > 1:
        reasons.append(f"relative error {m.rel_err:.1e} exceeds rtol {rtol:.0e} ({r:.0f}× the allowed error)")
    if m.nonfinite_mismatch:
        reasons.append(f"{m.nonfinite_mismatch} elements are NaN/Inf on one side only")
    if min_argmax_agreement is not None and m.argmax_agreement is not None and m.argmax_agreement < min_argmax_agreement:
        reasons.append(f"argmax agrees on {100 * m.argmax_agreement:.0f}% of rows")
    return (not reasons), tuple(reasons)
