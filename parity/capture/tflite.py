"""TFLite capture: run a ``.tflite`` flatbuffer once and read every tensor an operator produced.

The interpreter is created with ``experimental_preserve_all_tensors=True`` (without
it TFLite reuses the memory of intermediate tensors and reading one raises "Tensor
data is null"), runs once, and then every tensor that is the output of an operator
is copied, in the operators' execution order.  Constants (weights, folded biases)
and the model inputs are not recorded.

Tap names are TFLite's own tensor names, which are often several fused TF op names
joined by ``;`` (``model_1/relu_1/Relu6;model_1/bn_1/batchnorm/add_1;…``); a name
that repeats gets ``#1``, ``#2``…  Tap ops are the builtin operator names
(``CONV_2D``, ``DEPTHWISE_CONV_2D``, ``ADD``, ``FULLY_CONNECTED``…).  Quantized
tensors (int8/uint8 with a scale) are dequantized to float32.

The model is a :class:`TFLiteModel` (flatbuffer bytes and a display name) or raw
``bytes`` of a flatbuffer.  ``ai_edge_litert`` is used when installed, else
``tf.lite.Interpreter``; neither is imported until a model is run or inspected.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CaptureError, InputError, ModelError
from ..layout import CHANNELS_LAST
from ..records import InputSpec, ModelInfo, Tap, Trace
from .base import Backend, Inputs, append_tap, numpy_dtype_name

__all__ = ["TFLiteModel", "TFLiteBackend", "is_tflite", "torch_module_paths"]

#: the flatbuffer file identifier of a TFLite model, at bytes 4:8
FILE_IDENTIFIER = b"TFL3"
#: ops that mean a model kept its variables as resources (un-frozen conversion)
_VARIABLE_OPS = {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE"}


def is_tflite(content: Any) -> bool:
    """Whether ``content`` (bytes) carries the TFLite flatbuffer identifier."""
    try:
        head = bytes(memoryview(content)[:8])
    except TypeError:
        return False
    return len(head) == 8 and head[4:8] == FILE_IDENTIFIER


def _describe_bytes(content: bytes) -> str:
    head = bytes(content[:8])
    if not head:
        return "an empty file"
    if head.startswith(b"PK"):
        return "a zip archive (a .keras file or a .pt2/TorchScript archive?)"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (a Keras .h5 model?)"
    if head[4:8] == b"ONNX" or head.startswith(b"\x08"):
        return "bytes that look like a protobuf (an ONNX model or a SavedModel .pb?)"
    return f"bytes starting {head!r}"


class TFLiteModel:
    """A TFLite flatbuffer held in memory, with a display name.

    >>> TFLiteModel.from_path("model.tflite")  # doctest: +SKIP
    >>> TFLiteModel(converter.convert(), name="mobilenet.tflite")  # doctest: +SKIP
    """

    def __init__(self, content: bytes, name: str = "model.tflite") -> None:
        if isinstance(content, (bytearray, memoryview)):
            content = bytes(content)
        if not isinstance(content, bytes):
            raise ModelError(
                f"TFLiteModel takes the flatbuffer as bytes; got {type(content).__name__}. "
                "Use TFLiteModel.from_path(path) for a file, or pass converter.convert()'s result."
            )
        if not is_tflite(content):
            raise ModelError(
                f"{name!r} is not a TFLite flatbuffer: expected the file identifier b'TFL3' at bytes "
                f"4..8, got {_describe_bytes(content)}. Give the output of tf.lite.TFLiteConverter "
                "(a .tflite file)."
            )
        self.content = content
        self.name = name

    @classmethod
    def from_path(cls, path: str | Path) -> "TFLiteModel":
        path = Path(path)
        if not path.exists():
            raise ModelError(
                f"TFLite model file {str(path)!r} does not exist. Give the path to a .tflite file "
                "written by tf.lite.TFLiteConverter (or onnx2tf)."
            )
        if path.is_dir():
            raise ModelError(
                f"{str(path)!r} is a directory, not a .tflite file. For a SavedModel directory, "
                "convert it with tf.lite.TFLiteConverter.from_saved_model first."
            )
        content = path.read_bytes()
        if not is_tflite(content):
            raise ModelError(
                f"{str(path)!r} is not a TFLite flatbuffer: expected the file identifier b'TFL3' at "
                f"bytes 4..8, got {_describe_bytes(content)}. Give a .tflite file written by "
                "tf.lite.TFLiteConverter."
            )
        return cls(content, name=path.name)

    def __repr__(self) -> str:
        return f"TFLiteModel(name={self.name!r}, {len(self.content)} bytes)"


# --- the interpreter ---------------------------------------------------------------------


def _runtime() -> tuple[Any, Any, str]:
    """(Interpreter class, OpResolverType enum or None, version string)."""
    try:
        from ai_edge_litert import interpreter as litert

        try:
            from importlib.metadata import version

            ver = f"ai-edge-litert {version('ai-edge-litert')}"
        except Exception:  # pragma: no cover - metadata missing
            import ai_edge_litert

            ver = f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}"
        return litert.Interpreter, getattr(litert, "OpResolverType", None), ver
    except ImportError:
        pass
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise ModelError(
            "running a TFLite model needs an interpreter: pip install ai-edge-litert "
            "(or tensorflow)."
        ) from exc
    resolver = getattr(getattr(tf.lite, "experimental", None), "OpResolverType", None)
    return tf.lite.Interpreter, resolver, f"tensorflow {tf.__version__}"


def _make_interpreter(content: bytes, *, delegates: bool, num_threads: int | None) -> Any:
    cls, resolver, _ = _runtime()
    kwargs: dict[str, Any] = {"model_content": content, "experimental_preserve_all_tensors": True}
    if num_threads is not None:
        kwargs["num_threads"] = num_threads
    if not delegates and resolver is not None:
        kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        with warnings.catch_warnings():  # "intended for debugging purposes only": that is the point
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
            return cls(**kwargs)
    except Exception as exc:
        raise CaptureError(
            f"the TFLite interpreter refused the model: {type(exc).__name__}: {str(exc).strip()[:600]}. "
            "The file may be truncated, or use custom/Flex ops this interpreter lacks."
        ) from exc


def _ops(interp: Any) -> list[dict] | None:
    try:
        return list(interp._get_ops_details())
    except Exception:  # private API: absent or changed in this interpreter version
        return None


def _quant(detail: dict) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(scales, zero points, axis) when the tensor is quantized, else None."""
    qp = detail.get("quantization_parameters") or {}
    scales = np.asarray(qp.get("scales", ()), dtype=np.float32)
    zps = np.asarray(qp.get("zero_points", ()), dtype=np.int64)
    if scales.size == 0:
        scale, zp = detail.get("quantization", (0.0, 0))
        if not scale:
            return None
        scales, zps = np.asarray([scale], np.float32), np.asarray([zp], np.int64)
    if not np.any(scales):
        return None
    if zps.size == 0:
        zps = np.zeros_like(scales, dtype=np.int64)
    return scales, zps, int(qp.get("quantized_dimension", 0))


