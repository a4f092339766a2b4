"""Rendering a :class:`~parity.records.Report` in a terminal with rich.

The report renders itself (``rich.print(report)``, Jupyter, or
``str(report)``): a one-line verdict, both models, the inputs, the layer
table with the first divergence highlighted (folded around it for long
models), the divergence in detail, diagnoses, notes, and unmatched layers.
Names come from models: they meet rich only as :class:`~rich.text.Text` (never markup), and
every string of the report is shown through :func:`~.text.shown` (control characters, bidi
overrides and invisibles written as escapes) by :func:`~.text.displayed`.
"""

from __future__ import annotations

import io
from typing import Iterable, Iterator

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..records import LayerDiff, ModelInfo, Report, tolerance_ratio
from .verdicts import noise_times, reference_line, suggestion_lines
from .columns import Column, fit_columns, fitted_table, left_out_line
from .folding import FOLD_ABOVE, TERMINAL, runs
from .quant import divergence_words, passing_words, quant_lines, steps_cell, steps_phrase
from .text import displayed

__all__ = [
    "render_report", "render_text", "render_failure_text", "verdict_line", "coverage_line", "fmt_float",
    "fmt_evidence", "fold_rows", "FOLD_ABOVE",
]


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


def _outputs_phrase(outputs: list[LayerDiff], over: bool) -> str:
    """``"the model output"`` / ``"2 of 3 model outputs"``: the outputs over (``over``) or within tolerance."""
    if len(outputs) == 1:
        return "the model output"
    n = sum(1 for d in outputs if d.ok != over)
    return f"{n} model outputs" if n == len(outputs) else f"{n} of {len(outputs)} model outputs"


def verdict_line(report: Report) -> str:
    """The one-line verdict.  Layers of A are counted as :func:`coverage_line` counts them;
    the model outputs (compared as well) are counted apart and said so."""
    layers = report.layers
    if not layers:
        return "✗ NOTHING COMPARED: no layer of model A was matched in model B — this is not a pass"
    inner = [d for d in layers if d.role != "output"]
    outputs = [d for d in layers if d.role == "output"]
    d = report.first_divergence
    conflict = next((c for c in report.conflicts), None)
    if conflict is not None and (d is None or _at_the_end(report, d)):
        from ..conflicts import dims as shape
        matched = sum(1 for x in inner if x.ok)
        return (f"✗ SHAPES DIFFER at {conflict.a_name} ({conflict.a_op} ↔ {conflict.b_op} {conflict.b_name}): A "
                f"{shape(conflict.a_shape)}, B {shape(conflict.b_shape)}"
                + (f" ({conflict.code})" if conflict.code != "shape_mismatch" else "")
                + (" — the model outputs differ in shape" if any(c.output for c in report.conflicts) else "")
                + f"; {matched} of {len(inner)} compared layers match")
    if d is None:
        worst = max(layers, key=lambda x: x.metrics.rel_err)
        if not inner:
            what = f"{_outputs_phrase(outputs, over=False)} (no layer besides) match"
        elif outputs:
            what = f"{len(inner)} layers and {_outputs_phrase(outputs, over=False)} match"
        else:
            what = f"{len(inner)} layers match"
        return (f"✓ PARITY: {what} within tolerance (max rel err {fmt_float(worst.metrics.rel_err)} at {worst.a_name})"
                + passing_words(report))
    over = sum(1 for x in inner if not x.ok)
    counts = f"{over} of {len(inner)} layers over tolerance"
    if outputs:
        if any(not x.ok for x in outputs):
            counts += f", and {_outputs_phrase(outputs, over=True)}"
        else:
            counts += f"; {_outputs_phrase(outputs, over=False)} within it"
    if d.quant is not None:
        error = divergence_words(d) or ""
    elif d.ref_err is not None:
        error = f"{fmt_float(d.ref_err)} from float64, {noise_times(d)} its noise floor"
    else:
        error = f"rel err {fmt_float(d.metrics.rel_err)} > rtol {fmt_float(d.rtol)}"
    return f"✗ DIVERGES at {d.a_name} ({d.op} ↔ {d.b_op} {d.b_name}): {error} — {counts}"


def _at_the_end(report: Report, d: LayerDiff) -> bool:
    """Whether the first divergence ``d`` is the model output or the last compared layer: a shape
    conflict then leads the verdict (what differs first is where the shapes part)."""
    last = max((x.index for x in report.layers if x.role != "output"), default=-1)
    return d.role == "output" or d.index >= last


