"""BatchNorm statistics: B normalised with the wrong mean and variance.

At inference a BatchNorm is, per channel, an affine map of its input:
``y = K·x + T`` with ``K = γ/sqrt(var + eps)`` and ``T = β − K·mean``.  Fitting
that map per channel on each side (A's output against A's input, B's output
against B's input — the input is the previous matched pair, or, where B computes the conv
before the BatchNorm and the BatchNorm in one folded convolution, A's conv output for both) gives

- from A and A's recorded running statistics: ``γ = K_a·sqrt(var_a + eps)``
  and ``β = T_a + K_a·mean_a``;
- from B and that γ, β: the statistics B *effectively* used,
  ``var_b = (γ/K_b)² − eps`` and ``mean_b = (β − T_b)/K_b``.

Those effective statistics are then compared, channel by channel, with the
usual suspects:

- ``missing``: mean 0 / variance 1, the initial values (the running statistics
  were never copied);
- ``swapped``: mean ↔ variance (B's variance is A's mean; a negative mean as a
  variance gives NaN);
- ``batch``: the mean and (biased) variance of B's own input over N and the
  spatial axes (B ran its BatchNorm in training mode).

The diagnosis holds only when one of them explains at least 90 % of the
channels and A's own statistics do not.
"""

from __future__ import annotations

import numpy as np

from ..records import Diagnosis
from .base import Context, detector
from .base import channel_axis as _channel_axis
from .bn import declared_eps

__all__ = ["diagnose_bn_statistics", "effective_statistics"]

#: the per-channel affine fit of output on input must leave less than this residual (relative)
_FIT_RESIDUAL = 1e-3
#: a candidate explains a channel when the mean is this close in units of std and the variance this close (relative)
_MEAN_TOL = 0.02
_VAR_TOL = 0.05
_MIN_SHARE = 0.9


def _stats(attrs, mean_keys=("running_mean", "moving_mean"), var_keys=("running_var", "moving_variance")):
    mean = next((attrs[k] for k in mean_keys if k in attrs and attrs[k] is not None), None)
    var = next((attrs[k] for k in var_keys if k in attrs and attrs[k] is not None), None)
    if mean is None or var is None:
        return None
    return np.asarray(mean, dtype=np.float64).reshape(-1), np.asarray(var, dtype=np.float64).reshape(-1)


