"""Layers whose shapes differ: the two models do not compute the same tensor there.

The aligner pairs only tensors whose shapes a layout transform reconciles; a layer of A
and a layer of B that carry the same name (or the two models' outputs, in order) but
whose shapes no transform reconciles are left unpaired.  They are not "not compared"
for lack of evidence: the shapes themselves are the evidence that the models differ.
A model output whose shape differs fails the report, whatever its layers say.

The cause is named where the numbers show it: a pooling layer whose output is one larger
on one side in exactly the axes where the last window is partial rounds its size up there
(PyTorch's ``ceil_mode=True``), the other side down (Keras/TF ``padding="valid"``); a
concatenation k× larger on one axis in A and k× on another in B joined along an axis that
was not remapped with the layout (``axis_remap``), and likewise a gather or slice that picks k
entries along one axis in A and along another in B.
"""

from __future__ import annotations

from typing import Any

from .records import Alignment, ShapeConflict

__all__ = ["dims", "shape_conflicts"]


def shape_conflicts(alignment: Alignment) -> tuple[ShapeConflict, ...]:
    """Every pair of unpaired taps of A and B with the same name, or the unpaired model outputs
    in order, whose shapes no layout transform reconciles, in A's execution order."""
    stray_a = [u.tap for u in alignment.unmatched_a if u.reason == "no-match"]
    # B's step of the same name may be set aside as one-sided (nothing of A had its shape)
    stray_b = [u.tap for u in alignment.unmatched_b if u.reason in ("no-match", "one-sided")]
    by_name = {t.name: t for t in stray_b}
    outputs_b = [t for t in stray_b if t.role == "output"]
    outputs_a = [t for t in stray_a if t.role == "output"]
    out: list[ShapeConflict] = []
    for a in sorted(stray_a, key=lambda t: t.index):
        b = by_name.get(a.name)
        if b is None and a.role == "output" and len(outputs_a) == len(outputs_b):
            b = outputs_b[outputs_a.index(a)]
        if b is None or b.role != a.role:
            continue
        if sorted(a.shape) == sorted(b.shape):
            continue  # the same sizes in another order: a layout question, not a shape conflict
        shape_b = in_a_layout(tuple(b.shape), a.layout, b.layout)
        code, message = _cause(a, b, shape_b) if not out else _after(a, b, shape_b, out[0])
        out.append(ShapeConflict(
            a_name=a.name, b_name=b.name, a_op=a.op, b_op=b.op, a_shape=tuple(a.shape), b_shape=shape_b,
            b_layout=b.layout if shape_b == tuple(b.shape) else a.layout, output=a.role == "output",
            code=code, message=message,
        ))
    return tuple(out)


def in_a_layout(shape: tuple[int, ...], layout_a: str | None, layout_b: str | None) -> tuple[int, ...]:
    """B's ``shape`` with its axes in A's layout order, where both layouts are known and name
    the same axes (``NHWC`` → ``NCHW``); else as it is."""
    if not layout_a or not layout_b or sorted(layout_a) != sorted(layout_b) or len(layout_b) != len(shape):
        return shape
    return tuple(shape[layout_b.index(axis)] for axis in layout_a)


def dims(shape: tuple[int, ...]) -> str:
    return "×".join(str(x) for x in shape)


def _after(a: Any, b: Any, shape_b: tuple[int, ...], first: ShapeConflict) -> tuple[str, str]:
    return "shape_mismatch", (f"A's {a.op} {a.name} gives {dims(a.shape)}, B's {b.op} {b.name} {dims(shape_b)}: "
                              f"after the shapes already differ at {first.a_name}, most likely inherited from there")


def _cause(a: Any, b: Any, shape_b: tuple[int, ...]) -> tuple[str, str]:
    where = f"A's {a.op} {a.name} gives {dims(a.shape)}, B's {b.op} {b.name} {dims(shape_b)}"
    if a.layout != b.layout and shape_b != tuple(b.shape):
        where += f" (B's {dims(b.shape)} in A's layout {a.layout})"
    for code, explain in (("pool_ceil_mode", _ceil_rounding), ("axis_remap", _concat_axes), ("axis_remap", _gather_axes)):
        why = explain(a, b, shape_b)
        if why is not None:
            return code, f"{where}: {why}"
    if "pool" in a.op.lower() or "pool" in b.op.lower() or "conv" in a.op.lower():
        return "shape_mismatch", (f"{where}: the two layers' kernel, stride or padding differ (a different output size "
                                  "is a different computation); compare the layer's arguments on both sides")
    return "shape_mismatch", f"{where}: the two models compute differently shaped tensors here"