def coverage_line(report: Report) -> str:
    """How many of A's layers were compared, what became of the others, how they were paired,
    and the model outputs: ``"compared 10 of 14 layers of A (71%; the other 4 fused by the
    converter) (5 by scope, 5 by value; confidence ≥ 0.9 for 10 of 10), and the model output"``."""
    compared, total = report.coverage
    text = f"compared {compared} of {total} layers of A"
    rest = []
    for reason, label in (("fused", "fused by the converter"), ("one-sided", "in A only"), ("no-match", "not compared")):
        n = sum(1 for u in report.unmatched_a if u.reason == reason)
        if n:
            rest.append(f"{n} {label}")
    if total:
        share = f"{100 * compared / total:.0f}%"
        if len(rest) == 1 and total - compared > 1:
            rest = ["the other " + rest[0]]
        text += f" ({'; '.join([share, ', '.join(rest)]) if rest else share})"
    matched_by = match_summary(report)
    if matched_by:
        text += f" ({matched_by})"
    outputs = len(report.outputs)
    if outputs:
        text += ", and the model output" if outputs == 1 else f", and {outputs} model outputs"
    return text


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
    """The rows to show: all of them for short models; otherwise those :data:`~.folding.TERMINAL`
    keeps, with ``(count, failing)`` markers for folded runs."""
    return [
        layers[x] if isinstance(x, int) else (len(x), sum(1 for i in x if not layers[i].ok))
        for x in runs(len(layers), set(range(len(layers))) - TERMINAL.folded(layers))
    ]


def _layer_columns(report: Report, stacked: bool) -> list[Column]:
    """The layer table's columns, least important with the highest ``drop``; ``stacked`` puts
    B's name under A's in one column (for narrow terminals)."""
    first = report.first_divergence
    own = any(d.own_err is not None for d in report.layers)
    drift = any(d.drift is not None for d in report.layers)
    rows = fold_rows(report.layers)
    cols = {
        "#": Column("#", justify="right", style="dim"),
        # stacked, the column's B lines fold before anything else narrows (A's lines never do)
        "A": Column("A layer\nB layer" if stacked else "A layer", floor=0, give=4 if stacked else 1),
        "B": Column("B layer", floor=12, give=3),
        # op names wrap before layer names do (never cut with "…"; "BatchNorm2d" stays on one line)
        "op": Column("op", floor=11, give=5 if stacked else 2),
        "shape": Column("shape", drop=2),
        "transform": Column("transform", drop=4),
        "rel err": Column("rel err", justify="right"),
        "× noise": Column("× noise", justify="right"),
        "own err": Column("own err", justify="right"),
        "steps": Column("steps", justify="right"),  # quantized layers: alone/cumulative, in steps of their scale
        "drift": Column("drift", justify="right"),
        "max abs": Column("max abs", justify="right", drop=3),
        "cosine": Column("cosine", justify="right"),
        "": Column(""),
    }
    if stacked:
        del cols["B"]
    if not any(d.noise_ratio is not None for d in report.layers):
        del cols["× noise"]
    if not own:
        del cols["own err"]
    if report.quant is None:
        del cols["steps"]
    if not drift:
        del cols["drift"]
    loose = set()
    for r, row in enumerate(rows):
        if isinstance(row, tuple):
            count, failing = row
            what = "all ✓" if failing == 0 else f"{failing} ✗"
            for key, col in cols.items():
                col.cells.append(Text(f"… {count} layers ({what}) …", style="dim") if key == "A" else "")
            loose.add(r)
            continue
        d = row
        m = d.metrics
        if m.nonfinite_mismatch:
            mark = Text("✗ NaN", style="bold red")
        else:
            mark = Text("✓", style="green") if d.ok else Text("✗", style="bold red")
        if d is first:
            mark.append(" ◀", style="bold red")
        name = Text(d.a_name, style="bold" if d is first else "")
        if stacked:
            name.append(f"\n{d.b_name}", style="dim")
        cells: dict[str, RenderableType] = {
            "#": str(d.index + 1),
            "A": name,
            "B": Text(d.b_name),
            "op": Text(d.op),  # B's op is in the detail below
            "shape": "×".join(str(s) for s in d.shape),
            "transform": Text(d.transform + (" ?" if d.ambiguous else "")),
            "rel err": Text(fmt_float(m.rel_err), style=_err_style(d)),
            "× noise": Text(noise_times(d), style=_err_style(d)),
            "max abs": fmt_float(m.max_abs),
            "cosine": f"{m.cosine:.4f}",
            "": mark,
        }
        if own:
            if d.own_err is None:
                cells["own err"] = ""
            else:
                suffix = "" if d.own_method == "replay" else "~"  # ~: estimated from the error growth
                cells["own err"] = Text(fmt_float(d.own_err) + suffix, style="bold red" if d.own_ok is False else "green")
        if report.quant is not None:
            cells["steps"] = Text(steps_cell(d), style="" if d.quant is None else "green" if d.quant.ok else "bold red")
        if drift:
            grown = d.drift is not None and d.drift > 10 and not d.ok
            cells["drift"] = Text(
                "" if d.drift is None else f"{d.drift:,.0f}×" if d.drift >= 10 else f"{d.drift:.2g}×",
                style="bold red" if grown else "dim",
            )
        for key, col in cols.items():
            col.cells.append(cells[key])
    a = cols["A"]
    a.loose = frozenset(loose)
    a.floor = max((cell_len(d.a_name) for d in report.layers), default=0)
    if "B" in cols:
        cols["B"].loose = a.loose
    return list(cols.values())