def _dequantize(value: np.ndarray, q: tuple[np.ndarray, np.ndarray, int]) -> np.ndarray:
    scales, zps, axis = q
    if scales.size > 1 and value.ndim:
        shape = [1] * value.ndim
        shape[axis] = scales.size
        scales, zps = scales.reshape(shape), zps.reshape(shape)
    else:
        scales, zps = scales.reshape(()), zps.reshape(())
    return ((value.astype(np.float32) - zps.astype(np.float32)) * scales).astype(np.float32)


def _quantize(value: np.ndarray, q: tuple[np.ndarray, np.ndarray, int], dtype: np.dtype) -> np.ndarray:
    scales, zps, _ = q
    info = np.iinfo(dtype)
    out = np.round(value.astype(np.float64) / float(scales.reshape(-1)[0]) + float(zps.reshape(-1)[0]))
    return np.clip(out, info.min, info.max).astype(dtype)


def _quantized_input_note(arr: np.ndarray, q: tuple[np.ndarray, np.ndarray, int], dtype: np.dtype, what: str) -> str:
    """What parity did to feed a float input to a quantized one — with the declared scale and zero
    point — and how much of it fell outside the range those can represent (clipped: B is fed
    another input than A there)."""
    scale, zp = float(q[0].reshape(-1)[0]), int(q[1].reshape(-1)[0])
    info = np.iinfo(dtype)
    lo, hi = (info.min - zp) * scale, (info.max - zp) * scale
    outside = int(np.count_nonzero((arr < lo - scale / 2) | (arr > hi + scale / 2)))
    note = (f"{what} is quantized {dtype.name}: parity quantized the {arr.dtype} input with its declared scale "
            f"{scale:g} and zero point {zp} (range [{lo:.4g}, {hi:.4g}]).")
    if outside:
        note += (f" {outside} of {arr.size} input values lie outside that range and were clipped: B was fed another "
                 "input than A there — give inputs in the range the model was calibrated for.")
    return note


def _check_lossless_cast(arr: np.ndarray, dtype: np.dtype, what: str) -> None:
    """Refuse a float input cast to an integer input that holds no quantization parameters when the
    cast would change it (fractions, values out of the type's range): B would be fed another input."""
    if arr.dtype.kind != "f" or dtype.kind not in "iu" or arr.size == 0:
        return
    info = np.iinfo(dtype)
    finite = np.isfinite(arr)
    changed = ~finite | (arr != np.round(arr)) | (arr < info.min) | (arr > info.max)
    if np.any(changed):
        bad = arr[changed].ravel()[:3]
        raise InputError(
            f"{what} is {dtype.name} with no scale or zero point (it takes raw integers, e.g. pixel bytes "
            f"{info.min}..{info.max}); the {arr.dtype} input holds {int(np.count_nonzero(changed))} of {arr.size} "
            f"values a cast to {dtype.name} would change (e.g. {', '.join(f'{v:g}' for v in bad)}), so B would be "
            f"fed another input than A. Give inputs that hold whole numbers in {info.min}..{info.max} — the values "
            "the model takes — or convert the model with a float input."
        )


def _fmt(shape: tuple) -> str:
    return "(" + ", ".join("N" if i == 0 and s is None else ("?" if s is None else str(s)) for i, s in enumerate(shape)) + ")"


def _clean_input_name(name: str) -> str:
    """``serving_default_image:0`` → ``image``."""
    if name.endswith(":0"):
        name = name[:-2]
    if name.startswith("serving_default_"):
        name = name[len("serving_default_") :]
    return name


