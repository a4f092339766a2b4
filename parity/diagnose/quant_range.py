"""A quantized tensor's range applied wrongly: ``quant_range_clipped``.

``quant_range_clipped``: B's quantized tensor sits at its integer range's lowest or highest
level (``(qmin − zp)·scale``, ``(qmax − zp)·scale``) for a share of its elements while A's float
values go past that level — the calibrated range (or a scale edited by hand) is narrower than
the values this layer computes — and without those elements the layer is back near the
rounding floor: the clipping is the error.
"""

from __future__ import annotations

import numpy as np

from ..quantsteps import CLIPPED_SHARE, ROUNDING_FLOOR, _scales, steps_of
from ..records import Diagnosis
from .base import Context, detector

__all__: list[str] = []


@detector("quant_range_clipped")
def quant_range_clipped(ctx: Context) -> Diagnosis | None:
    v = ctx.layer.quant
    q = ctx.match.b.attrs.get("quantized")
    if v is None or q is None or v.ok or v.clipped < CLIPPED_SHARE:
        return None
    scale = np.asarray(ctx.match.transform.apply(_scales(q, tuple(ctx.match.b.shape))), np.float64)
    if scale.shape != ctx.a.shape:
        return None
    a, b = np.asarray(ctx.a, np.float64), np.asarray(ctx.b, np.float64)
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
