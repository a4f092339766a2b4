"""Weight parity: the parameters of aligned layers, compared before any activation is.

For every matched pair whose layers hold parameters (convolutions, depthwise and
transposed convolutions, dense layers, BatchNorm, LayerNorm/GroupNorm/RMSNorm,
embeddings), each parameter is read from the live models as NumPy, brought into a
canonical layout (PyTorch's: conv ``(O, I/g, *k)``, dense ``(out, in)``, depthwise
``(C·M, 1, *k)``) and compared under the transform the pair implies — including the
row order of a dense layer that follows a flatten whose order differs between the
sides (torch flattens ``(C,H,W)``, a Keras ``Flatten`` of an NHWC tensor ``(H,W,C)``).

When a parameter differs, the usual conversion bugs are tried before saying so:

* ``"transposed"`` — the kernel equals A's transposed the other way (a square dense
  weight copied without ``.T``; a conv kernel with kh/kw swapped, as NumPy's ``.T``
  does; in/out channels swapped; a spatially flipped kernel), or the rows of a dense
  layer after a flatten are in the other flatten order (diagnosis ``flatten_order``);
* ``"swapped"`` — two parameters of the layer hold each other's values
  (``running_mean`` ↔ ``running_var``, ``weight`` ↔ ``bias``);
* ``"missing"`` — one side has the parameter (a bias, BatchNorm's ``gamma``/``beta``)
  and the other has none, or only zeros, while A's is not the neutral value;
* ``"shape"`` — no transform makes the shapes agree;
* ``"differs"`` — otherwise, with the relative error and, where it fits, how
  (``scaled by k``, ``offset by c``, ``variance holds the standard deviation``).

Deliberately ignored: ``num_batches_tracked`` (a training counter that changes no
output in eval mode) and optimizer state (slots, moments, iteration counters: not part
of what a model computes; Keras keeps it on the optimizer, never in ``layer.weights``).
Layers of other kinds are compared only by identical parameter names; parameters of
saved graph formats (ONNX, TFLite, TF graphs) are not read.

The flatten order of a dense layer's input is read from the taps before it on each
side (a Keras ``Flatten`` tap says ``N(HWC)``, a ``Permute`` before it changes that).
Pass the whole :class:`~parity.records.Alignment` so the unmatched taps (``Flatten``,
``Permute``) are seen; with matches alone the order cannot always be known, and a
kernel matching in either order is then accepted with a note.

All comparisons are whole-array NumPy operations in float64.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .records import Alignment, Diagnosis, Match, ParamDiff, Tap, Unmatched

__all__ = ["weight_parity", "weight_diagnoses", "find_layer", "layer_params"]

#: relative error allowed for a parameter copied in a dtype (copies are exact; casts are not)
_TOL = {"float64": 1e-9, "float32": 1e-6, "float16": 2e-3, "bfloat16": 1.6e-2}
_DEFAULT_TOL = 1e-6
#: the value a parameter has when a layer leaves it out (no bias = zero bias)
_NEUTRAL = {"bias": 0.0, "beta": 0.0, "mean": 0.0, "gamma": 1.0, "var": 1.0}
_ROLE_ORDER = ("kernel", "bias", "gamma", "beta", "mean", "var", "embeddings")
_KNOWN_KINDS = frozenset({"conv", "depthwise", "convtranspose", "dense", "batchnorm", "norm", "embedding"})


# --- reading parameters ------------------------------------------------------------------


@dataclass(frozen=True)
class _Param:
    name: str  # the framework's own name ("weight", "moving_variance", ...)
    value: np.ndarray  # in the canonical (PyTorch) layout
    dtype: str
    raw_shape: tuple[int, ...]  # as stored by the framework


@dataclass(frozen=True)
class _Layer:
    framework: str  # "torch" | "keras"
    kind: str  # conv, depthwise, convtranspose, dense, batchnorm, norm, embedding, generic
    cls: str
    params: Mapping[str, _Param]  # by role (or by own name for "generic")


def _framework(model: Any) -> str | None:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        return "torch"
    if "keras" in sys.modules or "tf_keras" in sys.modules:
        from .capture.keras import keras_module  # imports no framework

        if keras_module(model) is not None:  # Keras 3, tf_keras, or Keras 2 as keras
            return "keras"
    return None


def _unwrap(model: Any) -> Any:
    from .capture.base import Backend

    return model.model if isinstance(model, Backend) else model


def _base_name(tap_name: str) -> str:
    """The layer a tap belongs to: ``layer1.0#1`` / ``lstm[0]`` → ``layer1.0`` / ``lstm``."""
    name = tap_name.split("#", 1)[0]
    return name.split("[", 1)[0]


def _keras_children(layer: Any) -> list[Any]:
    try:
        return list(layer._flatten_layers(include_self=False, recursive=False))
    except AttributeError:
        return list(getattr(layer, "layers", []) or [])


