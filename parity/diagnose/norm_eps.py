"""Epsilon of a per-sample normalisation (LayerNorm, GroupNorm, InstanceNorm, RMSNorm).

These normalise each *row* — a sample's last axes (LayerNorm, RMSNorm), or a
sample's group of channels (GroupNorm; InstanceNorm is one channel per group)
— by its own statistics: ``y = γ·(x − μ_r)/sqrt(σ²_r + eps) + β`` (RMSNorm:
no ``μ_r``, ``σ²_r`` the mean square).  With the input ``x`` recorded (the
previous matched pair) the row statistics are known, so:

1. A's output against A's input gives γ and β per feature (a least-squares
   fit over all rows), and which rows/centering the layer uses (the structure
   that fits A best);
2. B's output, with that γ and β and B's own input, gives each row's factor
   ``k_r = 1/sqrt(σ²_r + eps_b)``, so ``eps_b = 1/k_r² − σ²_r`` per row.

The diagnosis holds when one ``eps_b`` explains ≥ 90 % of the rows and differs
from A's.  It needs rows whose variance is not far above both epsilons; with
large activations the epsilon is invisible (and harmless).
"""

from __future__ import annotations

import numpy as np

from ..records import Diagnosis
from .base import Context, detector
from .base import channel_axis as _channel_axis
from .bn import declared_eps, differing_declared_eps

__all__ = ["diagnose_norm_epsilon"]

