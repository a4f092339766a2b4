"""TensorFlow graph capture: frozen GraphDefs, SavedModels and ``tf.function``\\ s.

The model is a :class:`TFGraph`: one GraphDef with every variable frozen into a
constant, plus the names of its input and output tensors.  It comes from a
frozen ``.pb`` file (the MLPerf-style ``import/MobilenetV1/.../Relu6:0``
workflow), from a SavedModel signature, or from a ``ConcreteFunction``; the
last two are frozen with ``convert_variables_to_constants_v2``.

:class:`TFGraphBackend` imports the GraphDef once into a ``wrap_function``
under the name scope ``import`` and prunes it to a function that feeds the
graph inputs and fetches every recorded tensor, so one run records them all.
Taps are named as TensorFlow prints tensors (``scope/op:0``) without the
``import/`` prefix; :func:`resolve_tensor_name` turns a name with or without
the prefix, a glob (``*/Relu6:0``) or a ``re:`` regex into those names.

Nothing here imports TensorFlow at module level: :meth:`TFGraphBackend.accepts`
answers from ``sys.modules`` and the class of the object.
"""

from __future__ import annotations

import fnmatch
import heapq
import functools
import re
import sys
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import CaptureError, InputError, MappingError, ModelError, closest
from ..layout import CHANNELS_LAST
from ..records import InputSpec, ModelInfo, Tap, Trace
from .base import Backend, Inputs, append_tap

__all__ = ["TFGraph", "TFGraphBackend", "resolve_tensor_name", "resolve_tensor_names"]

#: the name scope the GraphDef is imported under (stripped from tap names)
PREFIX = "import"

#: ops whose output is a copy of their input: recorded only when selected by name
_COPY_OPS = frozenset({"Identity", "IdentityN", "Snapshot", "StopGradient", "PreventGradient", "CheckNumerics"})
#: ops that feed values in: the inputs themselves are not recorded
_SOURCE_OPS = frozenset({"Placeholder", "PlaceholderV2", "PlaceholderWithDefault"})
#: op attributes copied into a tap's attrs
_ATTRS = ("data_format", "strides", "padding", "dilations", "epsilon", "ksize", "explicit_paddings")


def _tf():
    import tensorflow as tf

    return tf


def _strip(name: str) -> str:
    """``import/a/b:0`` → ``a/b:0``; ``^a`` (a control input) → ``a``."""
    name = name.lstrip("^")
    return name[len(PREFIX) + 1 :] if name.startswith(PREFIX + "/") else name


def _tensor_name(name: str) -> str:
    """A tensor name with its output index: ``a/b`` → ``a/b:0``."""
    return name if re.search(r":\d+$", name) else f"{name}:0"


def _node_of(input_name: str) -> str:
    """The node a GraphDef input string refers to: ``^a`` / ``a:1`` / ``a`` → ``a``."""
    return re.sub(r":\d+$", "", input_name.lstrip("^"))


# --- the model --------------------------------------------------------------------------