class TFLiteBackend(Backend):
    """A TFLite flatbuffer run by the TFLite interpreter.

    Options: ``delegates`` (default True: the interpreter's default delegates, i.e.
    XNNPACK, as deployed; parity falls back to the builtin kernels by itself when a
    delegate would hide intermediate tensors), ``num_threads``.
    """

    suffixes = (".tflite",)
    #: what :meth:`load` reads, as a user is told it
    formats = ".tflite"

    @classmethod
    def load(cls, path: Any, **options: Any) -> Any:
        return TFLiteModel.from_path(path)

    framework = "tflite"

    def __init__(self, model: Any, **options: Any) -> None:
        if not isinstance(model, TFLiteModel):
            if isinstance(model, (str, Path)):
                model = TFLiteModel.from_path(model)
            else:
                model = TFLiteModel(model)
        super().__init__(model, **options)
        self._inspect: Any = None

    @classmethod
    def accepts(cls, obj: Any) -> bool:
        if isinstance(obj, TFLiteModel):
            return True
        return isinstance(obj, (bytes, bytearray, memoryview)) and is_tflite(obj)

    @property
    def default_layout(self) -> str | None:
        return "NHWC"

    # --- what the model is -----------------------------------------------------------

    def _interpreter_for_inspection(self) -> Any:
        if self._inspect is None:
            self._inspect = _make_interpreter(self.model.content, delegates=False, num_threads=None)
        return self._inspect

    def _signature_names(self, interp: Any) -> dict[int, str]:
        """Tensor index → signature input name (``image``), when the model has one signature."""
        try:
            sigs = interp._get_full_signature_list()
        except Exception:
            return {}
        if not sigs or len(sigs) != 1:
            return {}
        inputs = next(iter(sigs.values())).get("inputs", {})
        return {int(idx): str(name) for name, idx in inputs.items()}

    def _input_names(self, interp: Any) -> list[str]:
        sig = self._signature_names(interp)
        return [sig.get(int(d["index"]), _clean_input_name(d["name"])) for d in interp.get_input_details()]

    def input_spec(self) -> tuple[InputSpec, ...] | None:
        interp = self._interpreter_for_inspection()
        names = self._input_names(interp)
        specs = []
        for name, d in zip(names, interp.get_input_details()):
            sig = d.get("shape_signature")
            sig = d["shape"] if sig is None or len(sig) == 0 and len(d["shape"]) else sig
            shape = tuple(None if int(s) < 0 else int(s) for s in sig)
            specs.append(
                InputSpec(
                    name=name,
                    shape=shape,
                    dtype=numpy_dtype_name(np.dtype(d["dtype"])),
                    layout=CHANNELS_LAST.get(len(shape)) if len(shape) in (4, 5) else None,
                )
            )
        return tuple(specs)

    def precision(self) -> tuple[str, str] | None:
        """What the flatbuffer's tensors say: ``int8`` when any integer tensor of at most 16 bits
        carries quantisation scales, else ``float16`` when any tensor is float16, else ``float32``."""
        try:
            details = self._interpreter_for_inspection().get_tensor_details()
        except Exception:  # pragma: no cover - an interpreter that cannot be inspected
            return None
        quantized = float16 = 0
        for d in details:
            dtype = np.dtype(d["dtype"])
            scales = (d.get("quantization_parameters") or {}).get("scales")
            if dtype.kind in "iu" and dtype.itemsize <= 2 and scales is not None and len(scales):
                quantized += 1
            elif dtype == np.float16:
                float16 += 1
        if quantized:
            return "int8", f"detected: {quantized} quantized integer tensor(s) in the flatbuffer"
        if float16:
            return "float16", f"detected: {float16} float16 tensor(s) in the flatbuffer"
        return "float32", "detected: no float16 or quantized tensors"

    def _param_count(self, interp: Any) -> int | None:
        ops = _ops(interp)
        if ops is None:
            return None
        produced = {int(i) for op in ops for i in op["outputs"] if int(i) >= 0}
        inputs = {int(d["index"]) for d in interp.get_input_details()}
        consts = {int(i) for op in ops for i in op["inputs"] if int(i) >= 0} - produced - inputs
        details = {int(d["index"]): d for d in interp.get_tensor_details()}
        total = 0
        for idx in consts:
            d = details.get(idx)
            if d is not None:
                total += int(np.prod(d["shape"], dtype=np.int64)) if len(d["shape"]) else 1
        return total

    def info(self) -> ModelInfo:
        _, _, version = _runtime()
        interp = self._interpreter_for_inspection()
        return ModelInfo(
            framework="tflite",
            framework_version=version,
            name=self.model.name,
            kind="TFLite flatbuffer",
            param_count=self._param_count(interp),
            input_spec=self.input_spec(),
        )

    # --- running it ------------------------------------------------------------------

    def _order_inputs(self, inputs: Inputs, details: list[dict], names: list[str]) -> list[np.ndarray]:
        expected = ", ".join(
            f"{n}: {_fmt(tuple(None if int(s) < 0 else int(s) for s in d.get('shape_signature', d['shape'])))}"
            for n, d in zip(names, details)
        )
        if isinstance(inputs, dict):
            by_key: dict[str, int] = {}
            for i, (n, d) in enumerate(zip(names, details)):
                for key in (n, d["name"], _clean_input_name(d["name"])):
                    by_key.setdefault(key, i)
            arrays: list[Any] = [None] * len(details)
            unknown = []
            for key, arr in inputs.items():
                i = by_key.get(str(key))
                if i is None:
                    unknown.append(key)
                else:
                    arrays[i] = arr
            if unknown or any(a is None for a in arrays):
                if len(inputs) == len(details) and unknown:
                    arrays = list(inputs.values())  # other names, same count: by position
                else:
                    raise InputError(
                        f"TFLite model {self.model.name!r} takes inputs {expected} (NHWC for images); "
                        f"got inputs named {sorted(map(str, inputs))}. Name them as the model does, "
                        "or give them positionally."
                    )
        else:
            arrays = list(inputs)
        if len(arrays) != len(details):
            raise InputError(
                f"TFLite model {self.model.name!r} takes {len(details)} input(s): {expected} "
                f"(NHWC for images); got {len(arrays)}."
            )
        out = []
        for i, (arr, n, d) in enumerate(zip(arrays, names, details)):
            arr = np.asarray(arr)
            sig = d.get("shape_signature")
            sig = d["shape"] if sig is None else sig
            if arr.ndim != len(sig):
                raise InputError(
                    f"TFLite model {self.model.name!r} expects input {n!r} of rank {len(sig)}, shape "
                    f"{_fmt(tuple(None if int(s) < 0 else int(s) for s in sig))} (NHWC for images); got "
                    f"shape {arr.shape} for input {i}. All inputs: {expected}. Inputs are given in model "
                    "A's layout; parity converts them for model B."
                )
            fixed = [
                (ax, int(s), arr.shape[ax])
                for ax, s in enumerate(sig)
                if ax > 0 and int(s) >= 0 and int(s) != arr.shape[ax]
            ]
            if fixed:
                raise InputError(
                    f"TFLite model {self.model.name!r} expects input {n!r} of shape "
                    f"{_fmt(tuple(None if int(s) < 0 else int(s) for s in sig))} (NHWC for images); got "
                    f"{arr.shape} (axis {fixed[0][0]} is {fixed[0][2]}, the model fixes it at {fixed[0][1]}). "
                    "Only the batch size can change; check the layout."
                )
            out.append(arr)
        return out

    def _feed(self, inputs: Inputs) -> tuple[list[np.ndarray], list[np.ndarray], list[str], list[str]]:
        """The inputs as given (in the model's order), as fed (quantized with the declared scale for
        a quantized input, cast where the cast changes nothing), the inputs' names and what was done."""
        probe = self._interpreter_for_inspection()
        details_in = probe.get_input_details()
        names = self._input_names(probe)
        given = self._order_inputs(inputs, details_in, names)
        notes: list[str] = []
        fed: list[np.ndarray] = []
        for arr, n, d in zip(given, names, details_in):
            want = np.dtype(d["dtype"])
            q = _quant(d)
            if arr.dtype == want:
                fed.append(np.ascontiguousarray(arr))
            elif q is not None and want.kind in "iu" and arr.dtype.kind == "f":
                fed.append(_quantize(arr, q, want))
                notes.append(_quantized_input_note(arr, q, want, f"input {n!r} of TFLite model {self.model.name!r}"))
            else:
                _check_lossless_cast(arr, want, f"input {n!r} of TFLite model {self.model.name!r}")
                fed.append(np.ascontiguousarray(arr.astype(want)))
                notes.append(
                    f"input {n!r} of TFLite model {self.model.name!r} is {want.name}; the {arr.dtype} "
                    f"input was cast to {want.name}."
                )
        return given, fed, names, notes

    def export_whole(self, name: str, out: Any, side: str, model_inputs: Inputs | None, attrs: dict) -> dict:
        """For a repro (:mod:`parity.repro`): the TFLite interpreter runs whole models only (a tensor
        cannot be fed its layer's input alone), so the bundle holds the whole ``.tflite`` and the
        inputs it was fed (``{side}_model_input_{k}.npy``), and ``repro.py`` reruns it and reads
        ``name``'s tensor."""
        index = attrs.get("tensor_index")
        if model_inputs is None or index is None:
            raise NotImplementedError("the TFLite interpreter runs whole models only, and the model's inputs or "
                                      "the tensor's index were not kept")
        _, fed, _, _ = self._feed(model_inputs)
        out = Path(out)
        (out / f"{side}_model.tflite").write_bytes(self.model.content)
        files = []
        for k, arr in enumerate(fed):
            files.append(f"{side}_model_input_{k}.npy")
            np.save(out / files[-1], arr, allow_pickle=False)
        return {"kind": "tflite", "model": f"{side}_model.tflite", "inputs": files, "tensor_index": int(index),
                "tensor": name, "whole": True}

    def capture(self, inputs: Inputs, *, containers: bool = False) -> Trace:
        delegates = bool(self.options.get("delegates", True))
        num_threads = self.options.get("num_threads")
        given, fed, names, notes = self._feed(inputs)
        details_in = self._interpreter_for_inspection().get_input_details()

        interp = _make_interpreter(self.model.content, delegates=delegates, num_threads=num_threads)
        interp, resized = self._allocate(interp, fed, names)
        if resized:
            notes.append(
                f"TFLite model {self.model.name!r} was resized from input shape(s) "
                f"{', '.join(str(tuple(int(s) for s in d['shape'])) for d in details_in)} to "
                f"{', '.join(str(a.shape) for a in fed)}."
            )
        ops = _ops(interp)
        if delegates and ops is not None and _delegate_hides_tensors(ops):
            interp = _make_interpreter(self.model.content, delegates=False, num_threads=num_threads)
            interp, _ = self._allocate(interp, fed, names)
            ops = _ops(interp)
            notes.append(
                f"a delegate of TFLite model {self.model.name!r} would have computed several ops at once "
                "and hidden their tensors; parity ran it on the builtin kernels instead."
            )
        try:
            for d, arr in zip(interp.get_input_details(), fed):
                interp.set_tensor(d["index"], arr)
            interp.invoke()
        except Exception as exc:
            spec = ", ".join(f"{s.name}: {_fmt(s.shape)} {s.dtype}" for s in self.input_spec() or ())
            raise CaptureError(
                f"running TFLite model {self.model.name!r} on inputs of shape "
                f"{', '.join(str(a.shape) for a in fed)} failed: {type(exc).__name__}: "
                f"{str(exc).strip()[:600]}. It expects {spec} (NHWC for images). Inputs are given in "
                "model A's layout and converted for model B; check their shape and layout."
            ) from exc

        details = {int(d["index"]): d for d in interp.get_tensor_details()}
        input_idx = {int(d["index"]) for d in interp.get_input_details()}
        if ops is None:
            notes.append(
                "this TFLite interpreter does not list its operators; parity recorded every "
                "non-constant tensor in index order, with op 'UNKNOWN'."
            )
            order = [(idx, "UNKNOWN", -1) for idx in sorted(details) if idx not in input_idx]
        else:
            # ops fed by constants only (DEQUANTIZE of float16 weights, …) prepare weights, not
            # activations; with delegates their outputs may never be written: not recorded
            dynamic = set(input_idx)
            for op in ops:
                if op["op_name"] != "DELEGATE" and any(int(i) in dynamic for i in op["inputs"]):
                    dynamic.update(int(i) for i in op["outputs"] if int(i) >= 0)
            order = [
                (int(i), str(op["op_name"]), int(op["index"]))
                for op in ops
                if op["op_name"] != "DELEGATE"
                for i in op["outputs"]
                if int(i) >= 0 and int(i) not in input_idx and int(i) in dynamic
            ]
            variables = sorted({op["op_name"] for op in ops} & _VARIABLE_OPS)
            if variables:
                n_var = sum(1 for op in ops if op["op_name"] in _VARIABLE_OPS)
                notes.append(
                    f"TFLite model {self.model.name!r} holds {n_var} variable op(s) ({', '.join(variables)}): "
                    "it was converted without freezing its variables. With Keras 3, such models can run "
                    "without error yet compute NaN or wrong values; convert with "
                    "TFLiteConverter.from_keras_model, or freeze the function with "
                    "convert_variables_to_constants_v2 first."
                )

        taps: list[Tap] = []
        seen: Counter[str] = Counter()
        layouts: dict[int, str | None] = {int(d["index"]): CHANNELS_LAST.get(len(d["shape"])) for d in interp.get_input_details()}
        shapes: dict[int, tuple[int, ...]] = {}
        op_inputs = {int(op["index"]): [int(i) for i in op["inputs"] if int(i) >= 0] for op in ops or ()}
        quantized: list[str] = []
        nonfinite: list[str] = []
        done: set[int] = set()
        # which tap (or model input) each op reads: quantized layers are measured from their input
        tap_of: dict[int, str] = {int(d["index"]): f"<input {k}>" for k, d in enumerate(interp.get_input_details())}
        for idx, op_name, op_index in order:
            if idx in done:
                continue
            done.add(idx)
            d = details.get(idx)
            if d is None:
                continue
            try:
                raw = interp.get_tensor(idx)
            except ValueError:  # no data: a tensor the interpreter never wrote
                continue
            value, dtype, attrs = self._value(raw, d)
            if "quantized" in attrs:
                quantized.append(d["name"])
            base = str(d["name"]) or f"tensor_{idx}"
            k = seen[base]
            seen[base] += 1
            name = base if k == 0 else f"{base}#{k}"
            layout = CHANNELS_LAST.get(value.ndim) if value.ndim != 3 else None
            first_in = next(iter(op_inputs.get(op_index, ())), None)
            if op_name in ("RESHAPE", "SQUEEZE") and value.ndim == 2 and first_in in shapes:
                in_shape, in_layout = shapes[first_in], layouts.get(first_in)
                if len(in_shape) > 2 and in_layout and "(" not in in_layout and in_shape[0] == value.shape[0]:
                    layout = f"N({in_layout[1:]})"
                    attrs["flat_from"] = tuple(in_shape[1:])
            layouts[idx] = layout
            shapes[idx] = tuple(value.shape)
            attrs.update(tensor_index=idx, op_index=op_index)
            weights = _weight_quant(interp, op_name, op_inputs.get(op_index, ()), details)
            if weights is not None:
                attrs["weight_quant"] = weights
            fed_by = tuple(tap_of[i] for i in op_inputs.get(op_index, ()) if i in tap_of)
            if fed_by:
                attrs["fed_by"] = fed_by
            tap_of[idx] = name
            if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                if op_name in _PAD_OPS and _finite_input(interp, first_in):
                    # max-pool's -inf padding (litert-torch writes PADV2 with -inf before
                    # MAX_POOL_2D): a padding constant, not a defect; a layer of its own on no side
                    attrs.update(padding_constant=True, partial=True)
                else:
                    nonfinite.append(f"{name} ({op_name})")
            append_tap(taps, name, op_name, value, layout, attrs=attrs, dtype=dtype)
        scoped = _torch_module_scopes([(t.name, t.op) for t in taps])
        for tap, extra in zip(taps, scoped):
            tap.attrs.update(extra)  # the tap's own attrs dict, made by append_tap
        if scoped:
            notes.append(
                f"TFLite model {self.model.name!r} names its tensors by PyTorch module paths (litert-torch); "
                "parity pairs them with model A's modules of those names."
            )

        outs = interp.get_output_details()
        for i, d in enumerate(outs):
            value, dtype, attrs = self._value(interp.get_tensor(d["index"]), d)
            attrs["tensor_index"] = int(d["index"])
            attrs["tensor_name"] = str(d["name"])
            source = _dequantized_from(ops or (), int(d["index"]), taps, tap_of)
            if source is not None and "quantized" not in attrs:
                # a float output DEQUANTIZE made of a quantized tensor: it sits on that tensor's grid
                attrs["quantized"] = {**source.attrs["quantized"], "via": "DEQUANTIZE", "tensor": source.name}
                attrs["fed_by"] = (source.name,)
            append_tap(
                taps,
                "output" if len(outs) == 1 else f"output[{i}]",
                "output",
                value,
                layouts.get(int(d["index"]), CHANNELS_LAST.get(value.ndim)),
                role="output",
                attrs=attrs,
                dtype=dtype,
            )
        if quantized:
            notes.append(
                f"{len(quantized)} quantized tensor(s) of TFLite model {self.model.name!r} were dequantized "
                "to float32 with their scale and zero point; parity judges them in steps of that scale, not "
                "by the float tolerance."
            )
        if nonfinite:
            notes.append(
                f"{len(nonfinite)} tensor(s) of TFLite model {self.model.name!r} hold NaN or Inf; the first is "
                f"{nonfinite[0]}."
            )
        return self._trace(taps, given, notes)

    def _allocate(self, interp: Any, fed: list[np.ndarray], names: list[str]) -> tuple[Any, bool]:
        resized = False
        try:
            for d, arr in zip(interp.get_input_details(), fed):
                if tuple(int(s) for s in d["shape"]) != arr.shape:
                    interp.resize_tensor_input(d["index"], list(arr.shape), strict=False)
                    resized = True
            interp.allocate_tensors()
        except Exception as exc:
            if "Select TensorFlow op" in str(exc) or "Flex delegate" in str(exc):
                raise CaptureError(
                    f"TFLite model {self.model.name!r} uses Select TensorFlow (Flex) ops, which this interpreter "
                    f"({_runtime()[2]}) cannot run: neither ai-edge-litert's interpreter nor TensorFlow's pip "
                    "tf.lite.Interpreter links the Flex delegate. Convert without Select TF ops (TFLiteConverter: "
                    "target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]; onnx2tf writes them for ops it "
                    "cannot lower), or compare the SavedModel the TFLite file was made from."
                ) from exc
            raise CaptureError(
                f"TFLite model {self.model.name!r} cannot take inputs of shape "
                f"{', '.join(f'{n}: {a.shape}' for n, a in zip(names, fed))}: {type(exc).__name__}: "
                f"{str(exc).strip()[:400]}. Some converted models fix the batch size; feed the batch "
                "they were converted with, or convert with a dynamic batch."
            ) from exc
        return interp, resized

    @staticmethod
    def _value(raw: np.ndarray, d: dict) -> tuple[np.ndarray, str, dict]:
        attrs: dict[str, Any] = {}
        q = _quant(d) if np.asarray(raw).dtype.kind in "iu" else None
        if q is not None:
            info = np.iinfo(np.asarray(raw).dtype)
            attrs["quantized"] = {
                "dtype": np.asarray(raw).dtype.name,
                "scale": float(q[0].reshape(-1)[0]) if q[0].size == 1 else q[0].tolist(),
                "zero_point": int(q[1].reshape(-1)[0]) if q[1].size == 1 else q[1].tolist(),
                # the axis of a per-channel scale (in this tensor's NHWC layout), None per tensor
                "axis": int(q[2]) if q[0].size > 1 else None,
                "qmin": int(info.min), "qmax": int(info.max),
                "via": "tensor", "tensor": str(d["name"]),
            }
            return _dequantize(np.asarray(raw), q), "float32", attrs
        value = np.array(raw, copy=True)
        return value, numpy_dtype_name(value.dtype), attrs


