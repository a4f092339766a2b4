"""A conversion chain's report in words, in a terminal, as HTML and as JSON.

:class:`parity.chain.ChainReport` holds the records; its ``summary()``, ``to_json()``,
``to_html()`` and rich view come here.  The verdict line and one line per stage
(:func:`chain_summary`), the layer × stage matrix in a terminal (:func:`render_chain`,
long matrices folded by :func:`shown_rows`), a self-contained HTML page from
``templates/chain.html.j2`` (:func:`chain_html`) and deterministic JSON through the
report's own encoder (:func:`chain_to_dict`, :func:`chain_to_json`).
"""

from __future__ import annotations

import dataclasses

from pathlib import Path
from typing import Any, Iterator, TypeAlias

from ..files import write_text
from .folding import MATRIX, runs
from ..errors import ParityError
from ..records import Report
from ..tolerance import DEFAULT_TOLERANCES
from .console import fmt_float
from .jsonio import dumps, encode, report_to_dict
from .text import shown, shown_lines

# parity.chain's records call into this module (function-level imports in their methods); importing
# them back, even only for type checking, would close an import circle, so their names are aliases
# here, for readers: ``chain`` below is a parity.chain.ChainReport, ``c`` a ChainCell.
ChainReport: TypeAlias = Any
ChainRow: TypeAlias = Any
ChainCell: TypeAlias = Any

__all__ = [
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "LEGEND",
    "chain_summary",
    "stage_line",
    "stage_tolerance",
    "chain_to_dict",
    "chain_to_json",
    "chain_html",
    "render_chain",
    "shown_rows",
    "cell_text",
    "guilty_cells",
]

SCHEMA_NAME = "parity.chain"
SCHEMA_VERSION = 1

_STYLE = {"ok": "green", "quantisation": "cyan", "introduced": "bold red", "inherited": "red"}
_MARK = {"ok": "✓", "quantisation": "≈", "introduced": "✗", "inherited": "✗ ←"}
LEGEND = (
    "✓ within tolerance · ≈ expected quantisation error (a precision stage, judged with its tolerance) · "
    "✗ over tolerance, introduced by this stage (◀ its guilty layer) · ✗ ← over tolerance, inherited from "
    "an earlier stage · fused / one-sided / no-match: not compared"
)


# --- words -----------------------------------------------------------------------------------


def stage_tolerance(report: Report) -> tuple[float, float]:
    """A stage's global (rtol, atol): its report's, else the float32 default."""
    if report.rtol is not None and report.atol is not None:
        return float(report.rtol), float(report.atol)
    return DEFAULT_TOLERANCES["float32"]


def stage_line(chain: ChainReport, i: int) -> str:
    """One line on stage ``i`` (1..n): its verdict against stage 0 and the pair's summary."""
    report = chain.reports[i - 1]
    status = chain.stage_status[i - 1]
    prec = chain.precisions[i]
    what = f"{report.b.framework}" + (f", {prec}" if chain.is_precision_stage(i) else "")
    mark = "✓" if report.ok else "✗"
    line = f"{mark} {chain.stages[i]} ({what}): {status}"
    if chain.is_precision_stage(i):
        rtol, atol = stage_tolerance(report)
        line += f" — judged with {prec} tolerance (rtol {rtol:g}, atol {atol:g})"
    return f"{line} — {report.summary()}"


def chain_summary(chain: ChainReport) -> str:
    """The chain's verdict on the first line, then one line per stage."""
    path = " → ".join(chain.stages)
    brk = chain.first_break
    if chain.ok:
        quant = [chain.stages[i] for i in range(1, len(chain.stages)) if chain.is_precision_stage(i)]
        extra = f" ({', '.join(quant)} within expected quantisation error)" if quant else ""
        head = f"✓ CHAIN OK: {path}: every stage matches {chain.stages[0]}{extra}"
    elif brk is not None and brk.layer is None:
        head = f"✗ CHAIN BREAKS at {brk.stage}: no layer of {chain.stages[0]} could be compared with it"
    elif brk is not None:
        i = chain.stages.index(brk.stage)
        row = chain.row(brk.layer)
        cell = row.cells[i - 1]
        later = [chain.stages[j] for j, s in enumerate(chain.stage_status, start=1) if s == "inherits" and j > i]
        head = (
            f"✗ CHAIN BREAKS at {brk.stage} (stage {i} of {len(chain.stages) - 1}), layer {brk.layer} "
            f"({row.op}): rel err {fmt_float(cell.rel_err)} > rtol {fmt_float(cell.rtol)}"
        )
        if later:
            head += f"; inherited by {', '.join(later)}"
    else:  # pragma: no cover - a failing report always has a failing cell
        head = f"✗ CHAIN DIVERGES: {path}"
    return "\n".join([head] + [f"  {stage_line(chain, i)}" for i in range(1, len(chain.stages))])


