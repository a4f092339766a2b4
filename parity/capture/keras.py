"""Keras 3 capture by intercepting layer calls.

One mechanism serves Sequential, functional (nested models included) and
subclassed models: for the duration of one eager run with
``training=False``, every layer instance's ``call`` is wrapped so its output
is copied to NumPy when it returns.  Nothing is rebuilt and the weights are
the model's own; the wrappers are removed afterwards, also when the run fails.
"""

from __future__ import annotations

import sys
from collections import Counter
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..errors import CaptureError
from ..layout import CHANNELS_FIRST, CHANNELS_LAST
from ..records import InputSpec, ModelInfo, Tap, Trace
from .base import Backend, Inputs, append_tap, digest_inputs, flatten_outputs, numpy_dtype_name

_LAST_AXIS_LAYERS = {"Dense", "EinsumDense", "LayerNormalization", "Embedding", "RMSNormalization"}
_ATTRS = (
    "epsilon",
    "momentum",
    "axis",
    "strides",
    "padding",
    "data_format",
    "kernel_size",
    "dilation_rate",
    "pool_size",
    "max_value",
    "negative_slope",
    "threshold",
    "units",
    "filters",
    "depth_multiplier",
    "dims",
    "target_shape",
    "rate",
)


def _keras():
    import keras

    return keras


def _is_tensor(obj: Any) -> bool:
    return hasattr(obj, "shape") and hasattr(obj, "dtype") and not isinstance(obj, (np.ndarray, str))


def _symbolic(out: Any) -> bool:
    """Whether a layer call is a trace (Keras building an unbuilt model), not the eager run."""
    tf = sys.modules.get("tensorflow")
    if tf is not None and not tf.executing_eagerly():
        return True  # inside a tf.function / FuncGraph: graph tensors have no values
    keras = sys.modules.get("keras")
    tensor_cls = getattr(keras, "KerasTensor", None)
    if tensor_cls is None:
        return False
    first = out
    while isinstance(first, (list, tuple)) and first:
        first = first[0]
    if isinstance(first, dict) and first:
        first = next(iter(first.values()))
    return isinstance(first, tensor_cls)


def _to_numpy(t: Any) -> np.ndarray:
    """An independent NumPy copy of an eager tensor."""
    value = t.numpy() if hasattr(t, "numpy") else np.asarray(t)
    return np.array(value, copy=True)


def _plain(value: Any) -> Any:
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, (int, float, str)) or v is None for v in value):
        return tuple(value)
    return None