#: the axis of the output channels of each weighted op's kernel (TFLite's layouts)
_KERNEL_AXIS = {"CONV_2D": 0, "FULLY_CONNECTED": 0, "DEPTHWISE_CONV_2D": 3, "TRANSPOSE_CONV": 0, "CONV_3D": 4}


def _weight_quant(interp: Any, op_name: str, inputs: Any, details: dict) -> dict[str, Any] | None:
    """How a conv or dense op's int8 kernel is quantized: ``per_channel`` (a scale per output
    channel) and ``levels``, the largest ``|q − zero_point|`` each output channel reaches."""
    axis = _KERNEL_AXIS.get(op_name)
    index = 1  # the kernel (TRANSPOSE_CONV's first operand is the output shape, then the kernel too)
    inputs = list(inputs)
    if axis is None or len(inputs) <= index:
        return None
    d = details.get(inputs[index])
    if d is None or np.dtype(d["dtype"]).kind not in "iu":
        return None
    q = _quant(d)
    try:
        kernel = np.asarray(interp.get_tensor(inputs[index]), np.int64)
    except ValueError:
        return None
    if q is None or kernel.ndim <= axis:
        return None
    scales, zps, _ = q
    zp = zps.reshape([-1 if i == axis else 1 for i in range(kernel.ndim)]) if zps.size > 1 else zps.reshape(())
    levels = np.abs(kernel - zp).max(axis=tuple(i for i in range(kernel.ndim) if i != axis))
    return {"per_channel": bool(scales.size > 1), "levels": tuple(int(v) for v in levels)}


