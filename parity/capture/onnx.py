"""ONNX model capture through onnxruntime, with every intermediate value exposed.

The model is copied, shape inference fills in what it can of the types of the
intermediate values, and every node output that carries an activation is added
to the copy's graph outputs.  onnxruntime (CPU) then runs the copy once, and
each value becomes a :class:`Tap` named by its ONNX value name, in node order
(ONNX graphs are topologically sorted), with ``op`` the producing node's
``op_type``.

Values that do not depend on any graph input (``Constant`` nodes, and the
shape arithmetic exporters emit around ``Reshape``: ``Shape`` → ``Gather`` →
``Concat``) are weights or bookkeeping, not activations, and are not recorded.

Neither ``onnx`` nor ``onnxruntime`` is imported until a model is loaded or
run: ``import parity`` stays light.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CaptureError, InputError, ModelError
from ..records import InputSpec, ModelInfo, Tap, Trace
from .base import Backend, Inputs, append_tap

__all__ = ["OnnxBackend", "load_onnx"]

# ops whose output has the layout of their (first) input: layout flows through them
_ELEMENTWISE = frozenset(
    {
        "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid",
        "HardSwish", "Tanh", "Softplus", "Softsign", "Mish", "Clip", "Abs", "Neg", "Exp", "Log",
        "Sqrt", "Reciprocal", "Erf", "Floor", "Ceil", "Round", "Sign", "Cast", "Identity",
        "Dropout", "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where",
        "BatchNormalization", "Softmax", "LogSoftmax", "QuantizeLinear", "DequantizeLinear",
    }
)
#: ops whose output keeps its input's layout: the element-wise ones, and the normalisations over
#: trailing axes (timm's LayerNorm2d is Transpose → LayerNormalization → Transpose in ONNX)
_LAYOUT_KEEPING = _ELEMENTWISE | {
    "LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization", "SkipLayerNormalization",
    "MeanVarianceNormalization", "LpNormalization",
}
# ops that define no activation of their own: their outputs are shapes/sizes (bookkeeping)
_SHAPE_OPS = frozenset({"Shape", "Size"})
# the ONNX ops whose tensors are channel-first by the standard's definition
_CHANNEL_FIRST_OPS = frozenset(
    {
        "Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool",
        "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "MaxRoiPool", "MaxUnpool",
        "InstanceNormalization", "GroupNormalization", "LRN", "Resize", "Upsample",
        "DepthToSpace", "SpaceToDepth", "BatchNormalization",
    }
)


def load_onnx(path: str | Path) -> Any:
    """The ``onnx.ModelProto`` saved at ``path``, or a :class:`ModelError` saying what is wrong."""
    path = Path(path)
    if not path.exists():
        raise ModelError(
            f"ONNX model file {str(path)!r} does not exist. Give the path of a .onnx file written by "
            "torch.onnx.export, tf2onnx or onnx.save."
        )
    if path.is_dir():
        raise ModelError(f"{str(path)!r} is a directory, not an ONNX model file. Give the path of a .onnx file.")
    try:
        import onnx
    except ImportError as exc:
        raise ModelError(
            f"loading {str(path)!r} needs the 'onnx' and 'onnxruntime' packages, which are not installed. "
            "Install them with: pip install onnx onnxruntime"
        ) from exc
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # DecodeError, or an external-data file that is missing
        raise ModelError(
            f"{str(path)!r} is not a valid ONNX model (protobuf parse failed: {type(exc).__name__}: {exc}). "
            "Was it written by torch.onnx.export / onnx.save? A model over 2 GB also needs its external "
            "data file next to it."
        ) from exc
    if not isinstance(model, onnx.ModelProto) or len(model.graph.node) == 0 and len(model.graph.output) == 0:
        raise ModelError(
            f"{str(path)!r} parsed as protobuf but holds no ONNX graph (no nodes, no outputs). "
            "Was it written by torch.onnx.export / onnx.save?"
        )
    return model


def _elem_dtype(elem_type: int) -> str:
    import onnx

    try:
        return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)))
    except Exception:  # bfloat16, float8, ... have no NumPy dtype
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _is_float(elem_type: int) -> bool:
    import onnx

    name = onnx.TensorProto.DataType.Name(elem_type)
    return name.startswith(("FLOAT", "DOUBLE", "BFLOAT", "COMPLEX"))


def _shape_of(type_proto: Any) -> tuple[int | None, ...] | None:
    """The tensor shape of a TypeProto (``None`` for symbolic dims), or ``None`` if unranked."""
    tt = type_proto.tensor_type
    if not tt.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)


def _fmt_shape(shape: tuple | None) -> str:
    if shape is None:
        return "(any rank)"
    return "(" + ", ".join("N" if i == 0 and s is None else ("?" if s is None else str(s)) for i, s in enumerate(shape)) + ")"


def _node_attrs(node: Any) -> dict[str, Any]:
    """The node's name and its plain-valued attributes (epsilon, strides, pads, perm, ...)."""
    import onnx

    attrs: dict[str, Any] = {}
    if node.name:
        attrs["node"] = node.name
    if node.domain and node.domain != "ai.onnx":
        attrs["domain"] = node.domain
    for a in node.attribute:
        if a.type in (onnx.AttributeProto.TENSOR, onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS,
                      onnx.AttributeProto.TENSORS, onnx.AttributeProto.SPARSE_TENSOR,
                      onnx.AttributeProto.SPARSE_TENSORS, onnx.AttributeProto.TYPE_PROTO,
                      onnx.AttributeProto.TYPE_PROTOS):
            continue
        val = onnx.helper.get_attribute_value(a)
        if isinstance(val, bytes):
            val = val.decode("utf-8", "replace")
        elif isinstance(val, list):
            val = tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in val)
        attrs[a.name] = val
    return attrs


