"""How an :class:`~parity.evaluation.result.Evaluation` looks: rich in a terminal, an HTML page.

The terminal shows the verdict, the outputs panel (agreement, both accuracies, the difference
with its 95% interval and the exact McNemar p-value, disagreements by class), the per-layer
table (dataset error, p50/p99/max of the per-sample error, the share of samples over tolerance)
and the worst samples.  The HTML page (``templates/evaluation.html.j2``, Jinja2 like the diff
report) adds the per-layer error distribution drawn by matplotlib, inlined as SVG.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any, Iterator

from ..report.text import shown

if TYPE_CHECKING:
    from .result import Evaluation

__all__ = ["render_console", "render_html", "output_lines"]


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    if x == 0:
        return "0"
    return f"{x:.{digits}g}" if math.isfinite(x) else str(x)


def _pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def output_lines(out: dict[str, Any]) -> list[str]:
    """The outputs panel in words: agreement, accuracies, the interval and the McNemar test."""
    n = out["samples"]
    lines = [
        f"top-1 agreement {_pct(out['top1_agreement'])} ({n - out['disagreements']} of {n}); "
        f"top-{out['k']} agreement (A's class among B's {out['k']} best) {_pct(out['topk_agreement'])}"
    ]
    acc = out["accuracy"]
    if acc is not None:
        lo, hi = acc["interval95"]
        p = acc["mcnemar_p"]
        verdict = "significant at 5%" if p < 0.05 else "not significant"
        lines.append(f"accuracy: A {_pct(acc['a'])}, B {_pct(acc['b'])} on {acc['samples']} labelled samples")
        lines.append(
            f"difference B − A: {100 * acc['difference']:+.2f} points (95% interval {100 * lo:+.2f} … {100 * hi:+.2f}); "
            f"exact McNemar p = {p:.3g} ({verdict}; A right and B wrong on {acc['a_right_b_wrong']}, "
            f"A wrong and B right on {acc['a_wrong_b_right']})"
        )
    by = out["disagreements_by_class"]
    if by:
        key = "true class" if out["by"] == "label" else "A's class"
        top = sorted(by.items(), key=lambda kv: (-kv[1], int(kv[0])))[:10]
        lines.append(f"disagreements by {key}: " + ", ".join(f"{c}: {v}" for c, v in top))
    return lines


def render_console(ev: "Evaluation") -> Iterator[Any]:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    style = "bold green" if ev.ok else "bold red"
    yield Text(shown(ev.summary()), style=style)
    yield Text(shown(f"A: {ev.model_a['name']} ({ev.model_a['framework']})  ·  B: {ev.model_b['name']} "
                     f"({ev.model_b['framework']})  ·  data: {ev.data}, {ev.samples} samples in {ev.batches} batches  ·  "
                     f"layers: {ev.layers_mode}  ·  tolerance: {ev.tolerance}"), style="dim")
    for out in ev.outputs:
        yield Panel(Text("\n".join(shown(line) for line in output_lines(out))), title=shown(f"output {out['name']}"), expand=False)
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col, justify in (("#", "right"), ("layer (A)", "left"), ("op", "left"), ("B", "left"), ("rel err", "right"),
                         ("p50", "right"), ("p99", "right"), ("max", "right"), ("over tol", "right"), ("", "left")):
        table.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for i, x in enumerate(ev.layers):
        mark = "✓" if x["ok"] else "✗"
        row_style = None if x["ok"] else ("bold red" if x["a_name"] == ev.first_divergence else "red")
        table.add_row(str(i + 1), Text(shown(x["a_name"])), Text(shown(x["op"])), Text(shown(x["b_name"])),
                      _f(x["rel_err"]), _f(x["p50_rel_err"]), _f(x["p99_rel_err"]), _f(x["max_rel_err"]),
                      f"{_pct(x['over_tolerance_share'], 1)} ({x['over_tolerance']})", mark, style=row_style)
    yield table
    if ev.first_divergence is not None:
        x = ev.layer(ev.first_divergence)
        yield Text(shown(
            f"first divergence over the data: {x['a_name']} ({x['op']} ↔ {x['b_op']} {x['b_name']}): relative error "
            f"{_f(x['rel_err'])} over all samples (rtol {x['rtol']:g}); {x['over_tolerance']} of {x['samples']} samples "
            f"over tolerance; worst sample {x['max_rel_err_sample']} ({_f(x['max_rel_err'])}). "
            "result.worst[0].diff() (or --diff-worst) shows why."), style="red")
    if ev.worst:
        w = Table(title="worst samples (largest output error)", box=None, header_style="bold", pad_edge=False,
                  title_justify="left")
        for col in ("sample", "output rel err", "label", "A top-1", "B top-1", ""):
            w.add_column(col, justify="right")
        for s in ev.worst:
            w.add_row(str(s.index), _f(s.error), _f(s.label), _f(s.top1_a), _f(s.top1_b),
                      "disagree" if s.disagrees else "")
        yield w
    if ev.disagreements:
        shown_idx = ", ".join(str(s.index) for s in ev.disagreements[:20])
        more = len(ev.disagreements) - 20
        yield Text(f"samples whose top-1 classes differ (kept, by index): {shown_idx}" + (f", … {more} more" if more > 0 else ""))
    for f in ev.failures[1 if ev.first_divergence else 0:]:
        yield Text(shown(f"✗ {f}"), style="red")
    for note in ev.notes:
        yield Text(shown(f"note: {note}"), style="yellow")


def _pyplot():
    """matplotlib's pyplot, set up as the diff report's charts are: Agg, a fixed SVG hash salt and
    text as text, so the same evaluation gives the same bytes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    matplotlib.rcParams.update({"svg.hashsalt": "parity", "svg.fonttype": "none", "font.size": 9,
                                "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": "parity"})
    _pyplot().close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # inlined in HTML: no XML prolog


