"""Rendering a :class:`~parity.records.Report` in a terminal with rich.

The report renders itself (``rich.print(report)``, Jupyter, or
``str(report)``): a one-line verdict, both models, the inputs, the layer
table with the first divergence highlighted (folded around it for long
models), the divergence in detail, diagnoses, notes, and unmatched layers.
Names come from models and are escaped before they meet rich markup.
"""

from __future__ import annotations

import io
from typing import Iterable, Iterator

from rich.console import Console, ConsoleOptions, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..records import LayerDiff, ModelInfo, Report, tolerance_ratio

__all__ = ["render_report", "render_text", "render_failure_text", "verdict_line", "fmt_float", "fold_rows"]

#: models with more compared layers than this are folded around the first divergence
FOLD_ABOVE = 30
_KEEP_HEAD, _KEEP_TAIL, _KEEP_AROUND = 3, 3, 4


def fmt_float(x: float | None) -> str:
    """One format for every error figure: ``5.3e-02``; ``inf``/``nan`` spelled out."""
    if x is None:
        return "–"
    if x != x:
        return "nan"
    if x in (float("inf"), float("-inf")):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    return f"{x:.1e}"


def verdict_line(report: Report) -> str:
    layers = report.layers
    if not layers:
        return "✗ NOTHING COMPARED: no layer of model A was matched in model B — this is not a pass"
    d = report.first_divergence
    if d is None:
        worst = max(layers, key=lambda x: x.metrics.rel_err)
        return (
            f"✓ PARITY: {len(layers)} layers match within tolerance "
            f"(max rel err {fmt_float(worst.metrics.rel_err)} at {worst.a_name})"
        )
    over = sum(1 for x in layers if not x.ok)
    return (
        f"✗ DIVERGES at {d.a_name} ({d.op} ↔ {d.b_op} {d.b_name}): rel err "
        f"{fmt_float(d.metrics.rel_err)} > rtol {fmt_float(d.rtol)} — {over} of {len(layers)} layers over tolerance"
    )


def _model_line(side: str, info: ModelInfo, shapes: Iterable[tuple[int, ...]]) -> Text:
    params = f"{info.param_count:,} params" if info.param_count is not None else "params unknown"
    shp = ", ".join(str(tuple(s)) for s in shapes) or "–"
    text = Text.assemble(
        (f"{side} ", "bold"),
        (f"{info.name}", "bold cyan"),
        f"  {info.framework} {info.framework_version} · {info.kind} · {params} · input {shp}",
    )
    if info.was_training:
        text.append("  was in training mode; compared in eval()", style="yellow")
    return text


def _err_style(d: LayerDiff) -> str:
    r = d.tolerance_ratio
    if not d.ok:
        return "red"
    return "green" if r < 0.1 else "yellow"


def fold_rows(layers: tuple[LayerDiff, ...]) -> list[LayerDiff | tuple[int, int]]:
    """The rows to show: all of them for short models; otherwise the head, the tail and the
    neighbourhood of the first divergence, with ``(count, failing)`` markers for folded runs."""
    n = len(layers)
    if n <= FOLD_ABOVE:
        return list(layers)
    keep = set(range(min(_KEEP_HEAD, n))) | set(range(max(n - _KEEP_TAIL, 0), n))
    first = next((i for i, d in enumerate(layers) if not d.ok), None)
    if first is not None:
        keep |= set(range(max(first - _KEEP_AROUND, 0), min(first + _KEEP_AROUND + 1, n)))
    rows: list[LayerDiff | tuple[int, int]] = []
    run: list[LayerDiff] = []
    for i, d in enumerate(layers):
        if i in keep:
            if run:
                rows.append((len(run), sum(1 for x in run if not x.ok)))
                run = []
            rows.append(d)
        else:
            run.append(d)
    if run:
        rows.append((len(run), sum(1 for x in run if not x.ok)))
    return rows