def _torch_provenance(node: Any) -> dict[str, Any]:
    """What torch.onnx.export(dynamo=True) wrote about where a node came from.

    ``torch_scope`` is the path of the innermost torch module the node ran in
    (``blocks.0.bn2``; ``""`` for the top module's own functional code), and
    ``rewrites`` the onnxscript rewrite rules that produced it
    (``FuseBatchNormIntoConv``: this Conv's output is the BatchNorm's).
    """
    import ast

    out: dict[str, Any] = {}
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                continue
            if isinstance(scopes, list) and len(scopes) >= 2:
                out["torch_scope"] = str(scopes[-2])  # the last element names the op itself
        elif prop.key == "pkg.onnxscript.rewriter.rule_name":
            out["rewrites"] = tuple(r.strip() for r in prop.value.split(",") if r.strip())
    return out


def _mark_module_outputs(taps: list[Tap]) -> None:
    """Set ``attrs["torch_module"]`` on the last tap computed inside each torch module scope:
    that value is the module's output, the tensor a torch forward hook records.

    The aligner reads it as ``module_outputs`` (``scope``, ``scope#k`` for the k-th call of a
    module).  Where an onnxscript rewrite rule made an op of the scope (``FuseBatchNormIntoConv``
    folds the next module's BatchNorm into this one's Conv: its last tensor is the BatchNorm's
    output), the output is marked ``module_unsure`` too: such a pair is kept only where the values agree, and
    otherwise left to the other evidence.  Elsewhere the scope's last tensor *is* the module's
    output, and a pair that disagrees there is a divergence at that module (an activation or a
    kernel changed inside it), not a reason to look for another tensor."""
    calls: dict[str, int] = {}
    rewritten: set[str] = set()  # scopes holding an op an onnxscript rewrite rule made
    for i, tap in enumerate(taps):
        scope = tap.attrs.get("torch_scope")
        if not scope:
            continue
        if tap.attrs.get("rewrites"):
            rewritten.add(scope)
        nxt = taps[i + 1].attrs.get("torch_scope") if i + 1 < len(taps) else None
        if nxt is not None and (nxt == scope or nxt.startswith(scope + ".")):
            continue  # the module is still computing
        tap.attrs["torch_module"] = scope  # type: ignore[index]
        k = calls.get(scope, 0)
        calls[scope] = k + 1
        key = scope if k == 0 else f"{scope}#{k}"
        tap.attrs["module_outputs"] = (key,)  # type: ignore[index]
        if scope in rewritten:
            tap.attrs["module_unsure"] = (key,)  # type: ignore[index]


