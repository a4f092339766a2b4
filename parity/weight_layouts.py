"""How a wrongly laid out copy of a parameter looks, for weight parity (:mod:`parity.weights`).

A kernel copied between frameworks with the wrong layout transform is still A's kernel, seen
through another permutation: a square dense weight not transposed, a conv kernel with kh/kw
swapped (NumPy's ``.T``), in/out channels swapped, all axes reversed, spatially flipped; or the
rows of a dense layer after a flatten in another flatten order than B's input has.  Each is an
:class:`Alternative` — B's copy transformed back, with what was done in words and the copy that
fixes it, in code, for the pair's frameworks.  The flatten order of a dense layer's input is
read from the taps before it (:func:`flat_info`).  Pure NumPy over
:class:`~parity.records.LayerParams` records.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .records import LayerParams, Match, Tap

__all__ = [
    "KNOWN_KINDS", "LayerPair", "Alternative", "alternatives", "kernel_alternatives", "flatten_alternatives",
    "copy_hint", "reorder_hint", "expected_order", "reorder_rows", "flat_info",
]

#: the layer kinds whose parameters have roles (the others are compared by identical names)
KNOWN_KINDS = frozenset({"conv", "depthwise", "convtranspose", "dense", "batchnorm", "norm", "embedding", "rnn"})


@dataclass
class LayerPair:
    """What one layer pair's comparison needs to know beyond the arrays."""

    match: Match
    a: LayerParams
    b: LayerParams
    a_layer: str
    b_layer: str
    #: the flatten order of the dense layer's input on each side: (axis letters, per-sample sizes, certain)
    flat_a: tuple[str, tuple[int, ...], bool] | None = None
    flat_b: tuple[str, tuple[int, ...], bool] | None = None


@dataclass
class Alternative:
    """B's parameter transformed back from one wrong layout, and what that layout was."""

    #: the ParamDiff status it gives ("transposed")
    status: str
    label: str  # what was done to B's copy, in words
    value: np.ndarray
    #: the diagnosis code (weight_transpose, flatten_order)
    code: str = "weight_transpose"
    message: str = ""


def copy_hint(ctx: LayerPair, nd: int) -> str:
    """How B's kernel is made from A's, in code, for the pair's frameworks."""
    kind, fa, fb = ctx.a.kind, ctx.a.framework, ctx.b.framework
    if fa == fb:
        return "copy it unchanged"
    spatial = tuple(range(2, nd + 2))
    if fa == "torch" and fb == "keras":
        if kind == "dense":
            return "copy weight.T ((out, in) → (in, out))"
        if kind == "depthwise":
            return f"copy weight.reshape(C, M, *k).permute{(*spatial, 0, 1)} ((C·M, 1, kh, kw) → (kh, kw, C, M))"
        return f"copy weight.permute{(*spatial, 1, 0)} (OIHW → HWIO)"
    if kind == "dense":
        return "copy kernel.T ((in, out) → (out, in))"
    if kind == "depthwise":
        return f"copy kernel.transpose{(nd, nd + 1, *range(nd))}.reshape(C·M, 1, *k)"
    return f"copy kernel.transpose{(nd + 1, nd, *range(nd))} (HWIO → OIHW)"