def _layer_attrs(layer: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {"layer_class": f"{type(layer).__module__}.{type(layer).__qualname__}"}
    for key in _ATTRS:
        if hasattr(layer, key):
            val = _plain(getattr(layer, key))
            if val is not None:
                attrs[key] = val
    activation = getattr(layer, "activation", None)
    if activation is not None:
        attrs["activation"] = getattr(activation, "__name__", str(activation))
    if type(layer).__name__ == "BatchNormalization":
        for key in ("moving_mean", "moving_variance"):
            var = getattr(layer, key, None)
            if var is not None:
                attrs[key] = np.asarray(var, dtype=np.float64).copy()
    return attrs


def _channels_axis_layout(layer: Any, rank: int) -> str | None:
    fmt = getattr(layer, "data_format", None)
    if fmt == "channels_first":
        return CHANNELS_FIRST.get(rank)
    if fmt == "channels_last":
        return CHANNELS_LAST.get(rank)
    if type(layer).__name__ == "BatchNormalization":
        axis = getattr(layer, "axis", -1)
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        if axis in (-1, rank - 1):
            return CHANNELS_LAST.get(rank)
        if axis == 1:
            return CHANNELS_FIRST.get(rank)
    return None


def _sublayers(model: Any) -> list[Any]:
    """Every layer inside ``model`` (recursively), each once, the model itself excluded."""
    out: list[Any] = []
    seen: set[int] = {id(model)}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if id(layer) not in seen:
            seen.add(id(layer))
            out.append(layer)
    return out


def _has_sublayers(layer: Any) -> bool:
    try:
        return any(True for _ in layer._flatten_layers(include_self=False, recursive=False))
    except AttributeError:
        return False


@contextmanager
def patched_calls(wrappers: Iterable[tuple[Any, Callable[[Any], Any]]]) -> Iterator[None]:
    """Replace each layer's ``call`` by ``make(original_call)`` for the duration, on the
    instance; restore exactly what the instance had before (its own ``call``, or none)."""
    patched: list[tuple[Any, bool, Any]] = []
    try:
        for layer, make in wrappers:
            had_own = "call" in layer.__dict__
            patched.append((layer, had_own, layer.__dict__.get("call")))
            object.__setattr__(layer, "call", make(layer.call))
        yield
    finally:
        for layer, had_own, original in reversed(patched):
            if had_own:
                object.__setattr__(layer, "call", original)
            else:
                layer.__dict__.pop("call", None)


class KerasBackend(Backend):
    framework = "keras"

    @classmethod
    def accepts(cls, obj: Any) -> bool:
        keras = sys.modules.get("keras")
        return keras is not None and hasattr(keras, "Model") and isinstance(obj, keras.layers.Layer)

    def _kind(self) -> str:
        keras = _keras()
        model = self.model
        if isinstance(model, keras.Sequential):
            return "keras Sequential"
        from keras.src.models.functional import Functional

        if isinstance(model, Functional):
            return "keras functional"
        if isinstance(model, keras.Model):
            return "keras subclassed"
        return "keras layer"

    def info(self) -> ModelInfo:
        keras = _keras()
        try:
            params = int(self.model.count_params())
        except ValueError:  # not built yet
            params = None
        return ModelInfo(
            framework="keras",
            framework_version=keras.__version__,
            name=self.model.name or type(self.model).__name__,
            kind=self._kind(),
            param_count=params,
            input_spec=self.input_spec(),
        )

    def _default_layout(self, rank: int) -> str | None:
        fmt = _keras().config.image_data_format()
        table = CHANNELS_FIRST if fmt == "channels_first" else CHANNELS_LAST
        return table.get(rank)

    def input_spec(self) -> tuple[InputSpec, ...] | None:
        try:
            inputs = self.model.inputs
        except (AttributeError, ValueError):
            return None
        if not inputs:
            return None
        specs = []
        for i, t in enumerate(inputs):
            shape = tuple(None if d is None else int(d) for d in t.shape)
            name = getattr(t, "name", None) or f"input_{i}"
            history = getattr(t, "_keras_history", None)
            if history is not None and getattr(history[0], "name", None):
                name = history[0].name
            specs.append(
                InputSpec(
                    name=name,
                    shape=shape,
                    dtype=numpy_dtype_name(t.dtype),
                    layout=self._default_layout(len(shape)),
                )
            )
        return tuple(specs)

    def capture(self, inputs: Inputs, *, containers: bool = False) -> Trace:
        model = self.model
        arrays = list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
        layers = [
            layer
            for layer in _sublayers(model)
            if type(layer).__name__ != "InputLayer" and (containers or not _has_sublayers(layer))
        ]
        parent_of: dict[int, str] = {}
        for layer in _sublayers(model):
            if _has_sublayers(layer):
                for child in layer._flatten_layers(include_self=False, recursive=False):
                    parent_of.setdefault(id(child), layer.name)
        taps: list[Tap] = []
        calls: Counter[str] = Counter()
        owner_of_name: dict[str, int] = {}
        layouts: dict[int, tuple[str | None, int]] = {}
        alive: list[Any] = []  # keeps recorded tensors alive so their ids stay unique

        def unique_name(layer: Any) -> str:
            name = layer.name
            if owner_of_name.setdefault(name, id(layer)) != id(layer):
                name = f"{parent_of.get(id(layer), 'model')}/{layer.name}"
                owner_of_name.setdefault(name, id(layer))
            return name

        def layout_for(layer: Any, rank: int, in_layout: str | None, in_rank: int | None, in_shape) -> tuple[str | None, dict]:
            op = type(layer).__name__
            extra: dict[str, Any] = {}
            own = _channels_axis_layout(layer, rank)
            if op == "Flatten" and in_layout and in_rank and in_rank > 2 and rank == 2:
                extra["flat_from"] = tuple(int(d) for d in in_shape[1:])
                return f"N({in_layout[1:]})", extra
            if op == "Permute" and in_layout and in_rank == rank and "(" not in in_layout:
                dims = tuple(getattr(layer, "dims", ()))
                if len(dims) == rank - 1:
                    return in_layout[0] + "".join(in_layout[d] for d in dims), extra
            if own is not None:
                return own, extra
            if op in _LAST_AXIS_LAYERS:
                return CHANNELS_LAST.get(rank), extra
            if op in ("Reshape",):
                return ("NC" if rank == 2 else None), extra
            if in_layout is not None and in_rank == rank:
                return in_layout, extra
            return self._default_layout(rank), extra

        def make_wrapper(layer: Any, original: Any) -> Any:
            is_container = _has_sublayers(layer)

            def wrapped(*args: Any, **kwargs: Any) -> Any:
                out = original(*args, **kwargs)
                if _symbolic(out):
                    return out  # a build-time trace of an unbuilt model, not the run
                first = next((a for a in args if _is_tensor(a)), None)
                if first is None and args and isinstance(args[0], (list, tuple)):
                    first = next((a for a in args[0] if _is_tensor(a)), None)
                in_layout, in_rank, in_shape = None, None, ()
                if first is not None:
                    in_shape = tuple(first.shape)
                    in_rank = len(in_shape)
                    known = layouts.get(id(first))
                    if known and known[1] == in_rank:
                        in_layout = known[0]
                base = unique_name(layer)
                k = calls[base]
                calls[base] += 1
                name = base if k == 0 else f"{base}#{k}"
                attrs = _layer_attrs(layer)
                for tensor_name, t in flatten_outputs(out, name, _is_tensor):
                    value = _to_numpy(t)
                    layout, extra = layout_for(layer, value.ndim, in_layout, in_rank, in_shape)
                    layouts[id(t)] = (layout, value.ndim)
                    alive.append(t)
                    append_tap(
                        taps,
                        tensor_name,
                        type(layer).__name__,
                        value,
                        layout,
                        role="container" if is_container else "layer",
                        attrs={**attrs, **extra},
                        dtype=numpy_dtype_name(getattr(t, "dtype", value.dtype)),
                    )
                return out

            return wrapped

        try:
            with patched_calls((layer, lambda original, layer=layer: make_wrapper(layer, original)) for layer in layers):
                out = self.run(inputs)
        except Exception as exc:
            if isinstance(exc, CaptureError):
                raise
            shapes = ", ".join(str(tuple(a.shape)) for a in arrays)
            expected = ""
            if spec := self.input_spec():
                expected = " It expects " + ", ".join(
                    f"{s.name}: {tuple(s.shape)} ({s.layout})" for s in spec
                ) + "."
            raise CaptureError(
                f"running Keras model {model.name!r} on inputs of shape {shapes} failed: "
                f"{type(exc).__name__}: {str(exc).strip()[:600]}.{expected} Inputs are given in "
                "model A's layout and converted for model B; check their shape and layout."
            ) from exc
        for tensor_name, t in flatten_outputs(out, "output", _is_tensor):
            value = _to_numpy(t)
            known = layouts.get(id(t))
            append_tap(
                taps,
                tensor_name,
                "output",
                value,
                known[0] if known else self._default_layout(value.ndim),
                role="output",
                dtype=numpy_dtype_name(getattr(t, "dtype", value.dtype)),
            )
        notes: tuple[str, ...] = ()
        recorded = {t.name.split("#")[0].split("[")[0] for t in taps if t.role != "output"}
        silent = [layer.name for layer in layers if layer.name not in recorded and not _has_sublayers(layer)]
        if silent:
            notes = (
                f"{len(silent)} layer(s) of Keras model {model.name!r} ran without an eager output to record "
                f"({', '.join(silent[:6])}{', …' if len(silent) > 6 else ''}): unused, or called inside a "
                "tf.function / compiled step. Their tensors are not compared.",
            )
        return Trace(
            taps=tuple(taps),
            model=self.info(),
            input_shapes=tuple(tuple(a.shape) for a in arrays),
            inputs_digest=digest_inputs(arrays),
            notes=notes,
        )

    def run(self, inputs: Inputs) -> Any:
        """One call of the model in inference mode (``training=False`` where it takes it)."""
        arrays = list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
        call_inputs = self._call_inputs(inputs, arrays)
        try:
            return self.model(call_inputs, training=False)
        except TypeError as exc:
            if "training" not in str(exc):
                raise
            return self.model(call_inputs)

    def _call_inputs(self, inputs: Inputs, arrays: list[np.ndarray]) -> Any:
        if isinstance(inputs, dict):
            return dict(inputs)
        if len(arrays) == 1:
            return arrays[0]
        return list(arrays)
