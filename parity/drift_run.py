"""``parity.drift``: a trained model's conversion against baselines converted the same way.

It builds the baseline pairs (:func:`parity.baseline.fresh_twin`,
:func:`parity.baseline.randomized_stats_twin`), runs :func:`parity.diff` on each, and sets
each layer's drift with :func:`parity.baseline.apply_baseline`.  It sits above
:mod:`parity.api` (it calls ``diff``), so that :mod:`parity.baseline`, which ``diff`` uses,
imports nothing of ``api``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from .api import diff_with
from .pipeline import DiffOptions
from .baseline import DRIFT_FACTOR, apply_baseline, fresh_twin, randomized_stats_twin
from .records import LayerDiff, Report

__all__ = ["drift", "DriftResult"]


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
    """Per-layer drift of ``convert(model_a)`` against baselines converted the same way: a freshly
    initialised twin of ``model_a`` and a twin with random normalisation statistics."""
    options = DiffOptions.build(where="parity.drift", seed=seed, **diff_options)  # refused before any conversion
    fresh = fresh_twin(model_a)
    randomized = randomized_stats_twin(model_a, seed=seed)
    fresh_report = diff_with(fresh, convert(fresh), inputs, options)
    randomized_report = diff_with(randomized, convert(randomized), inputs, options)
    trained = diff_with(model_a, convert(model_a), inputs, options)
    return DriftResult(report=apply_baseline(trained, fresh_report, factor), fresh=fresh_report, randomized=randomized_report)