def kernel_alternatives(ctx: LayerPair, a: np.ndarray, b: np.ndarray) -> list[Alternative]:
    """What a wrongly laid out copy of A's kernel looks like in B's canonical layout."""
    kind = ctx.a.kind if ctx.a.kind in KNOWN_KINDS else ctx.b.kind
    fa, fb = ctx.a.framework, ctx.b.framework
    pa, pb = ctx.a.params["kernel"].name, ctx.b.params["kernel"].name
    other_way = f"{pb} equals {fa} {pa} transposed the other way"
    alts: list[Alternative] = []
    if kind == "dense" and b.ndim == 2:
        if b.shape[0] == b.shape[1]:
            layout = "(in, out)" if fb == "keras" else "(out, in)"
            alts.append(Alternative("transposed", "transposed", b.T, message=(
                f"{other_way}: the square {b.shape} {fa} {pa} was copied without transposing; "
                f"{fb} keeps it as {layout}, so {copy_hint(ctx, 0)}")))
        alts.extend(flatten_alternatives(ctx, a, b))
    elif kind in ("conv", "depthwise", "convtranspose") and b.ndim >= 3:
        nd = b.ndim - 2
        spatial = b.shape[2:]
        hint = copy_hint(ctx, nd)
        if nd >= 2 and len(set(spatial)) == 1:
            rev = (0, 1, *reversed(range(2, nd + 2)))
            alts.append(Alternative("transposed", "with kh/kw swapped", np.transpose(b, rev), message=(
                f"{other_way}: the kernel's height and width axes are swapped (as NumPy's .T of a "
                f"torch weight gives); {hint}")))
        if kind != "depthwise" and b.shape[0] == b.shape[1]:
            alts.append(Alternative("transposed", "with in/out channels swapped", np.swapaxes(b, 0, 1), message=(
                f"{other_way}: its input and output channel axes are swapped; {hint}")))
            if nd >= 2 and len(set(spatial)) == 1:
                rev = (1, 0, *reversed(range(2, nd + 2)))
                alts.append(Alternative("transposed", "fully reversed", np.transpose(b, rev), message=(
                    f"{other_way}: all its axes are reversed; {hint}")))
        flip = (Ellipsis, *([slice(None, None, -1)] * nd))
        alts.append(Alternative("transposed", "flipped spatially", b[flip], message=(
            f"{pb} equals {fa} {pa} flipped spatially (rotated 180°: a convolution kernel copied "
            f"as a cross-correlation one, or the reverse); {hint} without flipping")))
    return alts


def flatten_alternatives(ctx: LayerPair, a: np.ndarray, b: np.ndarray) -> list[Alternative]:
    """B's dense kernel with its rows in another flatten order than the one B's input has."""
    if ctx.flat_a is None:
        return []
    order_a, sizes_a, _ = ctx.flat_a
    expected = expected_order(ctx)
    alts = []
    for perm in itertools.permutations(order_a):
        order = "".join(perm)
        if order == expected:
            continue
        value = reorder_rows(b, order, order_a, sizes_a)
        if value is None:
            continue
        fix = reorder_hint(ctx, b.shape[0], order_a, sizes_a, expected)
        if expected != order_a and order == order_a:
            what = (
                f"rows not reordered: B flattens its input in ({','.join(expected)}) order but the kernel rows are "
                f"in A's ({','.join(order_a)}) order — they must be permuted as N{order_a}→N{expected} flatten "
                f"order: {fix}, or put a Permute to N{order_a} before B's Flatten"
            )
        else:
            what = (
                f"rows permuted as N{expected}→N{order} flatten order, which B's input does not need: B flattens "
                f"in ({','.join(expected)}) order but the rows are in ({','.join(order)}) order; {fix}"
            )
        alts.append(Alternative("transposed", f"with rows in N{order} flatten order", value, code="flatten_order", message=what))
    return alts


def reorder_hint(ctx: LayerPair, out: int, order_a: str, sizes_a: tuple[int, ...], expected: str) -> str:
    """The copy that puts A's dense rows (inputs in ``order_a``) into B's flatten order."""
    perm = (0, *[1 + order_a.index(c) for c in expected])
    src = "weight" if ctx.a.framework == "torch" else "kernel.T"
    dst = ".T" if ctx.b.framework == "keras" else ""
    return (
        f"copy {src}.reshape({out}, {', '.join(map(str, sizes_a))}).transpose{perm}.reshape({out}, -1){dst}"
    )


def expected_order(ctx: LayerPair) -> str:
    """The flatten order B's dense rows must follow (A's when B's is unknown)."""
    assert ctx.flat_a is not None
    order_a = ctx.flat_a[0]
    if ctx.flat_b is not None and sorted(ctx.flat_b[0]) == sorted(order_a):
        sizes_a = dict(zip(order_a, ctx.flat_a[1]))
        sizes_b = dict(zip(ctx.flat_b[0], ctx.flat_b[1]))
        if sizes_a == sizes_b:
            return ctx.flat_b[0]
    return order_a


