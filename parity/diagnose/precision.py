"""Low precision: one side computes in float16 / bfloat16 and the error is its rounding.

A tensor computed in half precision carries a relative error of a few unit
roundoffs ``u`` (float16: 2⁻¹¹ ≈ 4.9e-4, bfloat16: 2⁻⁸ ≈ 3.9e-3), growing
slowly with depth.  The side's precision is read from its recorded dtype or,
when the values were cast back to float32, from the values themselves: every
element exactly representable in float16 (or with the low 16 bits of its
float32 pattern zero: bfloat16) while the other side's are not.  The diagnosis
holds when the measured relative error is at most ``_MAX_ROUNDOFFS·u`` and the
error looks like noise (no NaN/Inf mismatch, cosine near 1): a real bug in a
half-precision model gives errors far above that.
"""

from __future__ import annotations

import numpy as np

from ..records import Diagnosis
from .base import Context, detector

__all__ = ["diagnose_dtype_precision", "precision_of", "UNIT_ROUNDOFF"]

#: unit roundoff (half the machine epsilon) of each precision
UNIT_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "float64": 2.0**-53}
#: the tolerance to compare at, per precision
RTOL = {"float16": 1e-2, "bfloat16": 5e-2}
#: the error a correct half-precision computation stays under, in unit roundoffs
_MAX_ROUNDOFFS = 20.0


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x[np.isfinite(x)] if x.dtype.kind == "f" else x.ravel()


def _share_representable(x: np.ndarray, precision: str) -> float:
    """Share of the (finite, nonzero) elements of ``x`` that ``precision`` represents exactly."""
    v = _finite(x)
    if v.dtype.kind != "f" or v.size == 0:
        return 0.0
    v = v[v != 0]
    if v.size == 0:
        return 0.0
    if precision == "float16":
        with np.errstate(over="ignore"):
            return float(np.mean(v.astype(np.float16).astype(v.dtype) == v))
    if precision == "bfloat16":
        bits = v.astype(np.float32)
        exact = bits.astype(v.dtype) == v
        return float(np.mean(exact & ((bits.view(np.uint32) & 0xFFFF) == 0)))
    return 0.0


def precision_of(dtype: str, value: np.ndarray | None, other: np.ndarray | None) -> tuple[str, str] | None:
    """``(precision, how)`` when a tensor was computed in half precision, else None."""
    name = str(dtype).lower()
    for p in ("bfloat16", "float16"):
        if p in name or (p == "float16" and name in ("half", "f16")):
            return p, "recorded dtype"
    if value is None or value.size < 16:
        return None
    for p in ("bfloat16", "float16"):  # bfloat16 first: its values are rarely float16-exact, and vice versa
        if _share_representable(value, p) == 1.0 and (other is None or _share_representable(other, p) < 0.5):
            return p, f"all values exactly representable in {p}"
    return None


def diagnose_dtype_precision(ctx: Context) -> Diagnosis | None:
    m, d = ctx.match, ctx.layer
    met = d.metrics
    if met.nonfinite_mismatch or met.nan_b or met.inf_b or met.nan_a or met.inf_a or not np.isfinite(met.rel_err):
        return None  # overflow or NaN: not rounding
    found = []
    for side, tap, value, other in (("B", m.b, ctx.b, ctx.a), ("A", m.a, ctx.a, ctx.b)):
        p = precision_of(tap.dtype, value, other)
        if p is not None:
            found.append((side, tap, *p))
    if not found:
        return None
    # the coarser precision sets the level
    side, tap, precision, how = max(found, key=lambda f: UNIT_ROUNDOFF[f[2]])
    u = UNIT_ROUNDOFF[precision]
    rel = float(met.rel_err)
    if rel > _MAX_ROUNDOFFS * u or (met.cosine < 1.0 - (_MAX_ROUNDOFFS * u) ** 2 and met.norm_a > 0):
        return None  # far more than rounding: a real difference in a half-precision model
    rtol = RTOL[precision]
    msg = (
        f"Model {side} computes {tap.name!r} in {precision} ({how}): its unit roundoff is {u:.1e}, and the "
        f"measured relative error {rel:.1e} is {rel / u:.1f}× that — the level {precision} rounding predicts, not a "
        f"conversion bug. Compare at {precision}'s tolerance (rtol={rtol:g}) or run model {side} in float32 "
        "(Keras: dtype='float32' / no mixed_float16 policy; torch: .float()) to see the float32 residue."
    )
    evidence = {
        "unit_roundoff": u,
        "expected_rel_err": u,
        "max_rel_err_expected": _MAX_ROUNDOFFS * u,
        "rel_err": rel,
        "roundoffs": rel / u,
        "suggested_rtol": rtol,
        "side_b": 1.0 if side == "B" else 0.0,
        "half_precision_sides": float(len({f[0] for f in found})),
        "float16": 1.0 if precision == "float16" else 0.0,
        "bfloat16": 1.0 if precision == "bfloat16" else 0.0,
        "dtype_recorded": 1.0 if how == "recorded dtype" else 0.0,
        "cosine": float(met.cosine),
    }
    return Diagnosis(code="dtype_precision", layer=m.a.name, message=msg, evidence=evidence)


detector("dtype_precision")(diagnose_dtype_precision)
