"""BatchNorm epsilon: found from the numbers, not from the names.

Two BatchNorms with the same statistics and different epsilons differ by a
per-channel factor: ``(y_b − β) = (y_a − β) · sqrt(var + eps_a) / sqrt(var + eps_b)``.
So per channel, B's output is an exact affine function of A's, with slope
``s_c = sqrt((var_c + eps_a) / (var_c + eps_b))``.  Fitting the slopes from
the recorded outputs and the running variances from the model gives both
epsilons; the diagnosis holds only when that model explains every channel.
"""

from __future__ import annotations

import numpy as np

from ..records import Diagnosis, Match
from .base import channel_axis as _channel_axis

__all__ = ["declared_eps", "differing_declared_eps", "per_channel_affine", "diagnose_bn_epsilon"]

#: a channel is "affine" when the residual of the fit is this small relative to B's spread: B's
#: input carries the rounding of every layer before (1e-4 in a deep net), and a channel seen at
#: few samples (LeViT's BatchNorm1d on 8 rows) fits that noise to a few 1e-3 — while an error
#: that is no per-channel rescaling leaves 1e-1 and more; the epsilons fitted below must still
#: explain 90 % of the slopes
_AFFINE_RESIDUAL = 1e-2


def declared_eps(attrs) -> float | None:
    """The epsilon a tap's attributes declare (``eps`` or ``epsilon``), or ``None``."""
    for key in ("eps", "epsilon"):
        if key in attrs:
            try:
                return float(attrs[key])
            except (TypeError, ValueError):
                return None
    return None


def differing_declared_eps(match: Match) -> tuple[float, float] | None:
    """``(eps_a, eps_b)`` when both layers declare an epsilon and one is 10× the other or more."""
    eps_a, eps_b = declared_eps(match.a.attrs), declared_eps(match.b.attrs)
    if eps_a is None or eps_b is None or max(eps_a, eps_b) < 10 * max(min(eps_a, eps_b), 1e-300):
        return None
    return eps_a, eps_b


def _variance(match: Match) -> np.ndarray | None:
    for attrs in (match.a.attrs, match.b.attrs):
        for key in ("running_var", "moving_variance"):
            if key in attrs and attrs[key] is not None:
                return np.asarray(attrs[key], dtype=np.float64).reshape(-1)
    return None


def per_channel_affine(a: np.ndarray, b: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares slope, intercept and relative residual of ``b ≈ s·a + t`` per channel."""
    a2 = np.moveaxis(a.astype(np.float64), axis, 0).reshape(a.shape[axis], -1)
    b2 = np.moveaxis(b.astype(np.float64), axis, 0).reshape(b.shape[axis], -1)
    am, bm = a2.mean(axis=1, keepdims=True), b2.mean(axis=1, keepdims=True)
    da, db = a2 - am, b2 - bm
    saa = np.einsum("ij,ij->i", da, da)
    sab = np.einsum("ij,ij->i", da, db)
    sbb = np.einsum("ij,ij->i", db, db)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(saa > 0, sab / saa, np.nan)
        intercept = bm[:, 0] - slope * am[:, 0]
        resid = np.sqrt(np.maximum(sbb - slope * sab, 0.0)) / np.sqrt(np.where(sbb > 0, sbb, np.nan))
    return slope, intercept, resid


def diagnose_bn_epsilon(match: Match, value_b: np.ndarray) -> Diagnosis | None:
    """A ``bn_epsilon`` diagnosis for a BatchNorm pair, or ``None`` when the numbers say otherwise."""
    a = match.a.value
    if a is None or a.size == 0:
        return None
    axis = _channel_axis(match.a.layout, a.ndim)
    var = _variance(match)
    if axis is None or var is None or var.shape[0] != a.shape[axis]:
        return None
    slope, _, resid = per_channel_affine(a, value_b, axis)
    ok = np.isfinite(slope) & np.isfinite(resid) & (resid < _AFFINE_RESIDUAL) & (slope > 0)
    if ok.mean() < 0.9:
        return None  # not a per-channel rescaling: something else differs
    s2, v = slope[ok] ** 2, var[ok]
    if np.max(np.abs(slope[ok] - 1.0)) < 1e-5:
        return None  # no scale difference to explain
    eps_a_declared = declared_eps(match.a.attrs)
    eps_b_declared = declared_eps(match.b.attrs)
    # s² (v + eps_b) = v + eps_a  →  s²·eps_b − eps_a = v (1 − s²): linear in both epsilons
    rhs = v * (1.0 - s2)
    if np.std(v) > 1e-3 * max(np.mean(v), 1e-12) and len(v) >= 3:
        design = np.stack([-np.ones_like(s2), s2], axis=1)
        (eps_a, eps_b), *_ = np.linalg.lstsq(design, rhs, rcond=None)
        method = "both fitted"
    else:
        eps_a = eps_b = -1.0  # all variances equal (untrained): only one epsilon is identifiable
    if not (eps_b > 0 and eps_a >= -1e-7):
        # With variances much larger than the epsilons the joint fit is ill-conditioned
        # (float32 slopes): fix A's epsilon at what A declares and fit B's alone.
        eps_a = eps_a_declared if eps_a_declared is not None else 1e-5
        eps_b = float(np.median((v + eps_a) / s2 - v))
        method = f"eps_a fixed at its declared {eps_a:.1e}"
    if not (0 < eps_b < 0.1 and -1e-7 <= eps_a < 0.1):
        return None  # not a plausible epsilon: a per-channel scale from something else
    predicted = np.sqrt((v + eps_a) / (v + eps_b))
    # a slope is explained within 5 % of its gap to 1, or within what the noise of its own fit
    # allows (a channel of large variance has a gap of 1e-3, and B's carried rounding moves it)
    deviation = np.abs(predicted - slope[ok]) / np.maximum(0.05 * np.abs(1.0 - slope[ok]) + 2.0 * resid[ok], 1e-12)
    explained = int(np.sum(deviation < 1.0))
    if explained < 0.9 * len(v):
        return None
    if abs(eps_b - eps_a) <= 0.1 * max(eps_a, eps_b):
        return None
    ratio_range = (float(slope[ok].min()), float(slope[ok].max()))
    declared = [
        f"{side} declares {eps:.0e}"
        for side, eps in (("A", eps_a_declared), ("B", eps_b_declared))
        if eps is not None
    ]
    msg = (
        f"BatchNorm epsilon differs: model A normalises with eps ≈ {eps_a:.2g}, model B with "
        f"eps ≈ {eps_b:.2g}" + (f" ({', '.join(declared)})" if declared else "") + ". "
        f"B/A output ratio per channel is {ratio_range[0]:.4f}…{ratio_range[1]:.4f}, matching "
        f"sqrt((var + eps_a)/(var + eps_b)) in {explained}/{len(v)} channels ({method}); the gap grows "
        "as the running variance shrinks, which is why it shows with trained statistics and hides "
        "with var = 1. Give B's BatchNorm the epsilon of A's."
    )
    evidence = {
        "eps_a_fitted": float(eps_a),
        "eps_b_fitted": float(eps_b),
        "channels_explained": float(explained),
        "channels": float(a.shape[axis]),
        "ratio_min": ratio_range[0],
        "ratio_max": ratio_range[1],
        "running_var_median": float(np.median(var)),
        "running_var_min": float(np.min(var)),
    }
    if eps_a_declared is not None:
        evidence["eps_a_declared"] = eps_a_declared
    if eps_b_declared is not None:
        evidence["eps_b_declared"] = eps_b_declared
    return Diagnosis(code="bn_epsilon", layer=match.a.name, message=msg, evidence=evidence)