def reorder_rows(b: np.ndarray, order: str, order_a: str, sizes_a: tuple[int, ...]) -> np.ndarray | None:
    """B's (out, in) kernel whose inputs run in ``order`` → inputs in A's ``order_a``."""
    sizes = dict(zip(order_a, sizes_a))
    if b.ndim != 2 or int(np.prod(sizes_a)) != b.shape[1]:
        return None
    out = b.shape[0]
    return np.transpose(
        b.reshape(out, *[sizes[c] for c in order]), (0, *[1 + order.index(c) for c in order_a])
    ).reshape(out, -1)


def alternatives(ctx: LayerPair, role: str, a: np.ndarray, b_raw: np.ndarray) -> list[Alternative]:
    """The wrong layouts worth trying for a parameter of this role (kernels only)."""
    if ctx.a.kind == "rnn" and ctx.b.kind == "rnn":
        return gate_alternatives(ctx, role, a, b_raw)
    if role == "kernel":
        return kernel_alternatives(ctx, a, b_raw)
    return []


def gate_alternatives(ctx: LayerPair, role: str, a: np.ndarray, b_raw: np.ndarray) -> list[Alternative]:
    """A recurrent layer's parameter with its gate blocks in another order: B's blocks (already
    brought to torch's order) read as if they were in each other order of torch's gates."""
    gates = tuple(str(ctx.a.attrs.get("gates", "")))
    if len(gates) < 2 or b_raw.shape != a.shape or a.shape[0] % len(gates):
        return []
    out = []
    blocks = np.split(b_raw, len(gates), axis=0)
    keras_gates = str(ctx.b.attrs.get("gates", ""))
    for order in itertools.permutations(range(len(gates))):
        if order == tuple(range(len(gates))):
            continue
        value = np.concatenate([blocks[k] for k in order], axis=0)
        seen = "".join(gates[k] for k in order)
        out.append(Alternative(
            status="transposed", value=value, code="rnn_gate_order",
            label=f"with B's gate blocks read in the order {seen} (torch's is {''.join(gates)})",
            message=(f"{role} of {ctx.b_layer!r} holds A's gate blocks in another order: B's blocks, read as "
                     f"{seen}, are A's {''.join(gates)}"
                     + (f" (Keras' own order is {keras_gates}; torch's {''.join(gates)})" if keras_gates else "")),
        ))
    return out


def flat_info(tap: Tap, taps: Mapping[int, Tap], in_features: int) -> tuple[str, tuple[int, ...], bool] | None:
    """The flatten order of the input of the dense layer at ``tap``: the nearest earlier tap that
    says (``N(HWC)`` with ``flat_from``; or a ``NCHW``/``NHWC`` tensor of the right size, flattened
    in its own layout); ``""`` when that tap is already ``(N, C)``; ``None`` when unknown.  The flag
    is false when taps in between are unknown (matches given without the unmatched taps)."""
    certain = True
    for j in range(tap.index - 1, -1, -1):
        prev = taps.get(j)
        if prev is None:
            certain = False
            continue
        if prev.role in ("container", "output"):
            continue
        layout = prev.layout
        if not layout:
            return None
        if len(layout) == 2 and len(prev.shape) == 2:
            return "", (), certain  # an (N, C) tensor: nothing was flattened
        if layout.startswith("N(") and layout.endswith(")"):
            order = layout[2:-1]
            flat = tuple(int(d) for d in prev.attrs.get("flat_from", ()) or ())
        elif len(layout) >= 3 and len(prev.shape) == len(layout):
            order, flat = layout[1:], tuple(int(d) for d in prev.shape[1:])
        else:
            return None
        if len(flat) != len(order) or int(np.prod(flat)) != in_features or len(order) > 4:
            return None
        return order, flat, certain
    return None