def _layer_table(report: Report, width: int = 100) -> tuple[Table, Text | None]:
    """The layer table fitted to ``width``, and the line naming the columns left out (or None).

    At their natural widths the columns are tried side by side, then with B's name under A's;
    A's layer names are never cut (they wrap only when one is wider than the terminal)."""
    side_by_side = _layer_columns(report, stacked=False)
    shown, widths, _ = fit_columns(side_by_side, width)
    whole = all(w >= c.natural for c, w in zip(shown, widths) if c.floor is not None)
    columns = side_by_side if whole else _layer_columns(report, stacked=True)
    table, dropped = fitted_table(columns, width)
    for i, row in enumerate(fold_rows(report.layers)):
        if not isinstance(row, tuple) and row is report.first_divergence:
            table.rows[i].style = "on grey15"
    return table, left_out_line(dropped, width)


def own_err_legend(report: Report) -> str | None:
    """What the own-error column's marks mean, for the marks the report uses (None without the column)."""
    shown = [d for d in report.layers if d.own_err is not None]
    if not shown:
        return None
    parts = ["own err: the error B's layer makes by itself, run alone on A's recorded input of it"]
    if any(d.own_method == "growth" for d in shown):
        parts.append(
            "~ estimated instead as the growth of the error over the layer before (this layer cannot be run alone)"
        )
        if any(d.own_method == "growth" and d.own_err == 0 for d in shown):
            parts.append("0~ no growth: the error is inherited")
    blank = [d for d in report.layers if d.own_err is None]
    why = [
        what for what, any_ in (
            ("within tolerance", any(d.ok for d in blank)),
            ("a model output", any(d.role == "output" and not d.ok for d in blank)),
            ("past the first flagged layers", any(d.role != "output" and not d.ok for d in blank)),
        ) if any_
    ]
    if why:
        parts.append(f"blank: not computed ({', '.join(why)})")
    return " · ".join(parts)


def divergence_detail(d: LayerDiff) -> list[RenderableType]:
    """The first divergence, in the words of ``torch.testing.assert_close``."""
    m = d.metrics
    lines = [
        Text.assemble(("first divergence: ", "bold red"), (d.a_name, "bold"), f" ({d.op}) in A ↔ ", (d.b_name, "bold"), f" ({d.b_op}) in B"),
        Text(
            f"  relative error ‖b−a‖/‖a‖ {fmt_float(m.rel_err)} (allowed {fmt_float(d.rtol)}, atol {fmt_float(d.atol)}; "
            f"{tolerance_ratio(m, d.rtol, d.atol):.3g}× the allowed error) · cosine {m.cosine:.6f}"
            if d.ref_err is None and d.quant is None else
            f"  relative error ‖b−a‖/‖a‖ {fmt_float(m.rel_err)} · cosine {m.cosine:.6f} (a quantized layer: judged in "
            "steps of its scale, not by the float tolerance)"
            if d.quant is not None else f"  relative error ‖b−a‖/‖a‖ {fmt_float(m.rel_err)} · cosine {m.cosine:.6f}"
        ),
    ]
    if d.ref_err is not None:
        lines.append(Text(
            f"  against the float64 reference {fmt_float(d.ref_err)}: {noise_times(d)} the float32 noise floor "
            f"{fmt_float(d.noise)} (allowed {fmt_float(d.rtol)})"
        ))
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
    if d.quant is not None:
        lines.append(Text(f"  quantized: {steps_phrase(d)}; {d.quant.local_note}"))
    for reason in d.reasons:
        lines.append(Text(f"  • {reason}"))
    return lines


