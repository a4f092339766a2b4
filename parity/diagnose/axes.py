"""Detectors of an op applied along another axis, or in another element order, than A's.

``axis_remap``: a softmax (or log-softmax), a reduction or a gather taken along another axis of
the tensor — the axis was not remapped when the layout changed (torch ``Softmax(dim=1)`` on NCHW
is Keras ``Softmax(axis=-1)`` on NHWC; a converter that keeps ``axis=1`` normalises over the
rows).  A's function is recomputed from A's own input along every axis (a gather's indices read
off A's output): the axis that reproduces A is A's, the one that reproduces B is B's.  Two
dimensions of equal size do not confuse it: the values tell the axes apart, the shapes do not
need to.

``depth_to_space_mode``: a PixelShuffle / DepthToSpace that reads the channels in the other
order — torch's ``PixelShuffle`` and ONNX ``DepthToSpace`` mode ``CRD`` take channel
``c·r² + i·r + j`` to pixel ``(i, j)`` of output channel ``c``; TF ``depth_to_space``, TFLite
``DEPTH_TO_SPACE`` and ONNX mode ``DCR`` take channel ``(i·r + j)·C + c``.  Both orders are
recomputed from A's input: B matching the other one names it.
"""

from __future__ import annotations

import numpy as np

from ..records import Diagnosis
from .base import Context, detector, nchw_io
from .base import rel_diff as _rel

#: A's function recomputed from its input must reproduce A this well (relative)
_FIT_OK = 1e-4
#: ... and B's, recomputed along another axis / in another order, reproduces B this well
_REPRODUCED = 1e-3


def _softmax(x: np.ndarray, axis: int, log: bool) -> np.ndarray:
    z = x - np.max(x, axis=axis, keepdims=True)
    if log:
        return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def _letters(layout: str | None, ndim: int) -> str | None:
    """The axis letters of a plain layout of this rank (None for flattened or unknown)."""
    return layout if layout and "(" not in layout and len(layout) == ndim else None


def _axis_words(axis: int, layout: str | None, ndim: int) -> str:
    letters = _letters(layout, ndim)
    return f"axis {axis} ({letters[axis]})" if letters else f"axis {axis}"


@detector("axis_remap", {"activation"})
def axis_remap(ctx: Context) -> Diagnosis | None:
    ops = (ctx.match.a.op.lower(), ctx.match.b.op.lower())
    if not any("softmax" in op for op in ops):
        return None
    log = any("logsoftmax" in op or "log_softmax" in op for op in ops)
    x = ctx.own_input()
    a, b = ctx.a, ctx.b
    if x is None or x.shape != a.shape or a.shape != b.shape or a.ndim < 2:
        return None
    x64 = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x64)):
        return None
    fits = {}
    for axis in range(a.ndim):
        if a.shape[axis] < 2:
            continue
        y = _softmax(x64, axis, log)
        fits[axis] = (_rel(a, y), _rel(b, y))
    if len(fits) < 2:
        return None
    axis_a = min(fits, key=lambda k: fits[k][0])
    if fits[axis_a][0] > _FIT_OK:
        return None  # A's layer is not a softmax of this input along one axis
    axis_b = min((k for k in fits if k != axis_a), key=lambda k: fits[k][1])
    fit_b, as_compared = fits[axis_b][1], _rel(a, b)
    if not (fit_b <= _REPRODUCED and as_compared > 10 * max(fit_b, 1e-12)):
        return None
    layout = ctx.match.a.layout
    name = "log-softmax" if log else "softmax"
    evidence = {
        "axis_a": float(axis_a), "axis_b_in_a_layout": float(axis_b), "rel_err_as_compared": float(as_compared),
        "rel_err_a_vs_recomputed": float(fits[axis_a][0]), "rel_err_b_vs_other_axis": float(fit_b),
        "equal_sizes": 1.0 if a.shape[axis_a] == a.shape[axis_b] else 0.0,
    }
    msg = (
        f"B takes its {name} along another axis: recomputed from A's input, the {name} along "
        f"{_axis_words(axis_a, layout, a.ndim)} reproduces A ({fits[axis_a][0]:.1e}) and along "
        f"{_axis_words(axis_b, layout, a.ndim)} (in A's layout) reproduces B ({fit_b:.1e}, against "
        f"{as_compared:.2g} as compared). The axis was not remapped with the layout: torch dim=1 on NCHW is "
        "axis=-1 on NHWC (Keras Softmax(axis=-1)); give B's op the axis that is A's after the transpose."
    )
    return Diagnosis(code="axis_remap", layer=ctx.match.a.name, message=msg, evidence=evidence)


