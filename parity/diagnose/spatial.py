"""Spatial causes: padding placed differently, and axes in a different order.

``padding_asymmetry`` (conv, pool).  Two signatures, either suffices:

* the error sits on one side's border: the last (or first) row/column of the
  output is far worse than the interior — a pad row/column that one model adds
  at the bottom/right and the other at the top/left (or not at all);
* the whole output is taken on a shifted grid: a strided conv/pool on an even
  input with TF/Keras ``padding='same'`` pads 0 rows at the top and 1 at the
  bottom, where torch's ``padding=1`` pads 1 on each side, so *every* output
  window sits one input pixel off (the error is then not on the border at all).
  This is shown by refitting A's op from A's recorded input (the previous pair;
  a conv is linear, so its kernel is recovered by least squares, a pool needs
  nothing) and finding the padding offset under which it reproduces B.

``layout`` (any 3-D…5-D tensor): B's numbers are right but read in another
axis order — H and W swapped, or channels-last taken for channels-first where
the shape cannot tell (C == H == W).  Every other permutation of the non-batch
axes that keeps the shape is tried.
"""

from __future__ import annotations

from itertools import permutations, product

import numpy as np

from .base import Context, detector
from .base import to_nchw as _to_nchw
from .base import rel_diff as _rel
from ..records import Diagnosis

#: the refit of A's op must reproduce A this well (relative) to be trusted
_FIT_OK = 1e-4
#: B is "reproduced" by the other padding / permutation within this (relative)
_REPRODUCED = 1e-3
#: at most this many (sample, row, col) output positions are refitted
_MAX_POSITIONS = 4096
#: conv kernels with more unknowns per group than this are not refitted (too costly)
_MAX_UNKNOWNS = 1200
#: a refit needs this many output positions more than its unknowns (the kernel of one group and a
#: bias): with that surplus a least-squares fit under a wrong padding cannot come out exact
#: (a stride-2 grid shift leaves a residual near the whole signal), so fitting A to _FIT_OK says
#: the padding is A's.  An 8×8 map of 8 channels (73 unknowns, 2 samples: 128 positions) refits.
_SURPLUS = 32
#: the windows taken for a refit hold at most about this many numbers
_MAX_WINDOW_ELEMENTS = 4_000_000


def _pair(value, default=None) -> tuple[int, int] | None:
    if value is None:
        return default
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, np.integer)) for v in value):
        return int(value[0]), int(value[1])
    return default


def _attr(match, *keys):
    for attrs in (match.a.attrs, match.b.attrs):
        for key in keys:
            if key in attrs and attrs[key] is not None:
                return attrs[key]
    return None


