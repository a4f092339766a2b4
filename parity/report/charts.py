"""The pictures of the HTML report, drawn with matplotlib.

- :func:`error_chart` — relative error by layer in execution order, log scale,
  the tolerance as a dashed line, the first divergence marked.  An SVG whose
  points each carry a ``<title>`` (the browser shows it on hover) and an id
  ``pt-N`` that the page's script links to row N of the layer table.
- :func:`heatmap_png` — an :class:`~parity.records.ErrorMap` as a PNG.
- :func:`histogram_svg` — both tensors' histograms, overlaid.

Output is deterministic (fixed SVG hash salt, no dates in the metadata), so
identical reports give identical HTML.
"""

from __future__ import annotations

import base64
import io
import math
import re
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..records import ErrorMap, Histogram, Report

from .verdicts import judged_error, noise_times

__all__ = ["error_chart", "heatmap_png", "histogram_svg"]

#: the lowest y position drawn for layers that match exactly (log scale has no 0)
FLOOR = 1e-12
OK_COLOR = "#2e7d32"
BAD_COLOR = "#c62828"
A_COLOR = "#1565c0"
B_COLOR = "#ef6c00"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    matplotlib.rcParams.update(
        {
            "svg.hashsalt": "parity",
            "svg.fonttype": "none",
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )
    return plt


def _svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": "parity"})
    _pyplot().close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and doctype: it is inlined in HTML


def _allowed_rel(d) -> float:
    """The relative error the tolerance allows for this layer (atol folded in)."""
    m = d.metrics
    if m.norm_a == 0:
        return math.inf
    return (d.atol * math.sqrt(max(m.numel, 1)) + d.rtol * m.norm_a) / m.norm_a


def error_chart(report: "Report", width: float = 12.0, height: float = 3.6) -> str:
    """The error-by-layer SVG; an empty string when there is nothing to draw."""
    layers = report.layers
    if not layers:
        return ""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(width, height))
    xs = list(range(len(layers)))
    errs = [judged_error(d) for d in layers]
    nonzero = [e for e in errs if 0 < e < math.inf]
    noise = [d.noise for d in layers if d.noise is not None and d.noise > 0]
    # exact matches sit a decade under the smallest real error, drawn as hollow points
    floor = max(min(nonzero + noise) / 10, FLOOR) if nonzero or noise else 1e-9
    ys = [max(e, floor) if math.isfinite(e) else 1e3 for e in errs]
    if noise:  # the float64 reference: the float32 noise floor as a band under the error line
        band = [max(d.noise, floor) if d.noise is not None else math.nan for d in layers]
        ax.fill_between(xs, floor, band, step="mid", color="#90caf9", alpha=0.5, linewidth=0,
                        label="float32 noise floor", zorder=0)
    ax.plot(xs, ys, color="#9e9e9e", linewidth=0.8, zorder=1)
    allowed = [min(_allowed_rel(d), 1e3) for d in layers]
    ax.step(xs, allowed, where="mid", color="#616161", linestyle="--", linewidth=1, label="tolerance", zorder=1)
    for i, (d, y, e) in enumerate(zip(layers, ys, errs)):
        colour = OK_COLOR if d.ok else BAD_COLOR
        ax.plot(
            [i], [y], marker="o", markersize=4.5, linestyle="none", color=colour,
            markerfacecolor="white" if e == 0 else colour, gid=f"pt-{i}", zorder=3,
        )
    first = report.first_divergence
    if first is not None:
        ax.axvline(first.index, color=BAD_COLOR, linewidth=1, alpha=0.6, zorder=0)
        ax.annotate(
            f"first divergence: {first.a_name}", xy=(first.index, ys[first.index]),
            xytext=(8, -14), textcoords="offset points", color=BAD_COLOR, fontsize=9,
            parse_math=False,  # layer names may hold "$"
        )
    ax.set_yscale("log")
    ax.set_xlim(-0.5, len(layers) - 0.5)
    ticks, step = _named_ticks(len(layers), width, first.index if first is not None else None)
    ax.set_xticks(ticks)
    ax.set_xticklabels([_tick_label(layers[i].a_name) for i in ticks], rotation=90, fontsize=_TICK_FONT)
    for i, label in zip(ticks, ax.get_xticklabels()):
        label.set_parse_math(False)  # layer names may hold "$"
        if first is not None and i == first.index:
            label.set_color(BAD_COLOR)
    ax.set_xlabel(
        "layer of model A, in execution order"
        + (f" (one in {step} named; hover a point for any layer)" if step > 1 else "")
    )
    ax.set_ylabel("relative error ‖b−a‖/‖a‖" + (" (against float64)" if noise else ""))
    ax.grid(True, which="major", axis="y", alpha=0.3)
    ax.legend(loc="lower right", frameon=False)
    svg = _svg(fig)
    titles = {
        i: f"#{i} {d.a_name} ({d.op}) ↔ {d.b_name}: rel err {d.rel_err:.2e}"
        + (f", against float64 {d.ref_err:.2e} ({noise_times(d)} noise)" if d.ref_err is not None else "")
        + f", allowed {_allowed_rel(d):.1e}" + (" (exact)" if judged_error(d) == 0 else "")
        + ("" if d.ok else " — over tolerance")
        for i, d in enumerate(layers)
    }

    def titled(match: re.Match) -> str:
        i = int(match.group(1))
        return f'{match.group(0)}<title>{escape(titles[i])}</title>'

    return re.sub(r'<g id="pt-(\d+)"[^>]*>', titled, svg)


