"""Fitting a table's columns to the width of a terminal.

At 80 columns (CI logs, pipes, pytest) a rich table that is too wide would cut
its cells (``Con…``, ``1.00``) or lose its last columns.  Instead, a table says
which columns matter: the least important are left out first (``drop``), then
name columns wrap (never below ``floor``, so a layer name stays whole as long
as it fits a line at all), and numbers are never cut.  What was left out is
said under the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from rich.cells import cell_len
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

__all__ = ["Column", "fit_columns", "fitted_table", "left_out_line"]


@dataclass
class Column:
    """One column of a table to fit: its header, its cells (one per row) and how it gives way."""

    header: str
    cells: list[RenderableType] = field(default_factory=list)
    justify: Literal["left", "right"] = "left"
    style: str | None = None
    #: 0: always shown; otherwise columns are left out highest ``drop`` first
    drop: int = 0
    #: ``None``: never narrower than its widest cell (numbers, marks); an int: the column wraps
    #: its cells (``overflow="fold"``) down to this width when the table does not fit
    floor: int | None = None
    #: among wrapping columns, the one with the highest ``give`` narrows first
    give: int = 0
    #: rows whose cell does not count towards the width (a "… 23 layers …" fold marker)
    loose: frozenset[int] = frozenset()

    @property
    def natural(self) -> int:
        """The width that shows every cell (but the loose ones) and the header on one line each."""
        return self._widest(loose=False)

    def _widest(self, loose: bool) -> int:
        lines = self.header.split("\n")
        for i, cell in enumerate(self.cells):
            if i in self.loose and not loose:
                continue
            text = cell.plain if isinstance(cell, Text) else str(cell) if cell is not None else ""
            lines.extend(text.split("\n"))
        return max((cell_len(line) for line in lines), default=0)


def _total(widths: Sequence[int], gap: int) -> int:
    return sum(widths) + gap * max(len(widths) - 1, 0)


def fit_columns(columns: Sequence[Column], width: int, gap: int = 1) -> tuple[list[Column], list[int], list[Column]]:
    """The columns to show, their widths, and the columns left out to fit ``width``.

    Columns are left out, highest ``drop`` first (the rightmost of equals first), until the
    rest fits at their natural widths or only undroppable ones are left; then wrapping columns
    narrow, highest ``give`` first, never below their ``floor``.  When even that does not fit,
    the widths returned are the narrowest allowed and the table is wider than ``width``.
    """
    shown = list(columns)
    dropped: list[Column] = []
    while _total([c.natural for c in shown], gap) > width:
        candidates = [c for c in shown if c.drop]
        if not candidates:
            break
        worst = max(candidates, key=lambda c: (c.drop, shown.index(c)))
        shown.remove(worst)
        dropped.append(worst)
    widths = [c.natural for c in shown]
    excess = _total(widths, gap) - width
    for i in sorted((i for i, c in enumerate(shown) if c.floor is not None), key=lambda i: -shown[i].give):
        if excess <= 0:
            break
        floor = min(shown[i].floor or 0, widths[i])
        cut = min(excess, widths[i] - floor)
        widths[i] -= cut
        excess -= cut
    for i, col in enumerate(shown):  # room to spare: loose cells on one line too
        if excess < 0 and col.loose:
            grow = min(-excess, col._widest(loose=True) - widths[i])
            if grow > 0:
                widths[i] += grow
                excess += grow
    return shown, widths, [c for c in columns if c in dropped]


def fitted_table(columns: Sequence[Column], width: int, gap: int = 1) -> tuple[Table, list[Column]]:
    """A borderless rich Table of ``columns`` fitted to ``width`` (see :func:`fit_columns`), ``gap``
    spaces between columns, and the columns left out."""
    shown, widths, dropped = fit_columns(columns, width, gap)
    table = Table(
        show_header=True, header_style="bold", box=None, pad_edge=False, padding=(0, gap), collapse_padding=True
    )
    for col, w in zip(shown, widths):
        table.add_column(
            col.header, justify=col.justify, style=col.style, width=w,
            no_wrap=col.floor is None, overflow="fold",
        )
    rows = max((len(c.cells) for c in columns), default=0)
    for r in range(rows):
        table.add_row(*[col.cells[r] if r < len(col.cells) else "" for col in shown])
    return table, dropped


def left_out_line(dropped: Sequence[Column], width: int) -> Text | None:
    """The line under a table that says which columns did not fit, or None."""
    if not dropped:
        return None
    names = ", ".join(c.header.replace("\n", " ") for c in dropped)
    return Text(f"left out to fit {width} columns: {names} (a wider terminal shows them)", style="dim")
