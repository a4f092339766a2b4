"""The small pictures of a flagged layer: an error heat map and both value histograms.

They are computed while both tensors are in memory (after compare) and kept in
the report, so a saved JSON re-renders the HTML without the models.  Numbers
are rounded to 4 significant digits: enough to draw, and stable across runs.
"""

from __future__ import annotations

import numpy as np

from .records import ErrorMap, Histogram, LayerDetail

__all__ = ["layer_detail", "error_map", "histogram", "MAX_MAP", "BINS"]

#: the largest heat map kept, per side (bigger tensors are block-averaged)
MAX_MAP = 64
BINS = 40


def _round(x: float) -> float:
    return float(f"{x:.4g}") if np.isfinite(x) else 0.0


def _spatial_axes(ndim: int, layout: str | None) -> tuple[int, int] | None:
    """The (height, width) axes of a 4-D tensor in ``layout``, or None when there are none."""
    if ndim != 4:
        return None
    if layout == "NHWC":
        return 1, 2
    return 2, 3  # NCHW, and the torch default when the layout is unknown


def _block_mean(grid: np.ndarray, axis: int, size: int) -> np.ndarray:
    n = grid.shape[axis]
    if n <= size:
        return grid
    starts = np.linspace(0, n, size, endpoint=False).astype(int)
    sums = np.add.reduceat(grid, starts, axis=axis)
    counts = np.diff(np.append(starts, n)).astype(np.float64)
    shape = [1, 1]
    shape[axis] = len(counts)
    return sums / counts.reshape(shape)


def error_map(a: np.ndarray, b: np.ndarray, layout: str | None) -> ErrorMap | None:
    """Mean ``|b−a|`` over batch and channels, per spatial position (None for non-spatial tensors)."""
    axes = _spatial_axes(a.ndim, layout)
    if axes is None or a.shape != b.shape:
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        diff = np.abs(b.astype(np.float64) - a.astype(np.float64))
        diff[~np.isfinite(diff)] = 0.0
        other = tuple(i for i in range(4) if i not in axes)
        grid = diff.mean(axis=other)  # (H, W)
    rows, cols = grid.shape
    border = {
        "first_row": _round(grid[0].mean()),
        "last_row": _round(grid[-1].mean()),
        "first_col": _round(grid[:, 0].mean()),
        "last_col": _round(grid[:, -1].mean()),
        "interior": _round(grid[1:-1, 1:-1].mean()) if rows > 2 and cols > 2 else _round(grid.mean()),
    }
    small = _block_mean(_block_mean(grid, 0, MAX_MAP), 1, MAX_MAP)
    values = tuple(tuple(_round(v) for v in row) for row in small)
    return ErrorMap(rows=rows, cols=cols, values=values, border=border)


def histogram(a: np.ndarray, b: np.ndarray, bins: int = BINS) -> Histogram:
    """Both tensors counted in shared bins spanning their 0.1–99.9 percentiles."""
    fa = a[np.isfinite(a)].astype(np.float64, copy=False).ravel()
    fb = b[np.isfinite(b)].astype(np.float64, copy=False).ravel()
    both = np.concatenate([fa, fb])
    if both.size == 0:
        return Histogram(edges=(0.0, 1.0), counts_a=(0,), counts_b=(0,), outside_a=a.size, outside_b=b.size)
    with np.errstate(over="ignore", invalid="ignore"):
        lo, hi = np.percentile(both, [0.1, 99.9])
    if not hi > lo:
        lo, hi = float(both.min()) - 0.5, float(both.max()) + 0.5
    if np.isfinite(hi / 2 - lo / 2) and abs(hi / 2 - lo / 2) < 8e307:
        edges = np.linspace(lo, hi, bins + 1)
    else:  # values near ±1.8e308: hi − lo overflows, halves do not
        edges = np.linspace(lo / 2, hi / 2, bins + 1) * 2
    counts_a, _ = np.histogram(fa, edges)
    counts_b, _ = np.histogram(fb, edges)
    return Histogram(
        edges=tuple(_round(e) for e in edges),
        counts_a=tuple(int(c) for c in counts_a),
        counts_b=tuple(int(c) for c in counts_b),
        outside_a=int(a.size - counts_a.sum()),
        outside_b=int(b.size - counts_b.sum()),
    )


def layer_detail(a: np.ndarray, b: np.ndarray, layout: str | None) -> LayerDetail:
    """The heat map (for 4-D tensors) and histograms of one layer; ``b`` is in ``a``'s layout."""
    return LayerDetail(histogram=histogram(a, b), error_map=error_map(a, b, layout))
