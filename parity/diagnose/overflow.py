"""``mask_overflow``: values beyond half precision's range turned into ±inf / NaN in B.

A large-negative attention mask (``-1e9``, ``torch.finfo(torch.float32).min``) is finite in
float32 and ``-inf`` in float16 (whose largest magnitude is 65504): added to the scores it gives
``-inf``, harmless where a row keeps one finite score, and ``NaN`` where a whole row is masked
(the softmax computes ``-inf - (-inf)``).  The signature: B is non-finite exactly where A — or A's
own input of the layer, along the row the layer reduces — holds values beyond float16's range.
"""

from __future__ import annotations

import numpy as np

from ..records import Diagnosis
from .base import Context, detector

#: the largest finite float16
HALF_MAX = 65504.0


@detector("mask_overflow")
def mask_overflow(ctx: Context) -> Diagnosis | None:
    a, b = np.asarray(ctx.a), np.asarray(ctx.b)
    if a.shape != b.shape or a.dtype.kind != "f":
        return None
    bad = ~np.isfinite(b) & np.isfinite(a)
    if not bad.any():
        return None
    beyond = np.abs(a) > HALF_MAX
    x = ctx.own_input()
    rows = np.zeros_like(bad)
    extreme = float(np.max(np.abs(a[bad])))
    if x is not None and np.shape(x) == a.shape and a.ndim >= 1:
        x = np.asarray(x, dtype=np.float64)
        big = np.abs(x) > HALF_MAX
        rows = np.broadcast_to(big.any(axis=-1, keepdims=True), a.shape)
        if big.any():
            extreme = max(extreme, float(np.max(np.abs(x[big]))))
    explained = bad & (beyond | rows)
    if explained.sum() < 0.99 * bad.sum() or extreme <= HALF_MAX:
        return None
    nan_rows = int(np.isnan(b).reshape(-1, a.shape[-1]).all(axis=-1).sum()) if a.ndim >= 1 else 0
    evidence = {
        "nonfinite_in_b": float(bad.sum()), "explained_share": float(explained.sum() / bad.sum()),
        "largest_magnitude": extreme, "half_max": HALF_MAX, "rows_all_nan_in_b": float(nan_rows),
    }
    msg = (
        f"B turns values beyond float16's range into ±inf: where B's {ctx.match.b.op} gives {int(bad.sum())} "
        f"non-finite value(s) ({nan_rows} row(s) all NaN), A's values or its input along the row reach "
        f"{extreme:.3g}, past float16's largest finite value {HALF_MAX:g}. A large-negative attention mask (-1e9, "
        "torch.finfo(torch.float32).min) overflows to -inf in half precision, and a row masked everywhere becomes "
        "NaN. Use a mask within half range (torch.finfo(torch.float16).min, -1e4) or mask with where()/a boolean "
        "mask, or keep the masked softmax in float32."
    )
    return Diagnosis(code="mask_overflow", layer=ctx.match.a.name, message=msg, evidence=evidence)