def find_layer(model: Any, name: str) -> Any:
    """The layer of ``model`` a tap named ``name`` came from.

    torch: ``model.get_submodule`` of the module path; Keras: the layer of that name in
    ``model.layers``, searched breadth-first through nested models (the top level first),
    ``parent/child`` for the names capture gives duplicate layers of nested models.
    Tap suffixes (``#k`` for repeated calls, ``[i]`` for output elements) are dropped.
    Raises :class:`~parity.errors.MappingError` when there is no such layer.
    """
    from .errors import MappingError, closest

    model = _unwrap(model)
    base = _base_name(name)
    fw = _framework(model)
    if fw == "torch":
        try:
            return model.get_submodule(base)
        except AttributeError:
            close = closest(base, [n for n, _ in model.named_modules()])
            raise MappingError(f"torch model {type(model).__name__} has no submodule {base!r}.{close}") from None
    if fw == "keras":
        found = _keras_resolve(model, base)
        if found is None:
            close = closest(base, [layer.name for layer in _keras_bfs(model)])
            raise MappingError(f"Keras model {model.name!r} has no layer {base!r}.{close}")
        return found
    raise MappingError(f"cannot look up layers of a {type(model).__name__}: weight parity reads torch and Keras models only")


def _keras_bfs(model: Any) -> list[Any]:
    out, seen, queue = [], {id(model)}, list(_keras_children(model))
    while queue:
        layer = queue.pop(0)
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        out.append(layer)
        queue.extend(_keras_children(layer))
    return out


def _keras_find(model: Any, name: str) -> Any:
    return next((layer for layer in _keras_bfs(model) if layer.name == name), None)


def _keras_resolve(model: Any, name: str) -> Any:
    """The layer a Keras tap name stands for: its tap name (a layer path where names repeat,
    ``bert/encoder/layer_._3/attention/output/dense``), a layer name, or ``parent/child``."""
    from .capture.keras import layer_named

    found = layer_named(model, name)
    if found is None:
        found = _keras_find(model, name)
    if found is None and "/" in name:
        parent, child = name.rsplit("/", 1)
        holder = model if parent == "model" else _keras_resolve(model, parent)
        if holder is not None:
            found = _keras_find(holder, child)
    return found


def _torch_array(t: Any) -> tuple[np.ndarray, str]:
    import torch

    t = t.detach()
    dtype = str(t.dtype).replace("torch.", "")
    if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
        t = t.float()
    return t.cpu().numpy(), dtype


def _torch_layer(module: Any) -> _Layer:
    import torch.nn as nn

    own: dict[str, Any] = dict(module.named_parameters(recurse=False))
    for n, buf in module.named_buffers(recurse=False):
        if buf is not None and n != "num_batches_tracked":  # a training counter: ignored on purpose
            own[n] = buf
    own = {n: t for n, t in own.items() if t is not None and not _is_uninitialized(t)}
    cls = type(module).__name__
    conv = nn.modules.conv
    if isinstance(module, conv._ConvTransposeNd):
        kind = "convtranspose"
    elif isinstance(module, conv._ConvNd):
        kind = "depthwise" if module.groups > 1 and module.groups == module.in_channels else "conv"
    elif isinstance(module, nn.Linear) or _is_hf_conv1d(module):
        kind = "dense"
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        kind = "batchnorm"
    elif isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)) or cls.endswith("RMSNorm"):
        kind = "norm"
    elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        kind = "embedding"
    else:
        kind = "generic"
    roles = {
        "conv": {"weight": "kernel", "bias": "bias"},
        "depthwise": {"weight": "kernel", "bias": "bias"},
        "convtranspose": {"weight": "kernel", "bias": "bias"},
        "dense": {"weight": "kernel", "bias": "bias"},
        "batchnorm": {"weight": "gamma", "bias": "beta", "running_mean": "mean", "running_var": "var"},
        "norm": {"weight": "gamma", "bias": "beta", "running_mean": "mean", "running_var": "var"},
        "embedding": {"weight": "embeddings"},
    }.get(kind, {})
    params: dict[str, _Param] = {}
    for n, t in own.items():
        value, dtype = _torch_array(t)
        raw = tuple(value.shape)
        if n == "weight" and _is_hf_conv1d(module):
            value = value.T  # transformers' Conv1D keeps its weight as (in, out)
        params[roles.get(n, n)] = _Param(n, value, dtype, raw)
    return _Layer("torch", kind, cls, params)


