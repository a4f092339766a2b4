"""A Keras layer's parameters as a :class:`~parity.records.LayerParams` record, in PyTorch's layout.

What :meth:`parity.capture.keras.KerasBackend.layer_params` returns: the layer's own variables
(``layer.weights``; optimizer slots live on the optimizer and are never read), by role
(``kernel``, ``bias``, ``gamma``, ``beta``, ``mean``, ``var``, ``embeddings``), as NumPy in
the canonical layout — conv ``(*k, I/g, O)`` → ``(O, I/g, *k)``, transposed conv
``(*k, O/g, I)`` → ``(I, O/g, *k)``, depthwise ``(*k, C, M)`` → ``(C·M, 1, *k)``, dense
``(in, out)`` → ``(out, in)``; an ``EinsumDense`` kernel flattened to a torch ``Linear``'s
``(out, in)`` (see :func:`einsum_canonical`).  transformers' ``TFConv1D`` (GPT-2's dense
layers) and its one-table embeddings, and keras-hub's norms, are read by their class names.
bfloat16 variables are read as float32 and keep their dtype's name.

No framework is imported here except by the fallback that converts a Keras 3 variable.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from ..records import LayerParams, Param
from .keras_tree import tap_names
from .rnn import KERAS_GATES, is_keras_rnn, keras_rnn_params
from .torch_params import base_name

__all__ = ["find_layer", "layer_params", "KerasLayers", "layer_record", "keras_canonical", "einsum_canonical"]

_KINDS = {
    "Conv1D": "conv", "Conv2D": "conv", "Conv3D": "conv",
    "Convolution1D": "conv", "Convolution2D": "conv", "Convolution3D": "conv",
    "Conv1DTranspose": "convtranspose", "Conv2DTranspose": "convtranspose", "Conv3DTranspose": "convtranspose",
    "Convolution2DTranspose": "convtranspose", "Convolution3DTranspose": "convtranspose",
    "DepthwiseConv1D": "depthwise", "DepthwiseConv2D": "depthwise",
    "Dense": "dense",
    "BatchNormalization": "batchnorm", "SyncBatchNormalization": "batchnorm",
    "LayerNormalization": "norm", "GroupNormalization": "norm", "RMSNormalization": "norm",
    "Embedding": "embedding",
}
_ROLES = {
    "kernel": "kernel", "depthwise_kernel": "kernel", "bias": "bias",
    "gamma": "gamma", "scale": "gamma", "beta": "beta",
    "moving_mean": "mean", "moving_variance": "var", "embeddings": "embeddings",
}


# --- finding a layer by tap name ----------------------------------------------------------


def _children(layer: Any) -> list[Any]:
    try:
        return list(layer._flatten_layers(include_self=False, recursive=False))
    except AttributeError:
        return list(getattr(layer, "layers", []) or [])


class KerasLayers:
    """The layers of one Keras model, found by the names capture gives their taps.  The model's
    layers are indexed on the first look-up and kept (a caller reading every layer's parameters
    — weight parity — would otherwise index the model once per layer)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._bfs: list[Any] | None = None
        self._by_tap: dict[str, list[Any]] | None = None

    def bfs(self) -> list[Any]:
        """Every layer inside the model, each once, breadth-first (the top level first)."""
        if self._bfs is None:
            out, seen, queue = [], {id(self.model)}, list(_children(self.model))
            while queue:
                layer = queue.pop(0)
                if id(layer) in seen:
                    continue
                seen.add(id(layer))
                out.append(layer)
                queue.extend(_children(layer))
            self._bfs = out
        return self._bfs

    def by_tap_name(self, name: str) -> Any | None:
        """The one layer whose taps are called ``name``, or ``None``."""
        if self._by_tap is None:
            by_id = {id(layer): layer for layer in self.bfs()}
            index: dict[str, list[Any]] = {}
            for i, n in tap_names(self.model).items():
                if i in by_id:
                    index.setdefault(n, []).append(by_id[i])
            self._by_tap = index
        hits = self._by_tap.get(name, [])
        return hits[0] if len(hits) == 1 else None

    def by_layer_name(self, name: str) -> Any | None:
        """The first layer (breadth-first) of that name, or ``None``."""
        return next((layer for layer in self.bfs() if layer.name == name), None)

    def resolve(self, name: str) -> Any | None:
        """The layer a tap name stands for: its tap name (a layer path where names repeat,
        ``bert/encoder/layer_._3/attention/output/dense``), a layer name, or ``parent/child``."""
        found = self.by_tap_name(name)
        if found is None:
            found = self.by_layer_name(name)
        if found is None and "/" in name:
            parent, child = name.rsplit("/", 1)
            holder = self.model if parent == "model" else self.resolve(parent)
            if holder is not None:
                found = KerasLayers(holder).by_layer_name(child)
        return found

    def find(self, name: str) -> Any:
        """The layer a tap named ``name`` came from (suffixes ``#k``/``[i]`` dropped);
        :class:`~parity.errors.MappingError` with the closest names when there is none."""
        from ..errors import MappingError, closest

        base = base_name(name)
        found = self.resolve(base)
        if found is None:
            close = closest(base, [layer.name for layer in self.bfs()])
            raise MappingError(f"Keras model {self.model.name!r} has no layer {base!r}.{close}")
        return found