class OnnxBackend(Backend):
    """An ``onnx.ModelProto`` run with onnxruntime.

    Options: ``providers`` (default ``["CPUExecutionProvider"]``).
    """

    suffixes = (".onnx",)
    #: what :meth:`load` reads, as a user is told it
    formats = ".onnx"

    @classmethod
    def load(cls, path: Any, **options: Any) -> Any:
        return load_onnx(path)

    framework = "onnx"

    def __init__(self, model: Any, **options: Any) -> None:
        import onnx

        if isinstance(model, (str, Path)):
            model = load_onnx(model)
        if not isinstance(model, onnx.ModelProto):
            raise ModelError(
                f"OnnxBackend takes an onnx.ModelProto or a path to a .onnx file; got "
                f"{type(model).__module__}.{type(model).__qualname__}. Load the file with onnx.load(path)."
            )
        super().__init__(model, **options)

    @classmethod
    def accepts(cls, obj: Any) -> bool:
        onnx = sys.modules.get("onnx")
        return onnx is not None and isinstance(obj, onnx.ModelProto)

    # --- what the model is -----------------------------------------------------------

    def _initializer_names(self) -> set[str]:
        g = self.model.graph
        return {t.name for t in g.initializer} | {t.values.name for t in g.sparse_initializer}

    def _graph_inputs(self) -> list[Any]:
        """The graph inputs that are fed (not initializers listed as inputs, as IR < 4 does)."""
        inits = self._initializer_names()
        return [vi for vi in self.model.graph.input if vi.name not in inits]

    def opset(self) -> int | None:
        for imp in self.model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                return int(imp.version)
        return None

    def info(self) -> ModelInfo:
        try:
            import onnxruntime as ort

            version = f"onnxruntime {ort.__version__}"
        except ImportError:
            version = "onnxruntime not installed"
        m = self.model
        opset = self.opset()
        kind = f"ONNX opset {opset}" if opset is not None else "ONNX"
        if m.producer_name:
            kind += f", from {m.producer_name}{' ' + m.producer_version if m.producer_version else ''}"
        # float initializers only: the int64 shape constants exporters store are not parameters
        params = sum(int(np.prod(t.dims, dtype=np.int64)) for t in m.graph.initializer if _is_float(t.data_type))
        params += sum(
            int(np.prod(t.dims, dtype=np.int64)) for t in m.graph.sparse_initializer if _is_float(t.values.data_type)
        )
        return ModelInfo(
            framework="onnx",
            framework_version=version,
            name=m.graph.name or "onnx model",
            kind=kind,
            param_count=params,
            input_spec=self.input_spec(),
        )

    def input_spec(self) -> tuple[InputSpec, ...] | None:
        specs = []
        for vi in self._graph_inputs():
            if not vi.type.HasField("tensor_type"):
                continue
            shape = _shape_of(vi.type)
            if shape is None:
                continue  # unranked: nothing to declare
            dtype = _elem_dtype(vi.type.tensor_type.elem_type)
            specs.append(
                InputSpec(
                    name=vi.name,
                    shape=shape,
                    dtype=dtype,
                    layout=self._input_layouts().get(vi.name),
                    source="declared",
                )
            )
        return tuple(specs) or None

    def _input_layouts(self) -> dict[str, str | None]:
        """NCHW for a 4-D input, as ONNX's Conv defines, unless the graph's first use of it is a
        ``Transpose(perm=[0, 3, 1, 2])`` (tf2onnx's NHWC→NCHW in front of a Keras model)."""
        out: dict[str, str | None] = {}
        first_use: dict[str, Any] = {}
        for node in self.model.graph.node:
            for name in node.input:
                first_use.setdefault(name, node)
        for vi in self._graph_inputs():
            shape = _shape_of(vi.type)
            if shape is None or len(shape) != 4:
                out[vi.name] = None
                continue
            node = first_use.get(vi.name)
            if node is not None and node.op_type == "Transpose" and tuple(_node_attrs(node).get("perm", ())) == (0, 3, 1, 2):
                out[vi.name] = "NHWC"
            else:
                out[vi.name] = "NCHW"
        return out

    # --- running it ------------------------------------------------------------------

    def _feed(self, inputs: Inputs) -> tuple[dict[str, np.ndarray], list[np.ndarray], list[str]]:
        graph_inputs = self._graph_inputs()
        names = [vi.name for vi in graph_inputs]
        by_name = {vi.name: vi for vi in graph_inputs}

        def expected() -> str:
            return ", ".join(
                f"{vi.name} {_fmt_shape(_shape_of(vi.type))} {_elem_dtype(vi.type.tensor_type.elem_type)}"
                for vi in graph_inputs
            ) or "no inputs"

        model = self.model.graph.name or "onnx model"
        if isinstance(inputs, dict):
            unknown = [k for k in inputs if k not in by_name]
            missing = [n for n in names if n not in inputs]
            if unknown or missing:
                raise InputError(
                    f"ONNX model {model!r} takes {len(names)} input(s): {expected()}; got inputs named "
                    f"{sorted(inputs)} (unknown: {unknown or 'none'}, missing: {missing or 'none'}). "
                    "Name the inputs as the ONNX graph does, or pass them positionally in that order."
                )
            pairs = [(n, inputs[n]) for n in names]
        else:
            arrays = list(inputs)
            if len(arrays) != len(names):
                raise InputError(
                    f"ONNX model {model!r} takes {len(names)} input(s): {expected()}; got {len(arrays)} "
                    f"array(s) of shape {', '.join(str(tuple(np.shape(a))) for a in arrays) or '-'}. "
                    "Pass one array per graph input, in the graph's order (or a dict by input name)."
                )
            pairs = list(zip(names, arrays))
        feed: dict[str, np.ndarray] = {}
        notes: list[str] = []
        for i, (name, arr) in enumerate(pairs):
            arr = np.asarray(arr)
            vi = by_name[name]
            shape = _shape_of(vi.type)
            if shape is not None and (
                len(shape) != arr.ndim or any(s is not None and s != d for s, d in zip(shape, arr.shape))
            ):
                raise InputError(
                    f"ONNX model {model!r} expects input {name!r} of shape {_fmt_shape(shape)}; got "
                    f"{arr.shape} for input {i}. Its inputs are: {expected()}. ONNX models exported from "
                    "torch take NCHW images; the export may also have fixed the batch size (export with "
                    "dynamic_axes / dynamic_shapes to allow others)."
                )
            want = _elem_dtype(vi.type.tensor_type.elem_type)
            if str(arr.dtype) != want:
                try:
                    want_dt = np.dtype(want)
                except TypeError:
                    want_dt = None
                if want_dt is not None and arr.dtype.kind == want_dt.kind:
                    notes.append(f"input {name!r} was {arr.dtype} and was cast to the model's {want}.")
                    arr = arr.astype(want_dt)
                else:
                    raise InputError(
                        f"ONNX model {model!r} expects input {name!r} as {want}; got {arr.dtype}. "
                        f"Convert it first (e.g. x.astype('{want}'))."
                    )
            feed[name] = np.ascontiguousarray(arr)
        return feed, [feed[n] for n in names], notes

    def capture(self, inputs: Inputs, *, containers: bool = False) -> Trace:
        import onnx

        try:
            import onnxruntime  # noqa: F401 - installed? (_session makes the session)
        except ImportError as exc:
            raise CaptureError(
                "running an ONNX model needs onnxruntime, which is not installed. "
                "Install it with: pip install onnxruntime"
            ) from exc

        feed, arrays, notes = self._feed(inputs)
        model = onnx.ModelProto()
        model.CopyFrom(self.model)  # the user's proto is never modified
        graph = model.graph

        # which values depend on a graph input: the rest are weights and shape bookkeeping
        dynamic = {vi.name for vi in self._graph_inputs()}
        producers: dict[str, Any] = {}
        recorded: list[tuple[str, Any]] = []  # (value name, node), in node order
        skipped = 0
        for node in graph.node:
            live = node.op_type not in _SHAPE_OPS and node.op_type != "Constant" and any(
                i in dynamic for i in node.input if i
            )
            for out in node.output:
                if not out:
                    continue
                producers[out] = node
                if live:
                    dynamic.add(out)
                    recorded.append((out, node))
                else:
                    skipped += 1
        subgraphs = sum(
            1 for node in graph.node for a in node.attribute if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        )

        # types of the intermediate values, where shape inference knows them
        types: dict[str, Any] = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
            for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
                types[vi.name] = vi
        except Exception as exc:  # custom ops, models over 2 GB, ...
            notes.append(f"ONNX shape inference failed ({type(exc).__name__}); intermediate values were exposed untyped.")
        outputs = {o.name for o in graph.output}
        added: list[str] = []
        for name, _node in recorded:
            if name in outputs:
                continue
            vi = types.get(name)
            if vi is not None and vi.type.HasField("tensor_type"):
                graph.output.append(vi)
            elif vi is not None and vi.type.WhichOneof("value") is not None:
                continue  # a sequence / map / optional: not a tensor
            else:
                graph.output.append(onnx.ValueInfoProto(name=name))
            added.append(name)

        name = graph.name or "onnx model"
        try:
            session = self._session(model)
        except Exception as exc:
            raise CaptureError(
                f"onnxruntime could not load ONNX model {name!r} (opset {self.opset()}): "
                f"{type(exc).__name__}: {exc}. Check that the model passes onnx.checker.check_model and that "
                "this onnxruntime supports its opset and ops."
            ) from exc
        out_names = [o.name for o in session.get_outputs()]
        try:
            values = session.run(out_names, feed)
        except Exception as exc:
            shapes = ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in feed.items())
            raise CaptureError(
                f"running ONNX model {name!r} with onnxruntime on {shapes} failed: {type(exc).__name__}: "
                f"{exc}. Inputs are given in model A's layout and converted for model B; check their "
                "shape, dtype and layout."
            ) from exc
        results = dict(zip(out_names, values))

        taps: list[Tap] = []
        layouts: dict[str, str | None] = dict(self._input_layouts())
        flat_from: dict[str, tuple[int, ...]] = {}
        live = _live_values(self.model.graph, set(feed))
        biased = _bias_adds(self.model.graph, live)
        # a MatMul whose bias add is a model output: only that output is the layer's
        before_output = {inner for add, (_, inner) in biased.items() if add in outputs}
        qdq = _qdq_params(self.model.graph)
        weight_quant = _weight_quant(self.model.graph)
        graph_inputs = {vi.name: f"<input {k}>" for k, vi in enumerate(self._graph_inputs())}
        for value_name, node in recorded:
            value = results.get(value_name)
            if not isinstance(value, np.ndarray):
                continue  # a sequence or optional value
            layout = self._layout(node, value, layouts, results, feed)
            layouts[value_name] = layout
            attrs = _node_attrs(node)
            if layout and layout.startswith("N("):
                src = node.input[0]
                src_val = results.get(src, feed.get(src))
                attrs["flat_from"] = tuple(src_val.shape[1:]) if isinstance(src_val, np.ndarray) else ()
                flat_from[value_name] = attrs["flat_from"]
            attrs.update(_torch_provenance(node))
            if value_name in before_output:
                attrs["partial"] = True
            if node.op_type in _BINARY_OPS and any(i and i not in live for i in node.input):
                # x + bias, x * scale: an affine step of one layer, not a merge of two branches
                attrs["constant_operand"] = True
                if value_name in biased:
                    attrs["bias_of"] = biased[value_name][0]
            fed_by = tuple(graph_inputs.get(i, i) for i in node.input if i and i in live)
            if fed_by:
                attrs["fed_by"] = fed_by
            if value_name in qdq and value.dtype.kind == "f":
                attrs["quantized"] = qdq[value_name]
            if value_name in weight_quant:
                attrs["weight_quant"] = weight_quant[value_name]
            append_tap(taps, value_name, node.op_type, value.copy(), layout, attrs=attrs)
        _mark_module_outputs(taps)
        graph_outputs = list(self.model.graph.output)
        for i, out in enumerate(graph_outputs):
            value = results.get(out.name)
            if not isinstance(value, np.ndarray):
                continue
            tap_name = "output" if len(graph_outputs) == 1 else f"output[{i}]"
            layout = layouts.get(out.name)
            if layout is None and value.ndim == 4 and value.dtype.kind == "f":
                layout = "NCHW"
            attrs = {"onnx_name": out.name}
            if out.name in qdq and value.dtype.kind == "f":
                attrs.update(quantized=qdq[out.name], fed_by=(out.name,))
            if out.name in flat_from:
                attrs["flat_from"] = flat_from[out.name]
            append_tap(taps, tap_name, "output", value.copy(), layout, role="output", attrs=attrs)
        if subgraphs:
            notes.append(
                f"ONNX model {name!r} has {subgraphs} control-flow node(s) (If/Loop/Scan); values inside "
                "their subgraphs are not recorded, only the nodes' outputs."
            )
        return self._trace(taps, arrays, notes)

    # --- a piece of the graph, run alone --------------------------------------------

    runs_pieces = True
    #: a piece holds at most this many nodes (a layer's ops: a decomposed GELU or LayerNorm is ~10)
    MAX_PIECE_NODES = 64

    def call_from(self, name: str, source: str, x: np.ndarray) -> np.ndarray:
        session = self._piece(name, source, str(np.asarray(x).dtype))
        feed_name = session.get_inputs()[0].name
        return np.asarray(session.run([name], {feed_name: np.ascontiguousarray(x)})[0])

    def _piece(self, target: str, source: str, dtype: str) -> Any:
        """An onnxruntime session of the nodes that compute ``target`` from ``source`` and the
        model's constants alone (cached)."""
        cache = self.__dict__.setdefault("_pieces", {})
        key = (target, source, dtype)
        if key in cache:
            if isinstance(cache[key], Exception):
                raise cache[key]
            return cache[key]
        try:
            cache[key] = self._build_piece(target, source, dtype)
        except NotImplementedError as exc:
            cache[key] = exc
            raise
        return cache[key]

    def export_piece(self, name: str, out: Path, side: str, source: str | None) -> dict:
        """Write the piece of the graph that computes ``name`` from ``source`` as ``{side}_piece.onnx``."""
        if source is None:
            raise NotImplementedError(f"no recorded tensor of this graph is {name!r}'s input: its piece has no start")
        import onnx

        onnx.save(self._piece_model(name, source, "float32"), str(Path(out) / f"{side}_piece.onnx"))
        return {"kind": "onnx", "model": f"{side}_piece.onnx", "source": source}

    def _session(self, model: Any) -> Any:
        """An onnxruntime session of ``model`` with this backend's providers, its log quiet."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        providers = self.options.get("providers") or ["CPUExecutionProvider"]
        return ort.InferenceSession(model.SerializeToString(), opts, providers=list(providers))

    @functools.cached_property
    def _producers(self) -> dict[str, Any]:
        """The node that computes each value of the graph."""
        return {out: node for node in self.model.graph.node for out in node.output}

    def _build_piece(self, target: str, source: str, dtype: str) -> Any:
        model = self._piece_model(target, source, dtype)
        try:
            return self._session(model)
        except Exception as exc:  # noqa: BLE001 - a piece onnxruntime refuses: no own error measured here
            raise NotImplementedError(f"onnxruntime refused the piece {source!r} → {target!r}: {exc}") from exc

    def _piece_model(self, target: str, source: str, dtype: str) -> Any:
        """The model of the nodes that compute ``target`` from ``source`` and constants alone."""
        import onnx
        from onnx import helper

        graph = self.model.graph
        producers = self._producers
        inits = self._initializer_names()
        fed = {vi.name for vi in self._graph_inputs()}
        picked: dict[int, Any] = {}

        def need(value: str) -> None:
            if not value or value == source or value in inits:
                return
            node = producers.get(value)
            if node is None or value in fed:
                raise NotImplementedError(f"{target!r} needs {value!r} besides {source!r}")
            if id(node) in picked:
                return
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                raise NotImplementedError(f"{target!r} is computed inside control flow")
            picked[id(node)] = node
            if len(picked) > self.MAX_PIECE_NODES:
                raise NotImplementedError(f"{target!r} is more than {self.MAX_PIECE_NODES} nodes from {source!r}")
            for i in node.input:
                need(i)

        need(target)
        if not picked:
            raise NotImplementedError(f"{target!r} is no computed tensor")
        nodes = [n for n in graph.node if id(n) in picked]
        used = {i for n in nodes for i in n.input}
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        piece = helper.make_graph(
            nodes, "parity-piece", [helper.make_tensor_value_info(source, elem, None)],
            [onnx.ValueInfoProto(name=target)],
            initializer=[t for t in graph.initializer if t.name in used],
        )
        model = helper.make_model(piece, opset_imports=list(self.model.opset_import), ir_version=self.model.ir_version)
        model.functions.extend(self.model.functions)
        return model

    @staticmethod
    def _layout(node: Any, value: np.ndarray, layouts: dict, results: dict, feed: dict) -> str | None:
        """NCHW for 4-D float values (the ONNX convention), tracking Transposes and flattening."""
        # the operand the layout comes from: the first that has one (torch's exporter writes a bias
        # add as Add(bias, x), the constant first)
        first = next((i for i in node.input if i in layouts), node.input[0] if node.input else "")
        in_layout = layouts.get(first)
        src = results.get(first, feed.get(first))
        in_rank = src.ndim if isinstance(src, np.ndarray) else None
        op = node.op_type
        if value.dtype.kind != "f":
            return None
        if op == "Transpose" and in_layout and len(in_layout) == value.ndim and not in_layout.startswith("N("):
            perm = _node_attrs(node).get("perm") or tuple(reversed(range(value.ndim)))
            return "".join(in_layout[p] for p in perm)
        if op in ("Flatten", "Reshape") and value.ndim == 2 and in_layout and in_rank and in_rank > 2 \
                and not in_layout.startswith("N(") and isinstance(src, np.ndarray) \
                and value.shape[0] == src.shape[0]:
            return f"N({in_layout[1:]})"
        if value.ndim == 4:
            if op in _LAYOUT_KEEPING and op not in _CHANNEL_FIRST_OPS and in_layout and in_rank == 4:
                return in_layout
            if op == "MatMul" and in_layout and in_rank == 4 and in_layout.endswith("C"):
                return in_layout  # a Linear on channels-last pixels (EdgeNeXt's MLP): features stay last
            return "NCHW"
        return None


def _qdq_params(graph: Any) -> dict[str, dict[str, Any]]:
    """The quantization of each float value of a QDQ graph, by value name: the output of a
    ``DequantizeLinear`` (on its grid: ``via`` DequantizeLinear) and the input of a
    ``QuantizeLinear`` (rounded to its grid next: ``via`` QuantizeLinear) — scale, zero point,
    axis (None per tensor), the integer type's limits and the node.  Weights (initializers
    dequantized) are left out: only values computed from the graph's inputs are taps."""
    from onnx import numpy_helper

    consts = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = a.t
    out: dict[str, dict[str, Any]] = {}
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 2:
            continue
        scale_t = consts.get(node.input[1])
        zp_t = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale_t is None:
            continue
        scale = numpy_helper.to_array(scale_t).astype(np.float64)
        zp = numpy_helper.to_array(zp_t) if zp_t is not None else np.zeros(scale.shape, np.uint8)
        info = np.iinfo(zp.dtype) if zp.dtype.kind in "iu" else None
        if info is None or not np.all(scale > 0):
            continue  # float8 and friends: not an integer grid
        axis = None
        if scale.size > 1:
            axis = next((int(a.i) for a in node.attribute if a.name == "axis"), 1)
        params = {
            "dtype": zp.dtype.name,
            "scale": float(scale.reshape(-1)[0]) if scale.size == 1 else scale.reshape(-1).tolist(),
            "zero_point": int(zp.reshape(-1)[0]) if zp.size == 1 else zp.reshape(-1).astype(int).tolist(),
            "axis": axis, "qmin": int(info.min), "qmax": int(info.max),
            "via": node.op_type, "node": node.name,
        }
        value = node.output[0] if node.op_type == "DequantizeLinear" else node.input[0]
        if value and (value not in out or node.op_type == "DequantizeLinear"):
            out[value] = params
    return out