def _is_hf_conv1d(module: Any) -> bool:
    """transformers' ``Conv1D`` (GPT-2's projections): a dense layer whose weight is ``(in, out)``."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None \
        and tuple(module.weight.shape)[-1:] == (module.nf,)


def _is_uninitialized(t: Any) -> bool:
    try:
        from torch.nn.parameter import is_lazy

        return bool(is_lazy(t))
    except ImportError:  # pragma: no cover
        return False


_KERAS_KINDS = {
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
_KERAS_ROLES = {
    "kernel": "kernel", "depthwise_kernel": "kernel", "bias": "bias",
    "gamma": "gamma", "scale": "gamma", "beta": "beta",
    "moving_mean": "mean", "moving_variance": "var", "embeddings": "embeddings",
}


def _keras_array(v: Any) -> tuple[np.ndarray, str]:
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


def _keras_canonical(kind: str, role: str, value: np.ndarray) -> np.ndarray:
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


def _einsum_canonical(layer: Any, role: str, value: np.ndarray) -> np.ndarray:
    """An ``EinsumDense`` parameter in a torch ``Linear``'s layout: the kernel ``(d, heads,
    head_dim)`` of ``btd,dnh->btnh`` as ``(heads·head_dim, d)``, the output projection's
    ``(heads, head_dim, d)`` of ``btnh,nhd->btd`` as ``(d, heads·head_dim)``, a bias ``(heads,
    head_dim)`` flattened — the out features in the order the output holds them (row-major,
    as a torch ``view(B, T, heads, head_dim)`` splits them)."""
    axes = _einsum_axes(str(getattr(layer, "equation", "")))
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


def _keras_kind(layer: Any, cls: str) -> str:
    kind = _KERAS_KINDS.get(cls)
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


def _keras_layer(layer: Any) -> _Layer:
    cls = type(layer).__name__
    kind = _keras_kind(layer, cls)
    params: dict[str, _Param] = {}
    for v in layer.weights:  # the layer's own variables (optimizer slots live on the optimizer)
        name = str(getattr(v, "name", "") or getattr(v, "path", "")).split("/")[-1].split(":")[0]
        value, dtype = _keras_array(v)
        role = _KERAS_ROLES.get(name, name) if kind != "generic" else name
        if cls == "TFConv1D" and name == "weight":
            role = "kernel"
        elif kind == "embedding" and name == "weight":
            role = "embeddings"
        canonical = _einsum_canonical(layer, role, value) if cls == "EinsumDense" else _keras_canonical(kind, role, value)
        params[role] = _Param(name, canonical, dtype, tuple(value.shape))
    return _Layer("keras", kind, cls, params)


def layer_params(model: Any, name: str) -> _Layer:
    """The parameters of ``model``'s layer ``name``, by role, in PyTorch's layout."""
    model = _unwrap(model)
    layer = find_layer(model, name)
    return _torch_layer(layer) if _framework(model) == "torch" else _keras_layer(layer)


# --- comparing ---------------------------------------------------------------------------


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """``‖b−a‖/‖a‖`` accumulated in float64 without float64 copies of the arrays (the
    difference of two float32 values this close is exact)."""
    if a.shape != b.shape:
        return float("inf")
    d = (b - a).ravel()
    a = a.ravel()
    with np.errstate(over="ignore", invalid="ignore"):
        na = float(np.sqrt(np.einsum("i,i->", a, a, dtype=np.float64)))
        err = float(np.sqrt(np.einsum("i,i->", d, d, dtype=np.float64)))
    if na == 0.0:
        return 0.0 if err == 0.0 else float("inf")
    return err / na


def _float(x: np.ndarray) -> np.ndarray:
    """A parameter as a floating array (float32/float64 as they are, anything else float64)."""
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)


def _tol(*dtypes: str) -> float:
    return max(_TOL.get(d, _DEFAULT_TOL) for d in dtypes)


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    return "0" if x == 0 else f"{x:.2g}"


def _fit_shape(b: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """``b`` in ``shape`` when they differ by size-1 axes only (a 1×1 conv vs a dense)."""
    if b.shape == shape:
        return b
    if tuple(d for d in b.shape if d != 1) == tuple(d for d in shape if d != 1):
        return b.reshape(shape)
    return None


@dataclass
class _Ctx:
    """What one layer pair's comparison needs to know beyond the arrays."""

    match: Match
    a: _Layer
    b: _Layer
    a_layer: str
    b_layer: str
    #: the flatten order of the dense layer's input on each side: (axis letters, per-sample sizes, certain)
    flat_a: tuple[str, tuple[int, ...], bool] | None = None
    flat_b: tuple[str, tuple[int, ...], bool] | None = None


@dataclass
class _Alt:
    status: str
    label: str  # what was done to B's copy, in words
    value: np.ndarray
    code: str = "weight_transpose"
    message: str = ""


def _pd(ctx: _Ctx, role: str, status: str, rel: float | None, message: str, evidence: dict | None = None) -> ParamDiff:
    pa, pb = ctx.a.params.get(role), ctx.b.params.get(role)
    diff = ParamDiff(
        a_layer=ctx.a_layer,
        b_layer=ctx.b_layer,
        a_param=pa.name if pa else "",
        b_param=pb.name if pb else "",
        status=status,
        rel_err=None if rel is None else float(rel),
        message=message,
    )
    if evidence:
        object.__setattr__(diff, "_evidence", dict(evidence))  # not a field: never serialised
    return diff


def _who(ctx: _Ctx, side: str) -> str:
    layer = ctx.a_layer if side == "a" else ctx.b_layer
    fw = ctx.a.framework if side == "a" else ctx.b.framework
    return f"{side.upper()}'s {layer!r} ({fw})"