def _layer_table(report: Report) -> Table:
    table = Table(
        show_header=True, header_style="bold", expand=False, pad_edge=False, box=None, padding=(0, 1), collapse_padding=True
    )
    fixed = {"no_wrap": True}
    own = any(d.own_err is not None for d in report.layers)
    columns = [
        ("#", {"justify": "right", "style": "dim", **fixed}),
        ("A layer", {"overflow": "fold", "min_width": 8}),
        ("B layer", {"overflow": "fold", "min_width": 8}),
        ("op", {"overflow": "ellipsis", "max_width": 14, "min_width": 4}),
        ("shape", fixed),
        ("transform", fixed),
        ("rel err", {"justify": "right", **fixed}),
    ]
    if own:
        columns.append(("own err", {"justify": "right", **fixed}))
    drift = any(d.drift is not None for d in report.layers)
    if drift:
        columns.append(("drift", {"justify": "right", **fixed}))
    columns += [("max abs", {"justify": "right", **fixed}), ("cosine", {"justify": "right", **fixed}), ("", fixed)]
    for col, kw in columns:
        table.add_column(col, **kw)
    first = report.first_divergence
    for row in fold_rows(report.layers):
        if isinstance(row, tuple):
            count, failing = row
            what = "all ✓" if failing == 0 else f"{failing} ✗"
            table.add_row("", Text(f"… {count} layers ({what}) …", style="dim"), *[""] * (len(columns) - 2))
            continue
        d = row
        m = d.metrics
        op = d.op  # B's op is in the detail below; the row stays one line
        transform = d.transform + (" ?" if d.ambiguous else "")
        if m.nonfinite_mismatch:
            mark = Text("✗ NaN", style="bold red")
        else:
            mark = Text("✓", style="green") if d.ok else Text("✗", style="bold red")
        if d is first:
            mark.append(" ◀", style="bold red")
        style = "bold" if d is first else ""
        cells = [
            str(d.index + 1),
            Text(d.a_name, style=style),
            Text(d.b_name),
            Text(op),
            "×".join(str(s) for s in d.shape),
            Text(transform),
            Text(fmt_float(m.rel_err), style=_err_style(d)),
        ]
        if own:
            if d.own_err is None:
                cells.append(Text("", style="dim"))
            else:
                suffix = "" if d.own_method == "replay" else "~"  # ~: estimated from the error growth
                cells.append(Text(fmt_float(d.own_err) + suffix, style="bold red" if d.own_ok is False else "green"))
        if drift:
            grown = d.drift is not None and d.drift > 10 and not d.ok
            cells.append(Text("" if d.drift is None else f"{d.drift:,.0f}×" if d.drift >= 10 else f"{d.drift:.2g}×",
                              style="bold red" if grown else "dim"))
        cells += [fmt_float(m.max_abs), f"{m.cosine:.4f}", mark]
        table.add_row(*cells, style="on grey15" if d is first else None)
    return table


def divergence_detail(d: LayerDiff) -> list[RenderableType]:
    """The first divergence, in the words of ``torch.testing.assert_close``."""
    m = d.metrics
    lines = [
        Text.assemble(("first divergence: ", "bold red"), (d.a_name, "bold"), f" ({d.op}) in A ↔ ", (d.b_name, "bold"), f" ({d.b_op}) in B"),
        Text(
            f"  relative error ‖b−a‖/‖a‖ {fmt_float(m.rel_err)} (allowed {fmt_float(d.rtol)}, atol {fmt_float(d.atol)}; "
            f"{tolerance_ratio(m, d.rtol, d.atol):.3g}× the allowed error) · cosine {m.cosine:.6f}"
        ),
    ]
    if d.own_err is not None:
        how = (
            "B's layer fed A's recorded input of this layer"
            if d.own_method == "replay"
            else "estimated as the growth over the layer before (this layer cannot be replayed alone)"
        )
        lines.append(Text(f"  own error {fmt_float(d.own_err)} ({how}): the error is born here, not inherited"))
    if m.numel:
        lines.append(
            Text(
                f"  mismatched elements: {m.mismatched} / {m.numel} ({100.0 * m.mismatched / m.numel:.1f}%) · "
                f"greatest absolute difference {fmt_float(m.max_abs)} at index {m.max_abs_index} (A's layout)"
            )
        )
    if m.argmax_agreement is not None:
        lines.append(Text(f"  argmax agrees on {100.0 * m.argmax_agreement:.1f}% of rows"))
    if m.nan_a or m.nan_b or m.inf_a or m.inf_b:
        lines.append(
            Text(f"  NaN A/B: {m.nan_a}/{m.nan_b} · Inf A/B: {m.inf_a}/{m.inf_b}", style="red")
        )
    for reason in d.reasons:
        lines.append(Text(f"  • {reason}"))
    return lines


def largest_jump(layers: tuple[LayerDiff, ...], *, factor: float = 1000.0, floor: float = 1e-5):
    """The layer whose error grows most over the layer before it, when the growth is more than
    round-off explains: ``(layer, previous error, growth)`` or ``None``."""
    best = None
    prev = None
    for d in layers:
        if d.role == "output":
            continue
        err = d.metrics.rel_err
        if prev is not None and err > floor and err == err:
            growth = err / max(prev, 1e-12)
            if growth >= factor and (best is None or growth > best[2]):
                best = (d, prev, growth)
        prev = err
    return best


#: pairings below this confidence are called out (see :mod:`parity.align`)
WEAK_CONFIDENCE = 0.5


def weak_matches(report: Report) -> list[LayerDiff]:
    """Compared pairs the aligner was unsure of, in A's order."""
    return [d for d in report.layers if d.confidence is not None and d.confidence < WEAK_CONFIDENCE]


def match_summary(report: Report) -> str:
    """How A's layers were paired: ``"170 by name, 6 by order; confidence ≥ 0.9 for 174 of 176"``."""
    hows: dict[str, int] = {}
    confident = scored = 0
    for d in report.layers:
        if d.role != "output":
            hows[d.how] = hows.get(d.how, 0) + 1
            if d.confidence is not None:
                scored += 1
                confident += d.confidence >= 0.9
    text = ", ".join(f"{n} by {how}" for how, n in sorted(hows.items()))
    if scored:
        text += f"; confidence ≥ 0.9 for {confident} of {scored}"
    return text


