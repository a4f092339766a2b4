"""TensorFlow graph utilities: tensor and node names, the ``import/`` scope, resolving names, globs
and regexes to tensors, walking a GraphDef in topological order, the ops a layer's tensors come
from, and every tensor's layout.  Shared by :mod:`.tfload` (the graph) and :mod:`.tfgraph` (the
capture); TensorFlow is imported only by the functions that need it."""

from __future__ import annotations

import fnmatch
import heapq
import re
from difflib import get_close_matches
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import MappingError
from ..layout import CHANNELS_LAST

__all__ = [
    "PREFIX", "COPY_OPS", "SOURCE_OPS", "BINARY_OPS", "LINEAR_OPS", "CLAMP_OPS", "import_tf", "strip_prefix",
    "tensor_name", "node_of", "topological", "all_tensor_names", "resolve_tensor_names", "resolve_tensor_name",
    "only_bias_follows", "only_a_clamp_follows", "plain_attr", "parent_scope", "scope_outputs", "shape_of",
    "tensor_layouts", "layout_for",
]

#: the name scope the GraphDef is imported under (stripped from tap names)
PREFIX = "import"

#: ops whose output is a copy of their input: recorded only when selected by name
COPY_OPS = frozenset({"Identity", "IdentityN", "Snapshot", "StopGradient", "PreventGradient", "CheckNumerics"})
#: ops that feed values in: the inputs themselves are not recorded
SOURCE_OPS = frozenset({"Placeholder", "PlaceholderV2", "PlaceholderWithDefault"})


def import_tf():
    import tensorflow as tf

    return tf


def strip_prefix(name: str) -> str:
    """``import/a/b:0`` → ``a/b:0``; ``^a`` (a control input) → ``a``."""
    name = name.lstrip("^")
    return name[len(PREFIX) + 1 :] if name.startswith(PREFIX + "/") else name


def tensor_name(name: str) -> str:
    """A tensor name with its output index: ``a/b`` → ``a/b:0``."""
    return name if re.search(r":\d+$", name) else f"{name}:0"


def node_of(input_name: str) -> str:
    """The node a GraphDef input string refers to: ``^a`` / ``a:1`` / ``a`` → ``a``."""
    return re.sub(r":\d+$", "", input_name.lstrip("^"))


#: element-wise ops that merge two tensors, or apply a constant (a bias, a scale) to one
BINARY_OPS = frozenset({"Add", "AddV2", "BiasAdd", "Sub", "Mul", "RealDiv", "Maximum", "Minimum"})


#: ops that a converter may follow with a separate bias add
LINEAR_OPS = frozenset({"Conv2D", "Conv3D", "DepthwiseConv2dNative", "MatMul", "BatchMatMulV2", "Conv2DBackpropInput"})


def only_bias_follows(op: Any, live: frozenset[str]) -> bool:
    """Whether the only consumer of ``op``'s output adds (or multiplies by) a constant."""
    users = [c for out in op.outputs for c in out.consumers()]
    if len(users) != 1 or users[0].type not in ("Add", "AddV2", "BiasAdd"):
        return False
    return any(node_of(strip_prefix(t.name)) not in live for t in users[0].inputs)


#: ops that clamp a tensor elementwise (with a constant bound: one half of a clip)
CLAMP_OPS = frozenset({"Minimum", "Maximum", "ClipByValue"})


def only_a_clamp_follows(op: Any, live: frozenset[str]) -> bool:
    """Whether the only consumer of ``op``'s output clamps it by a constant: ``op`` computes the
    input of a clip a converter wrote as ``Minimum`` and ``Maximum`` (onnx2tf's hard-sigmoid
    ``max(min(x·α + β, 1), 0)``), a value no model computes on its own."""
    users = [c for out in op.outputs for c in out.consumers()]
    if len(users) != 1 or users[0].type not in CLAMP_OPS:
        return False
    return any(node_of(strip_prefix(t.name)) not in live for t in users[0].inputs)