def _weight_quant(graph: Any) -> dict[str, dict[str, Any]]:
    """How the weights of each Conv/Gemm/MatMul of a QDQ graph are quantized, by the node's
    output: ``per_channel`` (a scale per output channel) and ``levels``, the largest
    ``|q − zero_point|`` each output channel's weights reach (127 uses the whole int8 range; a
    channel at 3 is rounded to 7 values)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    dq = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear" and n.output}
    out: dict[str, dict[str, Any]] = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.input) < 2 or not node.output:
            continue
        deq = dq.get(node.input[1])
        if deq is None or deq.input[0] not in inits or len(deq.input) < 2 or deq.input[1] not in inits:
            continue
        q = numpy_helper.to_array(inits[deq.input[0]]).astype(np.int64)
        scale = numpy_helper.to_array(inits[deq.input[1]])
        zp = numpy_helper.to_array(inits[deq.input[2]]).astype(np.int64) if len(deq.input) > 2 and deq.input[2] in inits else np.zeros(1, np.int64)
        if q.ndim < 2:
            continue
        trans_b = next((int(a.i) for a in node.attribute if a.name == "transB"), 0)
        axis = 0 if node.op_type in ("Conv", "Gemm") and (node.op_type == "Conv" or trans_b) else (1 if node.op_type == "ConvTranspose" else q.ndim - 1)
        zp_b = zp.reshape([-1 if i == axis else 1 for i in range(q.ndim)]) if zp.size > 1 else zp.reshape(())
        levels = np.abs(q - zp_b).max(axis=tuple(i for i in range(q.ndim) if i != axis))
        out[node.output[0]] = {"per_channel": bool(np.asarray(scale).size > 1), "levels": tuple(int(v) for v in levels)}
    return out


#: element-wise ops that merge two tensors, or apply a constant (a bias, a scale) to one
_BINARY_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min"})


#: ops an exporter may write without their bias, then add the bias in an ``Add`` of its own
_BIASED_OPS = frozenset({"MatMul", "Conv", "ConvTranspose", "Gemm", "Einsum"})


def _bias_adds(graph: Any, live: set[str]) -> dict[str, tuple[str, str]]:
    """``{Add output: (op, its output)}`` for each ``Add`` of a constant whose other operand is the output of a
    ``MatMul``/``Conv``/… that nothing else reads: torch's exporters write a 3-D ``Linear`` as
    ``MatMul`` + ``Add``, so the ``Add`` is the layer's output (its family is the ``MatMul``'s),
    and the ``MatMul`` is that layer before its bias.  Both stay candidates: a bias-less
    ``Linear`` followed by a constant shift of its own is the ``MatMul``; the values decide."""
    readers: dict[str, int] = {}
    for node in graph.node:
        for i in node.input:
            if i:
                readers[i] = readers.get(i, 0) + 1
    made_by = {o: node.op_type for node in graph.node for o in node.output if o}
    out: dict[str, tuple[str, str]] = {}
    for node in graph.node:
        if node.op_type != "Add" or len(node.input) != 2 or not node.output:
            continue
        inner = [i for i in node.input if i in live]
        if len(inner) == 1 and made_by.get(inner[0]) in _BIASED_OPS and readers.get(inner[0]) == 1:
            out[node.output[0]] = (made_by[inner[0]], inner[0])
    return out


def _live_values(graph: Any, fed: set[str]) -> set[str]:
    """The values that depend on a fed input (the rest are initializers and constants);
    ONNX lists nodes in topological order."""
    live = set(fed)
    for node in graph.node:
        if any(i in live for i in node.input):
            live.update(node.output)
    return live