def _copy_hint(ctx: _Ctx, nd: int) -> str:
    """How B's kernel is made from A's, in code, for the pair's frameworks."""
    kind, fa, fb = ctx.a.kind, ctx.a.framework, ctx.b.framework
    if fa == fb:
        return "copy it unchanged"
    spatial = tuple(range(2, nd + 2))
    if fa == "torch" and fb == "keras":
        if kind == "dense":
            return "copy weight.T ((out, in) → (in, out))"
        if kind == "depthwise":
            return f"copy weight.reshape(C, M, *k).permute{(*spatial, 0, 1)} ((C·M, 1, kh, kw) → (kh, kw, C, M))"
        return f"copy weight.permute{(*spatial, 1, 0)} (OIHW → HWIO)"
    if kind == "dense":
        return "copy kernel.T ((in, out) → (out, in))"
    if kind == "depthwise":
        return f"copy kernel.transpose{(nd, nd + 1, *range(nd))}.reshape(C·M, 1, *k)"
    return f"copy kernel.transpose{(nd + 1, nd, *range(nd))} (HWIO → OIHW)"


def _kernel_alternatives(ctx: _Ctx, a: np.ndarray, b: np.ndarray) -> list[_Alt]:
    """What a wrongly laid out copy of A's kernel looks like in B's canonical layout."""
    kind = ctx.a.kind if ctx.a.kind in _KNOWN_KINDS else ctx.b.kind
    fa, fb = ctx.a.framework, ctx.b.framework
    pa, pb = ctx.a.params["kernel"].name, ctx.b.params["kernel"].name
    other_way = f"{pb} equals {fa} {pa} transposed the other way"
    alts: list[_Alt] = []
    if kind == "dense" and b.ndim == 2:
        if b.shape[0] == b.shape[1]:
            layout = "(in, out)" if fb == "keras" else "(out, in)"
            alts.append(_Alt("transposed", "transposed", b.T, message=(
                f"{other_way}: the square {b.shape} {fa} {pa} was copied without transposing; "
                f"{fb} keeps it as {layout}, so {_copy_hint(ctx, 0)}")))
        alts.extend(_flatten_alternatives(ctx, a, b))
    elif kind in ("conv", "depthwise", "convtranspose") and b.ndim >= 3:
        nd = b.ndim - 2
        spatial = b.shape[2:]
        hint = _copy_hint(ctx, nd)
        if nd >= 2 and len(set(spatial)) == 1:
            rev = (0, 1, *reversed(range(2, nd + 2)))
            alts.append(_Alt("transposed", "with kh/kw swapped", np.transpose(b, rev), message=(
                f"{other_way}: the kernel's height and width axes are swapped (as NumPy's .T of a "
                f"torch weight gives); {hint}")))
        if kind != "depthwise" and b.shape[0] == b.shape[1]:
            alts.append(_Alt("transposed", "with in/out channels swapped", np.swapaxes(b, 0, 1), message=(
                f"{other_way}: its input and output channel axes are swapped; {hint}")))
            if nd >= 2 and len(set(spatial)) == 1:
                rev = (1, 0, *reversed(range(2, nd + 2)))
                alts.append(_Alt("transposed", "fully reversed", np.transpose(b, rev), message=(
                    f"{other_way}: all its axes are reversed; {hint}")))
        flip = (Ellipsis, *([slice(None, None, -1)] * nd))
        alts.append(_Alt("transposed", "flipped spatially", b[flip], message=(
            f"{pb} equals {fa} {pa} flipped spatially (rotated 180°: a convolution kernel copied "
            f"as a cross-correlation one, or the reverse); {hint} without flipping")))
    return alts


def _flatten_alternatives(ctx: _Ctx, a: np.ndarray, b: np.ndarray) -> list[_Alt]:
    """B's dense kernel with its rows in another flatten order than the one B's input has."""
    if ctx.flat_a is None:
        return []
    order_a, sizes_a, _ = ctx.flat_a
    expected = _expected_order(ctx)
    alts = []
    for perm in itertools.permutations(order_a):
        order = "".join(perm)
        if order == expected:
            continue
        value = _reorder_rows(b, order, order_a, sizes_a)
        if value is None:
            continue
        fix = _reorder_hint(ctx, b.shape[0], order_a, sizes_a, expected)
        if expected != order_a and order == order_a:
            what = (
                f"rows not reordered: B flattens its input in ({','.join(expected)}) order but the kernel rows are "
                f"in A's ({','.join(order_a)}) order — they must be permuted as N{order_a}→N{expected} flatten "
                f"order: {fix}, or put a Permute to N{order_a} before B's Flatten"
            )
        else:
            what = (
                f"rows permuted as N{expected}→N{order} flatten order, which B's input does not need: B flattens "
                f"in ({','.join(expected)}) order but the rows are in ({','.join(order)}) order; {fix}"
            )
        alts.append(_Alt("transposed", f"with rows in N{order} flatten order", value, code="flatten_order", message=what))
    return alts


def _reorder_hint(ctx: _Ctx, out: int, order_a: str, sizes_a: tuple[int, ...], expected: str) -> str:
    """The copy that puts A's dense rows (inputs in ``order_a``) into B's flatten order."""
    perm = (0, *[1 + order_a.index(c) for c in expected])
    src = "weight" if ctx.a.framework == "torch" else "kernel.T"
    dst = ".T" if ctx.b.framework == "keras" else ""
    return (
        f"copy {src}.reshape({out}, {', '.join(map(str, sizes_a))}).transpose{perm}.reshape({out}, -1){dst}"
    )


