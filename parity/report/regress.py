"""Which layers got worse between two runs — for catching regressions when a
converter (or a framework) is upgraded.

Layers are matched by model A's name.  A layer is *worse* when it passed before
and fails now, or when its error, measured against what its tolerance allows,
grew by more than ``factor`` and is now at least ``floor`` of the allowance
(tiny errors doubling at round-off level is noise, not a regression).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from ..quantsteps import STEP_LIMIT
from ..records import Report

__all__ = ["LayerChange", "ReportComparison", "compare_reports"]


@dataclass(frozen=True)
class LayerChange:
    a_name: str
    op: str
    #: "now fails", "worse", "better", "now passes", "same", "new", "gone"
    status: str
    old_err: float | None = None
    new_err: float | None = None
    old_ratio: float | None = None  # error over the error the tolerance allows (a quantized layer: steps / limit)
    new_ratio: float | None = None
    #: the error in units of the float32 noise floor, where a float64 reference judged the layer
    old_noise: float | None = None
    new_noise: float | None = None
    #: a quantized layer's steps of its scale (alone, else cumulative), before and now
    old_steps: float | None = None
    new_steps: float | None = None

    @property
    def growth(self) -> float | None:
        if self.old_ratio is None or self.new_ratio is None:
            return None
        if self.old_ratio == 0:
            return float("inf") if self.new_ratio > 0 else 1.0
        return self.new_ratio / self.old_ratio


@dataclass(frozen=True)
class ReportComparison:
    old: Report
    new: Report
    changes: tuple[LayerChange, ...]
    factor: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def worse(self) -> tuple[LayerChange, ...]:
        return tuple(c for c in self.changes if c.status in ("now fails", "worse"))

    @property
    def better(self) -> tuple[LayerChange, ...]:
        return tuple(c for c in self.changes if c.status in ("now passes", "better"))

    @property
    def regressed(self) -> bool:
        """True when a layer got worse, a layer compared before is no longer compared,
        or the verdict went from pass to fail."""
        gone = any(c.status == "gone" for c in self.changes)
        return bool(self.worse) or gone or (self.old.ok and not self.new.ok)

    def summary(self) -> str:
        counts = {s: sum(1 for c in self.changes if c.status == s) for s in ("now fails", "worse", "better", "now passes", "new", "gone")}
        parts = [f"{n} {s}" for s, n in counts.items() if n]
        head = "✗ REGRESSION" if self.regressed else "✓ NO REGRESSION"
        verdicts = f"old {'passes' if self.old.ok else 'diverges'}, new {'passes' if self.new.ok else 'diverges'}"
        return f"{head}: {verdicts}; " + (", ".join(parts) if parts else f"all {len(self.changes)} layers within {self.factor:g}× of before")

    def __rich_console__(self, console, options) -> Iterator:  # pragma: no cover - exercised via rich
        from rich.console import RenderableType
        from rich.text import Text

        from .columns import Column, fitted_table, left_out_line
        from .console import fmt_float
        from .text import shown

        # layer names, op names and notes come from the reports' files: shown(), never markup
        yield Text(shown(self.summary()), style="bold red" if self.regressed else "bold green")
        for note in self.notes:
            yield Text(f"note: {shown(note)}", style="yellow")
        rows = [c for c in self.changes if c.status != "same"]
        if not rows:
            return
        style = {"now fails": "red", "worse": "red", "better": "green", "now passes": "green", "new": "yellow", "gone": "yellow"}
        columns = [
            Column("layer (A)", floor=max(len(shown(c.a_name)) for c in rows), give=1),
            Column("op", floor=8, give=2, drop=1),
            Column("rel err\nbefore", justify="right"),
            Column("rel err\nnow", justify="right"),
            Column("× allowed\nbefore → now", justify="right"),
            Column("× noise\nbefore → now", justify="right"),
            Column("change"),
        ]
        with_noise = any(c.old_noise is not None or c.new_noise is not None for c in rows)
        if not with_noise:
            del columns[-2]
        quantized = any(c.old_steps is not None or c.new_steps is not None for c in rows)
        if quantized:  # quantized layers judged in steps of their scale, before the change column
            columns.insert(len(columns) - 1, Column("steps\nbefore → now", justify="right"))
        for c in rows:
            ratio = f"{c.old_ratio:.3g} → {c.new_ratio:.3g}" if c.old_ratio is not None and c.new_ratio is not None else "–"
            growth = c.growth
            label = c.status + (f" ({growth:.3g}×)" if growth not in (None, 1.0) and c.status in ("worse", "better") else "")
            cells: tuple[RenderableType, ...] = (
                Text(shown(c.a_name)), Text(shown(c.op)), fmt_float(c.old_err), fmt_float(c.new_err), ratio,
                *((f"{_times(c.old_noise)} → {_times(c.new_noise)}",) if with_noise else ()),
                Text(label, style=style[c.status]),
            )
            if quantized:
                steps = " → ".join("–" if v is None else f"{v:.2f}" for v in (c.old_steps, c.new_steps))
                cells = (*cells[:-1], steps, cells[-1])
            for col, cell in zip(columns, cells):
                col.cells.append(cell)
        table, dropped = fitted_table(columns, options.max_width, gap=2)
        yield table
        left_out = left_out_line(dropped, options.max_width)
        if left_out is not None:
            yield left_out


def _ratio(d) -> float:
    """The layer's error over what its verdict allows: steps over the limit for a quantized layer
    judged in steps of its scale, else the error over the tolerance's."""
    return d.quant.steps / d.quant.limit if d.quant is not None else d.tolerance_ratio


