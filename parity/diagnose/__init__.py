"""Why a layer diverges: causes recognised by their numerical signature.

Each detector looks at the recorded values of one matched pair and returns a
:class:`~parity.records.Diagnosis` with the numbers that support it, or
nothing.  Detectors never decide from layer names alone.
"""

from __future__ import annotations

import functools
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


def ctx_needs_layers(match) -> bool:
    from ..align import op_family

    # transformers' Conv1D / TFConv1D are dense layers (GPT-2's), named like a convolution
    hf_dense = match.a.op == "Conv1D" and match.a.layout == "NLC" or match.b.op == "TFConv1D"
    return op_family(match.a.op) == "dense" or op_family(match.b.op) == "dense" or hf_dense


@functools.cache
def _load_detectors() -> None:
    """Import every module of this package once: detectors register themselves."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base", "bn"):
            importlib.import_module(f"{__name__}.{info.name}")


def _live_layers(models: tuple | None, a_name: str, b_name: str) -> dict:
    """The live layer objects of a pair, for detectors that need weights (``ctx.extra``)."""
    if not models:
        return {}
    from ..weights import find_layer

    extra = {}
    for key, model, name in (("a_layer", models[0], a_name), ("b_layer", models[1], b_name)):
        try:
            extra[key] = find_layer(model, name)
        except Exception:  # noqa: BLE001 - a graph format, or a name that is not a layer
            pass
    return extra


def diagnose(
    alignment: Alignment, layers: tuple[LayerDiff, ...], models: tuple | None = None
) -> tuple[tuple[LayerDiff, ...], tuple[Diagnosis, ...]]:
    """Run the applicable detectors on the first flagged layers; attach what they find.
    ``models`` (the live pair, when there is one) lets weight-based detectors see layers."""
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
        if d.own_method == "replay" and d.own_ok and out and not out[-1].ok:
            out.append(d)  # replayed alone it is right and its input was already wrong: it inherits
            continue
        examined += 1
        ctx = Context(
            layer=d, match=m, a=np.asarray(m.a.value), b=np.asarray(m.transform.apply(m.b.value)),
            previous=ordered[i - 1] if i else None, alignment=alignment, layers=tuple(out),
            extra=_live_layers(models, m.a.name, m.b.name) if ctx_needs_layers(m) else {},
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