def _channels_first(x: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(x.astype(np.float64), axis, 0).reshape(x.shape[axis], -1)


def _affine(x2: np.ndarray, y2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: slope K, intercept T and relative residual of ``y ≈ K·x + T`` (NaN where undefined)."""
    with np.errstate(all="ignore"):
        finite = np.all(np.isfinite(x2), axis=1) & np.all(np.isfinite(y2), axis=1)
        xm, ym = x2.mean(axis=1, keepdims=True), y2.mean(axis=1, keepdims=True)
        dx, dy = x2 - xm, y2 - ym
        sxx = np.einsum("ij,ij->i", dx, dx)
        sxy = np.einsum("ij,ij->i", dx, dy)
        syy = np.einsum("ij,ij->i", dy, dy)
        k = np.where(finite & (sxx > 0), sxy / sxx, np.nan)
        t = ym[:, 0] - k * xm[:, 0]
        resid = np.sqrt(np.maximum(syy - k * sxy, 0.0)) / np.sqrt(np.where(syy > 0, syy, np.nan))
    return k, t, np.where(finite, resid, np.nan)


def effective_statistics(x_a, a, x_b, b, axis, mean_a, var_a, eps):
    """B's effective per-channel (mean, var), with γ, β recovered from A; plus fit quality masks."""
    ka, ta, ra = _affine(_channels_first(x_a, axis), _channels_first(a, axis))
    kb, tb, rb = _affine(_channels_first(x_b, axis), _channels_first(b, axis))
    gamma = ka * np.sqrt(var_a + eps)
    beta = ta + ka * mean_a
    with np.errstate(all="ignore"):
        var_b = (gamma / kb) ** 2 - eps
        mean_b = (beta - tb) / kb
    a_ok = np.isfinite(ra) & (ra < _FIT_RESIDUAL) & (np.abs(ka) > 0)
    b_ok = np.isfinite(rb) & (rb < _FIT_RESIDUAL) & np.isfinite(kb) & (np.abs(kb) > 0)
    b_nan = ~np.all(np.isfinite(_channels_first(b, axis)), axis=1) & np.all(np.isfinite(_channels_first(x_b, axis)), axis=1)
    return mean_b, var_b, a_ok, b_ok, b_nan


def _close(mean_b, var_b, mean_c, var_c, eps) -> np.ndarray:
    with np.errstate(all="ignore"):
        sd = np.sqrt(np.maximum(var_c, 0) + eps)
        mean_ok = np.abs(mean_b - mean_c) <= _MEAN_TOL * sd + 1e-6
        var_ok = np.abs((var_b + eps) - (var_c + eps)) <= _VAR_TOL * np.abs(var_c + eps) + 1e-9
    return mean_ok & var_ok


def diagnose_bn_statistics(ctx: Context) -> Diagnosis | None:
    m = ctx.match
    a, b = ctx.a, ctx.b
    if a is None or a.size == 0 or a.shape != b.shape:
        return None
    axis = _channel_axis(m.a.layout, a.ndim)
    stats = _stats(m.a.attrs)
    folded = ctx.folded_input()
    if folded is not None:
        # B computes A's Conv2D and this BatchNorm in one folded convolution (tf2onnx: a conv with
        # the scale folded in, then an Add of the shift): its input is the conv's input, not a
        # recorded tensor.  Taking the conv part as A's (A's conv output stands for both sides'
        # BatchNorm input) leaves the statistics B's folded kernel and shift encode.
        prev = (folded, folded)
    else:
        prev = ctx.previous_values()
    if axis is None or stats is None or prev is None:
        return None
    x_a, x_b = prev
    if x_a.shape != a.shape or x_b.shape != a.shape:
        return None  # the previous pair is not this BatchNorm's input
    mean_a, var_a = stats
    c = a.shape[axis]
    if mean_a.shape[0] != c or var_a.shape[0] != c:
        return None
    eps = declared_eps(m.a.attrs)
    eps = 1e-5 if eps is None else eps
    eps_b = declared_eps(m.b.attrs)
    eps_b = eps if eps_b is None else eps_b
    mean_b, var_b, a_ok, b_ok, b_nan = effective_statistics(x_a, a, x_b, b, axis, mean_a, var_a, eps)
    if a_ok.mean() < _MIN_SHARE:
        return None  # A is not an affine map of the previous tensor: not its input, or not a BatchNorm
    # the statistics of B's own input, which training mode would use
    xb2 = _channels_first(x_b, axis)
    with np.errstate(all="ignore"):
        batch_mean, batch_var = xb2.mean(axis=1), xb2.var(axis=1)
    usable = a_ok & b_ok
    own = _close(mean_b, var_b, mean_a, var_a, eps) & usable
    candidates = {
        "missing": (np.zeros(c), np.ones(c)),
        "swapped": (var_a, mean_a),
        "batch": (batch_mean, batch_var),
    }
    explained: dict[str, np.ndarray] = {}
    for kind, (mc, vc) in candidates.items():
        hit = _close(mean_b, var_b, mc, vc, eps) & usable
        if kind == "swapped":
            # a negative mean used as a variance: rsqrt of a negative number is NaN in B
            hit = hit | (a_ok & b_nan & (mean_a + eps_b < 0))
        explained[kind] = hit
    kind = max(explained, key=lambda k: explained[k].sum())
    hit = explained[kind]
    n_hit = int(hit.sum())
    if n_hit < _MIN_SHARE * c:
        return None
    if int(own.sum()) >= 0.5 * c or int((own & hit).sum()) > 0.5 * n_hit:
        return None  # A's own statistics explain B as well: the candidates coincide (untrained BN)
    with np.errstate(all="ignore"):
        mean_dev = np.abs(mean_b - mean_a) / np.sqrt(var_a + eps)
        var_ratio = (var_b + eps) / (var_a + eps)
    fin = usable & np.isfinite(mean_dev) & np.isfinite(var_ratio)
    evidence = {
        "channels": float(c),
        "channels_explained": float(n_hit),
        "channels_matching_a_stats": float(own.sum()),
        "mean_shift_in_std_median": float(np.median(mean_dev[fin])) if fin.any() else float("nan"),
        "var_ratio_b_over_a_median": float(np.median(var_ratio[fin])) if fin.any() else float("nan"),
        "running_mean_a_median": float(np.median(mean_a)),
        "running_var_a_median": float(np.median(var_a)),
        "eps_a": float(eps),
    }
    if fin.any():
        evidence["effective_mean_b_median"] = float(np.median(mean_b[fin]))
        evidence["effective_var_b_median"] = float(np.median(var_b[fin]))
    if kind == "swapped":
        evidence["channels_nan_in_b"] = float((b_nan & a_ok).sum())
    if kind == "batch":
        evidence["batch_mean_median"] = float(np.median(batch_mean))
        evidence["batch_var_median"] = float(np.median(batch_var))
    lead = (
        "B's BatchNorm normalised with the wrong statistics: fitted per channel from each side's input and "
        "output, the mean and variance B effectively used match "
    )
    if kind == "missing":
        msg = (
            lead + f"mean 0 / variance 1 (the initial values) in {n_hit}/{c} channels, not A's running statistics "
            f"(median running_var {np.median(var_a):.3g}, |running_mean| up to {np.max(np.abs(mean_a)):.3g}). "
            "The running mean/variance were not copied: set B's moving_mean and moving_variance from A's "
            "running_mean and running_var (Keras weight order: gamma, beta, moving_mean, moving_variance)."
        )
    elif kind == "swapped":
        msg = (
            lead + f"A's running variance as the mean and A's running mean as the variance in {n_hit}/{c} channels"
            + (f" ({int(evidence['channels_nan_in_b'])} of them NaN: a negative mean used as a variance)" if evidence["channels_nan_in_b"] else "")
            + ". The running statistics were copied in the wrong order: Keras BatchNormalization weights are "
            "[gamma, beta, moving_mean, moving_variance] = torch [weight, bias, running_mean, running_var]."
        )
    else:
        msg = (
            lead + f"the mean and variance of B's own input over the batch and spatial axes in {n_hit}/{c} channels "
            "(B's output has per-channel mean β and variance ≈ γ², whatever the running statistics). B ran its "
            "BatchNorm in training mode: call it with training=False (Keras: don't pass training=True inside call(); "
            "torch: model.eval())."
        )
    return Diagnosis(code="bn_statistics", layer=m.a.name, message=msg, evidence=evidence)


detector("bn_statistics", {"batchnorm"})(diagnose_bn_statistics)
