"""Layouts as data: the few permutations between channel-first and channel-last.

A layout is a string of axis letters (``"NCHW"``), a flattened layout
``"N(CHW)"`` whose per-sample shape before flattening is kept in the tap's
``attrs["flat_from"]``, or ``None`` when a backend cannot tell.
"""

from __future__ import annotations

from typing import Iterable

from .records import IDENTITY, Tap, Transform

__all__ = [
    "CHANNELS_FIRST",
    "CHANNELS_LAST",
    "channels_first",
    "channels_last",
    "permutation",
    "is_flat",
    "flat_axes",
    "candidate_transforms",
    "input_transform",
]

CHANNELS_FIRST = {2: "NC", 3: "NCL", 4: "NCHW", 5: "NCDHW"}
CHANNELS_LAST = {2: "NC", 3: "NLC", 4: "NHWC", 5: "NDHWC"}


def channels_first(rank: int) -> str | None:
    return CHANNELS_FIRST.get(rank)


def channels_last(rank: int) -> str | None:
    return CHANNELS_LAST.get(rank)


def permutation(src: str, dst: str) -> tuple[int, ...]:
    """The ``np.transpose`` axes that turn a ``src``-layout array into ``dst`` layout.

    >>> permutation("NHWC", "NCHW")
    (0, 3, 1, 2)
    """
    if sorted(src) != sorted(dst) or len(set(src)) != len(src):
        raise ValueError(f"layouts {src!r} and {dst!r} do not hold the same axes")
    return tuple(src.index(axis) for axis in dst)


def is_flat(layout: str | None) -> bool:
    return bool(layout) and "(" in layout  # type: ignore[operator]


def flat_axes(layout: str) -> str:
    """``"N(HWC)"`` → ``"HWC"``."""
    return layout[layout.index("(") + 1 : layout.index(")")]


def _swap_label(src: str, dst: str) -> str:
    return f"{src}→{dst}"


def _rank_candidates(rank: int) -> list[str]:
    out = []
    for table in (CHANNELS_FIRST, CHANNELS_LAST):
        lay = table.get(rank)
        if lay and lay not in out:
            out.append(lay)
    return out


def candidate_transforms(a: Tap, b: Tap) -> list[Transform]:
    """The transforms that bring tap ``b`` into tap ``a``'s layout and shape.

    The first element is the one to use; the list is empty when the two can
    not be the same tensor.  When both layouts are known, only the transform
    they imply is returned (marked ``ambiguous`` if the shape alone would have
    admitted another); when a layout is unknown, identity is preferred and
    the channel swap is tried next.
    """
    if a.numel != b.numel:
        return []
    if len(a.shape) != len(b.shape):
        return _squeeze_candidates(a, b)
    if len(a.shape) == 2 and (is_flat(a.layout) or is_flat(b.layout)):
        return _flat_candidates(a, b)
    if tuple(a.shape) != tuple(b.shape) and merged_rows(tuple(a.shape), tuple(b.shape)):
        # (B, T, d) against litert-torch's (1, B·T, d): the same rows in the same order
        return [Transform(kind="reshape", label=f"reshape {tuple(b.shape[:-1])}→{tuple(a.shape[:-1])} (rows)",
                          target_shape=tuple(a.shape))]
    rank = len(a.shape)
    shape_fits: list[Transform] = []
    seen: set[tuple[int, ...]] = set()
    layouts = _rank_candidates(rank)
    # every permutation between the standard layouts of this rank that fits the shapes
    for src in layouts:
        for dst in layouts:
            perm = permutation(src, dst)
            if perm in seen:
                continue
            if tuple(b.shape[i] for i in perm) == tuple(a.shape):
                seen.add(perm)
                if perm == tuple(range(rank)):
                    shape_fits.append(IDENTITY)
                else:
                    shape_fits.append(
                        Transform(kind="permute", perm=perm, label=_swap_label(src, dst))
                    )
    if not shape_fits and tuple(a.shape) == tuple(b.shape):
        shape_fits.append(IDENTITY)
    ambiguous = len(shape_fits) > 1
    if a.layout and b.layout and not is_flat(a.layout) and not is_flat(b.layout):
        if sorted(a.layout) == sorted(b.layout):
            perm = permutation(b.layout, a.layout)
            if tuple(b.shape[i] for i in perm) != tuple(a.shape):
                return []
            if perm == tuple(range(rank)):
                return [_mark(IDENTITY, ambiguous)]
            return [
                Transform(
                    kind="permute", perm=perm, label=_swap_label(b.layout, a.layout), ambiguous=ambiguous
                )
            ]
    return [_mark(t, ambiguous) for t in shape_fits]