def _steps(d) -> float | None:
    return d.quant.steps if d.quant is not None else None


def _times(r: float | None) -> str:
    if r is None:
        return "–"
    return "∞" if r == float("inf") else f"{r:,.0f}×" if r >= 10 else f"{r:.2g}×"


def compare_reports(old: Report, new: Report, *, factor: float = 2.0, floor: float = 0.1) -> ReportComparison:
    """Compare two reports of the same pair layer by layer (model A's names)."""
    if factor <= 1:
        from ..errors import ParityError

        raise ParityError(f"factor must be above 1 (how much worse counts as worse), got {factor}.")
    before = {d.a_name: d for d in old.layers}
    after = {d.a_name: d for d in new.layers}
    changes: list[LayerChange] = []
    for d in new.layers:
        prev = before.get(d.a_name)
        if prev is None:
            changes.append(LayerChange(d.a_name, d.op, "new", new_err=d.rel_err, new_ratio=_ratio(d),
                                       new_noise=d.noise_ratio, new_steps=_steps(d)))
            continue
        r0, r1 = _ratio(prev), _ratio(d)
        if prev.ok and not d.ok:
            status = "now fails"
        elif not prev.ok and d.ok:
            status = "now passes"
        elif r1 > factor * r0 and r1 >= floor:
            status = "worse"
        elif r0 > factor * r1 and r0 >= floor:
            status = "better"
        else:
            status = "same"
        changes.append(LayerChange(d.a_name, d.op, status, prev.rel_err, d.rel_err, r0, r1, prev.noise_ratio,
                                   d.noise_ratio, _steps(prev), _steps(d)))
    for d in old.layers:
        if d.a_name not in after:
            changes.append(LayerChange(d.a_name, d.op, "gone", old_err=d.rel_err, old_ratio=_ratio(d),
                                       old_noise=d.noise_ratio, old_steps=_steps(d)))
    notes = []
    if old.inputs.digest and new.inputs.digest and old.inputs.digest != new.inputs.digest:
        notes.append(
            f"the runs used different inputs (digest {old.inputs.digest} vs {new.inputs.digest}); "
            "errors may differ for that reason alone"
        )
    judged = [r.reference.kind if r.reference is not None else "dtype" for r in (old, new)]
    if judged[0] != judged[1]:
        words = {"dtype": "the per-dtype tolerance table", "float64": "a float64 reference"}
        notes.append(f"the verdicts were reached differently: by {words[judged[0]]} before, by {words[judged[1]]} now "
                     "(an error allowed under one may not be under the other)")
    if (old.rtol, old.atol) != (new.rtol, new.atol):
        notes.append(f"tolerances differ: rtol/atol {old.rtol}/{old.atol} before, {new.rtol}/{new.atol} now")
    for side, o, n in (("A", old.a, new.a), ("B", old.b, new.b)):
        if (o.framework, o.framework_version) != (n.framework, n.framework_version):
            notes.append(f"model {side}: {o.framework} {o.framework_version} before, {n.framework} {n.framework_version} now")
    deny_old, deny_new = (r.quant.exclude if r.quant is not None else () for r in (old, new))
    if deny_old != deny_new:  # quantized layers: the converter's deny-list moved
        notes.append(f"layers to keep in float (quantized, over {STEP_LIMIT:g} steps): "
                     f"{', '.join(deny_old) or 'none'} before, {', '.join(deny_new) or 'none'} now")
    gone = [c for c in changes if c.status == "gone"]
    if gone:
        notes.append(f"{len(gone)} layer(s) compared before are not compared now: " + ", ".join(c.a_name for c in gone[:8]))
    return ReportComparison(old=old, new=new, changes=tuple(changes), factor=factor, notes=tuple(notes))