def _expected_order(ctx: _Ctx) -> str:
    """The flatten order B's dense rows must follow (A's when B's is unknown)."""
    assert ctx.flat_a is not None
    order_a = ctx.flat_a[0]
    if ctx.flat_b is not None and sorted(ctx.flat_b[0]) == sorted(order_a):
        sizes_a = dict(zip(order_a, ctx.flat_a[1]))
        sizes_b = dict(zip(ctx.flat_b[0], ctx.flat_b[1]))
        if sizes_a == sizes_b:
            return ctx.flat_b[0]
    return order_a


def _reorder_rows(b: np.ndarray, order: str, order_a: str, sizes_a: tuple[int, ...]) -> np.ndarray | None:
    """B's (out, in) kernel whose inputs run in ``order`` → inputs in A's ``order_a``."""
    sizes = dict(zip(order_a, sizes_a))
    if b.ndim != 2 or int(np.prod(sizes_a)) != b.shape[1]:
        return None
    out = b.shape[0]
    return np.transpose(
        b.reshape(out, *[sizes[c] for c in order]), (0, *[1 + order.index(c) for c in order_a])
    ).reshape(out, -1)


def _expected_b(ctx: _Ctx, role: str, b: np.ndarray, a_shape: tuple[int, ...]) -> tuple[np.ndarray | None, str]:
    """B's parameter under the transform the pair implies, and a note when it was a guess."""
    note = ""
    if role == "kernel" and ctx.flat_a is not None and b.ndim == 2:
        order_a, sizes_a, certain_a = ctx.flat_a
        expected = _expected_order(ctx)
        certain = certain_a and ctx.flat_b is not None and ctx.flat_b[2]
        if expected != order_a:
            value = _reorder_rows(b, expected, order_a, sizes_a)
            if value is not None:
                b = value
        if not certain and ctx.flat_b is None:
            note = "flatten order of B's input unknown"
        elif not certain:
            note = "flatten order not certain"
    if role in ("gamma", "beta", "mean", "var") and b.shape != a_shape and b.size == int(np.prod(a_shape)):
        t = ctx.match.transform
        if t.kind == "permute" and t.perm is not None and b.ndim == len(t.perm) - 1:
            inner = tuple(p - 1 for p in t.perm[1:])  # the per-sample part of the activation transform
            if all(p >= 0 for p in inner):
                permuted = np.transpose(b, inner)
                if permuted.shape == a_shape:
                    return permuted, note
    return _fit_shape(b, a_shape), note


def _compare_layer(ctx: _Ctx, rtol: float | None) -> list[ParamDiff]:
    a_roles, b_roles = ctx.a.params, ctx.b.params
    known = ctx.a.kind in _KNOWN_KINDS and ctx.b.kind in _KNOWN_KINDS
    if known:
        roles = [r for r in _ROLE_ORDER if r in a_roles or r in b_roles]
        roles += [r for r in a_roles if r not in roles and r in b_roles]
    else:  # unknown layer kinds: parameters of the same name only
        roles = [r for r in a_roles if r in b_roles]
    results: dict[str, ParamDiff] = {}
    expected: dict[str, np.ndarray] = {}
    for role in roles:
        pa, pb = a_roles.get(role), b_roles.get(role)
        if pa is None or pb is None:
            results[role] = _one_sided(ctx, role, pa, pb)
            continue
        tol = rtol if rtol is not None else _tol(pa.dtype, pb.dtype)
        a, b_raw = _float(pa.value), _float(pb.value)
        b, note = _expected_b(ctx, role, b_raw, a.shape)
        if b is not None:
            rel = _rel(a, b)
            if rel <= tol:  # the common case, in the parameters' own precision
                expected[role] = b
                results[role] = _pd(ctx, role, "ok", rel, "")
                continue
        # what differs is looked at closely, in float64
        a, b_raw = a.astype(np.float64, copy=False), b_raw.astype(np.float64, copy=False)
        b, note = _expected_b(ctx, role, b_raw, a.shape)
        if b is None:
            results[role] = _shape_or_alternative(ctx, role, a, b_raw, tol)
            continue
        expected[role] = b
        rel = _rel(a, b)
        if role in ("bias", "beta") and not np.any(b) and np.any(a):
            results[role] = _pd(ctx, role, "missing", rel, (
                f"{role if role == 'bias' else pa.name} missing: {_who(ctx, 'b')} has {pb.name} all zeros while "
                f"{_who(ctx, 'a')} has a non-zero {pa.name} (‖{pa.name}‖ = {_fmt(float(np.linalg.norm(a)))}); "
                "copy it"))
            continue
        results[role] = _explain(ctx, role, a, b, b_raw, rel, tol, note)
    _find_swaps(ctx, results, expected, rtol)
    return [results[r] for r in roles]


def _alternatives(ctx: _Ctx, role: str, a: np.ndarray, b_raw: np.ndarray) -> list[_Alt]:
    if role == "kernel":
        return _kernel_alternatives(ctx, a, b_raw)
    return []