_FIT_RESIDUAL = 1e-3
_MIN_SHARE = 0.9
_EPS_GRID = (0.0, 1e-12, 1e-10, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def _structures(shape: tuple[int, ...], layout: str | None, attrs) -> list[tuple[str, int, bool]]:
    """Candidate (kind, k, centered): ``("last", k, c)`` normalises the last k axes,
    ``("groups", G, True)`` G channel groups per sample."""
    out: list[tuple[str, int, bool]] = []
    for k in range(1, min(len(shape) - 1, 3) + 1):
        out.append(("last", k, True))
        out.append(("last", k, False))
    axis = _channel_axis(layout, len(shape))
    if axis is not None and len(shape) >= 3:
        c = shape[axis]
        declared = [attrs.get(key) for key in ("num_groups", "groups") if isinstance(attrs.get(key), int)]
        groups = declared or [g for g in range(1, c + 1) if c % g == 0][:32]
        if not declared and c not in groups:
            groups.append(c)  # InstanceNorm: one channel per group
        out.extend(("groups", g, True) for g in groups)
    return out


def _rows(x: np.ndarray, structure, layout: str | None) -> tuple[np.ndarray, np.ndarray]:
    """``x`` as (rows, elements) float64 and the feature (γ/β index) of every element."""
    kind, k, _ = structure
    if kind == "last":
        m = int(np.prod(x.shape[-k:]))
        x2 = x.astype(np.float64).reshape(-1, m)
        return x2, np.broadcast_to(np.arange(m), x2.shape)
    axis = _channel_axis(layout, x.ndim)
    xc = np.moveaxis(x.astype(np.float64), axis, 1)
    n, c = xc.shape[0], xc.shape[1]
    s = int(np.prod(xc.shape[2:]))
    x2 = xc.reshape(n * k, (c // k) * s)
    feat = np.repeat(np.arange(c), s).reshape(k, -1)  # (G, C/G·S): channel of each element of a group
    return x2, np.tile(feat, (n, 1))


def _normalised(x2: np.ndarray, centered: bool) -> tuple[np.ndarray, np.ndarray]:
    n = x2 - x2.mean(axis=1, keepdims=True) if centered else x2
    return n, np.mean(n * n, axis=1)


def _fit_affine(z: np.ndarray, y: np.ndarray, feat: np.ndarray, nf: int):
    """Per feature least squares ``y ≈ γ·z + β``; the relative residual against ``‖γ·z‖``."""
    f, zf, yf = feat.ravel(), z.ravel(), y.ravel()
    cnt = np.bincount(f, minlength=nf).astype(np.float64)
    sz, sy = np.bincount(f, zf, nf), np.bincount(f, yf, nf)
    szz, szy = np.bincount(f, zf * zf, nf), np.bincount(f, zf * yf, nf)
    with np.errstate(all="ignore"):
        den = cnt * szz - sz * sz
        gamma = np.where(den > 0, (cnt * szy - sz * sy) / den, 0.0)
        beta = np.where(cnt > 0, (sy - gamma * sz) / cnt, 0.0)
    fit = gamma[feat] * z
    resid = np.linalg.norm(y - fit - beta[feat]) / max(np.linalg.norm(fit), 1e-300)
    return gamma, beta, float(resid)


def diagnose_norm_epsilon(ctx: Context) -> Diagnosis | None:
    """The epsilon fitted from the values; failing a fit, the epsilons the layers declare."""
    return _fitted_difference(ctx) or _declared_difference(ctx)


def _fitted_difference(ctx: Context) -> Diagnosis | None:
    m = ctx.match
    a, b = ctx.a, ctx.b
    prev = ctx.previous_values()
    if a.size == 0 or a.ndim < 2 or a.shape != b.shape:
        return None
    if prev is None or prev[0].shape != a.shape or prev[1].shape != a.shape:
        return None  # the previous pair is not this layer's input
    x_a, x_b = prev
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b)) and np.all(np.isfinite(x_a)) and np.all(np.isfinite(x_b))):
        return None
    eps_a_declared = declared_eps(m.a.attrs)
    eps_b_declared = declared_eps(m.b.attrs)
    eps0 = eps_a_declared if eps_a_declared is not None else 1e-5
    # 1. the structure that makes A an exact per-feature affine map of its normalised input (at A's
    #    declared epsilon), then A's epsilon on that structure
    best = None
    for structure in _structures(a.shape, m.a.layout, m.a.attrs):
        xa2, feat = _rows(x_a, structure, m.a.layout)
        if xa2.shape[0] < 4 or xa2.shape[1] < 2:
            continue  # too few rows to fit γ and β per feature, or nothing to normalise
        a2, _ = _rows(a, structure, m.a.layout)
        n, v = _normalised(xa2, structure[2])
        resid = _fit_affine(n / np.sqrt(v + eps0)[:, None], a2, feat, int(feat.max()) + 1)[2]
        if best is None or resid < best[0]:
            best = (resid, structure, (n, v, a2, feat))
    if best is None:
        return None
    _, structure, (n, v, a2, feat) = best
    nf = int(feat.max()) + 1
    fits = {eps: _fit_affine(n / np.sqrt(v + eps)[:, None], a2, feat, nf) for eps in sorted({eps0, *_EPS_GRID})}
    top = min(fits, key=lambda e: fits[e][2])
    eps_a = eps0 if fits[eps0][2] <= 1.5 * fits[top][2] + 1e-7 else top
    gamma, beta, resid_a = fits[eps_a]
    if resid_a > _FIT_RESIDUAL:
        return None  # A is not a normalisation of the previous tensor
    # 2. B's per-row factor with A's γ, β and B's own input
    xb2, feat = _rows(x_b, structure, m.a.layout)
    b2, _ = _rows(b, structure, m.a.layout)
    n, v = _normalised(xb2, structure[2])
    g = gamma[feat] * n
    yb = b2 - beta[feat]
    gg = np.einsum("ij,ij->i", g, g)
    with np.errstate(all="ignore"):
        k = np.einsum("ij,ij->i", g, yb) / gg
        row_resid = np.linalg.norm(yb - k[:, None] * g, axis=1) / np.linalg.norm(yb, axis=1)
    rows = len(k)
    good = np.isfinite(k) & (k > 0) & np.isfinite(row_resid) & (row_resid < 1e-2)
    if good.mean() < _MIN_SHARE:
        return None  # B is not A's normalisation with another epsilon: weights or the op differ
    k_a = 1.0 / np.sqrt(v + eps_a)
    ratio = k[good] / k_a[good]
    if np.max(np.abs(ratio - 1.0)) < 1e-4:
        return None  # no row-wise scale difference to explain
    per_row = 1.0 / k[good] ** 2 - v[good]
    w = 1.0 / (v[good] + eps_a) ** 2
    eps_b = float(np.sum(w * per_row) / np.sum(w))
    # the resolution of the fit: float32 noise of k (~1e-6) on the smallest variances
    resolution = float(2e-6 * np.min(v[good] + max(eps_b, 0.0)))
    if not (-max(0.1 * eps_a, 10 * resolution) <= eps_b < 0.1):
        return None
    if abs(eps_b - eps_a) <= 0.1 * max(eps_a, eps_b, resolution):
        return None
    eps_b_fit = max(eps_b, 0.0)
    predicted = 1.0 / np.sqrt(v + eps_b_fit)
    gap = np.abs(k - k_a)
    explained = int(np.sum(good & (np.abs(predicted - k) <= 0.05 * gap + 1e-5 * k)))
    if explained < _MIN_SHARE * rows:
        return None
    what = {"last": f"over the last {structure[1]} axis" + ("es" if structure[1] > 1 else ""), "groups": f"in {structure[1]} channel groups"}[structure[0]]
    kind = ("RMS " if not structure[2] else "") + "normalisation " + what
    declared = [
        f"{side} declares {e:.0e}" for side, e in (("A", eps_a_declared), ("B", eps_b_declared)) if e is not None
    ]
    eps_b_text = f"{eps_b_fit:.2g}" if eps_b_fit > resolution else f"≈ 0 (below {max(resolution, 1e-12):.0e})"
    msg = (
        f"Normalisation epsilon differs ({m.a.op} / {m.b.op}, a per-sample {kind}): model A normalises with "
        f"eps ≈ {eps_a:.2g}, model B with eps {eps_b_text}" + (f" ({', '.join(declared)})" if declared else "")
        + f". B/A scale per row is {ratio.min():.4f}…{ratio.max():.4f}, matching "
        f"sqrt((σ² + eps_a)/(σ² + eps_b)) with each row's own variance in {explained}/{rows} rows; the gap grows "
        f"as a row's variance (median {np.median(v):.2g}) approaches the epsilons. Give B's layer the epsilon "
        "of A's (e.g. BERT/HF ports use 1e-12, torch LayerNorm 1e-5, Keras LayerNormalization 1e-3)."
    )
    evidence = {
        "eps_a_fitted": float(eps_a),
        "eps_b_fitted": eps_b_fit,
        "eps_b_resolution": resolution,
        "rows_explained": float(explained),
        "rows": float(rows),
        "ratio_min": float(ratio.min()),
        "ratio_max": float(ratio.max()),
        "row_var_median": float(np.median(v)),
        "row_var_min": float(np.min(v)),
        "fit_residual_a": float(resid_a),
        "groups" if structure[0] == "groups" else "normalised_axes": float(structure[1]),
        "centered": 1.0 if structure[2] else 0.0,
    }
    if eps_a_declared is not None:
        evidence["eps_a_declared"] = eps_a_declared
    if eps_b_declared is not None:
        evidence["eps_b_declared"] = eps_b_declared
    return Diagnosis(code="norm_epsilon", layer=m.a.name, message=msg, evidence=evidence)


def _declared_difference(ctx: Context) -> Diagnosis | None:
    """The epsilons the two layers declare, when they differ by 10× or more."""
    m = ctx.match
    declared = differing_declared_eps(m)
    if declared is None:
        return None
    eps_a, eps_b = declared
    msg = (
        f"Normalisation epsilon differs ({m.a.op} / {m.b.op}): model A's layer declares eps {eps_a:.0e}, model B's "
        f"{eps_b:.0e}. The values could not confirm it row by row (the layer's input is not a recorded tensor, "
        "e.g. a residual x + y computed inline); the larger epsilon shrinks every row whose variance is near "
        "it. Give B's layer the epsilon of A's (BERT/HF ports use 1e-12, torch LayerNorm 1e-5, Keras "
        "LayerNormalization 1e-3)."
    )
    evidence = {"eps_a_declared": eps_a, "eps_b_declared": eps_b, "fitted": 0.0}
    return Diagnosis(code="norm_epsilon", layer=m.a.name, message=msg, evidence=evidence)


detector("norm_epsilon", {"norm"})(diagnose_norm_epsilon)