def _squeeze_candidates(a: Tap, b: Tap) -> list[Transform]:
    """Shapes that differ only by size-1 axes, e.g. a pooled ``(N, C, 1, 1)`` vs ``(N, C)``;
    or by the split of the last axis into heads (see :func:`merged_heads`)."""
    squeeze_a = tuple(d for d in a.shape[1:] if d != 1)
    squeeze_b = tuple(d for d in b.shape[1:] if d != 1)
    if a.shape[:1] != b.shape[:1] or squeeze_a != squeeze_b or len(squeeze_a) > 1:
        if merged_heads(tuple(a.shape), tuple(b.shape)) is not None:
            return [Transform(kind="reshape", label=f"reshape {tuple(b.shape[2:])}→{tuple(a.shape[2:])} (heads)",
                              target_shape=tuple(a.shape))]
        if merged_rows(tuple(a.shape), tuple(b.shape)):
            return [Transform(kind="reshape", label=f"reshape {tuple(b.shape[:-1])}→{tuple(a.shape[:-1])} (rows)",
                              target_shape=tuple(a.shape))]
        return []  # only a single non-trivial axis is unambiguous under a reshape
    return [
        Transform(
            kind="reshape",
            label=f"reshape {tuple(b.shape[1:])}→{tuple(a.shape[1:])}",
            target_shape=tuple(a.shape),
        )
    ]


def merged_heads(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    """The split axes when one shape is the other with its last axis split in row-major order
    behind the same batch and sequence axes — a projection's ``(B, T, heads, head_dim)``
    (keras-hub's ``EinsumDense``) against ``(B, T, heads·head_dim)`` (a torch ``Linear``) —
    else ``None``.  Only the last axis, and only behind two shared leading axes: a spatial
    flatten ``(N, C, H, W)`` → ``(N, C·H·W)`` is not this (its order depends on the layout)."""
    long, short = (a, b) if len(a) > len(b) else (b, a)
    if len(short) != 3 or len(long) != 4 or long[:2] != short[:2] or short[2] != long[2] * long[3]:
        return None
    if long[2] == 1 or long[3] == 1:
        return None  # a size-1 axis: the plain squeeze rule's case
    return long[2:]


def merged_rows(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether one shape is ``(B·T, d)`` and the other ``(B, T, d)``: a layer that flattens batch
    and sequence into rows before its Dense (transformers' PyTorch OPT) against one that does
    not.  The rows keep their order (row-major), the features stay last."""
    a, b = _without_unit_batch(a), _without_unit_batch(b)  # litert-torch's (1, B·T, d)
    long, short = (a, b) if len(a) > len(b) else (b, a)
    return len(long) == 3 and len(short) == 2 and long[0] * long[1] == short[0] and long[2] == short[1] \
        and long[0] > 1 and long[1] > 1


def _without_unit_batch(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``(1, R, d)`` as ``(R, d)``: rows a converter keeps behind a batch axis of one."""
    return tuple(shape[1:]) if len(shape) == 3 and shape[0] == 1 else tuple(shape)


def _mark(t: Transform, ambiguous: bool) -> Transform:
    from dataclasses import replace

    return t if t.ambiguous == ambiguous else replace(t, ambiguous=ambiguous)


def _flat_candidates(a: Tap, b: Tap) -> list[Transform]:
    if tuple(a.shape) != tuple(b.shape):
        return []
    if not (is_flat(a.layout) and is_flat(b.layout)):
        # only one side says it was flattened: the element order of the other is
        # unknown, so compare as they are.
        return [IDENTITY]
    axes_a, axes_b = flat_axes(a.layout), flat_axes(b.layout)  # type: ignore[arg-type]
    if axes_a == axes_b:
        return [IDENTITY]
    from_b = tuple(b.attrs.get("flat_from") or ())
    if sorted(axes_a) != sorted(axes_b) or len(from_b) != len(axes_b):
        return [IDENTITY]
    inner = permutation(axes_b, axes_a)
    perm = (0, *(i + 1 for i in inner))
    return [
        Transform(
            kind="reflatten",
            perm=perm,
            flat_from=from_b,
            label=f"N({axes_b})→N({axes_a})",
        )
    ]


def input_transform(
    shape: tuple[int, ...],
    layout_a: str | None,
    spec_shape: Iterable[int | None],
    layout_b: str | None,
) -> Transform | None:
    """How an input in model A's layout is converted for model B, or ``None`` if nothing fits.

    ``spec_shape`` is B's declared input shape (``None`` for any size).
    """
    spec = tuple(spec_shape)
    rank = len(shape)
    if len(spec) != rank:
        return None

    def fits(candidate: tuple[int, ...]) -> bool:
        return all(s is None or s == c for s, c in zip(spec, candidate))

    options: list[Transform] = []
    if layout_a and layout_b and sorted(layout_a) == sorted(layout_b) and layout_a != layout_b:
        perm = permutation(layout_a, layout_b)
        options.append(Transform(kind="permute", perm=perm, label=_swap_label(layout_a, layout_b)))
    options.append(IDENTITY)
    for src in _rank_candidates(rank):
        for dst in _rank_candidates(rank):
            if src != dst:
                options.append(
                    Transform(kind="permute", perm=permutation(src, dst), label=_swap_label(src, dst))
                )
    fitting = [t for t in options if fits(t.output_shape(shape))]
    if not fitting:
        return None
    distinct = {t.perm or tuple(range(rank)) for t in fitting}
    return _mark(fitting[0], len(distinct) > 1)
