"""The first divergence when no detector recognised it: ``unexplained``, with the raw facts.

Not a detector (it is not registered): call :func:`unexplained` on the first
divergence's :class:`~parity.diagnose.base.Context` only when no detector fired
there.  It says where in the tensor the error sits, so a person can take it
from there:

- spatially (4-D tensors): mean ``|b−a|`` on the first/last row and column
  against the interior (:func:`parity.detail.error_map`) — a bright border
  points at padding, a uniform map at weights or the op;
- per channel: the three worst channels' relative errors and indices, and the
  share of the squared error in the worst one — one bad channel points at one
  slice of a weight;
- globally: cosine, norm ratio, and how well one scale and offset maps A onto B
  (``b ≈ s·a + t``) — a good fit points at a scale/offset, a cosine near 0 at
  wrong weights or a wrong mapping.
"""

from __future__ import annotations

import numpy as np

from ..detail import error_map
from ..records import Alignment, Diagnosis, LayerDiff
from .base import Context
from .base import channel_axis as _channel_axis

__all__ = ["unexplained", "context_for"]


def context_for(alignment: Alignment, layers: tuple[LayerDiff, ...], layer: LayerDiff) -> Context | None:
    """The :class:`Context` of ``layer`` as :func:`parity.diagnose.diagnose` builds it (None when unmatched
    or without values)."""
    ordered = sorted(alignment.matches, key=lambda m: m.a.index)
    i = next((k for k, m in enumerate(ordered) if m.a.name == layer.a_name), None)
    if i is None:
        return None
    m = ordered[i]
    if m.a.value is None or m.b.value is None:
        return None
    before = tuple(d for d in layers if d.index < layer.index)
    return Context(
        layer=layer, match=m, a=np.asarray(m.a.value), b=np.asarray(m.transform.apply(m.b.value)),
        previous=ordered[i - 1] if i else None, alignment=alignment, layers=before,
    )


def _channel_axis_guess(layout: str | None, ndim: int) -> int | None:
    axis = _channel_axis(layout, ndim)
    if axis is not None:
        return axis
    return 1 if ndim >= 2 else None


def unexplained(ctx: Context) -> Diagnosis:
    """A ``unexplained`` diagnosis of ``ctx`` (always returns one)."""
    m, d = ctx.match, ctx.layer
    a = ctx.a.astype(np.float64)
    b = ctx.b.astype(np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    diff = np.where(both, b - a, 0.0)
    a0 = np.where(both, a, 0.0)
    b0 = np.where(both, b, 0.0)
    err2 = float(np.sum(diff * diff))
    na, nb = float(np.linalg.norm(a0)), float(np.linalg.norm(b0))
    evidence: dict[str, float] = {
        "rel_err": float(d.metrics.rel_err),
        "cosine": float(d.metrics.cosine),
        "norm_ratio_b_over_a": nb / na if na > 0 else float("inf"),
        "mismatched_share": float(d.metrics.mismatched) / max(d.metrics.numel, 1),
        "nonfinite_mismatch": float(d.metrics.nonfinite_mismatch),
    }
    if d.own_err is not None:
        evidence["own_err"] = float(d.own_err)
    facts: list[str] = [f"relative error {d.metrics.rel_err:.2g}, cosine {d.metrics.cosine:.4f}"]

    # one global scale and offset: b ≈ s·a + t
    if both.sum() >= 2:
        av, bv = a[both], b[both]
        da, db = av - av.mean(), bv - bv.mean()
        saa, sbb = float(da @ da), float(db @ db)
        if saa > 0 and sbb > 0:
            s = float(da @ db) / saa
            resid = float(np.sqrt(max(sbb - s * float(da @ db), 0.0) / sbb))
            evidence.update(global_scale=s, global_offset=float(bv.mean() - s * av.mean()), global_affine_residual=resid)
            if resid < 1e-2:
                facts.append(f"B ≈ {s:.4g}·A + {evidence['global_offset']:.3g} (residual {resid:.1e}): a global scale/offset")

    # per channel
    axis = _channel_axis_guess(m.a.layout, a.ndim)
    if axis is not None and a.shape[axis] > 1:
        dc = np.moveaxis(diff, axis, 0).reshape(a.shape[axis], -1)
        ac = np.moveaxis(a0, axis, 0).reshape(a.shape[axis], -1)
        e_c = np.einsum("ij,ij->i", dc, dc)
        n_c = np.einsum("ij,ij->i", ac, ac)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel_c = np.where(n_c > 0, np.sqrt(e_c / n_c), np.where(e_c > 0, np.inf, 0.0))
        order = np.argsort(-e_c, kind="stable")
        evidence["channel_axis"] = float(axis)
        evidence["channels"] = float(a.shape[axis])
        for k, c in enumerate(order[:3]):
            evidence[f"worst_channel_{k}"] = float(c)
            evidence[f"worst_channel_{k}_rel_err"] = float(rel_c[c])
        share = float(e_c[order[0]] / err2) if err2 > 0 else 0.0
        evidence["worst_channel_error_share"] = share
        allowed = d.allowed_rel
        over = int(np.sum(rel_c > allowed))
        evidence["channels_over_tolerance"] = float(over)
        if share > 0.5:
            facts.append(
                f"{share:.0%} of the squared error is in channel {order[0]} (rel err {rel_c[order[0]]:.2g}): "
                "look at that slice of the weights"
            )
        else:
            facts.append(
                f"{over}/{a.shape[axis]} channels over tolerance; worst {', '.join(str(int(c)) for c in order[:3])} "
                f"(rel err {', '.join(f'{rel_c[c]:.2g}' for c in order[:3])})"
            )

    # spatially
    emap = error_map(ctx.a, ctx.b, m.a.layout) if a.ndim == 4 else None
    if emap is not None:
        border = dict(emap.border)
        for key, val in border.items():
            evidence[f"err_{key}"] = float(val)
        edge = max(border["first_row"], border["last_row"], border["first_col"], border["last_col"])
        interior = border["interior"]
        ratio = edge / interior if interior > 0 else (float("inf") if edge > 0 else 1.0)
        evidence["border_over_interior"] = ratio
        if ratio > 3:
            worst = max(("first_row", "last_row", "first_col", "last_col"), key=lambda k: border[k])
            facts.append(
                f"the error sits on the border (mean |b−a| on the {worst.replace('_', ' ')} {ratio:.1f}× the interior): "
                "check padding (Keras 'same' pads bottom/right only for stride 2) and stride alignment"
            )
        else:
            facts.append(f"spread over the whole {emap.rows}×{emap.cols} map (border/interior {ratio:.2f})")

    if d.metrics.cosine < 0.5:
        facts.append("B is nearly unrelated to A: wrong weights, a wrong op or a wrong layer mapping")
    msg = (
        f"No known cause recognised for the first divergence at {m.a.name!r} ({m.a.op} / {m.b.op}). "
        + "; ".join(facts)
        + ". Check this layer's parameters against A's (report.params), its attributes (padding, stride, "
        "activation, epsilon) and what feeds it."
    )
    return Diagnosis(code="unexplained", layer=m.a.name, message=msg, evidence=evidence)