class TFGraph:
    """A frozen TensorFlow graph: a GraphDef plus its input and output tensor names.

    Build one with :meth:`from_frozen_pb`, :meth:`from_saved_model` or
    :meth:`from_concrete_function`.  Tensor names are as TensorFlow prints
    them (``scope/op:0``), without any ``import/`` prefix.
    """

    def __init__(
        self,
        graph_def: Any,
        inputs: Sequence[str],
        outputs: Sequence[str],
        *,
        name: str,
        kind: str,
        output_keys: Sequence[str] | None = None,
        input_aliases: Mapping[str, str] | None = None,
        source: str | None = None,
    ) -> None:
        self.graph_def = graph_def
        self.inputs: tuple[str, ...] = tuple(_tensor_name(_strip(n)) for n in inputs)
        self.outputs: tuple[str, ...] = tuple(_tensor_name(_strip(n)) for n in outputs)
        self.name = name
        self.kind = kind
        #: one key per output (a signature's output names), or None for positional outputs
        self.output_keys: tuple[str, ...] | None = tuple(output_keys) if output_keys else None
        #: other names an input may be given by (a signature's argument names) → tensor name
        self.input_aliases: dict[str, str] = dict(input_aliases or {})
        self.source = source
        self._wrapped: Any = None
        self._check_names()

    def __repr__(self) -> str:
        return (
            f"TFGraph({self.name!r}, {self.kind}, {len(self.graph_def.node)} nodes, "
            f"inputs={list(self.inputs)}, outputs={list(self.outputs)})"
        )

    # --- constructors ---------------------------------------------------------------

    @classmethod
    def from_frozen_pb(
        cls, path: str | Path, *, inputs: Sequence[str] | None = None, outputs: Sequence[str] | None = None
    ) -> "TFGraph":
        """A frozen GraphDef from a binary ``.pb`` (or text ``.pbtxt``) file.

        A frozen graph does not record which tensors are its inputs and
        outputs: by default the inputs are its ``Placeholder`` ops and the
        outputs are the tensors of the last ops nothing else consumes.  Name
        them with ``inputs=`` / ``outputs=`` (``"input:0"``, with or without
        ``import/``) when that guess is wrong.
        """
        path = Path(path)
        if path.is_dir():
            hint = (
                " It holds saved_model.pb: load it with TFGraph.from_saved_model(path)."
                if (path / "saved_model.pb").exists()
                else ""
            )
            raise ModelError(f"{str(path)!r} is a directory, not a frozen GraphDef file.{hint}")
        if not path.exists():
            raise ModelError(
                f"frozen graph file {str(path)!r} does not exist. Give the path to a frozen GraphDef "
                "(.pb), e.g. one written by tf.io.write_graph(graph_def, dir, 'frozen.pb', as_text=False)."
            )
        tf = _tf()
        graph_def = tf.compat.v1.GraphDef()
        data = path.read_bytes()
        error: Exception | None = None
        try:
            graph_def.ParseFromString(data)
        except Exception as exc:  # google.protobuf.message.DecodeError and friends
            error = exc
        if (error is not None or not graph_def.node) and path.suffix.lower() in (".pbtxt", ".txt"):
            from google.protobuf import text_format

            graph_def = tf.compat.v1.GraphDef()
            try:
                text_format.Parse(data.decode("utf-8", errors="replace"), graph_def)
                error = None
            except Exception as exc:
                error = exc
        if error is not None or not graph_def.node or not all(n.op for n in graph_def.node):
            what = f"{type(error).__name__}: {error}" if error is not None else "it holds no graph nodes"
            hint = (
                " This is a SavedModel's saved_model.pb: load its directory with TFGraph.from_saved_model."
                if path.name == "saved_model.pb"
                else ""
            )
            raise ModelError(
                f"{str(path)!r} is not a frozen TensorFlow GraphDef ({what}).{hint} Expected a binary "
                "GraphDef protobuf with every variable frozen into a constant (convert_variables_to_constants_v2, "
                "then tf.io.write_graph(..., as_text=False))."
            )
        variables = [n.name for n in graph_def.node if n.op in ("VariableV2", "VarHandleOp", "Variable")]
        if variables:
            raise ModelError(
                f"{str(path)!r} is a GraphDef whose variables are not frozen ({', '.join(variables[:3])}"
                f"{', …' if len(variables) > 3 else ''}): it cannot run without a checkpoint. Freeze it first "
                "(convert_variables_to_constants_v2 for a tf.function, freeze_graph for TF1), or load the "
                "SavedModel with TFGraph.from_saved_model."
            )
        ins = list(inputs) if inputs else [n.name for n in graph_def.node if n.op in ("Placeholder", "PlaceholderV2")]
        outs = list(outputs) if outputs else _guess_outputs(graph_def)
        return cls(graph_def, ins, outs, name=path.name, kind="frozen GraphDef", source=str(path))

    @classmethod
    def from_saved_model(cls, path: str | Path, signature: str = "serving_default") -> "TFGraph":
        """The signature ``signature`` of the SavedModel in directory ``path``, frozen."""
        path = Path(path)
        if path.is_file() and path.name == "saved_model.pb":
            path = path.parent
        if not path.exists():
            raise ModelError(
                f"SavedModel directory {str(path)!r} does not exist. Give the directory that holds "
                "saved_model.pb (written by tf.saved_model.save or keras model.export)."
            )
        if not (path / "saved_model.pb").exists() and not (path / "saved_model.pbtxt").exists():
            hint = " For a frozen .pb file use TFGraph.from_frozen_pb." if path.is_file() else ""
            raise ModelError(
                f"{str(path)!r} is not a SavedModel directory: it holds no saved_model.pb.{hint} Give the "
                "directory written by tf.saved_model.save(obj, dir) or keras model.export(dir)."
            )
        tf = _tf()
        try:
            loaded = tf.saved_model.load(str(path))
        except Exception as exc:
            raise ModelError(
                f"TensorFlow cannot load the SavedModel at {str(path)!r}: {type(exc).__name__}: "
                f"{str(exc).strip()[:400]}"
            ) from exc
        signatures = dict(getattr(loaded, "signatures", {}) or {})
        if signature not in signatures:
            available = ", ".join(repr(s) for s in signatures) or "none"
            raise ModelError(
                f"the SavedModel at {str(path)!r} has no signature {signature!r}; it has: {available}. "
                + (
                    "Pass one of them as signature=."
                    if signatures
                    else "Export it with a signature (keras model.export(dir), or tf.saved_model.save(obj, dir, "
                    "signatures=tf.function(...).get_concrete_function(spec)))."
                )
            )
        graph = cls.from_concrete_function(signatures[signature])
        graph.name = path.name
        graph.kind = f"SavedModel ({signature})"
        graph.source = str(path)
        graph._loaded = loaded  # the variables the signature captured stay alive with the graph
        return graph

    @classmethod
    def from_concrete_function(cls, function: Any) -> "TFGraph":
        """A ``ConcreteFunction`` (or a ``tf.function`` with an ``input_signature``), frozen."""
        tf = _tf()
        from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

        cf = function
        if not hasattr(cf, "graph") or not hasattr(cf, "structured_outputs"):
            if hasattr(cf, "get_concrete_function"):
                try:
                    cf = cf.get_concrete_function()
                except Exception as exc:
                    raise ModelError(
                        f"cannot get a concrete function from {function!r}: {type(exc).__name__}: "
                        f"{str(exc).strip()[:300]}. Pass f.get_concrete_function(tf.TensorSpec(shape, dtype)) "
                        "or give the tf.function an input_signature."
                    ) from exc
            else:
                raise ModelError(
                    f"expected a tf ConcreteFunction or a tf.function with an input_signature, got "
                    f"{type(function).__module__}.{type(function).__qualname__}."
                )
        try:
            frozen = convert_variables_to_constants_v2(cf)
        except Exception as exc:
            raise ModelError(
                f"cannot freeze {getattr(cf, 'name', cf)!r} into a GraphDef: {type(exc).__name__}: "
                f"{str(exc).strip()[:400]}"
            ) from exc
        graph_def = frozen.graph.as_graph_def()
        inputs = [t.name for t in frozen.inputs if t.dtype != tf.resource]
        outputs = [t.name for t in frozen.outputs]
        keys: list[str] | None = None
        structured = getattr(cf, "structured_outputs", None)
        if isinstance(structured, Mapping) or (isinstance(structured, (list, tuple)) and len(structured) > 1):
            paths = [p for p, _ in _paths(structured)]
            if len(paths) == len(outputs):
                keys = paths
        aliases: dict[str, str] = {}
        try:
            args, kwargs = cf.structured_input_signature
            specs = [s for s in tf.nest.flatten((args, kwargs)) if isinstance(s, tf.TensorSpec)]
            arg_names = [p for p, s in _paths((args, kwargs)) if isinstance(s, tf.TensorSpec)]
            if len(specs) == len(inputs):
                for spec, path_name, tensor in zip(specs, arg_names, inputs):
                    for alias in (spec.name, path_name.split("/")[-1]):
                        if alias and alias not in aliases:
                            aliases[alias] = tensor
        except Exception:  # noqa: BLE001 - aliases are a convenience only
            pass
        name = _function_name(cf)
        return cls(graph_def, inputs, outputs, name=name, kind="tf.function", output_keys=keys, input_aliases=aliases)

    # --- the imported graph -------------------------------------------------------

    def _check_names(self) -> None:
        nodes = {n.name: n for n in self.graph_def.node}
        for what, names in (("input", self.inputs), ("output", self.outputs)):
            for tensor in names:
                if _node_of(tensor) not in nodes:
                    hint = closest(_node_of(tensor), nodes, label="Closest nodes")
                    raise ModelError(
                        f"the graph {self.name!r} has no {what} tensor {tensor!r} (no node "
                        f"{_node_of(tensor)!r}).{hint} Name {what}s as 'op_name:0', with or without 'import/'."
                    )

    @property
    def wrapped(self) -> Any:
        """The GraphDef imported under ``import/`` into a ``tf.compat.v1.wrap_function`` (made once)."""
        if self._wrapped is None:
            tf = _tf()
            graph_def = self.graph_def

            def _import() -> None:
                tf.compat.v1.import_graph_def(graph_def, name=PREFIX)

            try:
                self._wrapped = tf.compat.v1.wrap_function(_import, [])
            except Exception as exc:
                raise ModelError(
                    f"TensorFlow cannot import the GraphDef of {self.name!r}: {type(exc).__name__}: "
                    f"{str(exc).strip()[:500]}"
                ) from exc
        return self._wrapped

    @property
    def graph(self) -> Any:
        """The ``tf.Graph`` the GraphDef was imported into (op names start with ``import/``)."""
        return self.wrapped.graph

    def tensor(self, name: str) -> Any:
        """The imported ``tf.Tensor`` of ``name`` (with or without ``import/``)."""
        return self.graph.get_tensor_by_name(f"{PREFIX}/{_tensor_name(_strip(name))}")

    @functools.cached_property
    def live_nodes(self) -> frozenset[str]:
        """The nodes that depend on a graph input (the rest are weights and constants)."""
        live = {_node_of(n) for n in self.inputs}
        for node in _topological(self.graph_def.node):
            if node.name not in live and any(_node_of(i) in live for i in node.input if not i.startswith("^")):
                live.add(node.name)
        return frozenset(live)

    def tensor_names(self) -> list[str]:
        """Every tensor of the graph, in topological order, without the ``import/`` prefix."""
        graph = self.graph
        out = []
        for node in _topological(self.graph_def.node):
            op = graph.get_operation_by_name(f"{PREFIX}/{node.name}")
            out.extend(_strip(t.name) for t in op.outputs)
        return out

    def param_count(self) -> int:
        """Elements of the float constants (the frozen weights)."""
        float_types = {1, 2, 14, 19}  # DT_FLOAT, DT_DOUBLE, DT_BFLOAT16, DT_HALF
        total = 0
        for node in self.graph_def.node:
            if node.op != "Const":
                continue
            tensor = node.attr["value"].tensor
            if tensor.dtype in float_types:
                total += int(np.prod([d.size for d in tensor.tensor_shape.dim], dtype=np.int64))
        return total