def also_born(report: Report) -> Iterator[Text]:
    """A line for every later layer with an error of its own (:attr:`Report.born_here`): a second,
    independent bug, with what diagnosed it."""
    for d in report.born_here[1:]:
        codes = ", ".join(g.code for g in d.diagnoses) or "no diagnosis"
        yield Text.assemble(
            ("also born here: ", "bold red"), (d.a_name, "bold"), f" ({d.op}) ↔ ", (d.b_name, "bold"),
            f" ({d.b_op}): own error {fmt_float(d.own_err)} (B's layer fed A's recorded input), "
            f"rel err {fmt_float(d.metrics.rel_err)} · {codes}",
        )


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
    report = displayed(report)
    ok = report.ok
    yield Text(verdict_line(report), style="bold green" if ok else "bold red")
    yield _model_line("A", report.a, report.inputs.shapes_a)
    yield _model_line("B", report.b, report.inputs.shapes_b)
    conv = ", ".join(report.inputs.conversions) or "–"
    yield Text(
        f"inputs: {report.inputs.source}; converted for B: {conv} · {coverage_line(report)}",
        style="dim",
    )
    judged_by = reference_line(report)
    if judged_by is not None:
        yield Text(judged_by, style="dim" if report.reference and report.reference.kind == "float64" else "yellow")
    bindings = getattr(report.inputs, "bindings", ())
    if bindings and not all(b.endswith("(same name)") for b in bindings):
        yield Text("inputs bound: " + "; ".join(bindings), style="dim")
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
        table, left_out = _layer_table(report, options.max_width)
        yield table
        if left_out is not None:
            yield left_out
        legend = own_err_legend(report)
        if legend:
            yield Text(legend, style="dim")
        for line in suggestion_lines(report):
            yield Text(line, style="dim")
        for line, style in quant_lines(report):  # quantized layers judged in steps, the deny-list
            yield Text(line, style=style)
    d = report.first_divergence
    if d is not None:
        yield Text("")
        yield from divergence_detail(d)
        yield from also_born(report)
    jump = largest_jump(report.layers)
    if jump is not None and (d is None or jump[0].index < d.index or jump[0] is not d):
        layer, before, factor = jump
        yield Text(
            f"error jumps {factor:,.0f}× at {layer.a_name} ({layer.op}): {fmt_float(before)} → "
            f"{fmt_float(layer.metrics.rel_err)}" + (" — within tolerance, but more than round-off" if layer.ok else ""),
            style="yellow",
        )
    if report.conflicts:
        c = report.conflicts[0]
        yield Text.assemble((f"{c.code}", "bold magenta"), (f" at {c.a_name}: ", "bold"), c.message)
        later = report.conflicts[1:]
        if later:
            yield Text("shapes differ after it too, most likely inherited: "
                       + ", ".join(f"{x.a_name} ({x.a_op}{', a model output' if x.output else ''})" for x in later[:8])
                       + (", …" if len(later) > 8 else ""), style="red" if any(x.output for x in later) else "")
    if report.diagnoses:
        body = Group(
            *(
                Text.assemble(
                    (f"{diag.code}", "bold magenta"),
                    (f" at {diag.layer}: ", "bold"),
                    diag.message,
                    ("\n  evidence: " + ", ".join(f"{k}={fmt_evidence(v)}" for k, v in diag.evidence.items()), "dim"),
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
                ("shape", "NOT COMPARED: its shape differs from the other model's layer of that name (above)", "red"),
            ):
                names = [u for u in unmatched if u.side == side and (u.reason == reason or u.reason.startswith(reason + ":"))]
                if names:
                    shown = ", ".join(f"{u.name} ({u.op}{u.reason[len(reason):] if reason == 'unsure' else ''})"
                                      for u in names[:12])
                    more = f", … {len(names) - 12} more" if len(names) > 12 else ""
                    yield Text(f"unmatched in {side.upper()}, {label}: {shown}{more}", style=style)


def fmt_evidence(v: float) -> str:
    """A number of a diagnosis' evidence: integers whole, others to four significant digits."""
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.4g}"
    return str(int(v)) if isinstance(v, float) else str(v)


def render_failure_text(report: Report, width: int = 100) -> str:
    """A failure message: the verdict, the first divergence and its diagnoses first, then the
    whole report (plain text, no ANSI)."""
    report = displayed(report)
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


