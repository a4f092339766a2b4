"""How alike two tensors are, on a fixed sample of their elements.

The aligner and the unsure-pair check read a few thousand elements of each tensor (the
same indices for every tensor of one size, in runs of consecutive elements, so a spilled
tensor is read a few pages at a time) and compare their directions:
:func:`similarity` is 0 for unrelated values and 3 for values equal to ~1e-6.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import numpy as np

from .records import Tap, Transform

__all__ = ["similarity", "samples", "sample_index", "cached_sample", "sample_cache", "rescaled"]


_SAMPLE = 2048
_RUN = 64  # consecutive elements per sampled run


def sample_index(shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if n <= _SAMPLE:
        return np.arange(n)
    # the same indices for every tensor of this size, in runs: a spilled (memory-mapped) tensor
    # is read a few pages at a time, not one page per sampled element
    rng = np.random.default_rng(n)
    runs = _SAMPLE // _RUN
    starts = np.sort(rng.choice(n // _RUN, size=runs, replace=False)) * _RUN
    return (starts[:, None] + np.arange(_RUN)[None, :]).ravel()


def sample_b(b: np.ndarray, t: Transform, a_shape: tuple[int, ...], flat_idx: np.ndarray) -> np.ndarray:
    """``t.apply(b).ravel()[flat_idx]`` without transforming the whole tensor."""
    if t.kind in ("identity", "reshape"):
        return b.reshape(-1)[flat_idx]
    coords = np.unravel_index(flat_idx, a_shape)
    if t.kind == "permute":
        assert t.perm is not None
        src = [None] * len(t.perm)
        for k, axis in enumerate(t.perm):
            src[axis] = coords[k]
        return b[tuple(src)]
    assert t.perm is not None and t.flat_from is not None
    n = b.shape[0]
    moved = tuple(t.flat_from[i - 1] for i in t.perm[1:])  # inner shape after the permutation
    inner = np.unravel_index(coords[1], moved)
    src = [None] * len(t.flat_from)
    for k, axis in enumerate(t.perm[1:]):
        src[axis - 1] = inner[k]
    return b.reshape((n, *t.flat_from))[(coords[0], *src)]


#: samples taken during one alignment (each tensor is read once per transform): a spilled,
#: memory-mapped tensor's pages are dropped from the process right after its sample is taken.
#: One cache per :func:`sample_cache` block, per thread or task (a context variable).
_SAMPLES: ContextVar[dict[tuple, np.ndarray] | None] = ContextVar("parity_samples", default=None)


@contextmanager
def sample_cache() -> Iterator[None]:
    """Keep every sample taken in this block (one alignment), then forget them."""
    token = _SAMPLES.set({})
    try:
        yield
    finally:
        _SAMPLES.reset(token)


def cached_sample(key: tuple, value: np.ndarray, take) -> np.ndarray:
    """``take(value)`` as float64, kept under ``key`` inside a :func:`sample_cache` block."""
    cache = _SAMPLES.get()
    if cache is not None and key in cache:
        return cache[key]
    sample = np.asarray(take(value), dtype=np.float64)
    if isinstance(value, np.memmap):
        from .spill import release

        release(value)
    if cache is not None:
        cache[key] = sample
    return sample


def samples(a: Tap, b: Tap, t: Transform) -> tuple[np.ndarray, np.ndarray]:
    """The same fixed sample of elements of A and of B (B under ``t``), cached."""
    va = cached_sample(("a", id(a.value)), a.value, lambda v: v.reshape(-1)[sample_index(a.shape)])
    vb = cached_sample(
        ("b", id(b.value), t.kind, t.perm, t.flat_from, a.shape), b.value,
        lambda v: sample_b(v, t, a.shape, sample_index(a.shape)),
    )
    return va, vb


def rescaled(v: np.ndarray) -> np.ndarray:
    """``v`` divided by its largest magnitude when its squares would leave float64's range
    (1e154 and up, 1e-154 and down): the direction is the same, the norm stays finite."""
    with np.errstate(all="ignore"):
        top = float(np.max(np.abs(v))) if v.size else 0.0
    if np.isfinite(top) and top > 0 and not 1e-150 < top < 1e150:
        return v / top
    return v


def similarity(a: Tap, b: Tap, t: Transform) -> float:
    """0 (unrelated) … 3 (equal to ~1e-6): ``−log10(1 − cos)/2`` on a fixed sample."""
    if a.value is None or b.value is None or a.numel == 0:
        return 0.0
    sa, sb = samples(a, b, t)
    va, vb = rescaled(sa), rescaled(sb)
    with np.errstate(all="ignore"):
        na, nb = np.sqrt(np.dot(va, va)), np.sqrt(np.dot(vb, vb))
        if not (np.isfinite(na) and np.isfinite(nb)):
            return 0.0
        if na == 0 and nb == 0:
            return 3.0
        if na == 0 or nb == 0:
            return 0.0
        d = va / na - vb / nb
        one_minus_cos = float(np.dot(d, d) / 2.0)
    return float(np.clip(-np.log10(max(one_minus_cos, 1e-12)) / 2.0, 0.0, 3.0))
