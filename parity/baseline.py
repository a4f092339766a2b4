"""Trained-vs-untrained drift: the seed-000 puzzle, measured.

Some conversion bugs hide with freshly initialised weights: BatchNorm starts
with mean 0 / variance 1, where an epsilon of 1e-3 instead of 1e-5 changes
nothing visible; trained statistics (variances of 0.01) make it a 5% error.
So a layer's error is compared with the same layer's error in a *baseline*
pair converted the same way, and a layer whose error grew by more than
``factor`` is flagged even when its trained error alone is under tolerance.

``parity.diff(a, b, x, baseline=(a0, b0))`` takes the baseline pair;
``parity.drift(model_a, convert, x)`` builds the baselines itself: a freshly
initialised twin of ``model_a`` and a twin with randomised normalisation
statistics, each converted by the user's ``convert``.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from typing import Any, Callable

import numpy as np

from .records import LayerDiff, Report

__all__ = ["apply_baseline", "drift", "DRIFT_FACTOR", "fresh_twin", "randomized_stats_twin"]

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
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        twin = copy.deepcopy(model)
        for m in twin.modules():
            if hasattr(m, "reset_running_stats"):
                m.reset_running_stats()
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        return twin.eval()
    from .capture.keras import keras_module
    from .errors import ModelError

    keras = keras_module(model)  # Keras 3, Keras 2 or tf_keras
    if keras is not None and isinstance(model, keras.Model):
        try:
            return keras.models.clone_model(model)  # new layers, fresh initialisers
        except Exception as exc:  # Keras 2 cannot clone a subclassed model
            raise ModelError(
                f"parity.drift could not build a fresh twin of {type(model).__name__} with "
                f"{keras.__name__}.models.clone_model ({type(exc).__name__}: {exc}); pass baseline=(a0, b0) to "
                "parity.diff instead, with a0 built from your model's code."
            ) from exc

    raise ModelError(
        f"parity.drift can build a fresh twin of a torch.nn.Module or a keras.Model, not a {type(model).__name__}; "
        "pass baseline=(a0, b0) to parity.diff instead."
    )


def randomized_stats_twin(model: Any, seed: int = 0) -> Any:
    """A fresh twin whose normalisation statistics are random (mean ~ N(0, 0.5), variance in
    [0.005, 0.05]): not the defaults, so they cannot mask an epsilon or statistics bug."""
    twin = fresh_twin(model)
    rng = np.random.default_rng(seed)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(twin, torch.nn.Module):
        with torch.no_grad():
            for m in twin.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
                    n = m.num_features
                    m.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.5, n).astype("float32")))
                    m.running_var.copy_(torch.from_numpy(rng.uniform(0.005, 0.05, n).astype("float32")))
        return twin
    for layer in getattr(twin, "layers", []):
        if type(layer).__name__ == "BatchNormalization":
            n = int(layer.moving_mean.shape[0])
            layer.moving_mean.assign(rng.normal(0, 0.5, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.005, 0.05, n).astype("float32"))
    return twin


@dataclasses.dataclass(frozen=True)
class DriftResult:
    """The trained pair's report with drift against the fresh baseline, and the baselines' reports."""

    report: Report
    fresh: Report
    randomized: Report

    @property
    def flagged(self) -> tuple[LayerDiff, ...]:
        return tuple(d for d in self.report.layers if d.drift is not None and not d.ok and d.drift > DRIFT_FACTOR)

    def summary(self) -> str:
        if not self.flagged:
            return "✓ NO DRIFT: no layer's error grew with training beyond round-off"
        d = self.flagged[0]
        hidden = self.randomized.layer(d.a_name).ok is False if d.a_name in {x.a_name for x in self.randomized.layers} else False
        return (
            f"✗ DRIFT at {d.a_name} ({d.op}): error {d.baseline_err:.1e} with fresh weights, {d.rel_err:.1e} trained "
            f"({d.drift:,.0f}×)"
            + ("; random normalisation statistics show it without training" if hidden else "")
        )

    def __rich_console__(self, console, options):  # pragma: no cover - exercised via rich
        from rich.text import Text

        yield Text(self.summary(), style="bold red" if self.flagged else "bold green")
        yield self.report


def drift(model_a: Any, convert: Callable[[Any], Any], inputs: Any = None, *, factor: float = DRIFT_FACTOR,
          seed: int = 0, **diff_options: Any) -> DriftResult:
    """Per-layer drift of ``convert(model_a)`` against baselines converted the same way."""
    from .api import diff

    fresh = fresh_twin(model_a)
    randomized = randomized_stats_twin(model_a, seed=seed)
    fresh_report = diff(fresh, convert(fresh), inputs, seed=seed, **diff_options)
    randomized_report = diff(randomized, convert(randomized), inputs, seed=seed, **diff_options)
    trained = diff(model_a, convert(model_a), inputs, seed=seed, **diff_options)
    return DriftResult(report=apply_baseline(trained, fresh_report, factor), fresh=fresh_report, randomized=randomized_report)