#: tick labels' font size (points); a rotated label needs about its line height of the axis
_TICK_FONT = 7.5
_TICK_CHARS = 28


def _named_ticks(n: int, width_in: float, first: int | None) -> tuple[list[int], int]:
    """Which layers the x axis names: all when their rotated labels fit side by side, else every
    ``step``-th (and the first divergence), and the step."""
    room = int(width_in * 0.85 * 72 / (_TICK_FONT * 1.6))  # the axes' width over one label's line height
    step = max(1, math.ceil(n / max(room, 1)))
    ticks = set(range(0, n, step))
    if first is not None and step > 1:
        ticks -= {i for i in ticks if abs(i - first) < step and i != first}  # no label on top of its label
        ticks.add(first)
    return sorted(ticks), step


def _tick_label(name: str, chars: int = _TICK_CHARS) -> str:
    """A layer name for an axis or a legend: whole up to ``chars`` characters, else its informative end."""
    return name if len(name) <= chars else "…" + name[-(chars - 1):]


def heatmap_png(emap: "ErrorMap", title: str) -> str:
    """The heat map as a ``data:`` URI of a PNG."""
    import numpy as np

    plt = _pyplot()
    grid = np.asarray(emap.values, dtype=float)
    aspect = grid.shape[0] / max(grid.shape[1], 1)
    fig, ax = plt.subplots(figsize=(3.6, max(1.2, 3.0 * aspect)))
    image = ax.imshow(
        grid, cmap="inferno", interpolation="nearest", aspect="auto",
        extent=(0, emap.cols, emap.rows, 0),
    )
    ax.set_title(title, fontsize=8, parse_math=False)
    ax.set_xlabel("width")
    ax.set_ylabel("height")
    fig.colorbar(image, ax=ax, label="mean |b−a|", shrink=0.85)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def histogram_svg(hist: "Histogram", a_label: str, b_label: str) -> str:
    """Both sides' value histograms in shared bins."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 2.4))
    edges = list(hist.edges)
    # the legend keeps a long name's end (a TFLite fused tensor is named by all of its ops); the
    # caption and the table have it whole
    ax.stairs(hist.counts_a, edges, color=A_COLOR, linewidth=1.2, label=f"A: {_tick_label(a_label, 40)}")
    ax.stairs(hist.counts_b, edges, color=B_COLOR, linewidth=1.2, linestyle="--", label=f"B: {_tick_label(b_label, 40)}")
    ax.set_xlabel("value")
    ax.set_ylabel("count")
    legend = ax.legend(loc="upper right", frameon=False, fontsize=7)
    for text in legend.get_texts():
        text.set_parse_math(False)  # layer names may hold "$"
    return _svg(fig)