def _explain(ctx: _Ctx, role: str, a: np.ndarray, b: np.ndarray, b_raw: np.ndarray, rel: float, tol: float, note: str) -> ParamDiff:
    pa, pb = ctx.a.params[role].name, ctx.b.params[role].name
    for alt in _alternatives(ctx, role, a, b_raw):
        if alt.value.shape != a.shape:
            continue
        alt_rel = _rel(a, alt.value)
        if alt_rel > tol:
            continue
        if alt.code == "flatten_order" and note:
            return _pd(ctx, role, "ok", alt_rel, (
                f"matches {alt.label} ({note}: pass the whole Alignment so the "
                "Flatten/Permute taps show which order B's input has)"))
        message = (
            f"{alt.message}. {_who(ctx, 'b')} {pb} vs {_who(ctx, 'a')} {pa}: rel err {_fmt(rel)} as copied, "
            f"{_fmt(alt_rel)} {alt.label}."
        )
        return _pd(ctx, role, alt.status, rel, message, {
            "code": alt.code, "rel_err_as_copied": rel, "rel_err_alternative": alt_rel,
        })
    how = _how_it_differs(a, b, role, tol)
    what = f"{pb} of {_who(ctx, 'b')} differs from {pa} of {_who(ctx, 'a')}: rel err {_fmt(rel)}"
    if how:
        what += f"; {how}"
    return _pd(ctx, role, "differs", rel, what + ".", {"rel_err_as_copied": rel})


def _how_it_differs(a: np.ndarray, b: np.ndarray, role: str, tol: float) -> str:
    """Scaled by k, offset by c, the standard deviation for the variance — or nothing."""
    if a.shape != b.shape or a.size == 0 or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return ""
    aa = float(np.dot(a.ravel(), a.ravel()))
    if aa > 0:
        k = float(np.dot(a.ravel(), b.ravel())) / aa
        if k != 0 and _rel(k * a, b) <= max(tol, 1e-6):
            return f"B's equals A's scaled by {k:.6g}"
    if a.size > 1:
        c = float(np.mean(b - a))
        if c != 0 and _rel(a + c, b) <= max(tol, 1e-6):
            extra = " (an epsilon folded into the variance?)" if role == "var" and 0 < c <= 1e-2 else ""
            return f"B's equals A's offset by {c:.6g}{extra}"
    if role == "var" and np.all(a >= 0):
        if _rel(np.sqrt(a), b) <= max(tol, 1e-6):
            return "B's holds the standard deviation (sqrt of A's variance): copy the variance itself"
        if np.all(b >= 0) and _rel(a, np.sqrt(b)) <= max(tol, 1e-6):
            return "A's holds the standard deviation of B's variance: B's is A's squared"
    return ""


def _shape_or_alternative(ctx: _Ctx, role: str, a: np.ndarray, b_raw: np.ndarray, tol: float) -> ParamDiff:
    pa, pb = ctx.a.params[role], ctx.b.params[role]
    for alt in _alternatives(ctx, role, a, b_raw):
        if alt.value.shape == a.shape and _rel(a, alt.value) <= tol:
            return _pd(ctx, role, alt.status, None, (
                f"{alt.message}. {_who(ctx, 'b')} {pb.name} {pb.raw_shape} vs {_who(ctx, 'a')} {pa.name} "
                f"{pa.raw_shape}."), {"code": alt.code})
    return _pd(ctx, role, "shape", None, (
        f"{pb.name} of {_who(ctx, 'b')} has shape {pb.raw_shape} ({ctx.b.framework} layout), which no "
        f"transform makes fit {pa.name} {pa.raw_shape} of {_who(ctx, 'a')}: the layers are configured "
        "differently (channels, kernel size, groups, units)."))


def _one_sided(ctx: _Ctx, role: str, pa: _Param | None, pb: _Param | None) -> ParamDiff:
    present, side, other = (pa, "a", "b") if pa is not None else (pb, "b", "a")
    assert present is not None
    neutral = _NEUTRAL.get(role)
    name = role if role in ("bias",) else present.name
    other_kind = ctx.b.cls if other == "b" else ctx.a.cls
    if neutral is not None and np.all(present.value == neutral):
        return _pd(ctx, role, "ok", 0.0, (
            f"{present.name} exists in {_who(ctx, side)} only, and is all {neutral:g}: the same as none"))
    if neutral is None:
        return _pd(ctx, role, "missing", None, (
            f"{name} missing: {_who(ctx, side)} has {present.name} {present.raw_shape}, "
            f"{_who(ctx, other)} ({other_kind}) has no such parameter"))
    flag = {"bias": "use_bias=True" if ctx.b.framework == "keras" else "bias=True",
            "beta": "center=True" if ctx.b.framework == "keras" else "affine=True",
            "gamma": "scale=True" if ctx.b.framework == "keras" else "affine=True"}.get(role)
    fix = f"build B's layer with {flag} and copy it" if (flag and side == "a") else "make both layers agree"
    return _pd(ctx, role, "missing", None, (
        f"{name} missing: {_who(ctx, side)} has a {present.name} (‖{present.name}‖ = "
        f"{_fmt(float(np.linalg.norm(present.value)))}, not all {neutral:g}) and {_who(ctx, other)} "
        f"({other_kind}) has none; {fix}"))