#: the layer index of each owner's model (a backend's, for as long as the backend lives)
_INDEXES: "weakref.WeakKeyDictionary[Any, KerasLayers]" = weakref.WeakKeyDictionary()


def find_layer(model: Any, name: str) -> Any:
    """The layer of ``model`` a tap named ``name`` came from: the layer of that name in
    ``model.layers``, searched breadth-first through nested models (the top level first), or
    ``parent/child`` for the names capture gives duplicate layers of nested models."""
    return KerasLayers(model).find(name)


def layer_params(model: Any, name: str, *, owner: Any = None) -> LayerParams:
    """The parameters of ``model``'s layer ``name`` (a tap name).  With an ``owner`` (the
    backend of ``model``), the model's layers are indexed once for as long as it lives."""
    if owner is None:
        return layer_record(KerasLayers(model).find(name))
    index = _INDEXES.get(owner)
    if index is None or index.model is not model:
        index = _INDEXES[owner] = KerasLayers(model)
    return layer_record(index.find(name))


# --- reading one layer ------------------------------------------------------------------


def layer_record(layer: Any) -> LayerParams:
    """The parameters of one Keras layer, by role, in PyTorch's layout."""
    cls = type(layer).__name__
    kind = _kind(layer, cls)
    params: dict[str, Param] = {}
    if is_keras_rnn(layer):
        arrays = {}
        for v in layer.weights:
            arrays[_weight_name(v)], dtype = _array(v)
        rnn = keras_rnn_params(layer, arrays)
        if rnn is not None:
            return LayerParams("keras", "rnn", cls, {role: Param(n, val, dtype, tuple(val.shape)) for role, (n, val) in rnn.items()},
                               {"gates": "".join(KERAS_GATES[cls])})
    for v in layer.weights:  # the layer's own variables (optimizer slots live on the optimizer)
        name = _weight_name(v)
        value, dtype = _array(v)
        role = _ROLES.get(name, name) if kind != "generic" else name
        if cls == "TFConv1D" and name == "weight":
            role = "kernel"
        elif kind == "embedding" and name == "weight":
            role = "embeddings"
        equation = str(getattr(layer, "equation", ""))
        canonical = einsum_canonical(equation, role, value) if cls == "EinsumDense" else keras_canonical(kind, role, value)
        params[role] = Param(name, canonical, dtype, tuple(value.shape))
    return LayerParams("keras", kind, cls, params)


