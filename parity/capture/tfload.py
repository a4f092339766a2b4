"""Reading TensorFlow graphs: a frozen GraphDef (``.pb``/``.pbtxt``), a SavedModel signature or a
``ConcreteFunction``, frozen into one :class:`TFGraph` with the names of its input and output
tensors.  TensorFlow is imported when a graph is read."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ModelError, closest
from .tfnames import PREFIX, import_tf, node_of, strip_prefix, tensor_name, topological

__all__ = ["TFGraph"]


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
        self.inputs: tuple[str, ...] = tuple(tensor_name(strip_prefix(n)) for n in inputs)
        self.outputs: tuple[str, ...] = tuple(tensor_name(strip_prefix(n)) for n in outputs)
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
        tf = import_tf()
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
        tf = import_tf()
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
        tf = import_tf()
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
                if node_of(tensor) not in nodes:
                    hint = closest(node_of(tensor), nodes, label="Closest nodes")
                    raise ModelError(
                        f"the graph {self.name!r} has no {what} tensor {tensor!r} (no node "
                        f"{node_of(tensor)!r}).{hint} Name {what}s as 'op_name:0', with or without 'import/'."
                    )

    @property
    def wrapped(self) -> Any:
        """The GraphDef imported under ``import/`` into a ``tf.compat.v1.wrap_function`` (made once)."""
        if self._wrapped is None:
            tf = import_tf()
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
        return self.graph.get_tensor_by_name(f"{PREFIX}/{tensor_name(strip_prefix(name))}")

    @functools.cached_property
    def live_nodes(self) -> frozenset[str]:
        """The nodes that depend on a graph input (the rest are weights and constants)."""
        live = {node_of(n) for n in self.inputs}
        for node in topological(self.graph_def.node):
            if node.name not in live and any(node_of(i) in live for i in node.input if not i.startswith("^")):
                live.add(node.name)
        return frozenset(live)

    def tensor_names(self) -> list[str]:
        """Every tensor of the graph, in topological order, without the ``import/`` prefix."""
        graph = self.graph
        out = []
        for node in topological(self.graph_def.node):
            op = graph.get_operation_by_name(f"{PREFIX}/{node.name}")
            out.extend(strip_prefix(t.name) for t in op.outputs)
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
                consumed.add(node_of(inp))
    skip = {"NoOp", "Const", "Assert", "SaveV2", "RestoreV2", "Placeholder", "PlaceholderWithDefault"}
    outs = [f"{n.name}:0" for n in graph_def.node if n.name not in consumed and n.op not in skip]
    if not outs:
        raise ModelError(
            "cannot tell the outputs of this frozen graph: every op's result is consumed by another. "
            "Name them with TFGraph.from_frozen_pb(path, outputs=['scope/op:0'])."
        )
    return outs