# --- JSON ------------------------------------------------------------------------------------


def chain_to_dict(chain: ChainReport) -> dict:
    """Plain JSON-ready data: schema and version first, then stages, verdict, matrix, reports."""
    brk = chain.first_break
    sources = chain.precision_sources
    stages = [
        {
            "index": 0,
            "name": chain.stages[0],
            "role": "reference",
            "model": encode(chain.reports[0].a) if chain.reports else None,
            "precision": chain.precisions[0],
            "precision_source": sources[0] if sources else None,
        }
    ]
    for i, (report, status) in enumerate(zip(chain.reports, chain.stage_status), start=1):
        rtol, atol = stage_tolerance(report)
        precision_stage = chain.is_precision_stage(i)
        stages.append(
            {
                "index": i,
                "name": chain.stages[i],
                "role": "precision" if precision_stage else "conversion",
                "model": encode(report.b),
                "precision": chain.precisions[i],
                "precision_source": sources[i] if sources else None,
                "tolerance": {"rtol": rtol, "atol": atol} if precision_stage else None,
                "ok": report.ok,
                "status": status,
                "summary": stage_line(chain, i),
                "coverage": list(report.coverage),
            }
        )
    matrix = [
        {
            "index": row.index,
            "layer": row.layer,
            "op": row.op,
            "role": row.role,
            "introduced_by": row.introduced_by,
            "cells": [
                {
                    "stage": c.stage,
                    "status": c.status,
                    "label": c.label,
                    "b_name": c.b_name,
                    "rel_err": encode(c.rel_err),
                    "tolerance_ratio": encode(c.tolerance_ratio),
                    "rtol": c.rtol,
                    "atol": c.atol,
                    "precision": c.precision,
                    "within_float32": c.within_float32,
                }
                for c in row.cells
            ],
        }
        for row in chain.matrix
    ]
    return {
        "schema": SCHEMA_NAME,
        "version": SCHEMA_VERSION,
        "ok": chain.ok,
        "summary": chain.summary().splitlines()[0],
        "first_break": {"stage": brk.stage, "layer": brk.layer} if brk is not None else None,
        "stages": stages,
        "matrix": matrix,
        "notes": list(chain.notes),
        "reports": [report_to_dict(r) for r in chain.reports],
    }


def chain_to_json(chain: ChainReport, path: str | Path | None = None) -> str:
    """Deterministic JSON (no timestamps; identical runs give identical bytes); written to
    ``path`` (parents created) when given."""
    return _written(dumps(chain_to_dict(chain)), path)


def _written(text: str, path: str | Path | None) -> str:
    if path is not None:
        write_text(path, text)
    return text


# --- the matrix, cell by cell ----------------------------------------------------------------


def guilty_cells(chain: ChainReport) -> set[tuple[str, str]]:
    """(layer, stage) of each introducing stage's guilty layer (its report's first divergence)."""
    out = set()
    for i, r in enumerate(chain.reports, start=1):
        d = r.first_divergence
        if d is not None:
            try:
                if chain.row(d.a_name).cells[i - 1].status == "introduced":
                    out.add((d.a_name, chain.stages[i]))
            except ParityError:
                pass
    return out


def cell_text(c: ChainCell, guilty: bool = False) -> tuple[str, str]:
    """A cell's text (its error and mark, ``◀`` on the guilty layer) and its rich style."""
    if not c.compared:
        return ("·" if c.status == "absent" else c.status), "dim"
    style = _STYLE[c.status]
    if c.status == "ok" and c.tolerance_ratio is not None and c.tolerance_ratio >= 0.1:
        style = "yellow"  # within tolerance, but not by much
    return f"{fmt_float(c.rel_err)} {_MARK[c.status]}{' ◀' if guilty else ''}", style


def shown_rows(chain: ChainReport, limit: int | None = None) -> list[ChainRow | tuple[int, int]]:
    """Long matrices fold runs of rows that say nothing new (:data:`parity.report.folding.MATRIX`):
    kept are the head, the tail, each guilty layer and every row where some stage's verdict
    changes (blank cells change nothing), with a row of context on each side; a fold is
    ``(first index, count)``.  ``limit`` overrides how many rows fold at all."""
    rows = chain.matrix
    policy = MATRIX if limit is None else dataclasses.replace(MATRIX, above=limit)
    if not policy.folds(len(rows)):
        return list(rows)
    keep = policy.frame(len(rows))
    guilty_layers = {layer for layer, _ in guilty_cells(chain)}
    carried: list[str | None] = [None] * (len(chain.stages) - 1)
    for r in rows:
        changed = r.layer in guilty_layers
        for j, c in enumerate(r.cells):
            if c.compared:
                changed |= carried[j] is not None and carried[j] != c.status
                carried[j] = c.status
        if changed:
            keep.update(range(r.index - policy.around, r.index + policy.around + 1))
    position = {r.index: i for i, r in enumerate(rows)}
    kept = {position[i] for i in keep if i in position}  # rows are numbered by their position
    out: list[ChainRow | tuple[int, int]] = []
    for item in runs(len(rows), kept):
        if isinstance(item, range):
            out.append((rows[item.start].index, len(item)))
        else:
            out.append(rows[item])
    return out


