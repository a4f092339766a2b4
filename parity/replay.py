"""A layer's own error, by isolated replay.

Errors propagate: once layer 3 is wrong every later layer is wrong too.  To
tell the guilty layer from the ones that only inherit its error, each flagged
layer of model B is called on its own with model A's recorded *input* of the
matching layer (brought into B's layout), and its output is compared with A's
output.  That is the layer's own error.

Replay needs both sides to be callable layer by layer: live PyTorch modules
and Keras layers.  Where it is impossible (graph formats, layers with several
inputs, inputs whose layout cannot be converted) the own error is estimated
from the error growth instead — this layer's error minus the error of the
layer before it — and ``own_method`` says which was used.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .capture.base import Backend
from .metrics import compute_metrics
from .records import Alignment, LayerDiff, Match

__all__ = ["own_errors", "REPLAYED_LAYERS"]

#: how many flagged layers (from the first on) get their own error
REPLAYED_LAYERS = 16


def _is_torch(backend: Backend) -> bool:
    return type(backend).__name__ == "TorchBackend"


def _is_keras(backend: Backend) -> bool:
    return type(backend).__name__ == "KerasBackend"


def _keras_layer(model: Any, name: str) -> Any | None:
    from .capture.keras import layer_named

    return layer_named(model, name)  # a layer name, or a layer path where names repeat


def _layer(backend: Backend, name: str) -> Any | None:
    if "#" in name or "[" in name or ":" in name:
        return None  # a repeated call, one output of several, or an op: not one callable layer
    if _is_torch(backend):
        try:
            return backend.model.get_submodule(name)
        except AttributeError:
            return None
    if _is_keras(backend):
        return _keras_layer(backend.model, name)
    return None


def _record_inputs(backend: Backend, inputs: Any, names: list[str]) -> dict[str, np.ndarray]:
    """Run model A once more, keeping the first tensor input of each named layer."""
    found: dict[str, np.ndarray] = {}
    layers = {name: _layer(backend, name) for name in names}
    layers = {n: layer for n, layer in layers.items() if layer is not None}
    if not layers:
        return found
    if _is_torch(backend):
        import torch

        def hook_for(name):
            def pre(module, args):
                if name not in found and args and isinstance(args[0], torch.Tensor) and len(args) == 1:
                    found[name] = args[0].detach().cpu().numpy().copy()

            return pre

        handles = [layer.register_forward_pre_hook(hook_for(n)) for n, layer in layers.items()]
        try:
            backend.run(inputs)
        finally:
            for h in handles:
                h.remove()
        return found
    if _is_keras(backend):
        from .capture.keras import patched_calls

        def wrap(name, original):
            def call(*args, **kwargs):
                if name not in found and len(args) == 1 and hasattr(args[0], "shape") and not isinstance(args[0], (list, tuple)):
                    try:
                        value = args[0].numpy() if hasattr(args[0], "numpy") else np.asarray(args[0])
                        found[name] = np.array(value, copy=True)
                    except Exception:  # a symbolic tensor: nothing to keep
                        pass
                return original(*args, **kwargs)

            return call

        with patched_calls((layer, lambda original, name=name: wrap(name, original)) for name, layer in layers.items()):
            backend.run(inputs)
    return found


def _call(backend: Backend, layer: Any, x: np.ndarray) -> np.ndarray:
    if _is_torch(backend):
        import torch

        mode = layer.training
        layer.eval()
        try:
            with torch.no_grad():
                return layer(torch.from_numpy(np.ascontiguousarray(x))).detach().cpu().numpy()
        finally:
            layer.train(mode)
    from .capture.keras import _fused_activation, patched_calls

    # a layer with a fused activation: its tap is the result before the activation
    # (the activation's is ``name:activation``, never replayed)
    linear = ((layer, lambda act: lambda y, *args, **kwargs: y),) if _fused_activation(layer) else ()
    with patched_calls(linear, "activation"):
        try:
            out = layer(x, training=False)
        except TypeError:
            out = layer(x)
    return np.asarray(out)


def _to_b_layout(x: np.ndarray, match: Match, previous: Match | None) -> np.ndarray | None:
    """A's input of this layer in B's layout, when the pair's transform says how; else None."""
    t = match.transform
    if t.kind == "permute" and t.perm is not None and x.ndim == len(t.perm):
        # t.apply maps B's layout to A's by np.transpose(b, perm): invert it
        return np.ascontiguousarray(np.transpose(x, np.argsort(t.perm)))
    if t.kind == "identity" and x.ndim == len(match.a.shape):
        if x.ndim == 2 and previous is not None and previous.transform.kind != "identity":
            return None  # a dense layer after a flatten whose order differs between the sides
        return x
    return None


def own_errors(
    backend_a: Backend, backend_b: Backend, inputs_a: Any, alignment: Alignment, layers: tuple[LayerDiff, ...]
) -> tuple[LayerDiff, ...]:
    """The layers with ``own_err``/``own_method`` set for the first flagged ones."""
    flagged = [d for d in layers if not d.ok and d.role != "output"][:REPLAYED_LAYERS]
    if not flagged:
        return layers
    ordered = sorted(alignment.matches, key=lambda m: m.a.index)
    match_of = {m.a.name: m for m in ordered}
    position = {m.a.name: i for i, m in enumerate(ordered)}
    replayable = [d for d in flagged if _layer(backend_a, d.a_name) is not None and _layer(backend_b, d.b_name) is not None]
    recorded = _record_inputs(backend_a, inputs_a, [d.a_name for d in replayable]) if replayable else {}
    by_name = {d.a_name: d for d in layers}
    updates: dict[str, LayerDiff] = {}
    for d in flagged:
        m = match_of.get(d.a_name)
        i = position.get(d.a_name, 0)
        previous = ordered[i - 1] if i else None
        own = None
        if m is not None and d.a_name in recorded:
            x_b = _to_b_layout(recorded[d.a_name], m, previous)
            if x_b is not None:
                try:
                    out_b = _call(backend_b, _layer(backend_b, d.b_name), x_b)
                    out_a_layout = np.asarray(m.transform.apply(out_b))
                    if out_a_layout.shape == tuple(m.a.shape):
                        own = compute_metrics(np.asarray(m.a.value), out_a_layout, d.rtol, d.atol).rel_err
                except Exception:  # the layer cannot be called alone: fall back to growth
                    own = None
        if own is not None:
            updates[d.a_name] = dataclasses.replace(d, own_err=float(own), own_method="replay")
            continue
        prev_err = by_name[previous.a.name].rel_err if previous is not None and previous.a.name in by_name else 0.0
        growth = max(d.rel_err - (prev_err if np.isfinite(prev_err) else 0.0), 0.0)
        updates[d.a_name] = dataclasses.replace(d, own_err=float(growth), own_method="growth")
    return tuple(updates.get(d.a_name, d) for d in layers)