def _weight_name(v: Any) -> str:
    """A Keras variable's own name (``kernel``), without its layer path or ``:0``."""
    return str(getattr(v, "name", "") or getattr(v, "path", "")).split("/")[-1].split(":")[0]


def _kind(layer: Any, cls: str) -> str:
    kind = _KINDS.get(cls)
    if kind is not None:
        return kind
    if cls == "EinsumDense" and _einsum_axes(str(getattr(layer, "equation", ""))) is not None:
        return "dense"
    if cls == "TFConv1D":
        return "dense"  # transformers' TF twin of its Conv1D: GPT-2's Dense, weight (in, out)
    if cls.endswith(("Embedding", "Embeddings")) and len(layer.weights) == 1:
        return "embedding"  # transformers' TFSharedEmbeddings, TF*ScaledWordEmbedding: one (vocab, d) table
    if cls.endswith(("RMSNorm", "LayerNorm", "RMSNormalization", "LayerNormalization")):
        return "norm"  # keras-hub's LlamaLayerNorm, MistralLayerNormalization, Gemma's RMSNormalization
    return "generic"


def _array(v: Any) -> tuple[np.ndarray, str]:
    try:
        value = v.numpy()
    except AttributeError:
        import keras

        value = keras.ops.convert_to_numpy(v)
    value = np.asarray(value)
    dtype = str(getattr(v, "dtype", value.dtype))
    if value.dtype.kind == "V" or "bfloat16" in str(value.dtype):  # ml_dtypes bfloat16
        value = value.astype(np.float32)
    return value, dtype


def keras_canonical(kind: str, role: str, value: np.ndarray) -> np.ndarray:
    """A Keras parameter in PyTorch's layout."""
    if role != "kernel":
        return value
    nd = value.ndim - 2
    if kind in ("conv", "convtranspose") and nd >= 1:
        # conv (*k, I/g, O) → (O, I/g, *k); transposed conv (*k, O/g, I) → (I, O/g, *k)
        return np.transpose(value, (nd + 1, nd, *range(nd)))
    if kind == "depthwise" and nd >= 1:
        c, m = value.shape[-2:]  # (*k, C, M) → (C, M, *k) → (C·M, 1, *k)
        return np.transpose(value, (nd, nd + 1, *range(nd))).reshape(c * m, 1, *value.shape[:nd])
    if kind == "dense" and value.ndim == 2:
        return value.T
    return value


def _einsum_axes(equation: str) -> tuple[str, str, str] | None:
    """``"btd,dnh->btnh"`` → (input, kernel, output) subscripts, or ``None``."""
    try:
        ins, out = equation.replace(" ", "").split("->")
        x, k = ins.split(",")
    except ValueError:
        return None
    return x, k, out


def einsum_canonical(equation: str, role: str, value: np.ndarray) -> np.ndarray:
    """An ``EinsumDense`` parameter in a torch ``Linear``'s layout: the kernel ``(d, heads,
    head_dim)`` of ``btd,dnh->btnh`` as ``(heads·head_dim, d)``, the output projection's
    ``(heads, head_dim, d)`` of ``btnh,nhd->btd`` as ``(d, heads·head_dim)``, a bias ``(heads,
    head_dim)`` flattened — the out features in the order the output holds them (row-major,
    as a torch ``view(B, T, heads, head_dim)`` splits them)."""
    axes = _einsum_axes(equation)
    if axes is None:
        return value
    x, k, out = axes
    if role == "kernel" and value.ndim == len(k):
        contracted = [c for c in k if c in x and c not in out]
        produced = sorted((c for c in k if c in out), key=out.index)
        if len(contracted) + len(produced) != len(k):
            return value
        perm = [k.index(c) for c in produced + contracted]
        n_out = int(np.prod([value.shape[k.index(c)] for c in produced])) if produced else 1
        return np.transpose(value, perm).reshape(n_out, -1)
    if role == "bias":
        return value.reshape(-1)
    return value