def _find_swaps(ctx: _Ctx, results: dict[str, ParamDiff], expected: dict[str, np.ndarray], rtol: float | None) -> None:
    """Two parameters of one layer that hold each other's values (running_mean ↔ running_var)."""
    failing = [r for r, d in results.items() if d.status != "ok" and r in expected]
    for r1, r2 in itertools.combinations(failing, 2):
        if results[r1].status == "swapped" or results[r2].status == "swapped":
            continue
        p1a, p2a = ctx.a.params[r1], ctx.a.params[r2]
        p1b, p2b = ctx.b.params[r1], ctx.b.params[r2]
        if p1a.value.shape != p2a.value.shape:
            continue
        tol = rtol if rtol is not None else _tol(p1a.dtype, p2a.dtype, p1b.dtype, p2b.dtype)
        a1, a2 = p1a.value.astype(np.float64), p2a.value.astype(np.float64)
        e1, e2 = _rel(a1, expected[r2]), _rel(a2, expected[r1])
        if e1 > tol or e2 > tol:
            continue
        what = (
            f"{p1a.name} and {p2a.name} swapped: {_who(ctx, 'b')} {p1b.name} holds {_who(ctx, 'a')} {p2a.name} "
            f"and {p2b.name} holds {p1a.name}"
        )
        for role, other in ((r1, r2), (r2, r1)):
            rel = results[role].rel_err
            results[role] = _pd(ctx, role, "swapped", rel, (
                f"{what} (rel err {_fmt(rel)} as copied, {_fmt(max(e1, e2))} swapped back); copy each into its own "
                "variable"), {
                "code": "bn_statistics" if {r1, r2} == {"mean", "var"} else "weight_mismatch",
                "rel_err_as_copied": rel if rel is not None else float("nan"),
                "rel_err_alternative": max(e1, e2),
            })


# --- flatten order of a dense layer's input ------------------------------------------------


def _flat_info(tap: Tap, taps: Mapping[int, Tap], in_features: int) -> tuple[str, tuple[int, ...], bool] | None:
    """The flatten order of the input of the dense layer at ``tap``: the nearest earlier tap that
    says (``N(HWC)`` with ``flat_from``; or a ``NCHW``/``NHWC`` tensor of the right size, flattened
    in its own layout); ``""`` when that tap is already ``(N, C)``; ``None`` when unknown.  The flag
    is false when taps in between are unknown (matches given without the unmatched taps)."""
    certain = True
    for j in range(tap.index - 1, -1, -1):
        prev = taps.get(j)
        if prev is None:
            certain = False
            continue
        if prev.role in ("container", "output"):
            continue
        layout = prev.layout
        if not layout:
            return None
        if len(layout) == 2 and len(prev.shape) == 2:
            return "", (), certain  # an (N, C) tensor: nothing was flattened
        if layout.startswith("N(") and layout.endswith(")"):
            order = layout[2:-1]
            flat = tuple(int(d) for d in prev.attrs.get("flat_from", ()) or ())
        elif len(layout) >= 3 and len(prev.shape) == len(layout):
            order, flat = layout[1:], tuple(int(d) for d in prev.shape[1:])
        else:
            return None
        if len(flat) != len(order) or int(np.prod(flat)) != in_features or len(order) > 4:
            return None
        return order, flat, certain
    return None


def _side_taps(matches: list[Match], unmatched: Iterable[Any]) -> tuple[dict[int, Tap], dict[int, Tap]]:
    ta: dict[int, Tap] = {}
    tb: dict[int, Tap] = {}
    for m in matches:
        ta.setdefault(m.a.index, m.a)
        tb.setdefault(m.b.index, m.b)
    for u in unmatched:
        if isinstance(u, Unmatched):
            (ta if u.side == "a" else tb).setdefault(u.tap.index, u.tap)
    return ta, tb


# --- the entry points --------------------------------------------------------------------


def weight_parity(
    model_a: Any,
    model_b: Any,
    matches: Alignment | Iterable[Match],
    *,
    unmatched: Iterable[Unmatched] = (),
    rtol: float | None = None,
) -> tuple[ParamDiff, ...]:
    """Compare the parameters of every aligned pair of parametrised layers.

    ``matches`` is an :class:`Alignment` (best: its unmatched ``Flatten``/``Permute`` taps
    tell a dense layer's input flatten order) or the matches alone (``unmatched`` may be
    given separately).  ``model_a``/``model_b`` are the live torch or Keras models (or their
    backends).  ``rtol`` overrides the per-dtype tolerance (1e-6 for float32: copies are
    exact).  Returns one :class:`ParamDiff` per parameter, in A's layer order; a layer
    called several times is compared once.  Models of other kinds give ``()``.
    """
    if isinstance(matches, Alignment):
        unmatched = tuple(unmatched) + tuple(matches.unmatched)
        matches = matches.matches
    matches = list(matches)
    model_a, model_b = _unwrap(model_a), _unwrap(model_b)
    if _framework(model_a) is None or _framework(model_b) is None:
        return ()
    from .errors import MappingError
    taps_a, taps_b = _side_taps(matches, unmatched)
    out: list[ParamDiff] = []
    seen: set[tuple[str, str]] = set()
    cache: dict[tuple[int, str], _Layer | None] = {}

    def read(side: str, name: str) -> _Layer | None:
        model = model_a if side == "a" else model_b
        key = (id(model), name)
        if key not in cache:
            try:
                cache[key] = layer_params(model, name)
            except MappingError:  # a tap that is no layer of its own
                cache[key] = None
        return cache[key]

    from .capture.keras import layer_index_cache

    with layer_index_cache():  # each Keras model's layers indexed once, not once per layer
        for m in matches:
            out.extend(_compare_match(m, read, seen, taps_a, taps_b, rtol))
    return tuple(out)


