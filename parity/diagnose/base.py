"""What a detector sees, and the registry of detectors.

A detector is a function ``detect(ctx: Context) -> Diagnosis | None`` that
recognises one cause of divergence from the numbers of one matched pair (and,
where it needs them, the pair before it and the tap attributes the backends
recorded: ``eps``, ``running_var``, ``stride``, ``padding``, ...; for dense layers, the
parameters of both layers as :class:`~parity.records.LayerParams` records).  It returns
``None`` unless the numbers fit its cause; it never decides from names alone.
Detectors register themselves with :func:`detector`; :func:`parity.diagnose.diagnose`
runs the applicable ones on the first flagged layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..align import op_family
from ..records import Alignment, Diagnosis, LayerDiff, LayerParams, Match

__all__ = ["Context", "Detector", "detector", "DETECTORS", "rel_diff", "channel_axis"]


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """``‖b−a‖/‖a‖`` in float64 (``‖b‖`` when ``a`` is all zeros)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na = np.linalg.norm(a64)
    return float(np.linalg.norm(b64 - a64) / na) if na else float(np.linalg.norm(b64))


def channel_axis(layout: str | None, ndim: int) -> int | None:
    """The axis of ``C`` in a plain layout string of this rank (None for flattened or unknown)."""
    if layout and "(" not in layout and "C" in layout and len(layout) == ndim:
        return layout.index("C")
    return None


@dataclass
class Context:
    """One flagged layer, as a detector sees it."""

    layer: LayerDiff
    match: Match
    #: A's value, and B's value brought into A's layout (same shape as ``a``)
    a: np.ndarray
    b: np.ndarray
    #: the matched pair just before this one in A's execution order (often this layer's input), or None
    previous: Match | None
    alignment: Alignment
    #: layers of the report so far, in A's order (earlier ones already diagnosed)
    layers: tuple[LayerDiff, ...] = ()
    #: the parameters of A's and B's layer, read through the backends when the live models are at
    #: hand and a detector of this layer's family needs them (dense layers); else None
    params_a: LayerParams | None = None
    params_b: LayerParams | None = None
    #: A's own recorded input of this layer (its first tensor input, in A's layout), where A's
    #: backend can call the layer alone; else None (then :meth:`previous_values` is the best guess)
    input_a: np.ndarray | None = None
    #: ``b`` is B's layer fed A's recorded input (``input_a``), not B's own forward: the layer's
    #: input was already wrong, and this isolates what the layer itself does
    replayed: bool = False

    def own_input(self) -> np.ndarray | None:
        """This layer's input as A computed it: the recorded input where there is one, else the
        previous pair's A value when it has this layer's shape (often, not always, its input)."""
        if self.input_a is not None:
            return np.asarray(self.input_a)
        prev = self.previous_values()
        return prev[0] if prev is not None else None

    @property
    def family(self) -> str:
        """The op family of A's layer (``conv``, ``batchnorm``, ``dense``, ``activation``, ...)."""
        return op_family(self.match.a.op)

    @property
    def b_family(self) -> str:
        return op_family(self.match.b.op)

    def previous_values(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The previous pair's values (A's, and B's in A's layout), when recorded — for a
        :attr:`replayed` layer, A's recorded input on both sides (what both were fed)."""
        if self.replayed and self.input_a is not None:
            x = np.asarray(self.input_a)
            return x, x
        p = self.previous
        if p is None or p.a.value is None or p.b.value is None:
            return None
        return np.asarray(p.a.value), np.asarray(p.transform.apply(p.b.value))

    def folded_input(self) -> np.ndarray | None:
        """A's layer right before this one when a converter folded it into B's tensor of this
        pair (unmatched, "fused", same shape: the Conv2D before a BatchNorm that B computes in one
        convolution), as A recorded it; None when there is none."""
        before = [u.tap for u in self.alignment.unmatched
                  if u.side == "a" and u.reason == "fused" and u.tap.index < self.match.a.index]
        if not before:
            return None
        tap = max(before, key=lambda t: t.index)
        p = self.previous
        if (p is not None and p.a.index > tap.index) or tap.value is None or tap.shape != self.match.a.shape:
            return None
        return np.asarray(tap.value)


@dataclass(frozen=True)
class Detector:
    code: str
    detect: Callable[[Context], Diagnosis | None]
    #: op families the detector applies to (None: every layer)
    families: frozenset[str] | None = None

    def applies(self, ctx: Context) -> bool:
        return self.families is None or ctx.family in self.families or ctx.b_family in self.families


DETECTORS: list[Detector] = []


def detector(code: str, families: set[str] | None = None):
    """Register ``detect(ctx) -> Diagnosis | None`` as the detector of ``code``."""

    def register(fn: Callable[[Context], Diagnosis | None]):
        DETECTORS.append(Detector(code=code, detect=fn, families=frozenset(families) if families else None))
        return fn

    return register


def to_nchw(x: np.ndarray, layout: str | None) -> np.ndarray | None:
    """A 4-D tensor in NCHW from the layout it declares (NCHW or NHWC); None otherwise."""
    if x.ndim != 4:
        return None
    if layout == "NCHW":
        return x
    if layout == "NHWC":
        return np.transpose(x, (0, 3, 1, 2))
    return None


def nchw_io(ctx: Context) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A's own input of the layer, A's output and B's (in A's layout), all three in NCHW; None
    when there is no input, a layout is not NCHW/NHWC, or the outputs or batches differ in shape."""
    x = ctx.own_input()
    if x is None:
        return None
    layout = ctx.match.a.layout
    x4, a4, b4 = to_nchw(np.asarray(x), layout), to_nchw(ctx.a, layout), to_nchw(ctx.b, layout)
    if x4 is None or a4 is None or b4 is None or a4.shape != b4.shape or x4.shape[0] != a4.shape[0]:
        return None
    return x4, a4, b4
