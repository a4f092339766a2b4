"""Why a layer diverges: causes recognised by their numerical signature.

Each detector looks at the recorded values of one matched pair and returns a
:class:`~parity.records.Diagnosis` with the numbers that support it, or
nothing.  Detectors never decide from layer names alone.
"""

from __future__ import annotations

from typing import Any

import functools
import importlib
import pkgutil
from dataclasses import replace

import numpy as np

from ..records import Alignment, Diagnosis, LayerDiff, LayerParams
from .base import DETECTORS, Context, Detector, detector
from .bn import diagnose_bn_epsilon

__all__ = ["diagnose", "Context", "Detector", "detector", "DETECTORS", "DIAGNOSED_LAYERS"]

#: how many flagged layers, from the first divergence on, the detectors examine
DIAGNOSED_LAYERS = 8

detector("bn_epsilon", {"batchnorm"})(lambda ctx: diagnose_bn_epsilon(ctx.match, ctx.b))


def needs_params(match) -> bool:
    """Whether a detector of this pair's family reads the layers' parameters (dense layers)."""
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


def _backends(models: tuple | None) -> tuple:
    """The backends of the live pair (a backend is its own), ``None`` for a side no backend
    takes or whose parameters cannot be read (graph formats)."""
    if not models:
        return (None, None)
    from ..capture import backend_for
    from ..errors import ModelError

    out = []
    for model in models:
        try:
            backend = backend_for(model)
        except ModelError:
            backend = None
        out.append(backend if backend is not None and backend.reads_params else None)
    return tuple(out)


def _params(backend, name: str) -> LayerParams | None:
    """The parameters of layer ``name`` read through ``backend``, or None."""
    if backend is None:
        return None
    try:
        return backend.layer_params(name)
    except Exception:  # noqa: BLE001 - a name that is no layer of its own: the detectors go without
        return None


def _own_inputs(recorder: Any, alignment: Alignment, layers: tuple) -> dict:
    """Model A's recorded input of each layer the detectors will examine, by name (through
    ``recorder``, a :class:`parity.replay.InputRecorder`); empty without one."""
    if recorder is None:
        return {}
    matched = {m.a.name for m in alignment.matches}
    names = [d.a_name for d in layers if not d.ok and d.role != "output" and d.a_name in matched][:DIAGNOSED_LAYERS]
    try:
        return recorder.get(names)
    except Exception:  # noqa: BLE001 - a model that cannot be rerun here: the detectors use the neighbours
        return {}


def diagnose(
    alignment: Alignment, layers: tuple[LayerDiff, ...], models: tuple | None = None, recorder: Any = None
) -> tuple[tuple[LayerDiff, ...], tuple[Diagnosis, ...]]:
    """Run the applicable detectors on the first flagged layers; attach what they find.
    ``models`` (the live pair — models or their backends —, when there is one) lets the
    detectors that need them read the layers' parameters (:attr:`Context.params_a`/``params_b``);
    with ``recorder`` (a :class:`parity.replay.InputRecorder` of model A) they also get each
    layer's own recorded input (:attr:`Context.input_a`), where A's backend can call that layer alone."""
    _load_detectors()
    backends = _backends(models)
    own_inputs = _own_inputs(recorder, alignment, layers)
    replays = recorder.replayed if recorder is not None else {}
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
        # a layer whose input is already wrong and whose own error is over tolerance (a second
        # bug): judged by B's layer fed A's input, which holds this layer's error alone
        replayed = replays.get(m.a.name) if d.own_ok is False and out and not out[-1].ok else None
        replayed = replayed if m.a.name in own_inputs else None
        ctx = Context(
            layer=d, match=m, a=np.asarray(m.a.value),
            b=replayed if replayed is not None else np.asarray(m.transform.apply(m.b.value)),
            previous=ordered[i - 1] if i else None, alignment=alignment, layers=tuple(out),
            input_a=own_inputs.get(m.a.name), replayed=replayed is not None,
        )
        if needs_params(m):
            ctx.params_a, ctx.params_b = _params(backends[0], m.a.name), _params(backends[1], m.b.name)
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
