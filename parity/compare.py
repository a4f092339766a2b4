"""Compare every matched pair: metrics, tolerance, verdict → :class:`LayerDiff`.

Pairs are taken in model A's execution order, which is the spine of every
report.  Model B's tensor is brought into A's layout by the match's transform
first, so indices (``max_abs_index``) are in A's layout.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .detail import layer_detail
from .metrics import compute_metrics, verdict
from .records import Alignment, LayerDiff, Match
from .tolerance import Tolerances

__all__ = ["compare", "compare_match", "DETAILED_LAYERS"]

#: how many flagged layers (from the first divergence on) keep a heat map and histograms
DETAILED_LAYERS = 8


def compare_match(position: int, match: Match, tolerances: Tolerances) -> LayerDiff:
    a, b = match.a, match.b
    assert a.value is not None and b.value is not None, "taps were captured without values"
    value_b = match.transform.apply(b.value)
    rtol, atol = tolerances.for_layer(a.name, a.dtype, b.dtype)
    metrics = compute_metrics(a.value, np.asarray(value_b), rtol, atol)
    ok, reasons = verdict(metrics, rtol, atol, min_argmax_agreement=tolerances.min_argmax_agreement)
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
    )


def compare(alignment: Alignment, tolerances: Tolerances) -> tuple[LayerDiff, ...]:
    """One LayerDiff per match, in model A's execution order; the first
    :data:`DETAILED_LAYERS` flagged layers and any flagged output carry a
    :class:`~parity.records.LayerDetail`."""
    ordered = sorted(alignment.matches, key=lambda m: m.a.index)
    layers = [compare_match(i, m, tolerances) for i, m in enumerate(ordered)]
    flagged = [i for i, d in enumerate(layers) if not d.ok]
    chosen = set(flagged[:DETAILED_LAYERS]) | {i for i in flagged if layers[i].role == "output"}
    for i in sorted(chosen):
        match = ordered[i]
        value_b = np.asarray(match.transform.apply(match.b.value))
        detail = layer_detail(np.asarray(match.a.value), value_b, match.a.layout)
        layers[i] = dataclasses.replace(layers[i], detail=detail)
    return tuple(layers)
