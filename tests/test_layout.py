"""Layouts: permutations, the transforms that bring B's tensor into A's layout, input conversion —
as properties over shapes and layouts (the deep tier reruns them with many examples)."""

from __future__ import annotations

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from parity.layout import CHANNELS_FIRST, CHANNELS_LAST, candidate_transforms, input_transform, permutation
from parity.records import Tap

from .properties import prop

_LETTERS = "NCDHWL"


def _tap(name: str, value: np.ndarray, layout: str | None, attrs: dict | None = None) -> Tap:
    return Tap(name=name, op="Conv2d", index=0, shape=tuple(value.shape), dtype=str(value.dtype), layout=layout,
               value=value, attrs=attrs or {})


@st.composite
def _layout_pair(draw):
    """Two orders of one set of axis letters, and a size per letter."""
    n = draw(st.integers(1, 5))
    src = "".join(draw(st.permutations(_LETTERS))[:n])
    dst = "".join(draw(st.permutations(src)))
    sizes = {c: draw(st.integers(1, 4)) for c in src}
    return src, dst, sizes


@prop(_layout_pair(), fast=50, deep=1500)
def test_a_permutation_moves_every_axis_to_its_letter_and_back(pair):
    src, dst, sizes = pair
    x = np.arange(int(np.prod([sizes[c] for c in src]))).reshape([sizes[c] for c in src])
    perm = permutation(src, dst)
    y = np.transpose(x, perm)
    assert y.shape == tuple(sizes[c] for c in dst)
    # the element at each position of letter c keeps that position: index grids move with it
    grid_x, grid_y = np.indices(x.shape), np.indices(y.shape)
    for c in src:
        assert np.array_equal(np.transpose(grid_x[src.index(c)], perm), grid_y[dst.index(c)])
    assert np.array_equal(np.transpose(y, permutation(dst, src)), x)


@st.composite
def _tensor_in_two_layouts(draw):
    rank = draw(st.sampled_from([3, 4, 5]))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank)))
    seed = draw(st.integers(0, 2**16))
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    first, last = CHANNELS_FIRST[rank], CHANNELS_LAST[rank]
    a_is_first = draw(st.booleans())
    la, lb = (first, last) if a_is_first else (last, first)
    b = np.ascontiguousarray(np.transpose(x, permutation(la, lb)))
    known = draw(st.sampled_from(["both", "a", "b", "neither"]))
    return x, la, b, lb, known


@prop(_tensor_in_two_layouts(), fast=60, deep=2000)
def test_the_transform_chosen_for_a_pair_in_known_layouts_reproduces_a_exactly(case):
    x, la, b, lb, known = case
    ta = _tap("a", x, la if known in ("both", "a") else None)
    tb = _tap("b", b, lb if known in ("both", "b") else None)
    cands = candidate_transforms(ta, tb)
    if known == "both":
        assert len(cands) == 1
        assert np.array_equal(cands[0].apply(b), x)
        # ambiguous exactly when another standard layout swap also fits the shapes
        others = {permutation(s, d) for s in (la, lb) for d in (la, lb)}
        fits = [p for p in others if tuple(b.shape[i] for i in p) == x.shape]
        assert cands[0].ambiguous == (len(fits) > 1)
    else:
        # a layout unknown: the right transform is among the candidates, all of which fit the shape
        assert cands and all(t.apply(b).shape == x.shape for t in cands)
        assert any(np.array_equal(t.apply(b), x) for t in cands)
        if len(set(x.shape)) == x.ndim:  # all sizes distinct: only one candidate can fit
            assert len(cands) == 1 and np.array_equal(cands[0].apply(b), x)


@prop(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(0, 999),
      fast=40, deep=1000)
def test_a_flatten_in_either_layout_is_reflattened_into_as_order(n, c, h, w, seed):
    y = np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32)
    flat_a = y.reshape(n, -1)
    flat_b = np.ascontiguousarray(y.transpose(0, 2, 3, 1)).reshape(n, -1)
    ta = _tap("flat", flat_a, "N(CHW)", {"flat_from": (c, h, w)})
    tb = _tap("flatten", flat_b, "N(HWC)", {"flat_from": (h, w, c)})
    (t,) = candidate_transforms(ta, tb)
    assert np.array_equal(t.apply(flat_b), flat_a)
    assume(c > 1 and h * w > 1)
    assert t.kind == "reflatten"


@prop(_tensor_in_two_layouts(), st.integers(0, 2**5 - 1), fast=60, deep=1500)
def test_an_input_is_converted_to_a_shape_b_declares(case, free):
    x, la, b, lb, _ = case
    spec = tuple(None if free >> i & 1 else s for i, s in enumerate(b.shape))  # some dims dynamic
    t = input_transform(x.shape, la, spec, lb)
    assert t is not None
    out = t.apply(x)
    assert all(s is None or s == o for s, o in zip(spec, out.shape))
    # both layouts known: it is the layout swap itself, whatever the sizes
    assert np.array_equal(out, b)
