"""When and how a long table of layers folds — the one policy of every view.

A table of more than :data:`FOLD_ABOVE` rows folds.  Kept are the head, the tail, the
neighbourhood of the first flagged row, the model outputs, and the rows a view refers to
elsewhere (the HTML page's heat maps link to their rows; the chain matrix keeps the rows where
a stage's verdict changes); every other run of rows becomes one fold that says how many it holds.

The views differ only in how much room they have: a terminal shows every row it prints, so it
keeps little context (:data:`TERMINAL`); a page hides folded rows behind one button, so it keeps
more (:data:`PAGE`).

>>> [x if isinstance(x, int) else (x.start, len(x)) for x in runs(8, {0, 1, 5})]
[0, 1, (2, 3), 5, (6, 2)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from ..records import LayerDiff

__all__ = ["FOLD_ABOVE", "Folding", "TERMINAL", "PAGE", "MATRIX", "runs"]

#: tables with more rows than this fold; shorter ones show every row
FOLD_ABOVE = 30


@dataclass(frozen=True)
class Folding:
    """How many rows a view keeps around what must stay: ``head`` first rows, ``tail`` last
    rows and ``around`` rows on each side of the first flagged row."""

    head: int
    tail: int
    around: int
    above: int = FOLD_ABOVE

    def folds(self, n: int) -> bool:
        """Whether a table of ``n`` rows folds."""
        return n > self.above

    def frame(self, n: int, first: int | None = None) -> set[int]:
        """The positions every view keeps in a folded table of ``n`` rows: the head, the tail
        and the neighbourhood of position ``first`` (the first flagged row, if any)."""
        keep = set(range(min(self.head, n))) | set(range(max(n - self.tail, 0), n))
        if first is not None:
            keep |= set(range(max(first - self.around, 0), min(first + self.around + 1, n)))
        return keep

    def kept(self, layers: Sequence[LayerDiff], also: Iterable[int] = ()) -> set[int]:
        """The positions of ``layers`` shown in a folded table: :meth:`frame` around the first
        flagged layer, the model outputs, and the positions ``also`` the view refers to."""
        first = next((i for i, d in enumerate(layers) if not d.ok), None)
        keep = self.frame(len(layers), first) | set(also)
        keep |= {i for i, d in enumerate(layers) if d.role == "output"}
        return keep

    def folded(self, layers: Sequence[LayerDiff], also: Iterable[int] = ()) -> set[int]:
        """The positions of ``layers`` folded away (none for a short table)."""
        if not self.folds(len(layers)):
            return set()
        return set(range(len(layers))) - self.kept(layers, also)


#: the terminal's folding: every kept row is printed, so little context
TERMINAL = Folding(head=3, tail=3, around=4)
#: the HTML page's folding: folded rows are one click away, so more context
PAGE = Folding(head=5, tail=5, around=10)
#: the chain matrix's folding: it keeps a row of context around each row where a stage's verdict
#: changes (``MATRIX.frame(n) | those rows ± around``), so it folds later and keeps less around each
MATRIX = Folding(head=3, tail=3, around=1, above=40)


def runs(n: int, keep: Iterable[int]) -> list[int | range]:
    """Positions ``0 … n-1`` in order: each kept position as itself, each run of the others
    as one ``range`` (a fold)."""
    keep = set(keep)
    out: list[int | range] = []
    start = None
    for i in range(n):
        if i in keep:
            if start is not None:
                out.append(range(start, i))
                start = None
            out.append(i)
        elif start is None:
            start = i
    if start is not None:
        out.append(range(start, n))
    return out
