"""A layer whose output is A's scaled, or shifted, channel by channel: its weights differ.

When B's output of a convolution, dense or normalisation layer is, channel by channel, an
exact affine function of A's — ``b_c = k·a_c + g_c`` with one factor ``k`` for every channel
and nothing left over — the operation is the same and only its parameters differ: a kernel
(or a BatchNorm scale a converter folded into it) multiplied by ``k``, or, with ``k = 1``, a
bias or shift that differs by ``g_c``.  This holds for graph formats too, where weight parity
cannot read parameters: the counterfactual is the fitted affine map itself, and the evidence
is how much of the error it leaves unexplained.

It does not claim what is not uniform: factors that differ from channel to channel are the
signature of normalisation statistics or an epsilon (see :mod:`.bn`, :mod:`.bn_stats`), and
an error the per-channel fit does not explain is an operation difference.  A folded
convolution with a scaled kernel shows a uniform factor with a per-channel offset
``(1 − k)·(β − μ·s)``, which is why the offset is allowed beside a factor.
"""

from __future__ import annotations

import numpy as np

from ..records import Diagnosis
from .base import Context, detector
from .bn import differing_declared_eps

__all__ = ["diagnose_scaled_weights", "channel_fit"]

#: the error the per-channel affine fit may leave, as a share of ‖b − a‖
_UNEXPLAINED = 0.02
#: the channels' factors count as one factor when their spread is this share of ``|k − 1|``
_UNIFORM = 0.05
#: a factor this close to 1 is no scale (the error is then an offset, if anything)
_NO_SCALE = 1e-4
_FAMILIES = {"conv", "depthwise", "dense", "batchnorm", "norm", "linear", "affine"}


def _channels_last(x: np.ndarray, layout: str | None) -> np.ndarray:
    axis = layout.index("C") if layout and "C" in layout and len(layout) == x.ndim else x.ndim - 1
    return np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])


def channel_fit(a: np.ndarray, b: np.ndarray, layout: str | None) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Per channel, the least-squares ``b_c ≈ k_c·a_c + g_c``: the factors, the offsets and the
    share of ‖b − a‖ the fit leaves unexplained; None when a channel is constant in A (nothing to fit)."""
    if a.ndim < 2 or a.shape != b.shape:
        return None
    a2 = _channels_last(np.asarray(a, dtype=np.float64), layout)
    b2 = _channels_last(np.asarray(b, dtype=np.float64), layout)
    if a2.shape[0] < 4:
        return None
    ma, mb = a2.mean(axis=0), b2.mean(axis=0)
    da, db = a2 - ma, b2 - mb
    var = np.einsum("ij,ij->j", da, da)
    if np.any(var <= 1e-12 * max(float(var.max()), 1e-300)):
        return None
    k = np.einsum("ij,ij->j", da, db) / var
    g = mb - k * ma
    residual = b2 - (k * a2 + g)
    err = float(np.linalg.norm(b2 - a2))
    if err == 0.0:
        return None
    return k, g, float(np.linalg.norm(residual)) / err


def diagnose_scaled_weights(ctx: Context) -> Diagnosis | None:
    m, met = ctx.match, ctx.layer.metrics
    if not np.isfinite(met.rel_err) or met.nan_a or met.nan_b or met.inf_a or met.inf_b:
        return None
    if differing_declared_eps(m) is not None:
        return None  # the two sides declare different epsilons: that detector names the cause
    fit = channel_fit(ctx.a, ctx.b, m.a.layout)
    if fit is None:
        return None
    k, g, unexplained = fit
    if unexplained > _UNEXPLAINED:
        return None  # the error is not a per-channel affine map: another operation
    factor = float(np.median(k))
    spread = float(np.max(np.abs(k - factor)))
    channels = int(k.size)
    evidence = {"factor": factor, "factor_spread": spread, "unexplained_share": unexplained,
                "channels": float(channels), "rel_err": float(met.rel_err)}
    if abs(factor - 1.0) > _NO_SCALE and spread <= _UNIFORM * abs(factor - 1.0):
        offset = float(np.sqrt(np.mean(g**2)))
        evidence["offset_rms"] = offset
        msg = (
            f"B's {m.b.name!r} is A's {m.a.name!r} ({m.a.op}) scaled by {factor:.4g} in every one of its {channels} "
            f"channels (factors within {spread:.1e} of each other; the per-channel fit leaves "
            f"{100 * unexplained:.2g}% of the error unexplained): the same operation with scaled weights — a kernel "
            f"× {factor:.4g}, or a normalisation scale folded into it"
            + (f" (the per-channel offset, rms {offset:.2g}, is what a scaled kernel before a folded BatchNorm "
               "leaves)" if offset > 1e-6 * max(float(np.abs(ctx.a).max()), 1e-30) else "")
            + ". Check how this layer's weights were copied or converted."
        )
        return Diagnosis(code="weight_scale", layer=m.a.name, message=msg, evidence=evidence)
    if np.all(np.abs(k - 1.0) <= 10 * _NO_SCALE):
        shifted = np.flatnonzero(np.abs(g) > 1e-3 * max(float(np.abs(ctx.a).std()), 1e-30))
        if shifted.size == 0:
            return None
        evidence["offset_max"] = float(np.abs(g).max())
        evidence["shifted_channels"] = float(shifted.size)
        listed = ", ".join(str(int(c)) for c in shifted[:8]) + (", …" if shifted.size > 8 else "")
        msg = (
            f"B's {m.b.name!r} is A's {m.a.name!r} ({m.a.op}) shifted by a constant per channel in {shifted.size} of "
            f"{channels} channels (up to {float(np.abs(g).max()):.3g}; channels {listed}) and otherwise equal "
            f"(the fit leaves {100 * unexplained:.2g}% of the error unexplained): a bias or normalisation shift "
            "that differs or is missing."
        )
        return Diagnosis(code="bias_offset", layer=m.a.name, message=msg, evidence=evidence)
    return None


detector("weight_scale", families=_FAMILIES)(diagnose_scaled_weights)