# --- the terminal ----------------------------------------------------------------------------


def render_chain(chain: ChainReport, width: int = 200) -> Iterator[Any]:
    """The rich renderables of a chain: verdict, matrix (fitted to ``width``), legend, stages, notes."""
    from rich.markup import escape
    from rich.text import Text

    from .columns import Column, fitted_table, left_out_line

    # names (stages, layers, ops, notes) are data: shown() and never markup
    head, *lines = shown_lines(chain.summary()).splitlines()
    yield Text(head, style="bold green" if chain.ok else "bold red")
    # the layer names stay whole; "introduced by" (the ◀ marks say it too) goes first, then op
    columns = [
        Column("#", justify="right", style="dim"),
        Column("layer", floor=max((len(shown(r.layer)) for r in chain.matrix), default=5), give=1),
        Column("op", style="dim", floor=8, give=2, drop=1),
    ]
    columns += [
        Column(escape(shown(name)) + (f"\n({escape(shown(chain.precisions[i]))})" if chain.is_precision_stage(i) else ""),
               justify="right")
        for i, name in enumerate(chain.stages[1:], start=1)
    ]
    columns.append(Column("introduced by", drop=2))
    guilty = guilty_cells(chain)
    loose = set()
    for r, row in enumerate(shown_rows(chain)):
        if isinstance(row, tuple):
            _, count = row
            for col in columns:
                col.cells.append(Text(f"… {count} rows as above …", style="dim") if col is columns[1] else "")
            loose.add(r)
            continue
        cells: list[Any] = [str(row.index), Text(shown(row.layer)), Text(shown(row.op))]
        cells += [Text(*cell_text(c, (row.layer, c.stage) in guilty)) for c in row.cells]
        cells.append(Text(shown(row.introduced_by or ""), style="bold red"))
        for col, cell in zip(columns, cells):
            col.cells.append(cell)
    columns[1].loose = frozenset(loose)
    table, dropped = fitted_table(columns, width)
    yield table
    left_out = left_out_line(dropped, width)
    if left_out is not None:
        yield left_out
    yield Text(LEGEND, style="dim")
    for line, report in zip(lines, chain.reports):
        yield Text(line.strip(), style="green" if report.ok else "red")
    for note in chain.notes:
        yield Text(f"note: {shown(note)}", style="yellow")


# --- HTML ------------------------------------------------------------------------------------


def _environment():
    """The HTML report's Jinja2 environment: autoescaping, every value :func:`~.text.shown`, and
    the ``name`` filter (``<bdi>``) for names."""
    from .html import environment

    return environment()


def chain_html(chain: ChainReport, path: str | Path | None = None, *, fragment: bool = False) -> str:
    """A self-contained HTML page (no external resources; ``fragment``: the body only, for a
    notebook); written to ``path`` (parents created) when given."""
    head, *lines = chain.summary().splitlines()
    rows = []
    guilty = guilty_cells(chain)
    for row in chain.matrix:
        cells = []
        for c in row.cells:
            text, _ = cell_text(c, (row.layer, c.stage) in guilty)
            title = c.label + (f" — {c.stage}: {c.b_name}" if c.b_name else "")
            if c.compared:
                title += f" (rtol {c.rtol:g}, atol {c.atol:g})"
            cells.append({"text": text, "css": f"c-{c.status}" if c.compared else "blank", "title": title})
        rows.append({"index": row.index, "layer": row.layer, "op": row.op, "cells": cells,
                     "introduced_by": row.introduced_by})
    columns = [{"name": name, "precision": chain.precisions[i] if chain.is_precision_stage(i) else None}
               for i, name in enumerate(chain.stages) if i]
    text = _environment().get_template("chain.html.j2").render(
        fragment=fragment, stages=[shown(s) for s in chain.stages], ok=chain.ok, head=head,
        stage_lines=[{"text": line.strip(), "ok": r.ok} for line, r in zip(lines, chain.reports)],
        columns=columns, rows=rows, notes=list(chain.notes), legend=LEGEND,
    )
    return _written(text, path)