def distribution_chart(ev: "Evaluation") -> str:
    """Per-layer distribution of the per-sample relative error (SVG): p50 to p99 as a bar, the
    maximum as a dot, each layer's tolerance as a tick; layers in A's order."""
    from ..report.charts import BAD_COLOR, FLOOR, OK_COLOR

    plt = _pyplot()
    n = len(ev.layers)
    fig, ax = plt.subplots(figsize=(max(6.0, min(14.0, 0.5 * n + 3)), 3.4))

    def v(x: Any) -> float:
        if isinstance(x, str):
            return 1e3 if x == "inf" else FLOOR
        return max(float(x), FLOOR)

    for i, x in enumerate(ev.layers):
        color = OK_COLOR if x["ok"] else BAD_COLOR
        p50, p99, mx = v(x["p50_rel_err"]), v(x["p99_rel_err"]), v(x["max_rel_err"])
        ax.plot([i, i], [p50, max(p99, p50)], color=color, linewidth=6, solid_capstyle="butt", alpha=0.7)
        ax.plot([i], [mx], "o", color=color, markersize=4)
        ax.plot([i - 0.3, i + 0.3], [x["rtol"], x["rtol"]], color="#555", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_xticks(range(n))
    ax.set_xticklabels([shown(x["a_name"])[:24] for x in ev.layers], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("per-sample ‖b−a‖/‖a‖")
    ax.set_title("error distribution by layer: bar p50–p99, dot max, dashes rtol", fontsize=9)
    return _svg(fig)


def histogram_chart(ev: "Evaluation", name: str) -> str:
    """The log-binned histogram of one layer's per-sample relative error (SVG)."""
    from ..report.charts import BAD_COLOR
    from .stats import HIST_EDGES

    x = ev.layer(name)
    counts = x["histogram"]
    used = [i for i, c in enumerate(counts) if c]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 2.6))
    if used:
        lo, hi = max(min(used) - 1, 1), min(max(used) + 1, len(HIST_EDGES) - 1)
        lefts = [HIST_EDGES[i - 1] for i in range(lo, hi + 1)]
        widths = [HIST_EDGES[i] - HIST_EDGES[i - 1] for i in range(lo, hi + 1)]
        ax.bar(lefts, [counts[i] for i in range(lo, hi + 1)], width=widths, align="edge", color=BAD_COLOR, alpha=0.75)
        ax.set_xscale("log")
    ax.axvline(x["rtol"], color="#555", linestyle="--", linewidth=1)
    ax.set_xlabel("per-sample ‖b−a‖/‖a‖")
    ax.set_ylabel("samples")
    ax.set_title(shown(f"{name}: per-sample error (dashes: rtol)"), fontsize=9)
    return _svg(fig)


def render_html(ev: "Evaluation") -> str:
    from markupsafe import Markup

    from ..report.html import environment

    first = ev.first_divergence
    layers = []
    for i, x in enumerate(ev.layers):
        layers.append({
            "index": i + 1, "a_name": x["a_name"], "b_name": x["b_name"], "op": x["op"], "ok": x["ok"],
            "first": x["a_name"] == first, "rel_err": _f(x["rel_err"]), "p50": _f(x["p50_rel_err"]),
            "p99": _f(x["p99_rel_err"]), "max": _f(x["max_rel_err"]), "max_at": x["max_rel_err_sample"],
            "over": f"{_pct(x['over_tolerance_share'], 1)} ({x['over_tolerance']})", "rtol": f"{x['rtol']:g}",
        })
    outputs = [{"name": o["name"], "lines": output_lines(o), "acc": o["accuracy"],
                "agreement": _pct(o["top1_agreement"])} for o in ev.outputs]
    worst = [{"index": s.index, "error": _f(s.error), "label": _f(s.label), "a": _f(s.top1_a), "b": _f(s.top1_b),
              "disagrees": s.disagrees} for s in ev.worst]
    charts = {"distribution": Markup(distribution_chart(ev)) if ev.layers else None,
              "histogram": Markup(histogram_chart(ev, first or ev.layers[-1]["a_name"])) if ev.layers else None}
    return environment().get_template("evaluation.html.j2").render(
        ev=ev, head=ev.summary(), layers=layers, outputs=outputs, worst=worst, charts=charts,
        disagreements=[s.index for s in ev.disagreements], hist_layer=first or (ev.layers[-1]["a_name"] if ev.layers else ""),
    )
