"""The layer tree of a Keras model, and the tap name each layer's output gets.

Shared by the capture (:mod:`parity.capture.keras`) and the parameter reader
(:mod:`parity.capture.keras_params`); it imports no framework.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

__all__ = ["children", "tap_names"]


def children(layer: Any) -> list[Any]:
    try:
        return list(layer._flatten_layers(include_self=False, recursive=False))
    except AttributeError:
        return []


def tap_names(model: Any) -> dict[int, str]:
    """The tap name of every layer inside ``model``, by ``id(layer)``: its name when every
    layer of the model has its own, else its path of layer names from the model (the first
    path found, depth first, for a layer shared between places)."""
    paths: dict[int, str] = {}
    stack: list[tuple[Any, str]] = [(child, child.name) for child in reversed(children(model))]
    seen = {id(model)}
    order: list[Any] = []
    while stack:
        layer, path = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        paths[id(layer)] = path
        order.append(layer)
        stack.extend((child, f"{path}/{child.name}") for child in reversed(children(layer)))
    names = Counter(layer.name for layer in order if type(layer).__name__ != "InputLayer")
    if all(n == 1 for n in names.values()):
        return {id(layer): layer.name for layer in order}
    return paths