def _paths(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(path, leaf)`` pairs in ``tf.nest`` order (dict keys sorted), paths joined by ``/``."""
    if isinstance(obj, Mapping):
        items = [(str(k), obj[k]) for k in sorted(obj, key=str)]
    elif isinstance(obj, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(obj)]
    else:
        return [(prefix, obj)]
    out: list[tuple[str, Any]] = []
    for key, value in items:
        out.extend(_paths(value, f"{prefix}/{key}" if prefix else key))
    return out


def _function_name(cf: Any) -> str:
    name = getattr(cf, "name", None) or getattr(getattr(cf, "graph", None), "name", None) or "tf.function"
    if isinstance(name, bytes):
        name = name.decode()
    name = re.sub(r"^__inference_", "", str(name))
    name = re.sub(r"_\d+$", "", name)
    return name or "tf.function"


def _guess_outputs(graph_def: Any) -> list[str]:
    """Tensors of the ops nothing else consumes (NoOps, constants and asserts aside)."""
    consumed: set[str] = set()
    for node in graph_def.node:
        for inp in node.input:
            if not inp.startswith("^"):
                consumed.add(_node_of(inp))
    skip = {"NoOp", "Const", "Assert", "SaveV2", "RestoreV2", "Placeholder", "PlaceholderWithDefault"}
    outs = [f"{n.name}:0" for n in graph_def.node if n.name not in consumed and n.op not in skip]
    if not outs:
        raise ModelError(
            "cannot tell the outputs of this frozen graph: every op's result is consumed by another. "
            "Name them with TFGraph.from_frozen_pb(path, outputs=['scope/op:0'])."
        )
    return outs


#: element-wise ops that merge two tensors, or apply a constant (a bias, a scale) to one
_BINARY_OPS = frozenset({"Add", "AddV2", "BiasAdd", "Sub", "Mul", "RealDiv", "Maximum", "Minimum"})


#: ops that a converter may follow with a separate bias add
_LINEAR_OPS = frozenset({"Conv2D", "Conv3D", "DepthwiseConv2dNative", "MatMul", "BatchMatMulV2", "Conv2DBackpropInput"})


def _only_bias_follows(op: Any, live: frozenset[str]) -> bool:
    """Whether the only consumer of ``op``'s output adds (or multiplies by) a constant."""
    users = [c for out in op.outputs for c in out.consumers()]
    if len(users) != 1 or users[0].type not in ("Add", "AddV2", "BiasAdd"):
        return False
    return any(_node_of(_strip(t.name)) not in live for t in users[0].inputs)


#: ops that clamp a tensor elementwise (with a constant bound: one half of a clip)
_CLAMP_OPS = frozenset({"Minimum", "Maximum", "ClipByValue"})


def _only_a_clamp_follows(op: Any, live: frozenset[str]) -> bool:
    """Whether the only consumer of ``op``'s output clamps it by a constant: ``op`` computes the
    input of a clip a converter wrote as ``Minimum`` and ``Maximum`` (onnx2tf's hard-sigmoid
    ``max(min(x·α + β, 1), 0)``), a value no model computes on its own."""
    users = [c for out in op.outputs for c in out.consumers()]
    if len(users) != 1 or users[0].type not in _CLAMP_OPS:
        return False
    return any(_node_of(_strip(t.name)) not in live for t in users[0].inputs)


def _topological(nodes: Iterable[Any]) -> list[Any]:
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
            j = position.get(_node_of(inp))
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


def _all_tensor_names(graph: Any) -> list[str]:
    """Tensor names (no ``import/``) of a TFGraph, a tf.Graph, a GraphDef or a list of names."""
    if isinstance(graph, TFGraph):
        return graph.tensor_names()
    if hasattr(graph, "get_operations"):
        return [_strip(t.name) for op in graph.get_operations() for t in op.outputs]
    if hasattr(graph, "node"):  # a GraphDef: without importing it, each node's first output
        return [f"{n.name}:0" for n in graph.node]
    return [_strip(str(n)) for n in graph]


def _matcher(pattern: str):
    """A predicate on a tensor name for a name, glob or ``re:`` regex (``import/`` optional)."""
    if pattern.startswith("re:"):
        rx = re.compile(pattern[3:])
        prefixed = re.compile(pattern[3:].replace(f"^{PREFIX}/", "^", 1)) if f"{PREFIX}/" in pattern else rx

        def match(name: str) -> bool:
            return bool(rx.search(name) or prefixed.search(name) or rx.search(f"{PREFIX}/{name}"))

        return match
    pat = _strip(pattern)
    if any(c in pat for c in "*?["):
        has_index = bool(re.search(r":(\d+|\*|\?)$", pat))

        def match(name: str) -> bool:
            return fnmatch.fnmatchcase(name, pat) or (not has_index and fnmatch.fnmatchcase(_node_of(name), pat))

        return match
    target = _tensor_name(pat)
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
    names = _all_tensor_names(graph)
    match = _matcher(pattern)
    found = [n for n in names if match(n)]
    if not found:
        probe = pattern[3:] if pattern.startswith("re:") else _tensor_name(_strip(pattern))
        close = get_close_matches(probe, names, n=5, cutoff=0.3)
        if not close:  # globs and regexes are far from any name as strings; try their literal parts
            literal = max(re.split(r"[*?\[\]().^$+\\|{}]+", probe), key=len, default="")
            close = [n for n in names if literal and literal in n][:5]
        hint = f" Closest names: {', '.join(close)}." if close else ""
        where = graph.name if isinstance(graph, TFGraph) else "the graph"
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


# --- the backend ------------------------------------------------------------------------------


def _plain_attr(value: Any) -> Any:
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


class TFGraphBackend(Backend):
    """Runs a :class:`TFGraph` once, recording the selected tensors.

    Options: ``select`` — a list of names, globs or ``re:`` regexes (see
    :func:`resolve_tensor_names`) of the tensors to record.  Without it every
    float tensor computed from the inputs is recorded, except the inputs
    themselves and copies (``Identity``); tensors computed from constants only
    (frozen weights, ``Identity`` of a ``Const``, the constant half of a
    decomposed BatchNorm) are never recorded unless selected.
    ``granularity="modules"`` keeps of those only the tensors that leave their
    name scope (one per Keras layer: BatchNorm's ``add_1``, not its
    ``mul_1``); the default ``"ops"`` keeps them all.

    ``run_count`` counts graph runs and ``last_fetches`` holds the tensor
    names fetched by the last one: a capture is one run fetching every tap.
    """

    framework = "tf-graph"

    def __init__(self, model: Any, **options: Any) -> None:
        if not isinstance(model, TFGraph):
            model = TFGraph.from_concrete_function(model)
        select = options.get("select")
        if isinstance(select, str):
            select = [select]
        self.select: list[str] | None = list(select) if select is not None else None
        granularity = options.get("granularity") or "ops"
        if granularity not in ("ops", "modules"):
            raise CaptureError(
                f"granularity must be 'ops' (every float tensor computed from the inputs) or 'modules' "
                f"(the last tensor of each name scope), got {granularity!r}."
            )
        self.granularity: str = granularity
        super().__init__(model, **options)
        self.run_count = 0
        self.last_fetches: tuple[str, ...] = ()
        self._pruned: dict[tuple[str, ...], Any] = {}

    @classmethod
    def accepts(cls, obj: Any) -> bool:
        if isinstance(obj, TFGraph):
            return True
        if "tensorflow" not in sys.modules:
            return False
        try:
            from tensorflow.python.eager.polymorphic_function.concrete_function import ConcreteFunction
        except ImportError:  # pragma: no cover - older TensorFlow
            return False
        return isinstance(obj, ConcreteFunction)

    @property
    def default_layout(self) -> str | None:
        return "NHWC"

    # --- what the model is ----------------------------------------------------------

    def info(self) -> ModelInfo:
        tf = _tf()
        return ModelInfo(
            framework=self.framework,
            framework_version=tf.__version__,
            name=self.model.name,
            kind=self.model.kind,
            param_count=self.model.param_count(),
            input_spec=self.input_spec(),
        )

    def input_spec(self) -> tuple[InputSpec, ...] | None:
        specs = []
        for name in self.model.inputs:
            t = self.model.tensor(name)
            if t.shape.rank is None:
                return None
            shape = tuple(None if d is None else int(d) for d in t.shape.as_list())
            specs.append(
                InputSpec(
                    name=_node_of(name),
                    shape=shape,
                    dtype=t.dtype.name,
                    layout=CHANNELS_LAST.get(len(shape)),
                )
            )
        return tuple(specs)

    # --- which tensors ------------------------------------------------------------------

    def recorded_tensors(self) -> list[str]:
        """The tensor names a capture records (before the outputs), in topological order."""
        graph = self.model.graph
        nodes = _topological(self.model.graph_def.node)
        if self.select is not None:
            chosen: set[str] = set()
            for pattern in self.select:
                chosen.update(resolve_tensor_names(self.model, pattern))
            return [n for n in self.model.tensor_names() if n in chosen]
        live = self.model.live_nodes
        out: list[str] = []
        for node in nodes:
            if node.name not in live:
                continue  # constant-derived (weights) or a source
            if node.op in _SOURCE_OPS or node.op in _COPY_OPS:
                continue
            op = graph.get_operation_by_name(f"{PREFIX}/{node.name}")
            out.extend(_strip(t.name) for t in op.outputs if t.dtype.is_floating)
        if self.granularity == "modules":
            out = _scope_outputs(self.model, out)
        return out

    # --- running ------------------------------------------------------------------------

    def _arrays(self, inputs: Inputs) -> list[np.ndarray]:
        """The inputs in the graph's input order, checked against the placeholders."""
        names = self.model.inputs
        spec = self.input_spec() or ()

        def expected() -> str:
            return ", ".join(f"{s.name}: {tuple(s.shape)} {s.dtype} ({s.layout or 'no layout'})" for s in spec) or (
                ", ".join(names)
            )

        if isinstance(inputs, np.ndarray) or not isinstance(inputs, (Mapping, Sequence)):
            inputs = [inputs]  # type: ignore[list-item]
        if isinstance(inputs, Mapping):
            by_tensor: dict[str, Any] = {}
            for key, value in inputs.items():
                key = str(key)
                tensor = self.model.input_aliases.get(key) or _tensor_name(_strip(key))
                if tensor not in names:
                    raise InputError(
                        f"{self.model.name!r} has no input named {key!r}; it expects {expected()}. Give the "
                        "inputs by these names or positionally, in the graph's layout."
                    )
                by_tensor[tensor] = value
            missing = [n for n in names if n not in by_tensor]
            if missing:
                raise InputError(
                    f"no value given for input(s) {', '.join(_node_of(m) for m in missing)} of {self.model.name!r}; "
                    f"it expects {expected()}."
                )
            arrays = [by_tensor[n] for n in names]
        else:
            arrays = list(inputs)
            if len(arrays) != len(names):
                raise InputError(
                    f"{self.model.name!r} takes {len(names)} input(s) but {len(arrays)} were given; it expects "
                    f"{expected()}."
                )
        out = []
        for s, name, value in zip(spec or [None] * len(names), names, arrays):
            arr = np.asarray(value)
            if s is not None:
                if len(arr.shape) != len(s.shape) or any(d is not None and d != a for d, a in zip(s.shape, arr.shape)):
                    raise InputError(
                        f"input {s.name!r} of {self.model.name!r} got shape {tuple(arr.shape)}; it expects "
                        f"{expected()} (None = any size). Inputs go in the graph's own layout (NHWC for images)."
                    )
                want = np.dtype(s.dtype) if s.dtype != "bfloat16" else arr.dtype
                if arr.dtype != want:
                    if arr.dtype.kind != want.kind and not (arr.dtype.kind in "iu" and want.kind in "iu"):
                        raise InputError(
                            f"input {s.name!r} of {self.model.name!r} got dtype {arr.dtype}; it expects {expected()}."
                        )
                    arr = arr.astype(want)
            out.append(arr)
        return out

    def _run(self, arrays: Sequence[np.ndarray], fetches: Sequence[str]) -> list[np.ndarray]:
        """One run of the graph: feed ``arrays``, fetch every tensor of ``fetches`` together."""
        tf = _tf()
        key = tuple(fetches)
        pruned = self._pruned.get(key)
        if pruned is None:
            wrapped = self.model.wrapped
            feeds = [self.model.tensor(n) for n in self.model.inputs]
            targets = [self.model.tensor(n) for n in fetches]
            pruned = wrapped.prune(feeds, targets)
            self._pruned = {key: pruned}  # keep only the latest selection
        self.run_count += 1
        self.last_fetches = key
        values = pruned(*[tf.constant(a) for a in arrays])
        return [np.array(v.numpy(), copy=True) for v in values]

    def capture(self, inputs: Inputs, *, containers: bool = False) -> Trace:
        arrays = self._arrays(inputs)
        recorded = self.recorded_tensors()
        fetches = list(dict.fromkeys([*recorded, *self.model.outputs]))
        try:
            values = dict(zip(fetches, self._run(arrays, fetches)))
        except Exception as exc:
            if isinstance(exc, (InputError, MappingError, ModelError)):
                raise
            shapes = ", ".join(str(tuple(a.shape)) for a in arrays)
            spec = self.input_spec() or ()
            expected = ", ".join(f"{s.name}: {tuple(s.shape)} ({s.layout})" for s in spec)
            raise CaptureError(
                f"running TensorFlow graph {self.model.name!r} on inputs of shape {shapes} failed: "
                f"{type(exc).__name__}: {str(exc).strip()[:600]}. It expects {expected}. Inputs are given in "
                "model A's layout and converted for model B; check their shape and layout."
            ) from exc

        graph = self.model.graph
        layouts, flat_from = _layouts(self.model, values)
        taps: list[Tap] = []

        def layout_of(name: str, value: np.ndarray) -> tuple[str | None, dict[str, Any]]:
            extra = {"flat_from": flat_from[name]} if name in flat_from else {}
            return layouts.get(name, CHANNELS_LAST.get(value.ndim)), extra

        live = self.model.live_nodes
        for name in recorded:
            value = values[name]
            op = graph.get_operation_by_name(f"{PREFIX}/{_node_of(name)}")
            layout, extra = layout_of(name, value)
            attrs: dict[str, Any] = {"tensor": name, "scope": _parent(_node_of(name))}
            if op.type in _BINARY_OPS and any(_node_of(_strip(t.name)) not in live for t in op.inputs):
                # x + bias, x * scale: an affine step of one layer, not a merge of two branches
                attrs["constant_operand"] = True
            if op.type in _LINEAR_OPS and _only_bias_follows(op, live):
                # a layer split in two (onnx2tf's tf.nn.convolution + tf.math.add, a BiasAdd):
                # this is the layer's output before its bias, no model computes it on its own
                attrs["partial"] = True
            elif _only_a_clamp_follows(op, live):
                # the input of a clip written as Minimum/Maximum by a constant (or its first half):
                # only the clip's result is a layer's output; its input may agree with that result
                # wherever nothing is clipped, and would be paired with it by value
                attrs["partial"] = True
            for key in _ATTRS:
                if key in op.node_def.attr:
                    plain = _plain_attr(op.node_def.attr[key])
                    if plain not in (None, ()):
                        attrs[key] = plain
            append_tap(taps, name, op.type, value, layout, attrs={**attrs, **extra})
        outputs = self.model.outputs
        keys = self.model.output_keys
        for i, name in enumerate(outputs):
            value = values[name].copy()
            if len(outputs) == 1:
                tap_name = "output"
            else:
                tap_name = f"output[{keys[i] if keys else i}]"
            layout, _ = layout_of(name, value)
            append_tap(taps, tap_name, "output", value, layout, role="output", attrs={"tensor": name})
        notes: list[str] = []
        if self.select is None:
            notes.append(
                f"TensorFlow graph {self.model.name!r}: recorded {len(recorded)} float tensors computed from the "
                "inputs (constants, weights and Identity copies left out); choose others with select=[...]."
            )
        return self._trace(taps, arrays, notes)


def _parent(node_name: str) -> str:
    return node_name.rsplit("/", 1)[0] if "/" in node_name else ""


def _scope_outputs(model: TFGraph, tensors: list[str]) -> list[str]:
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
                consumers.setdefault(_tensor_name(inp), []).append(node)
    outputs = set(model.outputs)

    def leaves(tensor: str, owner: str, seen: set[str]) -> bool:
        if tensor in outputs:
            return True
        users = consumers.get(tensor, [])
        if not users:
            return True
        for user in users:
            if user.op in _COPY_OPS:
                copy = f"{user.name}:0"
                if copy not in seen and leaves(copy, owner, seen | {copy}):
                    return True
            elif _parent(user.name) != owner:
                return True
        return False

    return [t for t in tensors if leaves(t, _parent(_node_of(t)), {t})]


def _shape_of(tensor: Any, values: Mapping[str, np.ndarray]) -> tuple[int | None, ...] | None:
    name = _strip(tensor.name)
    if name in values:
        return tuple(values[name].shape)
    if tensor.shape.rank is None:
        return None
    return tuple(tensor.shape.as_list())


def _layouts(model: TFGraph, values: Mapping[str, np.ndarray]) -> tuple[dict[str, str | None], dict[str, tuple]]:
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
    for node in _topological(model.graph_def.node):
        op = graph.get_operation_by_name(f"{PREFIX}/{node.name}")
        for t in op.outputs:
            name = _strip(t.name)
            if name in layouts:
                continue
            shape = _shape_of(t, values)
            if shape is None:
                layouts[name] = None
                continue
            layout, extra = _layout_for(op, shape, layouts, values, flat_from)
            layouts[name] = layout
            if "flat_from" in extra:
                flat_from[name] = extra["flat_from"]
    return layouts, flat_from


def _layout_for(
    op: Any,
    shape: tuple,
    layouts: Mapping[str, str | None],
    values: Mapping[str, np.ndarray],
    flat_from: Mapping[str, tuple],
):
    """One tensor's layout; see :func:`_layouts`."""
    rank = len(shape)
    extra: dict[str, Any] = {}
    fmt = op.node_def.attr["data_format"].s.decode() if "data_format" in op.node_def.attr else ""
    if fmt and len(fmt) == rank and fmt.startswith("N"):
        return (fmt.replace("W", "L") if rank == 3 else fmt), extra
    floats = [t for t in op.inputs if t.dtype.is_floating]
    known = [t for t in floats if layouts.get(_strip(t.name))]
    first = known[0] if known else (floats[0] if floats else None)
    in_layout = layouts.get(_strip(first.name)) if first is not None else None
    in_shape = _shape_of(first, values) if first is not None else None
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
        if in_shape is not None and tuple(in_shape) == tuple(shape) and _strip(first.name) in flat_from:
            extra["flat_from"] = flat_from[_strip(first.name)]
            return in_layout, extra
        return CHANNELS_LAST.get(rank), extra
    if in_layout and in_shape is not None and len(in_shape) == rank:
        return in_layout, extra
    return CHANNELS_LAST.get(rank), extra
