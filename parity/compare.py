"""Compare every matched pair: metrics, tolerance, verdict → :class:`LayerDiff`.

Pairs are taken in model A's execution order, which is the spine of every
report.  Model B's tensor is brought into A's layout by the match's transform
first, so indices (``max_abs_index``) are in A's layout.
"""

from __future__ import annotations

import numpy as np

from .detail import layer_detail
from .metrics import compute_metrics, verdict
from .records import Alignment, LayerDiff, Match
from .spill import release
from .tolerance import Tolerances

__all__ = ["compare", "compare_match", "DETAILED_LAYERS"]

#: how many flagged layers (from the first divergence on) keep a heat map and histograms
DETAILED_LAYERS = 8


def compare_match(position: int, match: Match, tolerances: Tolerances, *, detail_if_flagged: bool = False) -> LayerDiff:
    """One pair's LayerDiff; with ``detail_if_flagged``, a flagged pair also gets its
    :class:`~parity.records.LayerDetail` from the same view of B (transposed once, not twice)."""
    a, b = match.a, match.b
    assert a.value is not None and b.value is not None, "taps were captured without values"
    value_b = np.asarray(match.transform.apply(b.value))  # a view in A's layout: no copy
    rtol, atol = tolerances.for_layer(a.name, a.dtype, b.dtype)
    metrics = compute_metrics(a.value, value_b, rtol, atol)
    ok, reasons = verdict(metrics, rtol, atol, min_argmax_agreement=tolerances.min_argmax_agreement)
    detail = layer_detail(np.asarray(a.value), value_b, a.layout) if detail_if_flagged and not ok else None
    return LayerDiff(
        index=position,
        a_name=a.name,
        b_name=b.name,
        op=a.op,
        b_op=b.op,
        shape=tuple(a.shape),
        b_shape=tuple(b.shape),
        dtype=a.dtype if a.dtype == b.dtype else f"{a.dtype}/{b.dtype}",
        transform=match.transform.label,
        ambiguous=match.transform.ambiguous,
        how=match.how,
        confidence=match.confidence,
        metrics=metrics,
        rtol=rtol,
        atol=atol,
        ok=ok,
        reasons=reasons,
        role=a.role,
        detail=detail,
    )


def compare(alignment: Alignment, tolerances: Tolerances) -> tuple[LayerDiff, ...]:
    """One LayerDiff per match, in model A's execution order; the first
    :data:`DETAILED_LAYERS` flagged layers and any flagged output carry a
    :class:`~parity.records.LayerDetail`."""
    ordered = sorted(alignment.matches, key=lambda m: m.a.index)
    layers = []
    flagged = 0
    for i, match in enumerate(ordered):
        # the first DETAILED_LAYERS flagged layers and every flagged output get details
        wants_detail = flagged < DETAILED_LAYERS or match.a.role == "output"
        layer = compare_match(i, match, tolerances, detail_if_flagged=wants_detail)
        flagged += not layer.ok
        layers.append(layer)
        release(match.a.value)  # a spilled pair's pages leave the process once compared
        release(match.b.value)
    return tuple(layers)