def _dequantized_from(ops: Any, index: int, taps: list[Tap], tap_of: dict[int, str]) -> Tap | None:
    """The quantized tap a ``DEQUANTIZE`` op turned into tensor ``index``, or None."""
    for op in ops:
        if op["op_name"] == "DEQUANTIZE" and index in [int(i) for i in op["outputs"]]:
            names = [tap_of.get(int(i)) for i in op["inputs"] if int(i) >= 0]
            tap = next((t for t in taps if names and t.name == names[0]), None)
            if tap is not None and "quantized" in tap.attrs:
                return tap
    return None


#: ops that pad a tensor with a constant
_PAD_OPS = frozenset({"PAD", "PADV2", "MIRROR_PAD"})
#: ops that only move or pad values: a module that ran nothing else computed nothing of its own
_PLUMBING_OPS = _PAD_OPS | {"TRANSPOSE", "RESHAPE", "SQUEEZE", "EXPAND_DIMS"}


def _finite_input(interp: Any, index: int | None) -> bool:
    """Whether the tensor ``index`` (a pad's operand) holds finite values only."""
    if index is None:
        return False
    try:
        value = interp.get_tensor(index)
    except ValueError:
        return False
    return value.dtype.kind != "f" or bool(np.all(np.isfinite(value)))