def _compare_match(m: Match, read, seen: set, taps_a, taps_b, rtol: float | None) -> list[ParamDiff]:
    """The parameters of one aligned pair of layers (nothing for outputs, functional ops, a pair
    already compared or a converter's fold)."""
    if m.a.role == "output" or m.b.role == "output" or m.how == "output":
        return []
    name_a, name_b = _base_name(m.a.name), _base_name(m.b.name)
    if ":" in name_a or ":" in name_b or (name_a, name_b) in seen:
        return []  # functional torch ops have no parameters of their own
    seen.add((name_a, name_b))
    la, lb = read("a", name_a), read("b", name_b)
    if la is None or lb is None or not (la.params or lb.params):
        return []
    if la.kind != lb.kind and "generic" not in (la.kind, lb.kind):
        return []  # a converter's fold (Conv+BatchNorm → one Conv): no one-to-one parameters
    ctx = _Ctx(m, la, lb, name_a, name_b)
    kernel = la.params.get("kernel")
    if "dense" in (la.kind, lb.kind) and kernel is not None and kernel.value.ndim == 2:
        in_features = kernel.value.shape[1]
        flat_a = _flat_info(m.a, taps_a, in_features)
        if flat_a is not None and sum(1 for d in flat_a[1] if d > 1) > 1:  # else every order is the same
            ctx.flat_a = flat_a
            ctx.flat_b = _flat_info(m.b, taps_b, in_features)
    return _compare_layer(ctx, rtol)


_ADVICE = {
    "weight_transpose": "Copy the kernel with the layout transform the pair needs (torch OIHW → Keras HWIO is "
    "weight.permute(2, 3, 1, 0), a dense weight .T), not the one used.",
    "flatten_order": "Reorder the dense layer's input rows to the flatten order B's input has, or "
    "Permute B's tensor to A's layout before its Flatten.",
    "bn_statistics": "Copy running_mean into moving_mean and running_var into moving_variance.",
    "weight_mismatch": "Re-copy these parameters from model A (check the conversion script's mapping of names).",
}


def weight_diagnoses(params: Iterable[ParamDiff]) -> list[Diagnosis]:
    """One :class:`Diagnosis` per layer and cause among the parameters that are not ``ok``:
    ``weight_transpose`` (a kernel transposed or permuted the other way), ``flatten_order``
    (a dense layer's rows in the other flatten order), ``bn_statistics`` (running mean and
    variance swapped) and ``weight_mismatch`` (anything else), on A's layer name."""
    grouped: dict[tuple[str, str], list[ParamDiff]] = {}
    for p in params:
        if p.status == "ok":
            continue
        code = _code(p)
        grouped.setdefault((code, p.a_layer), []).append(p)
    out = []
    for (code, layer), diffs in grouped.items():
        evidence: dict[str, float] = {}
        for p in diffs:
            ev = getattr(p, "_evidence", None) or {"rel_err_as_copied": p.rel_err}
            suffix = "" if len(diffs) == 1 else f"[{p.a_param or p.b_param}]"
            for key, val in ev.items():
                if key != "code" and val is not None:
                    evidence[key + suffix] = float(val)
        names = ", ".join(f"{p.a_param or '—'}/{p.b_param or '—'} ({p.status})" for p in diffs)
        detail = " ".join(p.message.rstrip(".") + "." for p in diffs if p.message)
        if code == "bn_statistics":
            detail = diffs[0].message.rstrip(".") + "."
        message = f"Parameters of {layer!r} differ from model B's {diffs[0].b_layer!r}: {names}. {detail} {_ADVICE[code]}"
        out.append(Diagnosis(code=code, layer=layer, message=message, evidence=evidence))
    return out


def _code(p: ParamDiff) -> str:
    ev: Callable[[], dict] = lambda: getattr(p, "_evidence", None) or {}  # noqa: E731
    if "code" in ev():
        return str(ev()["code"])
    # a ParamDiff read back from JSON: decide from status and wording
    if p.status == "transposed":
        return "flatten_order" if "flatten order" in p.message else "weight_transpose"
    if p.status == "swapped":
        stats = ("mean", "var")
        return "bn_statistics" if any(k in (p.a_param or p.b_param).lower() for k in stats) else "weight_mismatch"
    return "weight_mismatch"
