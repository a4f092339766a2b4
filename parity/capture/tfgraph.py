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

This module is the capture; reading the graph (:class:`TFGraph`) is :mod:`.tfload`, the
graph utilities (names, resolving, topological order, layouts) are :mod:`.tfnames`.  Every
public name of the three is importable from here.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import CaptureError, InputError, MappingError, ModelError
from ..layout import CHANNELS_LAST
from ..records import InputSpec, ModelInfo, Tap, Trace
from .base import Backend, Inputs, append_tap
from .tfload import TFGraph
from .tfnames import (
    BINARY_OPS,
    COPY_OPS,
    LINEAR_OPS,
    PREFIX,
    SOURCE_OPS,
    import_tf,
    node_of,
    only_a_clamp_follows,
    only_bias_follows,
    parent_scope,
    plain_attr,
    resolve_tensor_name,
    resolve_tensor_names,
    scope_outputs,
    strip_prefix,
    tensor_layouts,
    tensor_name,
    topological,
)

__all__ = ["TFGraph", "TFGraphBackend", "resolve_tensor_name", "resolve_tensor_names", "PREFIX"]

#: op attributes copied into a tap's attrs
_ATTRS = ("data_format", "strides", "padding", "dilations", "epsilon", "ksize", "explicit_paddings")


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
    #: ``"/"``: a directory (a SavedModel)
    suffixes = (".pb", ".pbtxt", "/")
    #: what :meth:`load` reads, as a user is told it
    formats = ".pb (frozen GraphDef), a SavedModel directory"

    @classmethod
    def load(cls, path: Any, *, keras: bool = False, **options: Any) -> Any:
        """A frozen GraphDef (options ``inputs``, ``outputs``) or a SavedModel directory (option
        ``signature``) as a :class:`TFGraph`; with ``keras=True`` a directory is the live
        ``tf_keras`` model that Keras 2's ``model.save(dir)`` wrote."""
        path = Path(path)
        if path.is_dir():
            if keras:
                from .kerasload import load_keras2_saved_model

                return load_keras2_saved_model(path, **options)
            if (path / "saved_model.pb").exists():
                return TFGraph.from_saved_model(path, **options)
            raise ModelError(
                f"{str(path)!r} is a directory without saved_model.pb: parity loads a directory only as a "
                "TensorFlow SavedModel. Give the model file itself."
            )
        if path.name == "saved_model.pb":
            return TFGraph.from_saved_model(path.parent, **options)
        return TFGraph.from_frozen_pb(path, **options)

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
        tf = import_tf()
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
                    name=node_of(name),
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
        nodes = topological(self.model.graph_def.node)
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
            if node.op in SOURCE_OPS or node.op in COPY_OPS:
                continue
            op = graph.get_operation_by_name(f"{PREFIX}/{node.name}")
            out.extend(strip_prefix(t.name) for t in op.outputs if t.dtype.is_floating)
        if self.granularity == "modules":
            out = scope_outputs(self.model, out)
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
                tensor = self.model.input_aliases.get(key) or tensor_name(strip_prefix(key))
                if tensor not in names:
                    raise InputError(
                        f"{self.model.name!r} has no input named {key!r}; it expects {expected()}. Give the "
                        "inputs by these names or positionally, in the graph's layout."
                    )
                by_tensor[tensor] = value
            missing = [n for n in names if n not in by_tensor]
            if missing:
                raise InputError(
                    f"no value given for input(s) {', '.join(node_of(m) for m in missing)} of {self.model.name!r}; "
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
        tf = import_tf()
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

    # --- a piece of the graph, run alone --------------------------------------------

    runs_pieces = True

    def call_from(self, name: str, source: str, x: np.ndarray) -> np.ndarray:
        """Tensor ``name`` computed from tensor ``source`` fed ``x``: the graph pruned to what lies
        between them (a GraphDef takes any tensor as a feed); :class:`NotImplementedError` where
        the piece needs a graph input besides ``source``."""
        tf = import_tf()
        key = (name, source)
        pieces = self.__dict__.setdefault("_pieces", {})
        piece = pieces.get(key)
        if piece is None:
            try:
                piece = self.model.wrapped.prune([self.model.tensor(source)], [self.model.tensor(name)])
            except Exception as exc:  # noqa: BLE001 - another placeholder feeds it, or no such tensor
                raise NotImplementedError(f"{name!r} cannot be computed from {source!r} alone: {exc}") from exc
            pieces[key] = piece
        try:
            (value,) = piece(tf.constant(np.ascontiguousarray(x)))
        except Exception as exc:  # noqa: BLE001 - the piece needs a value it was not fed
            raise NotImplementedError(f"{name!r} cannot be computed from {source!r} alone: {exc}") from exc
        return np.array(value.numpy(), copy=True)

    def export_piece(self, name: str, out: Any, side: str, source: str | None) -> dict:
        """Write the nodes that compute tensor ``name`` from tensor ``source`` as a frozen GraphDef
        ``{side}_piece.pb`` whose placeholder ``source`` stands where ``source`` was computed."""
        from pathlib import Path

        if source is None:
            raise NotImplementedError(f"no recorded tensor of this graph is {name!r}'s input: its piece has no start")
        graph_def = piece_graph_def(self.model.graph_def, name, source)
        Path(out, f"{side}_piece.pb").write_bytes(graph_def.SerializeToString())
        return {"kind": "tfgraph", "model": f"{side}_piece.pb", "source": source, "target": name}

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
        layouts, flat_from = tensor_layouts(self.model, values)
        taps: list[Tap] = []

        def layout_of(name: str, value: np.ndarray) -> tuple[str | None, dict[str, Any]]:
            extra = {"flat_from": flat_from[name]} if name in flat_from else {}
            return layouts.get(name, CHANNELS_LAST.get(value.ndim)), extra

        live = self.model.live_nodes
        for name in recorded:
            value = values[name]
            op = graph.get_operation_by_name(f"{PREFIX}/{node_of(name)}")
            layout, extra = layout_of(name, value)
            attrs: dict[str, Any] = {"tensor": name, "scope": parent_scope(node_of(name))}
            if op.type in BINARY_OPS and any(node_of(strip_prefix(t.name)) not in live for t in op.inputs):
                # x + bias, x * scale: an affine step of one layer, not a merge of two branches
                attrs["constant_operand"] = True
            if op.type in LINEAR_OPS and only_bias_follows(op, live):
                # a layer split in two (onnx2tf's tf.nn.convolution + tf.math.add, a BiasAdd):
                # this is the layer's output before its bias, no model computes it on its own
                attrs["partial"] = True
            elif only_a_clamp_follows(op, live):
                # the input of a clip written as Minimum/Maximum by a constant (or its first half):
                # only the clip's result is a layer's output; its input may agree with that result
                # wherever nothing is clipped, and would be paired with it by value
                attrs["partial"] = True
            for key in _ATTRS:
                if key in op.node_def.attr:
                    plain = plain_attr(op.node_def.attr[key])
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


def piece_graph_def(graph_def: Any, target: str, source: str) -> Any:
    """The GraphDef of the nodes that compute tensor ``target`` (``"node:0"``) from tensor
    ``source`` and constants alone, ``source``'s node replaced by a placeholder of its dtype;
    :class:`NotImplementedError` where the piece needs another input, or ``source`` is not a
    node's first output."""
    tf = import_tf()
    node_of = lambda tensor: tensor.split(":")[0].lstrip("^")  # noqa: E731
    if not source.endswith(":0"):
        raise NotImplementedError(f"{source!r} is not its node's first output: the piece cannot start there")
    nodes = {n.name: n for n in graph_def.node}
    start, end = node_of(source), node_of(target)
    if start not in nodes or end not in nodes:
        raise NotImplementedError(f"{source!r} or {target!r} is not a tensor of this graph")
    keep, todo = [], [end]
    seen = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        keep.append(name)
        if name == start:
            continue
        node = nodes[name]
        if node.op in ("Placeholder", "PlaceholderV2"):
            raise NotImplementedError(f"{target!r} needs the graph input {name!r} besides {source!r}")
        todo.extend(node_of(i) for i in node.input)
    piece = tf.compat.v1.GraphDef()
    piece.versions.CopyFrom(graph_def.versions)
    for node in graph_def.node:  # in the graph's order
        if node.name not in seen:
            continue
        if node.name == start:
            placeholder = piece.node.add()
            placeholder.name, placeholder.op = start, "Placeholder"
            dtype = node.attr["T"] if "T" in node.attr else node.attr.get("dtype")
            if dtype is not None and dtype.type:
                placeholder.attr["dtype"].type = dtype.type
            else:
                placeholder.attr["dtype"].type = tf.float32.as_datatype_enum
        else:
            piece.node.add().CopyFrom(node)
    return piece
