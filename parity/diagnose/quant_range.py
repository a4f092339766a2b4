"""A quantized tensor's scale applied wrongly: ``quant_range_clipped``, ``quant_granularity``.

``quant_range_clipped``: B's quantized tensor sits at its integer range's lowest or highest
level (``(qmin − zp)·scale``, ``(qmax − zp)·scale``) for a share of its elements while A's float
values go past that level — the calibrated range (or a scale edited by hand) is narrower than
the values this layer computes — and without those elements the layer is back near the
rounding floor: the clipping is the error.

``quant_granularity``: B's layer quantizes its weights with one scale for every output channel
(per tensor) while the channels' ranges differ so much that some reach only a few of the int
levels (B's own kernel says so: ``QuantVerdict.weight_levels``), and the layer alone is over the
limit: a per-channel scale is what it needs.
"""

from __future__ import annotations

import numpy as np

from ..quantsteps import CLIPPED_SHARE, ROUNDING_FLOOR, _kept, _scales, steps_of
from ..records import Diagnosis
from .base import Context, detector

__all__: list[str] = []


def _named_before(ctx: Context, code: str) -> bool:
    """Whether an earlier pair of the same layer of B (its tensor before the QuantizeLinear, then
    after the DequantizeLinear) was already given ``code``."""
    v = ctx.layer.quant
    return v is not None and any(
        g.code == code and d.quant is not None and d.quant.exclude[:1] == v.exclude[:1]
        for d in ctx.layers for g in d.diagnoses)


@detector("quant_range_clipped")
def quant_range_clipped(ctx: Context) -> Diagnosis | None:
    v = ctx.layer.quant
    q = ctx.match.b.attrs.get("quantized")
    if v is None or q is None or v.ok or v.clipped < CLIPPED_SHARE:
        return None
    scale = np.asarray(ctx.match.transform.apply(_scales(q, tuple(ctx.match.b.shape))), np.float64)
    if scale.shape != ctx.a.shape:
        return None
    if _named_before(ctx, "quant_range_clipped"):
        return None
    keep_a, keep_b = _kept(q, scale)
    a, b = keep_a(np.asarray(ctx.a, np.float64)), keep_b(np.asarray(ctx.b, np.float64))
    zp = float(np.mean(q["zero_point"]))
    lo, hi = (q["qmin"] - zp) * scale, (q["qmax"] - zp) * scale
    # every element held at a limit A is past, by any amount: what the layer is without clipping
    clipped = ((np.abs(b - hi) <= scale / 2) & (a > hi)) | ((np.abs(b - lo) <= scale / 2) & (a < lo))
    rest = ~clipped
    unclipped = steps_of(a[rest], b[rest], scale[rest]) if np.any(rest) else float("inf")
    if not unclipped < v.steps / 2:
        return None  # the clipped elements are not what makes the error
    top, bottom = float(np.max(hi)), float(np.min(lo))
    a_max, a_min = float(a.max()), float(a.min())
    over_hi, under_lo = a_max > top + float(scale.mean()), a_min < bottom - float(scale.mean())
    side = "highest" if over_hi and not under_lo else "lowest" if under_lo and not over_hi else "lowest and highest"
    reach = max(a_max / top if over_hi and top > 0 else 0.0, a_min / bottom if under_lo and bottom < 0 else 0.0)
    evidence = {
        "clipped_share": v.clipped, "range_min": bottom, "range_max": top, "a_min": a_min, "a_max": a_max,
        "steps": v.steps, "steps_unclipped": unclipped, "scale": v.scale,
    }
    message = (
        f"B's {q['dtype']} range of this tensor is clipped: {100 * v.clipped:.1f}% of its elements sit at the "
        f"{side} level of [{bottom:.4g}, {top:.4g}] (scale {v.scale:.4g}, zero point {v.zero_point}) while A's "
        f"values reach [{a_min:.4g}, {a_max:.4g}]" + (f" ({reach:.1f}× the range)" if reach > 1 else "")
        + f"; without them the layer is {unclipped:.2f} steps off (rounding alone: {ROUNDING_FLOOR:.2f}), with them "
        f"{v.steps:.1f}. Calibrate with a representative dataset that covers these inputs, or keep this layer in "
        f"float: exclude {', '.join(map(repr, v.exclude))} from quantization."
    )
    return Diagnosis(code="quant_range_clipped", layer=ctx.match.a.name, message=message, evidence=evidence)


#: per-tensor weights starve an output channel when it reaches at most this many of the levels
#: (of 127 for int8) while another channel reaches this many times more
STARVED_LEVELS = 16
LEVELS_SPREAD = 8


@detector("quant_granularity")
def quant_granularity(ctx: Context) -> Diagnosis | None:
    """One weight scale for all output channels (per tensor) where the channels' ranges differ
    so much that some keep only a few levels: read from B's own int kernel (``weight_levels``)."""
    v = ctx.layer.quant
    if v is None or not v.born_here or v.clipped >= CLIPPED_SHARE or v.weight_per_channel is not False:
        return None
    levels = np.asarray(v.weight_levels, np.int64)
    if levels.size < 2 or levels.max() < LEVELS_SPREAD * max(int(levels.min()), 1) or levels.min() > STARVED_LEVELS:
        return None
    if _named_before(ctx, "quant_granularity"):
        return None
    starved = [int(i) for i in np.flatnonzero(levels <= STARVED_LEVELS)]
    shown = ", ".join(map(str, starved[:8])) + (", …" if len(starved) > 8 else "")
    evidence = {"channels": float(levels.size), "starved_channels": float(len(starved)),
                "min_levels": float(levels.min()), "max_levels": float(levels.max()), "steps": v.steps}
    message = (
        f"B quantizes this layer's weights with one scale for all {levels.size} output channels (per tensor), and "
        f"their ranges differ {levels.max() / max(int(levels.min()), 1):.0f}×: {len(starved)} channel(s) ({shown}) "
        f"reach only ±{int(levels.min())} of the ±{int(levels.max())} levels, so their weights are rounded to a few "
        f"values and the layer is {v.steps:.2f} steps off alone. Quantize the weights per channel (ONNX Runtime: "
        "quantize_static(..., per_channel=True); TFLite quantizes conv kernels per channel by default), or keep "
        f"the layer in float: exclude {', '.join(map(repr, v.exclude))}."
    )
    return Diagnosis(code="quant_granularity", layer=ctx.match.a.name, message=message, evidence=evidence)