def _concat_axes(a: Any, b: Any, shape_b: tuple[int, ...]) -> str | None:
    """The not-remapped-axis explanation of a concatenation size conflict, or None: both layers
    concatenate and the shapes differ as joining k equal tensors along another axis would make
    them — A k× larger on one axis, B k× on another, the rest equal."""
    ops = (a.op + " " + b.op).lower()
    if not ("cat" in ops or "concat" in ops) or len(a.shape) != len(shape_b):
        return None
    differ = [x for x in range(len(a.shape)) if a.shape[x] != shape_b[x]]
    if len(differ) != 2:
        return None
    i, j = differ if a.shape[differ[0]] > shape_b[differ[0]] else differ[::-1]
    if shape_b[i] == 0 or a.shape[j] == 0 or a.shape[i] % shape_b[i] or shape_b[j] % a.shape[j]:
        return None
    k = a.shape[i] // shape_b[i]
    if k < 2 or shape_b[j] // a.shape[j] != k:
        return None
    return (f"A joins along axis {i} (size {a.shape[i]} = {k} × {shape_b[i]}), B along axis {j} (size "
            f"{shape_b[j]} = {k} × {a.shape[j]}) of A's layout — B's concatenation axis was not remapped with the "
            "layout (axis 1, the channels of NCHW, is the last axis of NHWC: Concatenate(axis=-1) there)")


#: op names of gathers and slices ("index" covers index_select / IndexSelect)
_PICKS = ("gather", "index", "take", "slice", "narrow")


def _gather_axes(a: Any, b: Any, shape_b: tuple[int, ...]) -> str | None:
    """The not-remapped-axis explanation of a gather/slice size conflict, or None: either layer
    gathers or slices and exactly two (non-batch) axes differ as picking k entries along another
    axis would make them — A has k on one and B's size there, B k on the other and A's size there."""
    ops = (a.op + " " + b.op).lower()
    if not any(p in ops for p in _PICKS) or len(a.shape) != len(shape_b):
        return None
    differ = [x for x in range(len(a.shape)) if a.shape[x] != shape_b[x]]
    if len(differ) != 2 or 0 in differ:
        return None
    for i, j in (differ, differ[::-1]):
        if a.shape[i] == shape_b[j] and a.shape[i] < shape_b[i] and shape_b[j] < a.shape[j]:
            return (f"A picks {a.shape[i]} along axis {i} (B keeps all {shape_b[i]} there), B picks {a.shape[i]} "
                    f"along axis {j} (A keeps all {a.shape[j]} there) of A's layout — B's gather/slice axis was not "
                    "remapped with the layout (index_select(1, …) on NCHW picks channels: tf.gather(..., axis=-1) "
                    "on NHWC)")
    return None


def _ceil_rounding(a: Any, b: Any, shape_b: tuple[int, ...]) -> str | None:
    """The ceil-vs-floor explanation of a pooling size conflict, or None: the side that declares
    ``ceil_mode=True`` is one larger in exactly the spatial axes whose last window is partial."""
    if len(a.shape) != len(shape_b) or "pool" not in (a.op + b.op).lower():
        return None
    ceil_side = "A" if a.attrs.get("ceil_mode") else "B" if b.attrs.get("ceil_mode") else None
    if ceil_side is None:
        return None
    big, small = (a.shape, shape_b) if ceil_side == "A" else (shape_b, a.shape)
    diff = [x - y for x, y in zip(big, small)]
    spatial = [i for i, d in enumerate(diff) if d != 0]
    if not spatial or any(diff[i] != 1 for i in spatial) or len(spatial) > 2:
        return None
    other = "B" if ceil_side == "A" else "A"
    return (f"{ceil_side}'s pooling rounds its output size up (ceil_mode=True: the last, partial window is kept), "
            f"{other}'s rounds it down (the last window is dropped), one more row and column on {ceil_side}'s side. "
            f"Give {other} the same rounding: in Keras/TF pad the pooling's input by one on the bottom and right "
            "first (with -inf before a max pool, e.g. tf.pad(x, ..., constant_values=-inf); zeros do after a ReLU), "
            "or padding='same' where it gives the same size; or set ceil_mode=False on the torch side.")