# --- litert-torch's tensor names ------------------------------------------------------------

#: a dotted Python qualified name (the root segment of a litert-torch location)
_QUALNAME = re.compile(r"^_*[A-Za-z]\w*(\.\w+)+$")
#: a non-root segment: ``torch.nn.modules.conv.Conv2d_conv_stem`` → class ``Conv2d``, attribute ``conv_stem``
_SEGMENT = re.compile(r"^(?:\w+\.)+(_*[A-Za-z][A-Za-z0-9]*)_(\w+)$")


def torch_module_paths(name: str) -> list[str] | None:
    """The PyTorch module paths litert-torch stamped into a TFLite tensor name, the op's own
    module first, then the modules of the ops fused into it; ``None`` for other names.

    litert-torch names a tensor by the locations of the ops that made it, joined by ``;``, each a
    ``/``-path of ``<qualified class>_<attribute>`` segments under the root module's class, with a
    counter at the end for the ops of one location:
    ``timm.models.mobilenetv3.MobileNetV3/torch.nn.modules.container.Sequential_blocks/…/torch.nn.modules.activation.Hardsigmoid_gate;;…/torch.nn.modules.conv.Conv2d_conv_expand;2``
    → ``["blocks.0.0.se.gate", "blocks.0.0.se.conv_expand"]``; the root module itself is ``""``.
    """
    paths: list[str] = []
    for part in name.split(";"):
        if not part or part.isdigit():
            continue
        segments = part.split("/")
        if not _QUALNAME.match(segments[0]):
            return None
        attrs = []
        for segment in segments[1:]:
            m = _SEGMENT.match(segment)
            if m is None:
                return None
            attrs.append(m.group(2))
        path = ".".join(attrs)
        if path not in paths:
            paths.append(path)
    return paths or None


