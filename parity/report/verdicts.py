"""What judged a report's layers, and the tightest tolerance it passes at, in words.

Plain strings every view shares (the terminal, the HTML page, the pytest failure text):
the float64 reference's line, each layer's error in units of its noise floor ("× noise"),
and the minimum tolerance that would pass — with the ready ``[tool.parity]`` /
``tolerances=`` lines, and the layers that sit close under a loose tolerance.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["judged_error", "noise_times", "reference_line", "suggestion_lines", "NEAR_TOLERANCE"]

#: a passing layer that uses this share of its tolerance or more is named under the table
NEAR_TOLERANCE = 0.1


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    if math.isinf(x):
        return "inf"
    return f"{x:,.0f}" if x >= 100 else f"{x:.2g}"


def judged_error(d: Any) -> float:
    """The error a layer's verdict is on: against the float64 reference where one judged it."""
    return d.ref_err if d.ref_err is not None else d.rel_err


def noise_times(d: Any) -> str:
    """A layer's error in units of its noise floor, ``"480×"`` (``""`` without a float64 reading)."""
    r = d.noise_ratio
    if r is None:
        return ""
    if math.isinf(r):
        return "∞×"
    return f"{r:,.0f}×" if r >= 10 else f"{r:.2g}×"


def reference_line(report: Any) -> str | None:
    """What judged the layers, when it was not the dtype table alone."""
    ref = report.reference
    if ref is None:
        return None
    if ref.kind != "float64":
        return "judged by the per-dtype tolerance table: " + (ref.note or "no float64 twin ran")
    side = "A" if ref.side == "a" else "B"
    other = "B" if side == "A" else "A"
    judged = [d for d in report.layers if d.ref_err is not None]
    worst = max(judged, key=lambda d: d.noise_ratio or 0.0, default=None)
    text = (f"judged against a float64 twin of model {side}: each float32 layer of {other} may be "
            f"{ref.factor:g}× {side}'s own float32 noise floor there + {ref.floor:.0e} from float64 "
            f"({ref.judged} of {len(report.layers)} layers)")
    if worst is not None and worst.noise_ratio is not None:
        text += f"; the largest is {noise_times(worst)} noise at {worst.a_name}"
    return text


def suggestion_lines(report: Any) -> list[str]:
    """The tightest tolerance the pair passes at, ready to paste, and the passing layers that
    use much of a loose tolerance (a bug may hide under it)."""
    s = report.suggestion
    if s is None:
        return []
    lines = []
    if s.rtol == 0 and s.atol is not None:
        lines.append(f"every layer passes at rtol 0 (atol {_fmt(s.atol)} alone)")
    elif s.rtol is not None and s.atol is not None:
        where = f" (set by {s.rtol_layer})" if s.rtol_layer else ""
        lines.append(
            f"tightest tolerance that passes: rtol = {_fmt(s.rtol)}, atol = {_fmt(s.atol)}{where} — "
            f"[tool.parity] rtol = {_fmt(s.rtol)} atol = {_fmt(s.atol)}, or "
            f"parity.diff(..., rtol={_fmt(s.rtol)}, atol={_fmt(s.atol)})"
        )
    if s.factor is not None and report.reference is not None:
        lines.append(
            f"against float64 it passes at a noise factor of {_fmt(s.factor)} or more"
            + (f" (set by {s.factor_layer})" if s.factor_layer else "")
            + f"; parity allows {report.reference.factor:g}"
        )
    if s.unfixable:
        lines.append(
            "no tolerance makes " + ", ".join(s.unfixable[:5]) + (", …" if len(s.unfixable) > 5 else "")
            + " pass: its argmax or NaN/Inf pattern differs"
        )
    near = sorted((d for d in report.layers if d.ok and d.tolerance_ratio >= NEAR_TOLERANCE),
                  key=lambda d: -d.tolerance_ratio)
    if near and report.reference is None:
        lines.append(
            f"{len(near)} passing layer(s) use {100 * NEAR_TOLERANCE:.0f}% of their tolerance or more: "
            + ", ".join(f"{d.a_name} ({100 * d.tolerance_ratio:.0f}%)" for d in near[:4])
            + (", …" if len(near) > 4 else "")
            + " — rounding, or a bug under a loose rtol? --reference float64 tells them apart"
        )
    return lines
