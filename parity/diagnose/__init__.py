"""Why a layer diverges: causes recognised by their numerical signature.

Each detector looks at the recorded values of one matched pair and returns a
:class:`~parity.records.Diagnosis` with the numbers that support it, or
nothing.  Detectors never decide from layer names alone.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import replace

import numpy as np

from ..records import Alignment, Diagnosis, LayerDiff
from .base import DETECTORS, Context, Detector, detector
from .bn import diagnose_bn_epsilon

__all__ = ["diagnose", "Context", "Detector", "detector", "DETECTORS", "DIAGNOSED_LAYERS"]

#: how many flagged layers, from the first divergence on, the detectors examine
DIAGNOSED_LAYERS = 8

detector("bn_epsilon", {"batchnorm"})(lambda ctx: diagnose_bn_epsilon(ctx.match, ctx.b))


def _load_detectors() -> None:
    """Import every module of this package once: detectors register themselves."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base", "bn"):
            importlib.import_module(f"{__name__}.{info.name}")


def diagnose(alignment: Alignment, layers: tuple[LayerDiff, ...]) -> tuple[tuple[LayerDiff, ...], tuple[Diagnosis, ...]]:
    """Run the applicable detectors on the first flagged layers; attach what they find."""
    _load_detectors()
    ordered = sorted(alignment.matches, key=lambda m: m.a.index)
    by_a = {m.a.name: i for i, m in enumerate(ordered)}
    found: list[Diagnosis] = []
    out: list[LayerDiff] = []
    examined = 0
    for d in layers:
        i = by_a.get(d.a_name)
        m = ordered[i] if i is not None else None
        if d.ok or m is None or m.a.value is None or m.b.value is None or examined >= DIAGNOSED_LAYERS:
            out.append(d)
            continue
        if d.own_method == "replay" and d.own_ok:
            out.append(d)  # replayed alone it is right: it only inherits an earlier error
            continue
        examined += 1
        ctx = Context(
            layer=d, match=m, a=np.asarray(m.a.value), b=np.asarray(m.transform.apply(m.b.value)),
            previous=ordered[i - 1] if i else None, alignment=alignment, layers=tuple(out),
        )
        diags = []
        for det in DETECTORS:
            if det.applies(ctx):
                diag = det.detect(ctx)
                if diag is not None:
                    diags.append(diag)
        if diags:
            d = replace(d, diagnoses=tuple(diags))
            found.extend(diags)
        out.append(d)
    return tuple(out), tuple(found)