#: the TFLite ops a torch module class computes by itself: litert-torch may name such an op's
#: tensor after the module that consumes it (``Attention_attn;…Linear_qkv;1``), with the module
#: that computed it as "fused"
_COMPUTED_BY = {"FULLY_CONNECTED": ("Linear",), "CONV_2D": ("Conv2d",), "DEPTHWISE_CONV_2D": ("Conv2d",),
                "CONV_3D": ("Conv3d",), "TRANSPOSE_CONV": ("ConvTranspose2d",)}


def _own_compute_first(name: str, op: str, paths: list[str]) -> list[str]:
    """``paths`` with the module that computed ``op`` first: of the fused modules, the one child of
    the named module whose class computes this op (a ``Linear`` for ``FULLY_CONNECTED``), when
    exactly one does — else ``paths`` as they are."""
    classes = _COMPUTED_BY.get(op)
    if classes is None or len(paths) < 2:
        return paths
    owners = []
    for part in name.split(";"):
        segments = part.split("/")
        m = _SEGMENT.match(segments[-1]) if len(segments) > 1 else None
        if m is None or m.group(1) not in classes:
            continue
        path = ".".join(g.group(2) for g in map(_SEGMENT.match, segments[1:]) if g is not None)
        if path in paths[1:] and path.startswith(paths[0] + "." if paths[0] else ""):
            owners.append(path)
    if len(owners) != 1:
        return paths
    return [owners[0], *(p for p in paths if p != owners[0])]