def topological(nodes: Iterable[Any]) -> list[Any]:
    """GraphDef nodes in a topological order, as close to the file's order as possible.

    Frozen graphs are usually stored in topological order already; then this
    returns them unchanged.  Back edges of ``NextIteration`` (TF1 loops) are
    ignored.
    """
    nodes = list(nodes)
    position = {n.name: i for i, n in enumerate(nodes)}
    deps: list[set[int]] = []
    users: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        d = set()
        for inp in node.input:
            j = position.get(node_of(inp))
            if j is None or j == i or nodes[j].op in ("NextIteration", "RefNextIteration"):
                continue
            d.add(j)
        deps.append(d)
        for j in d:
            users[j].append(i)
    remaining = [len(d) for d in deps]
    ready = [i for i, r in enumerate(remaining) if r == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for k in users[i]:
            remaining[k] -= 1
            if remaining[k] == 0:
                heapq.heappush(ready, k)
    if len(order) < len(nodes):  # a cycle: keep the rest in file order
        placed = set(order)
        order.extend(i for i in range(len(nodes)) if i not in placed)
    return [nodes[i] for i in order]


# --- names --------------------------------------------------------------------------------


def all_tensor_names(graph: Any) -> list[str]:
    """Tensor names (no ``import/``) of a TFGraph, a tf.Graph, a GraphDef or a list of names."""
    if callable(getattr(graph, "tensor_names", None)):  # a TFGraph
        return graph.tensor_names()
    if hasattr(graph, "get_operations"):
        return [strip_prefix(t.name) for op in graph.get_operations() for t in op.outputs]
    if hasattr(graph, "node"):  # a GraphDef: without importing it, each node's first output
        return [f"{n.name}:0" for n in graph.node]
    return [strip_prefix(str(n)) for n in graph]


def _matcher(pattern: str):
    """A predicate on a tensor name for a name, glob or ``re:`` regex (``import/`` optional)."""
    if pattern.startswith("re:"):
        rx = re.compile(pattern[3:])
        prefixed = re.compile(pattern[3:].replace(f"^{PREFIX}/", "^", 1)) if f"{PREFIX}/" in pattern else rx

        def match(name: str) -> bool:
            return bool(rx.search(name) or prefixed.search(name) or rx.search(f"{PREFIX}/{name}"))

        return match
    pat = strip_prefix(pattern)
    if any(c in pat for c in "*?["):
        has_index = bool(re.search(r":(\d+|\*|\?)$", pat))

        def match(name: str) -> bool:
            return fnmatch.fnmatchcase(name, pat) or (not has_index and fnmatch.fnmatchcase(node_of(name), pat))

        return match
    target = tensor_name(pat)
    return lambda name: name == target


def resolve_tensor_names(graph: Any, pattern: str) -> list[str]:
    """Every tensor name of ``graph`` that ``pattern`` selects, in graph order.

    ``pattern`` is a tensor name (``conv1/Relu6:0``; ``:0`` may be left off),
    with or without the ``import/`` prefix, a glob (``*/Relu6:0``; a glob
    without ``:N`` also matches op names), or a regex after ``re:`` (searched
    anywhere in the name).  ``graph`` is a :class:`TFGraph`, a ``tf.Graph``
    or a GraphDef.  Nothing matching raises a :class:`MappingError` with the
    five closest names.
    """
    names = all_tensor_names(graph)
    match = _matcher(pattern)
    found = [n for n in names if match(n)]
    if not found:
        probe = pattern[3:] if pattern.startswith("re:") else tensor_name(strip_prefix(pattern))
        close = get_close_matches(probe, names, n=5, cutoff=0.3)
        if not close:  # globs and regexes are far from any name as strings; try their literal parts
            literal = max(re.split(r"[*?\[\]().^$+\\|{}]+", probe), key=len, default="")
            close = [n for n in names if literal and literal in n][:5]
        hint = f" Closest names: {', '.join(close)}." if close else ""
        where = graph.name if callable(getattr(graph, "tensor_names", None)) else "the graph"
        raise MappingError(
            f"{where} has no tensor matching {pattern!r}.{hint} Name tensors as TensorFlow prints them "
            "('scope/op:0', with or without 'import/'), as a glob ('*/Relu6:0') or as a regex ('re:conv_dw_\\d+')."
        )
    return found


def resolve_tensor_name(graph: Any, name_or_glob: str) -> str:
    """The one tensor name (no ``import/``) that ``name_or_glob`` selects.

    Accepts what :func:`resolve_tensor_names` accepts; a pattern that matches
    several tensors raises a :class:`MappingError` listing them.
    """
    found = resolve_tensor_names(graph, name_or_glob)
    if len(found) > 1:
        shown = ", ".join(found[:10]) + (f", … ({len(found)} in all)" if len(found) > 10 else "")
        raise MappingError(
            f"{name_or_glob!r} matches {len(found)} tensors: {shown}. Narrow the pattern, or use "
            "resolve_tensor_names for all of them."
        )
    return found[0]


def plain_attr(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "s":
        return value.s.decode("utf-8", errors="replace")
    if kind in ("i", "f", "b"):
        return getattr(value, kind)
    if kind == "list":
        lst = value.list
        for field in ("i", "f", "s"):
            items = list(getattr(lst, field))
            if items:
                return tuple(x.decode() if isinstance(x, bytes) else x for x in items)
        return ()
    return None


def parent_scope(node_name: str) -> str:
    return node_name.rsplit("/", 1)[0] if "/" in node_name else ""


def scope_outputs(model: Any, tensors: list[str]) -> list[str]:
    """The tensors of ``tensors`` that leave their op's name scope.

    A tensor is kept when a consumer (seen through Identity copies) lives in
    another name scope, when it is a graph output, or when nothing consumes
    it.  Keras 3's decomposed BatchNorm ``bn/batchnorm/{mul_1, add_1}`` keeps
    ``add_1``; ``conv/convolution`` → ``conv/BiasAdd`` keeps ``BiasAdd``; TF1
    slim graphs (``Conv2d_0/Conv2D``, ``Conv2d_0/BatchNorm/FusedBatchNormV3``,
    ``Conv2d_0/Relu6``) keep all three.
    """
    consumers: dict[str, list[Any]] = {}
    for node in model.graph_def.node:
        for inp in node.input:
            if not inp.startswith("^"):
                consumers.setdefault(tensor_name(inp), []).append(node)
    outputs = set(model.outputs)

    def leaves(tensor: str, owner: str, seen: set[str]) -> bool:
        if tensor in outputs:
            return True
        users = consumers.get(tensor, [])
        if not users:
            return True
        for user in users:
            if user.op in COPY_OPS:
                copy = f"{user.name}:0"
                if copy not in seen and leaves(copy, owner, seen | {copy}):
                    return True
            elif parent_scope(user.name) != owner:
                return True
        return False

    return [t for t in tensors if leaves(t, parent_scope(node_of(t)), {t})]


def shape_of(tensor: Any, values: Mapping[str, np.ndarray]) -> tuple[int | None, ...] | None:
    name = strip_prefix(tensor.name)
    if name in values:
        return tuple(values[name].shape)
    if tensor.shape.rank is None:
        return None
    return tuple(tensor.shape.as_list())


def tensor_layouts(model: Any, values: Mapping[str, np.ndarray]) -> tuple[dict[str, str | None], dict[str, tuple]]:
    """The layout of every tensor of the graph, walked in topological order.

    A tensor takes its op's ``data_format`` when the op has one, else the
    layout of the op's first float input of the same rank (a ``Relu6`` after
    an ``NCHW`` convolution is ``NCHW`` too), else channels-last, TensorFlow's
    default.  ``Transpose`` by a constant permutation permutes the layout; a
    ``Reshape`` of an image to ``(N, features)`` is a flattened layout
    ``N(HWC)`` (``NC`` when only size-1 axes go).
    """
    graph = model.graph
    layouts: dict[str, str | None] = {}
    flat_from: dict[str, tuple] = {}
    for name in model.inputs:
        rank = model.tensor(name).shape.rank
        layouts[name] = CHANNELS_LAST.get(rank) if rank is not None else None
    for node in topological(model.graph_def.node):
        op = graph.get_operation_by_name(f"{PREFIX}/{node.name}")
        for t in op.outputs:
            name = strip_prefix(t.name)
            if name in layouts:
                continue
            shape = shape_of(t, values)
            if shape is None:
                layouts[name] = None
                continue
            layout, extra = layout_for(op, shape, layouts, values, flat_from)
            layouts[name] = layout
            if "flat_from" in extra:
                flat_from[name] = extra["flat_from"]
    return layouts, flat_from


def layout_for(
    op: Any,
    shape: tuple,
    layouts: Mapping[str, str | None],
    values: Mapping[str, np.ndarray],
    flat_from: Mapping[str, tuple],
):
    """One tensor's layout; see :func:`tensor_layouts`."""
    rank = len(shape)
    extra: dict[str, Any] = {}
    fmt = op.node_def.attr["data_format"].s.decode() if "data_format" in op.node_def.attr else ""
    if fmt and len(fmt) == rank and fmt.startswith("N"):
        return (fmt.replace("W", "L") if rank == 3 else fmt), extra
    floats = [t for t in op.inputs if t.dtype.is_floating]
    known = [t for t in floats if layouts.get(strip_prefix(t.name))]
    first = known[0] if known else (floats[0] if floats else None)
    in_layout = layouts.get(strip_prefix(first.name)) if first is not None else None
    in_shape = shape_of(first, values) if first is not None else None
    if op.type == "Transpose" and in_layout and in_shape and len(in_shape) == rank and "(" not in in_layout:
        try:
            from tensorflow.python.framework import tensor_util

            perm = tensor_util.constant_value(op.inputs[1])
            if perm is not None:
                return "".join(in_layout[int(p)] for p in perm), extra
        except Exception:  # noqa: BLE001 - an unknown permutation leaves the layout unknown
            pass
        return None, extra
    if op.type == "Reshape" and in_shape and len(in_shape) > 2 and rank == 2:
        inner = in_shape[1:]
        if sum(1 for d in inner if d != 1) <= 1:
            return "NC", extra  # only size-1 axes dropped: (N, 1, 1, C) -> (N, C)
        if in_layout and "(" not in in_layout and None not in inner:
            extra["flat_from"] = tuple(int(d) for d in inner)
            return f"N({in_layout[1:]})", extra
    if in_layout and "(" in in_layout:
        # a flattened tensor stays flattened through elementwise ops only (not MatMul)
        if in_shape is not None and tuple(in_shape) == tuple(shape) and strip_prefix(first.name) in flat_from:
            extra["flat_from"] = flat_from[strip_prefix(first.name)]
            return in_layout, extra
        return CHANNELS_LAST.get(rank), extra
    if in_layout and in_shape is not None and len(in_shape) == rank:
        return in_layout, extra
    return CHANNELS_LAST.get(rank), extra