def _depth_to_space(x: np.ndarray, r: int, mode: str) -> np.ndarray:
    """NCHW depth-to-space by ``r`` in ``mode`` ``CRD`` (torch PixelShuffle) or ``DCR`` (TF)."""
    n, c, h, w = x.shape
    out_c = c // (r * r)
    if mode == "CRD":
        y = x.reshape(n, out_c, r, r, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        y = x.reshape(n, r, r, out_c, h, w).transpose(0, 3, 4, 1, 5, 2)
    return y.reshape(n, out_c, h * r, w * r)


@detector("depth_to_space_mode", {"depth_to_space"})
def depth_to_space_mode(ctx: Context) -> Diagnosis | None:
    io = nchw_io(ctx)
    if io is None:
        return None
    x4, a4, b4 = io
    if a4.shape[2] % x4.shape[2] or a4.shape[2] // x4.shape[2] < 2:
        return None
    r = a4.shape[2] // x4.shape[2]
    if x4.shape[1] != a4.shape[1] * r * r or a4.shape[3] != x4.shape[3] * r:
        return None
    fits = {mode: (_rel(a4, y), _rel(b4, y)) for mode in ("CRD", "DCR") for y in (_depth_to_space(x4, r, mode),)}
    mode_a = min(fits, key=lambda k: fits[k][0])
    mode_b = "DCR" if mode_a == "CRD" else "CRD"
    fit_b, as_compared = fits[mode_b][1], _rel(a4, b4)
    if fits[mode_a][0] > _FIT_OK or not (fit_b <= _REPRODUCED and as_compared > 10 * max(fit_b, 1e-12)):
        return None
    words = {"CRD": "column-row-depth: channel c·r²+i·r+j → pixel (i, j) of channel c, torch PixelShuffle, ONNX "
                    "DepthToSpace mode='CRD'",
             "DCR": "depth-column-row: channel (i·r+j)·C+c → pixel (i, j) of channel c, TF depth_to_space, TFLite "
                    "DEPTH_TO_SPACE, ONNX mode='DCR'"}
    evidence = {"block_size": float(r), "a_is_crd": 1.0 if mode_a == "CRD" else 0.0,
                "rel_err_as_compared": float(as_compared), "rel_err_a_vs_recomputed": float(fits[mode_a][0]),
                "rel_err_b_vs_other_order": float(fit_b)}
    msg = (
        f"Depth-to-space reads the channels in the other order: recomputed from A's input, order {mode_a} "
        f"({words[mode_a]}) reproduces A ({fits[mode_a][0]:.1e}), order {mode_b} ({words[mode_b]}) reproduces B "
        f"({fit_b:.1e}, against {as_compared:.2g} as compared). Permute the channels of the layer before "
        f"(its kernel's output channels) from one order to the other, or use DepthToSpace mode='{mode_a}'."
    )
    return Diagnosis(code="depth_to_space_mode", layer=ctx.match.a.name, message=msg, evidence=evidence)


_REDUCTIONS = {"mean": np.mean, "sum": np.sum, "max": np.max}


@detector("axis_remap")
def reduction_axes(ctx: Context) -> Diagnosis | None:
    """A reduction (mean / sum / max over some axes — a global pooling) taken over other axes in
    B: A's input reduced over every choice of axes, the one that reproduces A against the one that
    reproduces B (shapes only coincide where the dimensions are equal, so the values decide)."""
    import itertools

    x = ctx.own_input()
    a, b = ctx.a, ctx.b
    if x is None or a.shape != b.shape or x.ndim <= a.ndim or x.shape[0] != a.shape[0]:
        return None
    x64 = np.asarray(x, dtype=np.float64)
    if x64.size > 5_000_000 or not np.all(np.isfinite(x64)):
        return None
    drop = x64.ndim - a.ndim
    fits = {}
    for kind, fn in _REDUCTIONS.items():
        for axes in itertools.combinations(range(1, x64.ndim), drop):
            y = fn(x64, axis=axes)
            if y.shape == a.shape:
                fits[(kind, axes)] = (_rel(a, y), _rel(b, y))
    if len(fits) < 2:
        return None
    key_a = min(fits, key=lambda k: fits[k][0])
    if fits[key_a][0] > _FIT_OK:
        return None
    others = [k for k in fits if k[0] == key_a[0] and k[1] != key_a[1]]
    if not others:
        return None
    key_b = min(others, key=lambda k: fits[k][1])
    fit_b, as_compared = fits[key_b][1], _rel(a, b)
    if not (fit_b <= _REPRODUCED and as_compared > 10 * max(fit_b, 1e-12)):
        return None
    letters = _letters(ctx.match.a.layout, x64.ndim)

    def named(axes: tuple[int, ...]) -> str:
        return ", ".join(f"{k} ({letters[k]})" if letters else str(k) for k in axes)

    evidence = {"rel_err_as_compared": float(as_compared), "rel_err_a_vs_recomputed": float(fits[key_a][0]),
                "rel_err_b_vs_other_axes": float(fit_b)}
    evidence.update({f"axis_a_{i}": float(k) for i, k in enumerate(key_a[1])})
    evidence.update({f"axis_b_{i}": float(k) for i, k in enumerate(key_b[1])})
    msg = (
        f"B's {key_a[0]} reduces other axes: recomputed from A's input, the {key_a[0]} over axes {named(key_a[1])} "
        f"reproduces A ({fits[key_a][0]:.1e}) and over axes {named(key_b[1])} (A's layout) reproduces B "
        f"({fit_b:.1e}, against {as_compared:.2g} as compared). The axes were not remapped with the layout "
        "(NCHW's spatial axes 2, 3 are NHWC's 1, 2; a global pooling with the wrong data_format reduces the "
        "channels); give B's reduction A's axes after the transpose."
    )
    return Diagnosis(code="axis_remap", layer=ctx.match.a.name, message=msg, evidence=evidence)


def _slice_indices(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
    """For every slice of ``y`` along ``axis``, the index of the nearest slice of ``x`` (squared
    distance, one matrix product): the indices a gather along ``axis`` would have used."""
    xs = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
    ys = np.moveaxis(y, axis, 0).reshape(y.shape[axis], -1)
    d = np.sum(ys * ys, axis=1)[:, None] + np.sum(xs * xs, axis=1)[None, :] - 2.0 * (ys @ xs.T)
    return np.argmin(d, axis=1)


@detector("axis_remap")
def gather_axes(ctx: Context) -> Diagnosis | None:
    """A gather / index_select (a channel pick or reorder, an embedding row pick) taken along another
    axis in B: the indices A used are read off A's output (each of its slices is one slice of A's
    input), then the same indices taken along every other axis of A's input — the axis that
    reproduces B is B's.  Works where the dimensions are equal too: the values decide."""
    x = ctx.own_input()
    a, b = ctx.a, ctx.b
    if x is None or x.ndim != a.ndim or a.shape != b.shape or a.ndim < 2:
        return None
    x64 = np.asarray(x, dtype=np.float64)
    if x64.size > 5_000_000 or x64.size == 0 or not np.all(np.isfinite(x64)):
        return None
    a64 = np.asarray(a, dtype=np.float64)
    as_compared = _rel(a, b)
    best = None
    for i in range(1, a.ndim):
        if any(x64.shape[k] != a.shape[k] for k in range(a.ndim) if k != i):
            continue
        idx = _slice_indices(x64, a64, i)
        if a.shape == x64.shape and np.array_equal(idx, np.arange(len(idx))):
            continue  # A's layer leaves this axis as it is: not a gather along it
        fit_a = _rel(a, np.take(x64, idx, axis=i))
        if fit_a > _FIT_OK:
            continue
        for j in range(1, a.ndim):
            if j == i or idx.max() >= x64.shape[j]:
                continue
            y = np.take(x64, idx, axis=j)
            if y.shape != b.shape:
                continue
            fit_b = _rel(b, y)
            if best is None or fit_b < best[3]:
                best = (i, j, idx, fit_b, fit_a)
    if best is None:
        return None
    i, j, idx, fit_b, fit_a = best
    if not (fit_b <= _REPRODUCED and as_compared > 10 * max(fit_b, 1e-12)):
        return None
    layout = ctx.match.a.layout
    shown = ", ".join(str(int(k)) for k in idx[:8]) + (", …" if len(idx) > 8 else "")
    evidence = {"axis_a": float(i), "axis_b_in_a_layout": float(j), "n_indices": float(len(idx)),
                "rel_err_as_compared": float(as_compared), "rel_err_a_vs_recomputed": float(fit_a),
                "rel_err_b_vs_other_axis": float(fit_b),
                "equal_sizes": 1.0 if x64.shape[i] == x64.shape[j] else 0.0}
    msg = (
        f"B gathers along another axis: A's output is A's input indexed [{shown}] along "
        f"{_axis_words(i, layout, a.ndim)} ({fit_a:.1e}); the same indices along "
        f"{_axis_words(j, layout, a.ndim)} (in A's layout) reproduce B ({fit_b:.1e}, against {as_compared:.2g} "
        "as compared). The gather's axis was not remapped with the layout (index_select(1, …) on NCHW picks "
        "channels: tf.gather(..., axis=-1) on NHWC); give B's gather A's axis after the transpose."
    )
    return Diagnosis(code="axis_remap", layer=ctx.match.a.name, message=msg, evidence=evidence)