def _ancestors(path: str) -> list[str]:
    """``a.b.c`` → ``["a", "a.b", "a.b.c"]`` (the root ``""`` has none)."""
    parts = path.split(".") if path else []
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _torch_module_scopes(taps: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """What each tap is, in model A's terms, when the names are litert-torch's (else ``[]``).

    Per tap: ``module`` (the module whose forward ran its op), ``fused_modules`` (the modules
    of ops fused into it), ``module_outputs`` (the module calls — ``path`` or ``path#k`` for the
    k-th call — whose output it is: the last op under that module in a run of its ops; a pad is
    never an output), ``module_own`` (the module call whose own computation, before its first
    child ran, it ends: timm's ``BatchNormAct2d`` normalising before its ``act``), and
    ``module_unsure`` (of those, the calls whose modules also appear fused into a later op of
    another module: their last step may have been folded forward, so the tensor may stop short
    of the module's output).  A tap that ends no module call is a module's intermediate:
    ``partial`` (never paired)."""
    parsed = [torch_module_paths(name) for name, _ in taps]
    if sum(p is not None for p in parsed) < max(1, len(taps) // 2):
        return []
    out: list[dict[str, Any]] = [{} for _ in taps]
    calls: dict[str, int] = {}
    # path → [call number, last output tap, last own tap, children seen, computed anything]
    open_runs: dict[str, list] = {}

    def close(path: str) -> None:
        k, last, own, _, computed = open_runs.pop(path)
        key = path if k == 0 else f"{path}#{k}"
        if not computed:  # only moved or padded its input (its op was fused into another module's)
            return
        if last is not None:
            out[last].setdefault("module_outputs", []).append(key)
        if own is not None:
            out[own].setdefault("module_own", []).append(key)

    for i, ((name, op), paths) in enumerate(zip(taps, parsed)):
        if paths is None:
            continue
        paths = _own_compute_first(name, op, paths)
        loc = paths[0]
        out[i]["module"] = loc
        if len(paths) > 1:
            out[i]["fused_modules"] = tuple(paths[1:])
        here = set(_ancestors(loc))
        for path in [p for p in open_runs if p not in here]:
            close(path)
        for path in _ancestors(loc):
            if path not in open_runs:
                open_runs[path] = [calls.get(path, 0), None, None, False, False]
                calls[path] = calls.get(path, 0) + 1
            run = open_runs[path]
            run[4] = run[4] or op not in _PLUMBING_OPS
            if op not in _PAD_OPS:
                run[1] = i
                if path == loc and not run[3]:
                    run[2] = i
            if path != loc:
                run[3] = True  # a child of ``path`` ran: ``path``'s own computation is over
    for path in list(open_runs):
        close(path)

    # a module whose op shows up fused into a later op of a module outside it may have had its
    # last step folded into that op: what is recorded as its output is unsure
    later_fused: dict[str, set[str]] = {}  # fused module → the modules of the later ops it went into

    def _under(path: str, root: str) -> bool:
        return path == root or path.startswith(root + ".") or root == ""

    for i in range(len(taps) - 1, -1, -1):
        extra = out[i]
        for key in ("module_outputs", "module_own"):
            unsure = [
                k for k in extra.get(key, ())
                if any(_under(f, k.split("#")[0]) and not all(_under(loc, k.split("#")[0]) for loc in locs)
                       for f, locs in later_fused.items())
            ]
            if unsure:
                extra.setdefault("module_unsure", []).extend(unsure)
        loc = extra.get("module")
        for fused in extra.get("fused_modules", ()):
            if loc is not None and not _under(fused, loc) and not _under(loc, fused):
                later_fused.setdefault(fused, set()).add(loc)
    for extra in out:
        if "module" in extra and not extra.get("module_outputs") and not extra.get("module_own"):
            extra["partial"] = True
        for key in ("module_outputs", "module_own", "module_unsure"):
            if key in extra:
                extra[key] = tuple(dict.fromkeys(extra[key]))
    return out


def _delegate_hides_tensors(ops: list[dict]) -> bool:
    """Whether a delegate node swallowed several ops, so their intermediate tensors are not written.

    With ``experimental_preserve_all_tensors`` XNNPACK delegates op by op (every op's
    output is a delegate node's output); a tensor made by an op that is neither a
    delegate node's output nor its input was computed inside a fused partition.
    """
    delegate = [op for op in ops if op["op_name"] == "DELEGATE"]
    if not delegate:
        return False
    visible = {int(i) for op in delegate for key in ("inputs", "outputs") for i in op[key]}
    # an op left to the builtin kernels may also show up here; then the fallback costs a note only
    return any(
        int(i) >= 0 and int(i) not in visible
        for op in ops
        if op["op_name"] != "DELEGATE"
        for i in op["outputs"]
    )
