"""Keras capture by intercepting layer calls: Keras 3, and Keras 2 as ``tf_keras``
(or as ``keras`` itself where that is 2.x, TensorFlow ≤ 2.15).

One mechanism serves Sequential, functional (nested models included) and
subclassed models: for the duration of one eager run with
``training=False``, every layer instance's ``call`` is wrapped so its output
is copied to NumPy when it returns.  Nothing is rebuilt and the weights are
the model's own; the wrappers are removed afterwards, also when the run fails.

Taps are named by layer names when every layer of the model has its own; when
names repeat (subclassed models such as transformers' build a ``dense`` and a
``LayerNorm`` in every block), every layer is named by its path of layer names
from the model: ``bert/encoder/layer_._3/attention/output/dense``.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
from collections import Counter
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import CaptureError, ParityError
from ..layout import CHANNELS_FIRST, CHANNELS_LAST
from ..records import InputSpec, ModelInfo, Tap, Trace

from .base import Backend, Inputs, append_tap, flatten_outputs, numpy_dtype_name
from .rnn import is_keras_rnn, keras_rnn_names
from .keras_tree import tap_names
from .twins import cast_floating, check_kind, random_statistics

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


#: the packages a Keras model can come from, by the module name it is imported as
_KERAS_PACKAGES = ("keras", "tf_keras")


def keras_module(obj: Any) -> Any | None:
    """The Keras package ``obj`` is a layer or model of (``keras`` — Keras 3, or Keras 2 where
    ``keras`` is 2.x — or ``tf_keras``), or ``None``.  Only packages already imported are
    looked at: an object of a package that was never imported cannot exist."""
    for name in _KERAS_PACKAGES:
        module = sys.modules.get(name)
        layer_cls = getattr(getattr(module, "layers", None), "Layer", None) if module is not None else None
        if isinstance(layer_cls, type) and isinstance(obj, layer_cls):
            return module
    return None


def keras_flavor(module: Any) -> str:
    """How reports name a Keras package: ``keras`` (3), ``tf_keras``, or ``keras 2``."""
    if module.__name__ == "tf_keras":
        return "tf_keras"
    return "keras 2" if str(getattr(module, "__version__", "3")).startswith("2.") else "keras"


def _image_data_format(module: Any) -> str:
    for holder in (getattr(module, "config", None), getattr(module, "backend", None)):
        read = getattr(holder, "image_data_format", None)
        if callable(read):
            return str(read())
    return "channels_last"


def _is_tensor(obj: Any) -> bool:
    return hasattr(obj, "shape") and hasattr(obj, "dtype") and not isinstance(obj, (np.ndarray, str))


def _symbolic(out: Any) -> bool:
    """Whether a layer call is a trace (Keras building an unbuilt model), not the eager run."""
    tf = sys.modules.get("tensorflow")
    if tf is not None and not tf.executing_eagerly():
        return True  # inside a tf.function / FuncGraph: graph tensors have no values
    first = out
    while isinstance(first, (list, tuple)) and first:
        first = first[0]
    if isinstance(first, dict) and first:
        first = next(iter(first.values()))
    # Keras 3's keras.KerasTensor and Keras 2's tf_keras…keras_tensor.KerasTensor alike
    return any(cls.__name__ == "KerasTensor" for cls in type(first).__mro__)


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


def _forced_training(model: Any) -> list[str]:
    """The layers of a functional model (nested ones included) called with ``training=True`` in
    its graph: ``Dropout(0.5)(x, training=True)``."""
    found: list[str] = []
    try:
        layers = _sublayers(model)
    except AttributeError:
        return found
    for layer in layers:
        for node in getattr(layer, "_inbound_nodes", None) or ():
            arguments = getattr(node, "arguments", None)  # Keras 3
            kwargs = getattr(arguments, "kwargs", None) if arguments is not None else getattr(node, "call_kwargs", None)
            if isinstance(kwargs, dict) and kwargs.get("training") is True:
                found.append(str(layer.name))
                break
    return found


_INDEX_CACHE: ContextVar[dict[int, dict[str, list[Any]]] | None] = ContextVar("parity_keras_layer_index", default=None)


@contextmanager
def layer_index_cache() -> Iterator[None]:
    """Within this block, :func:`layer_named` indexes each model's layers once (a caller looking
    up every layer of a model — weight parity — would otherwise index it once per layer)."""
    token = _INDEX_CACHE.set({})
    try:
        yield
    finally:
        _INDEX_CACHE.reset(token)


def layer_named(model: Any, name: str) -> Any | None:
    """The layer of ``model`` whose taps are called ``name`` (see :func:`tap_names`), or ``None``."""
    cache = _INDEX_CACHE.get()
    index = cache.get(id(model)) if cache is not None else None
    if index is None:
        by_id = {id(layer): layer for layer in _sublayers(model)}
        index = {}
        for i, n in tap_names(model).items():
            if i in by_id:
                index.setdefault(n, []).append(by_id[i])
        if cache is not None:
            cache[id(model)] = index
    hits = index.get(name, [])
    return hits[0] if len(hits) == 1 else None


def _has_sublayers(layer: Any) -> bool:
    try:
        return any(True for _ in layer._flatten_layers(include_self=False, recursive=False))
    except AttributeError:
        return False


class _Patch:
    """One layer attribute replaced by a dispatcher while any capture patches it: each thread
    calls its own wrapper (the innermost it installed), other threads the original."""

    def __init__(self, layer: Any, attr: str) -> None:
        self.had_own = attr in layer.__dict__
        self.own = layer.__dict__.get(attr)
        self.original = getattr(layer, attr)
        self.by_thread: dict[int, list[Any]] = {}
        self.users = 0
        by_thread, original = self.by_thread, self.original

        @functools.wraps(original)  # keeps an activation's __name__: the layer's attrs say "relu"
        def dispatch(*args: Any, **kwargs: Any) -> Any:
            mine = by_thread.get(threading.get_ident())
            return (mine[-1] if mine else original)(*args, **kwargs)

        self.dispatch = dispatch


_PATCHES: dict[tuple[int, str], _Patch] = {}
_PATCH_LOCK = threading.Lock()


@contextmanager
def patched_calls(wrappers: Iterable[tuple[Any, Callable[[Any], Any]]], attr: str = "call") -> Iterator[None]:
    """Replace each layer's ``call`` (or another callable attribute, ``attr``) by
    ``make(original)`` for the duration, for the calling thread only; restore exactly what the
    instance had before (its own attribute, or none) when the last thread is done.

    Several threads may capture one model at once: the instance holds one dispatcher that
    hands each thread its own wrapper, so a thread records only its own forward."""
    me = threading.get_ident()
    mine: list[tuple[tuple[int, str], Any]] = []
    try:
        for layer, make in wrappers:
            key = (id(layer), attr)
            with _PATCH_LOCK:
                patch = _PATCHES.get(key)
                if patch is None:
                    patch = _PATCHES[key] = _Patch(layer, attr)
                    object.__setattr__(layer, attr, patch.dispatch)
                patch.users += 1
                stack = patch.by_thread.setdefault(me, [])
                stack.append(make(stack[-1] if stack else patch.original))
                mine.append((key, layer))
        yield
    finally:
        with _PATCH_LOCK:
            for key, layer in reversed(mine):
                patch = _PATCHES[key]
                stack = patch.by_thread[me]
                stack.pop()
                if not stack:
                    del patch.by_thread[me]
                patch.users -= 1
                if patch.users == 0:
                    del _PATCHES[key]
                    if patch.had_own:
                        object.__setattr__(layer, key[1], patch.own)
                    else:
                        layer.__dict__.pop(key[1], None)


#: layers that apply their ``activation`` once, to their result.  PyTorch has a module of its
#: own for it, so such a layer gives two taps: ``fc`` (its linear result, what a torch
#: ``Linear`` named ``fc`` gives) and ``fc:activation`` (its output, op ``relu``, ``tanh``, …)
_FUSED_ACTIVATION = re.compile(r"^(Dense|EinsumDense|(Depthwise|Separable)?Conv(olution)?[123]D(Transpose)?)$")


def _fused_activation(layer: Any) -> str | None:
    """The name of the non-linear activation ``layer`` applies to its result, or ``None``."""
    if not _FUSED_ACTIVATION.match(type(layer).__name__):
        return None
    activation = layer.__dict__.get("activation")
    name = getattr(activation, "__name__", None)
    return name if callable(activation) and name not in (None, "linear") else None


class KerasBackend(Backend):
    framework = "keras"
    #: the dtype floating-point inputs are cast to before a run (a float64 twin's: ``"float64"``)
    input_dtype: str | None = None
    suffixes = (".keras", ".h5")
    #: what :meth:`load` reads, as a user is told it
    formats = ".keras/.h5 (Keras)"

    @classmethod
    def load(cls, path: Any, **options: Any) -> Any:
        """A ``.keras``/``.h5`` file (option ``safe_mode``, default True), or a Keras 2 SavedModel
        directory, as the live model."""
        from pathlib import Path

        from .kerasload import load_keras

        return load_keras(Path(path), **options)

    @classmethod
    def accepts(cls, obj: Any) -> bool:
        return keras_module(obj) is not None

    @property
    def keras(self) -> Any:
        """The Keras package the model belongs to (Keras 3 ``keras``, ``tf_keras``, Keras 2 ``keras``)."""
        module = keras_module(self.model)
        if module is None:  # pragma: no cover - accepts() let it in
            raise CaptureError(f"{type(self.model).__name__} is not a Keras layer or model.")
        return module

    def _kind(self) -> str:
        keras = self.keras
        model = self.model
        flavor = keras_flavor(keras)
        if isinstance(model, keras.Sequential):
            return f"{flavor} Sequential"
        if any(c.__name__ == "Functional" for c in type(model).__mro__):
            return f"{flavor} functional"
        if isinstance(model, keras.Model):
            return f"{flavor} subclassed"
        return f"{flavor} layer"

    def info(self) -> ModelInfo:
        keras = self.keras
        try:
            params = int(self.model.count_params())
        except ValueError:  # not built yet
            params = None
        return ModelInfo(
            framework="keras",
            framework_version=str(keras.__version__),
            name=self.model.name or type(self.model).__name__,
            kind=self._kind(),
            param_count=params,
            input_spec=self.input_spec(),
        )

    def _default_layout(self, rank: int) -> str | None:
        fmt = _image_data_format(self.keras)
        table = CHANNELS_FIRST if fmt == "channels_first" else CHANNELS_LAST
        return table.get(rank)

    def input_spec(self) -> tuple[InputSpec, ...] | None:
        try:
            inputs = self.model.inputs
        except (AttributeError, ValueError):
            inputs = None
        if not inputs:
            return self._signature_spec()
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
                    layout=self._input_layout(len(shape)),
                )
            )
        return tuple(specs)

    def _signature_spec(self) -> tuple[InputSpec, ...] | None:
        """What a subclassed model declares in ``input_signature`` (transformers' TF models: a
        dict of ``tf.TensorSpec``; none is required; the names, ranks, dtypes and channel axis).
        Its image inputs are channels-first —
        ``pixel_values`` of shape ``(None, num_channels, …)``, transposed inside the model — when
        axis 1 holds the channel count the model's config declares."""
        try:
            signature = getattr(self.model, "input_signature", None)
        except Exception:  # a property that cannot answer for this model
            return None
        if not isinstance(signature, dict) or not signature:
            return None
        config = getattr(self.model, "config", None)
        config = getattr(config, "vision_config", config)
        channels = getattr(config, "num_channels", None)
        specs = []
        for name, t in signature.items():
            shape = getattr(t, "shape", None)
            if shape is None or getattr(shape, "rank", None) is None:
                continue
            # a serving signature, not a constraint: its sizes come from the config (ResNet's 224,
            # Hubert's 16000) and the model takes others; only the channel count is kept
            dims = tuple(None for _ in shape)
            layout = self._default_layout(len(dims))
            if len(dims) in (3, 4, 5) and channels is not None and shape[1] == channels:
                layout = CHANNELS_FIRST.get(len(dims))
                dims = (None, int(channels)) + dims[2:]
            specs.append(InputSpec(name=str(name), shape=dims, dtype=numpy_dtype_name(t.dtype), layout=layout,
                                   required=False))
        return tuple(specs) or None

    def _input_layout(self, rank: int) -> str | None:
        """The layout the model's first layer with a ``data_format`` declares (a model built
        channels-first takes channels-first inputs), else Keras' image data format."""
        if rank in CHANNELS_FIRST:
            for layer in _sublayers(self.model):
                if (layout := _channels_axis_layout(layer, rank)) is not None and getattr(layer, "data_format", None):
                    return layout
        return self._default_layout(rank)

    def capture(self, inputs: Inputs, *, containers: bool = False) -> Trace:
        inputs = cast_floating(inputs, self.input_dtype)
        model = self.model
        arrays = list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
        # a recurrent layer is one layer: its cell's steps run inside it
        every = _sublayers(model)
        inside_rnn = {id(cell) for layer in every if is_keras_rnn(layer) for cell in _sublayers(layer)}
        layers = [
            layer
            for layer in every
            if type(layer).__name__ != "InputLayer" and id(layer) not in inside_rnn
            and (containers or not _has_sublayers(layer) or is_keras_rnn(layer))
        ]
        names = tap_names(model)
        taps: list[Tap] = []
        calls: Counter[str] = Counter()
        layouts: dict[int, tuple[str | None, int]] = {}
        alive: list[Any] = []  # keeps recorded tensors alive so their ids stay unique

        def unique_name(layer: Any) -> str:
            return names.get(id(layer), layer.name)

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

        pending: dict[int, tuple[str, str | None, int | None, tuple]] = {}  # a fused layer's call under way
        raised: list[str] = []  # where the forward raised, when a layer did
        applied: dict[int, bool] = {}

        def make_wrapper(layer: Any, original: Any) -> Any:
            is_container = _has_sublayers(layer) and not is_keras_rnn(layer)

            def wrapped(*args: Any, **kwargs: Any) -> Any:
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
                name = base if k == 0 else f"{base}#{k}"
                if id(layer) in fused:
                    pending[id(layer)] = (name, in_layout, in_rank, in_shape)
                try:
                    out = original(*args, **kwargs)
                except Exception:
                    if not raised:  # the innermost layer raises first
                        raised.append(f" in layer {name!r} ({type(layer).__name__})")
                    raise
                finally:
                    pending.pop(id(layer), None)
                    split = applied.pop(id(layer), False)
                if _symbolic(out):
                    return out  # a build-time trace of an unbuilt model, not the run
                calls[base] += 1
                attrs = _layer_attrs(layer)  # after the call: a layer builds its variables on the first
                # a fused activation's result is the layer's output, named apart from the layer's
                # own (linear) result recorded before it: ``fc`` then ``fc:activation``
                op = str(attrs.get("activation")) if split else type(layer).__name__
                flat = flatten_outputs(out, f"{name}:activation" if split else name, _is_tensor)
                renamed = keras_rnn_names(layer, name, [n for n, _ in flat])  # LSTM/GRU: `name`, `name[h]`, `name[c]`
                if renamed is not None:
                    flat = [(n, t) for n, (_, t) in zip(renamed, flat) if n is not None]
                for tensor_name, t in flat:
                    value = _to_numpy(t)
                    layout, extra = layout_for(layer, value.ndim, in_layout, in_rank, in_shape)
                    layouts[id(t)] = (layout, value.ndim)
                    alive.append(t)
                    append_tap(
                        taps,
                        tensor_name,
                        op,
                        value,
                        layout,
                        role="container" if is_container else "layer",
                        attrs={**attrs, **extra},
                        dtype=numpy_dtype_name(getattr(t, "dtype", value.dtype)),
                    )
                return out

            return wrapped

        def make_activation(layer: Any, activation: Any) -> Any:
            @functools.wraps(activation)  # keeps its __name__: the layer's attrs say "relu", not ours
            def wrapped(x: Any, *args: Any, **kwargs: Any) -> Any:
                y = activation(x, *args, **kwargs)
                context = pending.pop(id(layer), None)  # the first application in this call only
                if context is not None and _is_tensor(x) and not _symbolic(y):
                    name, in_layout, in_rank, in_shape = context
                    attrs = _layer_attrs(layer)
                    value = _to_numpy(x)
                    layout, extra = layout_for(layer, value.ndim, in_layout, in_rank, in_shape)
                    append_tap(
                        taps,
                        name,
                        type(layer).__name__,
                        value,
                        layout,
                        attrs={**attrs, **extra, "activation": "linear", "activation_after": attrs.get("activation")},
                        dtype=numpy_dtype_name(getattr(x, "dtype", value.dtype)),
                    )
                    applied[id(layer)] = True
                return y

            return wrapped

        fused = {id(layer) for layer in layers if _fused_activation(layer) is not None}
        wrapped_calls = patched_calls((layer, lambda call, layer=layer: make_wrapper(layer, call)) for layer in layers)
        wrapped_activations = patched_calls(
            ((layer, lambda act, layer=layer: make_activation(layer, act)) for layer in layers if id(layer) in fused),
            "activation",
        )
        try:
            with wrapped_calls, wrapped_activations:
                out = self.run(inputs)
        except Exception as exc:
            if isinstance(exc, ParityError):  # parity's own (a full spill directory): as it is
                raise
            if "only supports the NHWC tensor format on the CPU" in str(exc):
                raise CaptureError(
                    f"Keras model {model.name!r} has channels-first (data_format=\"channels_first\") "
                    "layers, and TensorFlow cannot run them on this CPU: without oneDNN, TF's CPU "
                    "kernels take channels-last (NHWC) tensors only, and TF enables oneDNN by default "
                    "only on CPUs with AVX-512-VNNI or AMX. Set TF_ENABLE_ONEDNN_OPTS=1 in the "
                    "environment before TensorFlow is imported, or compare a channels-last build of the model."
                ) from exc
            shapes = ", ".join(str(tuple(a.shape)) for a in arrays)
            expected = ""
            if spec := self.input_spec():
                expected = " It expects " + ", ".join(
                    f"{s.name}: {tuple(s.shape)} ({s.layout})" for s in spec
                ) + "."
            raise CaptureError(
                f"running Keras model {model.name!r} on inputs of shape {shapes} failed{''.join(raised[:1])}: "
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
        silent = [unique_name(layer) for layer in layers if unique_name(layer) not in recorded and not _has_sublayers(layer)]
        if silent:
            notes = (
                f"{len(silent)} layer(s) of Keras model {model.name!r} ran without an eager output to record "
                f"({', '.join(silent[:6])}{', …' if len(silent) > 6 else ''}): unused, or called inside a "
                "tf.function / compiled step. Their tensors are not compared.",
            )
        forced = _forced_training(model)
        if forced:
            notes += (
                f"{len(forced)} layer(s) of Keras model {model.name!r} are wired in with training=True "
                f"({', '.join(forced[:6])}{', …' if len(forced) > 6 else ''}): parity ran the model with "
                "training=False, which overrides that (no dropout, BatchNorm on its moving statistics), but the "
                "model called as model(x) runs those layers in training mode, so what it computes differs from "
                "this report. Drop training=True from those calls if the model is meant for inference.",
            )
        return self._trace(taps, arrays, notes)

    def run(self, inputs: Inputs) -> Any:
        """One call of the model in inference mode (``training=False`` where it takes it)."""
        inputs = cast_floating(inputs, self.input_dtype)
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

    # --- parameters (read in parity/capture/keras_params.py) -----------------------------

    def layer_params(self, name: str):
        """The parameters of layer ``name`` as a :class:`~parity.records.LayerParams` in
        PyTorch's layout (see :mod:`parity.capture.keras_params`); the model's layers are
        indexed once per backend."""
        from .keras_params import layer_params

        return layer_params(self.model, name, owner=self)

    @property
    def reads_params(self) -> bool:
        return True
    # --- one layer alone -------------------------------------------------------------

    def _layer(self, name: str) -> Any | None:
        """The layer whose tap is ``name`` (a layer name, or its path where names repeat), or
        ``None`` when the tap is not one layer's single call (``#k``, ``[i]``, ``:activation``)."""
        if not name or "#" in name or "[" in name or ":" in name:
            return None
        return layer_named(self.model, name)

    def can_call(self, name: str) -> bool:
        return self._layer(name) is not None

    def layer_inputs(self, inputs: Inputs, names: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        layers = {n: layer for n in names if (layer := self._layer(n)) is not None}

        def wrap(name: str, original: Any) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                if name not in found and len(args) == 1 and hasattr(args[0], "shape") and not isinstance(args[0], (list, tuple)):
                    try:
                        found[name] = _to_numpy(args[0])
                    except Exception:  # a symbolic tensor: nothing to keep
                        pass
                return original(*args, **kwargs)

            return call

        if layers:
            with patched_calls((layer, lambda original, name=name: wrap(name, original)) for name, layer in layers.items()):
                self.run(inputs)
        return found

    def call_layer(self, name: str, x: np.ndarray) -> np.ndarray:
        layer = self._layer(name)
        if layer is None:
            raise CaptureError(f"{name!r} is not one layer of {self.model.name!r} that can be called alone.")
        # a layer with a fused activation: its tap is the result before the activation
        # (the activation's is ``name:activation``, never called alone)
        linear = ((layer, lambda act: lambda y, *args, **kwargs: y),) if _fused_activation(layer) else ()
        with patched_calls(linear, "activation"):
            try:
                out = layer(x, training=False)
            except TypeError:
                out = layer(x)
        return np.asarray(out)

    def tap_layer(self, name: str) -> str | None:
        if name.endswith(":activation"):
            base = name[: -len(":activation")]
            layer = self._layer(base)
            return base if layer is not None and _fused_activation(layer) is not None else None
        return super().tap_layer(name)

    def call_tap(self, name: str, x: np.ndarray) -> np.ndarray:
        if not name.endswith(":activation"):
            return self.call_layer(name, x)
        layer = self._layer(name[: -len(":activation")])
        if layer is None:
            raise CaptureError(f"{name!r} is not the activation of one layer of {self.model.name!r}.")
        try:  # the whole layer, its fused activation included: what ``name:activation`` records
            out = layer(x, training=False)
        except TypeError:
            out = layer(x)
        return np.asarray(out)

    def export_piece(self, name: str, out: Any, side: str, source: str | None) -> dict:
        """Write layer ``name`` alone for a repro (:mod:`parity.repro`): its serialized config
        (``{side}_layer.json``; a fused activation set to linear, as its tap records the result
        before it) and its weights (``{side}_weights.npz``).  Keras' own layers only."""
        import json
        from pathlib import Path

        layer = self._layer(name)
        if layer is None:
            raise NotImplementedError(f"{name!r} is not one layer that can be cut out")
        keras = self.keras
        config = keras.saving.serialize_keras_object(layer)
        if not str(config.get("module", "")).startswith("keras"):
            raise NotImplementedError(
                f"{name!r} is a {type(layer).__module__}.{type(layer).__qualname__}, not a Keras layer: rebuild it "
                "from your code (its recorded input and output are in the bundle)"
            )
        if _fused_activation(layer):
            config["config"]["activation"] = "linear"
        config.pop("build_config", None)
        (Path(out) / f"{side}_layer.json").write_text(json.dumps(config, default=str))
        np.savez(Path(out) / f"{side}_weights.npz", **{f"w{i}": np.asarray(w) for i, w in enumerate(layer.get_weights())})
        return {"kind": "keras", "config": f"{side}_layer.json", "weights": f"{side}_weights.npz"}

    # --- twins -----------------------------------------------------------------------

    def twin(self, kind: str, *, seed: int = 0) -> "KerasBackend | None":
        """``"fresh"`` and ``"randomized_stats"``: ``clone_model`` (new layers, fresh initialisers)
        of a ``keras.Model``; ``"float64"``: a functional or Sequential model rebuilt layer by
        layer in float64 with the same weights (``None`` for a subclassed model, a model with
        nested models, or one that does not rebuild)."""
        check_kind(kind)
        keras = self.keras
        if not isinstance(self.model, keras.Model):
            return None
        if kind == "float64":
            model = _float64_clone(keras, self.model)
            if model is None:
                return None
            twin = type(self)(model, **self.options)
            twin.input_dtype = "float64"
            return twin
        from ..errors import ModelError

        try:
            model = keras.models.clone_model(self.model)  # new layers, fresh initialisers
        except Exception as exc:  # Keras 2 cannot clone a subclassed model
            raise ModelError(
                f"parity.drift could not build a fresh twin of {type(self.model).__name__} with "
                f"{keras.__name__}.models.clone_model ({type(exc).__name__}: {exc}); pass baseline=(a0, b0) to "
                "parity.diff instead, with a0 built from your model's code."
            ) from exc
        if kind == "randomized_stats":
            rng = np.random.default_rng(seed)
            for layer in getattr(model, "layers", []):
                if isinstance(layer, keras.layers.BatchNormalization):
                    mean, var = random_statistics(rng, int(layer.moving_mean.shape[0]))
                    layer.moving_mean.assign(mean)
                    layer.moving_variance.assign(var)
        return type(self)(model, **self.options)


def _float64_clone(keras: Any, model: Any) -> Any | None:
    """``model`` rebuilt with every layer computing in float64 and its weights copied, or
    ``None`` when it cannot be (subclassed: no graph to rebuild; nested models; a layer whose
    config does not rebuild)."""
    try:
        inputs = list(model.inputs)
    except (AttributeError, ValueError):  # subclassed, or never built
        return None
    if not inputs or any(isinstance(layer, keras.Model) for layer in getattr(model, "layers", [])):
        return None

    def in_float64(layer: Any) -> Any:
        config = layer.get_config()
        config["dtype"] = "float64"
        return type(layer).from_config(config)

    try:
        fresh = [keras.Input(shape=tuple(t.shape[1:]), dtype="float64" if "float" in numpy_dtype_name(t.dtype) else t.dtype)
                 for t in inputs]  # integer ids stay integers
        clone = keras.models.clone_model(model, input_tensors=fresh if len(fresh) > 1 else fresh[0], clone_function=in_float64)
        def own(m: Any) -> list[Any]:
            return [layer for layer in m.layers if not isinstance(layer, keras.layers.InputLayer)]

        if len(own(model)) != len(own(clone)):
            return None
        pairs = list(zip(own(model), own(clone)))
        for original, copied in pairs:  # layer by layer, checked: a weight in the wrong place is a wrong reference
            weights = original.get_weights()
            if original.name != copied.name or [np.shape(w) for w in weights] != [np.shape(w) for w in copied.get_weights()]:
                return None
            copied.set_weights([np.asarray(w, dtype=np.float64) if np.issubdtype(np.asarray(w).dtype, np.floating) else w
                                for w in weights])
    except Exception:  # a layer that does not rebuild from its config in float64
        return None
    if not all(numpy_dtype_name(w.dtype) == "float64" for w in clone.weights if "float" in numpy_dtype_name(w.dtype)):
        return None
    return clone