def render_report(report: Report, console: Console, options: ConsoleOptions) -> Iterator[RenderableType]:
    ok = report.ok
    yield Text(verdict_line(report), style="bold green" if ok else "bold red")
    yield _model_line("A", report.a, report.inputs.shapes_a)
    yield _model_line("B", report.b, report.inputs.shapes_b)
    conv = ", ".join(report.inputs.conversions) or "–"
    compared, total = report.coverage
    share = f" ({100 * compared / total:.0f}%)" if total else ""
    matched_by = match_summary(report)
    yield Text(
        f"inputs: {report.inputs.source}; converted for B: {conv} · compared {compared} of {total} layers of A{share}"
        + (f" ({matched_by})" if matched_by else ""),
        style="dim",
    )
    weak = weak_matches(report)
    if weak:
        yield Text(
            f"{len(weak)} weak pairing(s) (confidence < {WEAK_CONFIDENCE}): "
            + ", ".join(f"{d.a_name} ↔ {d.b_name} ({d.confidence:.2f})" for d in weak[:5])
            + (", …" if len(weak) > 5 else "")
            + " — check them, or pin them with a mapping (`parity align A B --write mapping.toml`).",
            style="yellow",
        )
    if report.layers:
        yield _layer_table(report)
    d = report.first_divergence
    if d is not None:
        yield Text("")
        yield from divergence_detail(d)
    jump = largest_jump(report.layers)
    if jump is not None and (d is None or jump[0].index < d.index or jump[0] is not d):
        layer, before, factor = jump
        yield Text(
            f"error jumps {factor:,.0f}× at {layer.a_name} ({layer.op}): {fmt_float(before)} → "
            f"{fmt_float(layer.metrics.rel_err)}" + (" — within tolerance, but more than round-off" if layer.ok else ""),
            style="yellow",
        )
    if report.diagnoses:
        body = Group(
            *(
                Text.assemble(
                    (f"{diag.code}", "bold magenta"),
                    (f" at {diag.layer}: ", "bold"),
                    diag.message,
                    ("\n  evidence: " + ", ".join(f"{k}={_fmt_evidence(v)}" for k, v in diag.evidence.items()), "dim"),
                )
                for diag in report.diagnoses
            )
        )
        yield Panel(body, title="diagnoses", title_align="left", border_style="magenta")
    bad_params = [p for p in report.params if p.status != "ok"]
    if report.params:
        if bad_params:
            yield Text(f"weights: {len(bad_params)} of {len(report.params)} parameters differ", style="bold red")
            for p in bad_params[:8]:
                yield Text(f"  {p.a_layer}.{p.a_param} ↔ {p.b_layer}.{p.b_param}: {p.status} — {p.message}", style="red")
            if len(bad_params) > 8:
                yield Text(f"  … {len(bad_params) - 8} more", style="red")
        else:
            yield Text(f"weights: all {len(report.params)} parameters of the aligned layers match", style="dim")
    for note in report.notes:
        yield Text(f"note: {note}", style="yellow")
    unmatched = report.unmatched
    if unmatched:
        for side in ("a", "b"):
            for reason, label, style in (
                ("one-sided", "present on this side only (expected in conversions)", "dim"),
                ("fused", "folded by the converter into a compared tensor of B (e.g. Conv+BatchNorm)", "dim"),
                ("placeholder", "an identity at inference (Identity, eval-mode Dropout, DropPath): nothing to compare", "dim"),
                ("no-match", "NOT COMPARED: no counterpart found", "yellow"),
                ("unsure", "NOT COMPARED: the pairing found could not be justified by the values", "yellow"),
            ):
                names = [u for u in unmatched if u.side == side and (u.reason == reason or u.reason.startswith(reason + ":"))]
                if names:
                    shown = ", ".join(f"{u.name} ({u.op}{u.reason[len(reason):] if reason == 'unsure' else ''})"
                                      for u in names[:12])
                    more = f", … {len(names) - 12} more" if len(names) > 12 else ""
                    yield Text(f"unmatched in {side.upper()}, {label}: {shown}{more}", style=style)


def _fmt_evidence(v: float) -> str:
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.4g}"
    return str(int(v)) if isinstance(v, float) else str(v)


def render_failure_text(report: Report, width: int = 100) -> str:
    """A failure message: the verdict, the first divergence and its diagnoses first, then the
    whole report (plain text, no ANSI)."""
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False)
    console.print(Text(verdict_line(report)))
    d = report.first_divergence
    if d is not None:
        for line in divergence_detail(d):
            console.print(line)
        for diag in d.diagnoses:
            console.print(Text.assemble((f"likely cause — {diag.code}: ", "bold"), diag.message))
    console.print(Text(""))
    console.print(report)
    return buf.getvalue().rstrip()


def render_text(report: Report, width: int = 100) -> str:
    """The report as plain text (no colour), as a terminal of ``width`` columns shows it."""
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None, force_terminal=False, legacy_windows=False).print(report)
    return buf.getvalue()


