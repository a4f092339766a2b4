"""The one folding policy of long layer tables (terminal, HTML page, chain matrix), on hand-made rows."""

from __future__ import annotations

from types import SimpleNamespace

from parity.report.folding import FOLD_ABOVE, MATRIX, PAGE, TERMINAL, Folding, runs


def rows(n, bad=(), outputs=()):
    return [SimpleNamespace(ok=i not in bad, role="output" if i in outputs else "layer") for i in range(n)]


def test_short_tables_never_fold():
    assert FOLD_ABOVE == 30
    assert TERMINAL.folded(rows(30, bad={3})) == set() and PAGE.folded(rows(30)) == set()
    assert not TERMINAL.folds(30) and TERMINAL.folds(31)


def test_the_terminal_keeps_head_tail_and_the_first_flagged_neighbourhood():
    layers = rows(60, bad=set(range(30, 60)))
    kept = set(range(60)) - TERMINAL.folded(layers)
    assert kept == {0, 1, 2, 26, 27, 28, 29, 30, 31, 32, 33, 34, 57, 58, 59}


def test_the_page_keeps_more_context_and_what_it_refers_to():
    layers = rows(64, outputs={40})
    assert set(range(64)) - PAGE.folded(layers) == {0, 1, 2, 3, 4, 40, 59, 60, 61, 62, 63}
    assert 50 not in PAGE.folded(layers, also={50}) and 50 in PAGE.folded(layers)


def test_the_first_flagged_row_near_an_edge_stays_inside_the_table():
    assert Folding(head=1, tail=1, around=2).frame(40, first=1) == {0, 1, 2, 3, 39}
    assert Folding(head=1, tail=1, around=2).frame(40, first=39) == {0, 37, 38, 39}


def test_runs_give_each_fold_once_in_order():
    assert runs(8, {0, 1, 5}) == [0, 1, range(2, 5), 5, range(6, 8)]
    assert runs(3, {0, 1, 2}) == [0, 1, 2]
    assert runs(3, set()) == [range(0, 3)]
    assert runs(0, set()) == []


def test_the_chain_matrix_keeps_a_row_around_each_change():
    # the chain view's rule on a matrix of 50 rows whose verdict changes at rows 20 and 33
    assert not MATRIX.folds(40) and MATRIX.folds(41)
    keep = MATRIX.frame(50) | {i + k for i in (20, 33) for k in (-MATRIX.around, 0, MATRIX.around)}
    folds = [(x.start, len(x)) for x in runs(50, keep) if isinstance(x, range)]
    assert folds == [(3, 16), (22, 10), (35, 12)]