def _declared_pad(attrs, k, s, d, in_hw, out_hw) -> tuple[int, int] | None:
    """The top/left padding one side declares (torch ints, or 'same'/'valid')."""
    pad = attrs.get("padding")
    if isinstance(pad, str):
        if pad.lower() == "valid":
            return 0, 0
        if pad.lower() == "same":
            tl = []
            for ax in range(2):
                total = max((out_hw[ax] - 1) * s[ax] + d[ax] * (k[ax] - 1) + 1 - in_hw[ax], 0)
                tl.append(total // 2)
            return tl[0], tl[1]
        return None
    return _pair(pad)


def _border(a: np.ndarray, b: np.ndarray) -> dict[str, float] | None:
    """Mean |b−a| of the first/last row/column and the interior (NCHW arrays)."""
    if a.shape[2] < 3 or a.shape[3] < 3:
        return None
    diff = np.abs(b.astype(np.float64) - a.astype(np.float64))
    diff[~np.isfinite(diff)] = 0.0
    grid = diff.mean(axis=(0, 1))
    return {
        "first_row": float(grid[0].mean()),
        "last_row": float(grid[-1].mean()),
        "first_col": float(grid[:, 0].mean()),
        "last_col": float(grid[:, -1].mean()),
        "interior": float(grid[1:-1, 1:-1].mean()),
    }


class _Windows:
    """Windows of a (margin-padded) NCHW input at sampled output positions."""

    def __init__(self, x: np.ndarray, k, s, d, out_hw, fill: float, positions):
        self.k, self.s, self.d = k, s, d
        self.margin = (d[0] * (k[0] - 1), d[1] * (k[1] - 1))
        mh, mw = self.margin
        self.xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (mh, mh), (mw, mw)), constant_values=fill)
        self.valid = np.pad(np.ones(x.shape[2:], bool), ((mh, mh), (mw, mw)), constant_values=False)
        self.n, self.i, self.j = positions

    def take(self, pt: int, pl: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(P, C, kh, kw) windows for top/left padding (pt, pl), and their validity mask."""
        (kh, kw), (sh, sw), (dh, dw) = self.k, self.s, self.d
        mh, mw = self.margin
        r = (self.i * sh - pt + mh)[:, None] + np.arange(kh)[None, :] * dh
        c = (self.j * sw - pl + mw)[:, None] + np.arange(kw)[None, :] * dw
        if r.min() < 0 or c.min() < 0 or r.max() >= self.xp.shape[2] or c.max() >= self.xp.shape[3]:
            return None
        cc = np.arange(self.xp.shape[1])
        win = self.xp[self.n[:, None, None, None], cc[None, :, None, None], r[:, None, :, None], c[:, None, None, :]]
        mask = self.valid[r[:, :, None], c[:, None, :]]
        return win, mask


def _positions(n: int, h: int, w: int, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    total = n * h * w
    idx = np.arange(total)
    if total > limit:
        idx = np.sort(np.random.default_rng(0).choice(total, limit, replace=False))
    return idx // (h * w), (idx // w) % h, idx % w


def _pads(k, d) -> list[tuple[int, int]]:
    return list(product(range(d[0] * (k[0] - 1) + 1), range(d[1] * (k[1] - 1) + 1)))


def _conv_shift(ctx: Context, x, a, b, k, s, d, positions):
    """Refit A's conv from A's input; the padding under which it reproduces B."""
    groups = _attr(ctx.match, "groups")
    c_in, c_out = x.shape[1], a.shape[1]
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        groups = c_in if "depthwise" in ctx.match.a.op.lower() else 1
    if c_in % groups or c_out % groups:
        return None
    cg, og = c_in // groups, c_out // groups
    unknowns = cg * k[0] * k[1] + 1
    n_pos = len(positions[0])
    if unknowns > _MAX_UNKNOWNS or n_pos < unknowns + _SURPLUS:
        return None
    win = _Windows(x, k, s, d, a.shape[2:], 0.0, positions)
    n, i, j = positions
    a_at, b_at = a[n, :, i, j].astype(np.float64), b[n, :, i, j].astype(np.float64)  # (P, C_out)
    declared = _declared_pad(ctx.match.a.attrs, k, s, d, x.shape[2:], a.shape[2:])
    candidates = [declared] if declared is not None else _pads(k, d)

    def design(pt, pl):
        taken = win.take(pt, pl)
        if taken is None:
            return None
        w = taken[0].reshape(n_pos, groups, cg * k[0] * k[1])
        return np.concatenate([w, np.ones((n_pos, groups, 1))], axis=2)  # (P, G, K)

    fit = None
    for pad in candidates:
        m = design(*pad)
        if m is None:
            continue
        weights = [np.linalg.lstsq(m[:, g], a_at[:, g * og:(g + 1) * og], rcond=None)[0] for g in range(groups)]
        pred = np.concatenate([m[:, g] @ weights[g] for g in range(groups)], axis=1)
        err = _rel(a_at, pred)
        if fit is None or err < fit[2]:
            fit = (pad, weights, err)
    if fit is None or fit[2] > _FIT_OK:
        return None
    pad_a, weights, fit_err = fit
    best = None
    for pad in _pads(k, d):
        if pad == pad_a:
            continue
        m = design(*pad)
        if m is None:
            continue
        pred = np.concatenate([m[:, g] @ weights[g] for g in range(groups)], axis=1)
        err = _rel(b_at, pred)
        if best is None or err < best[1]:
            best = (pad, err)
    if best is None:
        return None
    return pad_a, best[0], fit_err, best[1], _rel(a_at, b_at)


def _pool_shift(ctx: Context, x, a, b, k, s, d, positions):
    """Recompute A's pool from A's input under each padding (A's mode); the padding that gives B."""
    found = _pool_refits(ctx, x, a, b, k, s, d, positions)
    if found is None:
        return None
    results, key_a, as_compared = found
    others = [key for key in results if key[1] != key_a[1] and key[0] == key_a[0]]
    if not others:
        return None
    key_b = min(others, key=lambda key: results[key][1])
    return key_a[1], key_b[1], results[key_a][0], results[key_b][1], as_compared


def _pool_refits(ctx: Context, x, a, b, k, s, d, positions):
    """A's pool recomputed from A's input under every padding and mode: ``(results, key_a,
    rel err as compared)``, ``results[(mode, pad)] = (rel err to A, rel err to B)`` and ``key_a`` the
    mode and padding that reproduce A; None when none does."""
    op = ctx.match.a.op.lower()
    modes = ("max",) if "max" in op else ("avg_include", "avg_exclude") if ("avg" in op or "average" in op) else ()
    if not modes:
        return None
    n, i, j = positions
    a_at, b_at = a[n, :, i, j].astype(np.float64), b[n, :, i, j].astype(np.float64)
    wins = {
        "max": _Windows(x, k, s, d, a.shape[2:], -np.inf, positions) if "max" in modes else None,
        "avg": _Windows(x, k, s, d, a.shape[2:], 0.0, positions) if modes != ("max",) else None,
    }

    def pool(mode, pt, pl):
        w = wins["max" if mode == "max" else "avg"]
        taken = w.take(pt, pl)
        if taken is None:
            return None
        win, mask = taken
        if mode == "max":
            out = win.max(axis=(2, 3))
            return None if not np.all(np.isfinite(out)) else out
        if mode == "avg_include":
            return win.mean(axis=(2, 3))
        count = mask.sum(axis=(1, 2)).astype(np.float64)[:, None]
        return None if np.any(count == 0) else win.sum(axis=(2, 3)) / count

    results = {}
    for mode in modes:
        for pad in _pads(k, d):
            out = pool(mode, *pad)
            if out is not None:
                results[(mode, pad)] = (_rel(a_at, out), _rel(b_at, out))
    if not results:
        return None
    key_a = min(results, key=lambda key: results[key][0])
    if results[key_a][0] > _FIT_OK:
        return None
    return results, key_a, _rel(a_at, b_at)


def _side_words(pt_a, pl_a, pt_b, pl_b) -> str:
    parts = []
    if pt_b != pt_a:
        parts.append(f"{abs(pt_a - pt_b)} row{'s' if abs(pt_a - pt_b) > 1 else ''} {'lower' if pt_b < pt_a else 'higher'}")
    if pl_b != pl_a:
        parts.append(f"{abs(pl_a - pl_b)} column{'s' if abs(pl_a - pl_b) > 1 else ''} "
                     f"{'further right' if pl_b < pl_a else 'further left'}")
    return " and ".join(parts)


def _refit_input(ctx: Context) -> tuple[np.ndarray | None, str]:
    """A's input of the layer in NCHW, and what it is: the input recorded by rerunning A (the
    layer's own), else the previous pair's A value (its input in a plain chain only)."""
    layout = ctx.match.a.layout
    if ctx.input_a is not None:
        return _to_nchw(np.asarray(ctx.input_a), layout), "its own recorded input"
    prev = ctx.previous_values()
    if prev is None or ctx.previous is None:
        return None, ""
    return _to_nchw(prev[0], ctx.previous.a.layout), "the previous layer's output (taken as its input)"


def _refit_setup(ctx: Context, a: np.ndarray):
    """What a refit of A's windowed op needs: ``(what the input is, A's input in NCHW, kernel,
    stride, dilation, output positions)``, or None without an input or a kernel size."""
    x, source = _refit_input(ctx)
    k = _pair(_attr(ctx.match, "kernel_size", "pool_size"))
    s = _pair(_attr(ctx.match, "stride", "strides"), (1, 1))
    d = _pair(_attr(ctx.match, "dilation", "dilation_rate"), (1, 1))
    if x is None or k is None or x.ndim != 4 or x.shape[0] != a.shape[0] or not np.all(np.isfinite(x)):
        return None
    # enough positions for the unknowns of a conv's kernel, few enough to keep the windows small
    groups = _attr(ctx.match, "groups")
    groups = groups if isinstance(groups, (int, np.integer)) and groups >= 1 else 1
    unknowns = (x.shape[1] // groups) * k[0] * k[1] + 1 if ctx.family == "conv" else 0
    limit = int(min(_MAX_POSITIONS, max(3 * unknowns, _MAX_WINDOW_ELEMENTS // (x.shape[1] * k[0] * k[1]), 64)))
    return source, x, k, s, d, _positions(a.shape[0], a.shape[2], a.shape[3], limit)


_MODE_WORDS = {
    "avg_include": "divides every window by its full size, padding included (torch count_include_pad=True, "
                   "the default of nn.AvgPool2d)",
    "avg_exclude": "divides each window by the input elements it covers, padding excluded (TF/Keras "
                   "padding='same', torch count_include_pad=False, ONNX count_include_pad=0)",
}


@detector("pool_semantics", {"pool"})
def pool_semantics(ctx: Context) -> Diagnosis | None:
    """Average pooling that counts the padding in its divisor on one side only: B is A's pool
    recomputed from A's input with the other divisor (and, where it also differs, the padding)."""
    layout = ctx.match.a.layout
    a, b = _to_nchw(ctx.a, layout), _to_nchw(ctx.b, layout)
    if a is None or b is None or a.shape != b.shape:
        return None
    setup = _refit_setup(ctx, a)
    if setup is None:
        return None
    source, x, k, s, d, positions = setup
    try:
        found = _pool_refits(ctx, x, a, b, k, s, d, positions)
    except (ValueError, IndexError):
        return None
    if found is None or found[1][0] == "max":
        return None
    results, (mode_a, pad_a), as_compared = found
    others = [key for key in results if key[0] != mode_a]
    if not others:
        return None
    mode_b, pad_b = min(others, key=lambda key: results[key][1])
    fit_b = results[(mode_b, pad_b)][1]
    if not (fit_b <= _REPRODUCED and as_compared > 10 * max(fit_b, 1e-12)):
        return None
    evidence = {
        "rel_err_as_compared": float(as_compared), "rel_err_b_vs_a_pool_with_b_divisor": float(fit_b),
        "rel_err_a_refit": float(results[(mode_a, pad_a)][0]),
        "a_counts_padding": 1.0 if mode_a == "avg_include" else 0.0,
        "pad_top_a": float(pad_a[0]), "pad_left_a": float(pad_a[1]),
        "pad_top_b": float(pad_b[0]), "pad_left_b": float(pad_b[1]),
    }
    padding = ("" if pad_a == pad_b else
               f" It also pads the top/left by {pad_b} where A pads {pad_a} (see padding_asymmetry's fix).")
    fix = ("Give torch's nn.AvgPool2d count_include_pad=False (what Keras 'same' does), or pad explicitly "
           "(ZeroPadding2D / nn.ZeroPad2d) and pool with padding='valid' / padding=0 on both sides"
           if mode_a != mode_b else "")
    msg = (
        f"Average pooling divides differently at the borders: A's {ctx.match.a.op} {_MODE_WORDS[mode_a]}; B's "
        f"{ctx.match.b.op} {_MODE_WORDS[mode_b]}. A's pool recomputed from {source} reproduces A to "
        f"{results[(mode_a, pad_a)][0]:.1e} and, with B's divisor, B to {fit_b:.1e} (against {as_compared:.2g} as "
        f"compared).{padding} {fix}."
    )
    return Diagnosis(code="pool_semantics", layer=ctx.match.a.name, message=msg, evidence=evidence)


@detector("padding_asymmetry", {"conv", "pool"})
def padding_asymmetry(ctx: Context) -> Diagnosis | None:
    layout = ctx.match.a.layout
    a, b = _to_nchw(ctx.a, layout), _to_nchw(ctx.b, layout)
    if a is None or b is None or a.shape != b.shape:
        return None
    border = _border(a, b)
    evidence: dict[str, float] = {}
    if border is not None:
        evidence.update(border)
        edge = max(border[key] for key in ("first_row", "last_row", "first_col", "last_col"))
        if border["interior"] > 0:  # (a clean interior has no finite ratio; the edges say it)
            evidence["edge_to_interior"] = float(edge / border["interior"])

    # the refit: A's op on A's input under other paddings — the input A's layer itself received
    # (recorded by rerunning A), wherever the layer sits: first, after an add, inside a branch;
    # without a recording, the previous pair's A value, which is the input only in a plain chain
    shift = None
    setup = _refit_setup(ctx, a)
    source = setup[0] if setup is not None else ""
    if setup is not None:
        _, x, k, s, d, positions = setup
        refit = _conv_shift if ctx.family == "conv" else _pool_shift
        try:
            shift = refit(ctx, x, a, b, k, s, d, positions)
        except (ValueError, IndexError, np.linalg.LinAlgError):
            shift = None
    if shift is not None:
        pad_a, pad_b, fit_err, refit_err, as_compared = shift
        if not (refit_err <= _REPRODUCED and as_compared > 10 * max(refit_err, 1e-12)):
            shift = None
    if shift is not None:
        (pt_a, pl_a), (pt_b, pl_b) = pad_a, pad_b
        evidence.update({
            "pad_top_a": float(pt_a), "pad_left_a": float(pl_a), "pad_top_b": float(pt_b), "pad_left_b": float(pl_b),
            "rel_err_as_compared": float(as_compared), "rel_err_b_vs_a_op_with_b_padding": float(refit_err),
            "rel_err_a_refit": float(fit_err), "stride_h": float(s[0]), "stride_w": float(s[1]),
        })
        less, more = ("B", "A") if pt_b + pl_b < pt_a + pl_a else ("A", "B")
        msg = (
            f"Padding differs: B's {ctx.match.b.op} takes every window {_side_words(pt_a, pl_a, pt_b, pl_b)} than A's. "
            f"A's {ctx.match.a.op} refitted from {source} reproduces A with top/left padding ({pt_a}, {pl_a}) "
            f"(rel err {fit_err:.1e}) and B with ({pt_b}, {pl_b}) (rel err {refit_err:.1e}, against {as_compared:.2g} "
            f"as compared). {less} pads less at the top/left, i.e. puts the extra row/column at the bottom/right only, "
            f"as TF/Keras padding='same' does with stride {s[0]}×{s[1]} on an even input, where {more} pads both "
            "sides as an explicit symmetric torch pad (padding=1) does, so the whole output grid shifts. Pad "
            "explicitly in Keras: ZeroPadding2D(((1, 1), (1, 1))) then padding='valid' (or, to mimic 'same' in "
            "torch: nn.ZeroPad2d((0, 1, 0, 1)) then padding=0)."
        )
        return Diagnosis(code="padding_asymmetry", layer=ctx.match.a.name, message=msg, evidence=evidence)

    if border is None:
        return None
    interior = border["interior"]
    br = max(border["last_row"], border["last_col"])
    tl = max(border["first_row"], border["first_col"])
    hot, cold, where = (br, tl, "bottom/right") if br >= tl else (tl, br, "top/left")
    allowed = ctx.layer.atol + ctx.layer.rtol * float(np.mean(np.abs(a.astype(np.float64))))
    if not (hot > 10 * max(interior, 1e-30) and hot > 3 * max(cold, 1e-30) and interior <= allowed < hot):
        return None  # the interior must pass and the edge fail: otherwise the border is not the cause
    sides = [key.replace("_", " ") for key in ("first_row", "last_row", "first_col", "last_col")
             if border[key] > 10 * max(interior, 1e-30) and border[key] > 0.3 * hot]
    msg = (
        f"Padding differs on one side: the error of {ctx.match.a.name!r} sits on the {', '.join(sides)} "
        f"(mean |b−a| {hot:.3g}) while the interior "
        + (f"is {interior:.3g} ({hot / interior:.0f}× less)" if interior > 0 else "is exact")
        + " and the "
        f"{'top/left' if where == 'bottom/right' else 'bottom/right'} edges are {cold:.3g}. One model pads the "
        f"{where} where the other pads elsewhere: TF 'SAME' padding puts the extra row/column at the bottom/right "
        "where an explicit symmetric torch pad (padding=1) pads both sides. Pad explicitly with "
        "ZeroPadding2D(((0, 1), (0, 1))) / nn.ZeroPad2d((0, 1, 0, 1)) as needed, or use padding='valid' after "
        "an explicit pad, so both models pad the same rows and columns."
    )
    return Diagnosis(code="padding_asymmetry", layer=ctx.match.a.name, message=msg, evidence=evidence)


# --- layout -----------------------------------------------------------------------------

_MAX_LAYOUT_SAMPLES = 4


def _describe_perm(perm: tuple[int, ...], letters: str | None) -> str:
    names = letters if letters and len(letters) == len(perm) else "".join(f"{i}" for i in range(len(perm)))
    moved = [i for i in range(len(perm)) if perm[i] != i]
    if len(moved) == 2:
        i, j = moved
        return f"{names[i]} and {names[j]} swapped"
    return ", ".join(f"A's {names[i]} is B's {names[perm[i]]}" for i in moved)


@detector("layout")
def layout(ctx: Context) -> Diagnosis | None:
    a, b = ctx.a, ctx.b
    if not 3 <= a.ndim <= 5 or a.shape != b.shape or a.size == 0:
        return None
    a_s = a[:_MAX_LAYOUT_SAMPLES].astype(np.float64)
    b_s = b[:_MAX_LAYOUT_SAMPLES].astype(np.float64)
    if not (np.all(np.isfinite(a_s)) and np.all(np.isfinite(b_s))):
        return None
    as_compared = _rel(a_s, b_s)
    best = None
    for rest in permutations(range(1, a.ndim)):
        perm = (0, *rest)
        if perm == tuple(range(a.ndim)):
            continue
        moved = np.transpose(b_s, perm)
        if moved.shape != a_s.shape:
            continue
        err = _rel(a_s, moved)
        if best is None or err < best[1]:
            best = (perm, err)
    if best is None:
        return None
    perm, err = best
    threshold = min(_REPRODUCED, max(ctx.layer.allowed_rel, 1e-6)) if np.isfinite(ctx.layer.allowed_rel) else _REPRODUCED
    if not (err <= threshold and as_compared > 10 * max(err, 1e-12)):
        return None
    letters = ctx.match.a.layout if ctx.match.a.layout and "(" not in ctx.match.a.layout else None
    what = _describe_perm(perm, letters)
    t = ctx.match.transform
    raw_perm = None
    if t.kind == "identity":
        raw_perm = perm
    elif t.kind == "permute" and t.perm is not None:
        raw_perm = tuple(t.perm[p] for p in perm)
    actual = None
    if raw_perm is not None and letters:
        slots = [""] * len(raw_perm)
        for i, src in enumerate(raw_perm):
            slots[src] = letters[i]
        actual = "".join(slots)
    declared = ctx.match.b.layout
    where = (f" B's tensor is laid out as {actual}" + (f", not the {declared} it declares" if declared else "") + ";"
             if actual and actual != declared else "")
    msg = (
        f"Axes in a different order: B's {ctx.match.b.op} holds A's numbers with {what}.{where} compared as "
        f"{t.label} the relative error is {as_compared:.2g}, under the other permutation {err:.1e}. A "
        "Permute/transpose in the conversion has the wrong order (or a reshape stands where a transpose was "
        "needed)" + (", or — the shape fits more than one layout — the layout declared for B is wrong" if t.ambiguous else "")
        + ". Fix B's transpose so its axes follow A's, or give parity the layout B really uses."
    )
    evidence = {
        "rel_err_as_compared": float(as_compared),
        "rel_err_best_permutation": float(err),
        "ambiguous_shape": 1.0 if t.ambiguous else 0.0,
    }
    evidence.update({f"perm_{i}": float(p) for i, p in enumerate(perm)})
    return Diagnosis(code="layout", layer=ctx.match.a.name, message=msg, evidence=evidence)
