"""The HTML report: one self-contained file that works offline.

Built from the Jinja2 templates in ``templates/`` with autoescaping on, so a
layer named ``<img src=x onerror=alert(1)>`` is shown as text.  The charts are
drawn by :mod:`parity.report.charts` (matplotlib) and inlined: an SVG for the
error chart and histograms, PNG data URIs for heat maps.  A Content-Security-
Policy forbids every network request, so the page cannot fetch anything even
by accident.  Identical reports give identical bytes.

Names are data (:mod:`.text`): the report is rendered through :func:`~.text.displayed`, every
value a template prints passes :func:`~.text.shown` (the environment's ``finalize``), and names
are printed with the ``name`` filter, which isolates them in ``<bdi>`` so a right-to-left name
cannot reorder the text around it.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path

from ..files import write_text
from ..records import LayerDiff, ModelInfo, Report
from .verdicts import noise_times, reference_line, suggestion_lines
from .console import (
    coverage_line, fmt_evidence, fmt_float, largest_jump, own_err_legend, verdict_line, weak_matches,
)
from .folding import PAGE
from .quant import quant_lines, steps_cell
from .text import displayed, shown

__all__ = ["render_html", "render_compact_html", "fold_set"]


@lru_cache(maxsize=1)
def environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("parity.report", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        finalize=_shown_value,
    )
    env.filters["breakable"] = breakable
    env.filters["name"] = isolated
    return env


def _shown_value(value):
    """Every printed value: strings through :func:`~.text.shown` (markup the templates made, such
    as :func:`breakable`'s, is already shown and left alone)."""
    from markupsafe import Markup

    if isinstance(value, str) and not isinstance(value, Markup):
        return shown(value)
    return value


def isolated(name: str, *, wrap: bool = False):
    """``name`` shown (:func:`~.text.shown`), escaped and isolated in ``<bdi>``; with ``wrap``,
    breakable at its separators (:func:`breakable`)."""
    from markupsafe import Markup, escape

    inner = breakable(shown(name)) if wrap else escape(shown(name))
    return Markup("<bdi>") + inner + Markup("</bdi>")


def breakable(name: str):
    """``name`` escaped, with a line-break opportunity (``<wbr>``) after each ``/ . _ ; : -``, so a
    long layer name wraps at its separators rather than anywhere."""
    from markupsafe import Markup, escape

    # escaping makes only ``&…;`` entities, which hold none of these but ";" (at their end)
    return Markup(_SEPARATORS.sub(r"\1<wbr>", str(escape(shown(name)))))


_SEPARATORS = re.compile(r"([/._;:\-])(?=.)")


def fold_set(layers: tuple[LayerDiff, ...]) -> set[int]:
    """The ``index`` of each row folded away in a long table: those :data:`~.folding.PAGE`
    does not keep, the flagged rows whose heat maps the page shows staying in view."""
    detailed = [i for i, d in enumerate(layers) if not d.ok and d.detail is not None]
    return {layers[i].index for i in PAGE.folded(layers, also=detailed)}


def _num(x: float) -> str:
    """A sortable number for ``data-v`` (JavaScript's parseFloat reads ``Infinity``)."""
    if x != x:
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return repr(float(x))


def _params(info: ModelInfo) -> str:
    return f"{info.param_count:,}" if info.param_count is not None else "unknown"


def _shapes(shapes) -> str:
    return ", ".join(str(tuple(s)) for s in shapes) or "–"


def _tolerance(report: Report) -> str:
    judged_by = reference_line(report)
    if judged_by is not None and report.reference is not None and report.reference.kind == "float64":
        return judged_by
    if report.rtol is not None:
        return f"rtol {fmt_float(report.rtol)}, atol {fmt_float(report.atol)} (given)"
    pairs = sorted({(d.rtol, d.atol, d.dtype) for d in report.layers})
    if not pairs:
        return "per-dtype defaults"
    return "; ".join(f"{dtype}: rtol {fmt_float(r)}, atol {fmt_float(a)}" for r, a, dtype in pairs) + " (per-dtype defaults)"


def _context(report: Report, *, compact: bool) -> dict:
    return {
        "report": report,
        "summary": verdict_line(report),
        "compact": compact,
        "jump": _jump(report),
        "env": dict(report.environment),
        "tolerance": _tolerance(report),
        "coverage": coverage_line(report),
        "own_legend": own_err_legend(report),
        "suggestions": suggestion_lines(report),
        "judged_by": reference_line(report),
        "noise": any(d.noise_ratio is not None for d in report.layers),
        "noise_times": noise_times,
        "weak": weak_matches(report),
        "fmt": fmt_float,
        "num": _num,
        "evidence": fmt_evidence,
        "params": _params,
        "shapes": _shapes,
        "first": report.first_divergence,
        "own": any(d.own_err is not None for d in report.layers),
        "drift": any(d.drift is not None for d in report.layers),
        # quantized layers judged in steps of their scale (parity.report.quant)
        "steps": steps_cell if report.quant is not None else None,
        "quant_lines": quant_lines(report),
    }


def _jump(report: Report):
    jump = largest_jump(report.layers)
    first = report.first_divergence
    if jump is None or (first is not None and jump[0] is first):
        return None
    return jump


def render_html(report: Report, path: str | Path | None = None) -> str:
    """The full report page; written to ``path`` (parents created) when given."""
    from .charts import error_chart, heatmap_png, histogram_svg

    report = displayed(report)
    detailed = []
    for d in report.layers:
        if d.detail is None:
            continue
        heat = heatmap_png(d.detail.error_map, f"mean |b−a| · {d.a_name}") if d.detail.error_map else None
        hist = histogram_svg(d.detail.histogram, d.a_name, d.b_name)
        detailed.append((d, heat, hist))
    fold = fold_set(report.layers)
    context = _context(report, compact=False)
    context.update(chart=error_chart(report), detailed=detailed, rows=report.layers, fold=fold, folded=len(fold))
    text = environment().get_template("report.html.j2").render(**context)
    if path is not None:
        write_text(path, text)
    return text


def render_compact_html(report: Report) -> str:
    """The notebook view (``Report._repr_html_``): verdict, first divergence, diagnoses,
    models and the folded layer table; no charts, no script."""
    report = displayed(report)
    fold = fold_set(report.layers)
    rows = [d for d in report.layers if d.index not in fold]
    context = _context(report, compact=True)
    context.update(rows=rows, fold=set(), folded=len(fold))
    return environment().get_template("compact.html.j2").render(**context)
