"""Trained-vs-untrained drift: the seed-000 puzzle, measured.

Some conversion bugs hide with freshly initialised weights: BatchNorm starts
with mean 0 / variance 1, where an epsilon of 1e-3 instead of 1e-5 changes
nothing visible; trained statistics (variances of 0.01) make it a 5% error.
So a layer's error is compared with the same layer's error in a *baseline*
pair converted the same way, and a layer whose error grew by more than
``factor`` is flagged even when its trained error alone is under tolerance.

``parity.diff(a, b, x, baseline=(a0, b0))`` takes the baseline pair;
``parity.drift(model_a, convert, x)`` (:mod:`parity.drift_run`) builds the baselines
itself: a freshly initialised twin of ``model_a`` and a twin with randomised
normalisation statistics (made by the model's backend, :meth:`Backend.twin`), each
converted by the user's ``convert``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .errors import ModelError
from .records import LayerDiff, Report

__all__ = ["apply_baseline", "DRIFT_FACTOR", "fresh_twin", "randomized_stats_twin"]

#: a layer whose error grew by more than this over the baseline's is flagged
DRIFT_FACTOR = 10.0
#: errors below this share of a layer's allowed error are round-off, whatever their ratio
_NOISE_SHARE = 0.1
#: the smallest baseline error a ratio is taken against (float32 round-off)
_FLOOR = 1e-7


def apply_baseline(report: Report, baseline: Report, factor: float = DRIFT_FACTOR) -> Report:
    """``report`` with each layer's ``baseline_err`` and ``drift`` set, and layers whose
    error grew more than ``factor``× over the baseline's (beyond round-off) flagged."""
    base = {d.a_name: d for d in baseline.layers}
    layers: list[LayerDiff] = []
    grown: list[LayerDiff] = []
    for d in report.layers:
        b = base.get(d.a_name)
        if b is None or not np.isfinite(d.rel_err) or not np.isfinite(b.rel_err):
            layers.append(d)
            continue
        ratio = d.rel_err / max(b.rel_err, _FLOOR)
        d = dataclasses.replace(d, baseline_err=b.rel_err, drift=float(ratio))
        if ratio > factor and d.rel_err >= _NOISE_SHARE * d.allowed_rel:
            reason = (
                f"error grew {ratio:,.0f}× over the baseline pair's ({b.rel_err:.1e} → {d.rel_err:.1e}), "
                f"more than the {factor:g}× allowed"
            )
            d = dataclasses.replace(d, ok=False, reasons=(*d.reasons, reason))
            grown.append(d)
        layers.append(d)
    notes = list(report.notes)
    if grown:
        first = grown[0]
        notes.append(
            f"{first.a_name} ({first.op}): its error is {first.drift:,.0f}× larger than in the baseline pair "
            f"({first.baseline_err:.1e} → {first.rel_err:.1e}). A bug that fresh weights hide — with "
            "BatchNorm's initial statistics (mean 0, variance 1) an epsilon or statistics mismatch changes "
            "almost nothing, with trained ones it does. That is why a hand-rolled check grows with training "
            "while the predicted labels still agree."
        )
    return dataclasses.replace(report, layers=tuple(layers), notes=tuple(notes))


def fresh_twin(model: Any) -> Any:
    """A copy of ``model`` with freshly initialised parameters and statistics."""
    return _twin(model, "fresh")


def randomized_stats_twin(model: Any, seed: int = 0) -> Any:
    """A fresh twin whose normalisation statistics are random (mean ~ N(0, 0.5), variance in
    [0.005, 0.05]): not the defaults, so they cannot mask an epsilon or statistics bug."""
    return _twin(model, "randomized_stats", seed=seed)


def _twin(model: Any, kind: str, seed: int = 0) -> Any:
    """The model of ``model``'s backend's twin of ``kind``; a :class:`ModelError` when its
    backend makes none (a graph format, a Keras layer that is not a model)."""
    from .capture import backend_for

    try:
        backend = backend_for(model)
    except ModelError:
        backend = None
    twin = backend.twin(kind, seed=seed) if backend is not None else None
    if twin is None:
        raise ModelError(
            f"parity.drift can build a fresh twin of a torch.nn.Module or a keras.Model, not a {type(model).__name__}; "
            "pass baseline=(a0, b0) to parity.diff instead."
        )
    return twin.model
