"""The small interface every framework backend fills in.

A backend wraps one live model.  It knows its framework and nothing else:
it reports what the model is (:meth:`Backend.info`), what inputs it declares
(:meth:`Backend.input_spec`), and runs it once on NumPy inputs recording
every intermediate tensor (:meth:`Backend.capture`).

It is also the only door to the live model for the rest of parity.  A backend of
a layer-by-layer framework (PyTorch, Keras) offers what replay, weight parity, the
detectors, drift and the float64 reference need, in NumPy: the input a named layer
received (:meth:`Backend.layer_inputs`), one layer called alone
(:meth:`Backend.call_layer`), a layer's parameters as a frozen record in a canonical
layout (:meth:`Backend.layer_params`), a twin (:meth:`Backend.twin`: fresh
initialisation, randomised statistics, a float64 copy) and the precision the model
computes in (:meth:`Backend.precision`).  Graph formats say what they cannot do
(``False`` / ``None`` / ``{}``, the defaults here), and callers ask instead of
checking class names.  Loading a file asks each backend class which suffixes it
takes (:attr:`Backend.suffixes`, :meth:`Backend.load`).

Adding a backend is one module with a subclass of :class:`Backend` and its line in
``parity/capture/__init__.py``'s registry.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, Mapping, Protocol, Sequence

import numpy as np

from ..records import InputSpec, LayerParams, ModelInfo, Tap, Trace

#: the inputs as a backend receives them: positional arrays or arrays by input name
Inputs = Sequence[np.ndarray] | Mapping[str, np.ndarray]


class Backend(ABC):
    """One live model of one framework."""

    #: short framework name used in records and reports ("torch", "keras")
    framework: str = ""
    #: the file suffixes :meth:`load` reads (lower case, with the dot), in the order tried
    suffixes: tuple[str, ...] = ()

    def __init__(self, model: Any, **options: Any) -> None:
        self.model = model
        self.options = options

    @classmethod
    @abstractmethod
    def accepts(cls, obj: Any) -> bool:
        """Whether ``obj`` is a model of this backend's framework.

        Must not import the framework: look in ``sys.modules`` first, since an
        object of a framework that was never imported cannot exist.
        """

    @abstractmethod
    def info(self) -> ModelInfo:
        """Framework, version, class name, kind, parameter count, input spec."""

    @abstractmethod
    def input_spec(self) -> tuple[InputSpec, ...] | None:
        """The inputs the model declares (or that can be inferred), or ``None``."""

    @abstractmethod
    def capture(self, inputs: Inputs, *, containers: bool = False) -> Trace:
        """Run the model once on ``inputs`` (in this model's own layout).

        Returns a :class:`Trace` whose taps are in execution order (a layer's
        tap is recorded when the layer returns), followed by one tap per model
        output with ``role="output"`` named ``"output"`` (``"output[i]"`` /
        ``"output[key]"`` for several).  Leaf layers only unless ``containers``.
        """

    # --- loading --------------------------------------------------------------------

    @classmethod
    def load(cls, path: Any, **options: Any) -> Any:
        """The model saved at ``path`` (one of :attr:`suffixes`), as this backend wraps it.

        Raises :class:`~parity.errors.ModelError` for a file it cannot read."""
        raise NotImplementedError(f"{cls.__name__} loads no files")

    # --- the live model, layer by layer (graph formats: the defaults, "cannot") -------

    def can_call(self, name: str) -> bool:
        """Whether the layer ``name`` (a tap name of this model) can be called on its own
        by :meth:`call_layer`, and its input recorded by :meth:`layer_inputs`."""
        return False

    def layer_inputs(self, inputs: Inputs, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Run the model once on ``inputs``, keeping the first (single) tensor input each
        named layer received, by name; layers that cannot be called alone are left out."""
        return {}

    def call_layer(self, name: str, x: np.ndarray) -> np.ndarray:
        """The output of layer ``name`` called alone on ``x`` (in this model's layout), in
        inference mode; for a layer with a fused activation, the output its tap records."""
        raise NotImplementedError(f"{type(self).__name__} cannot call one layer alone")

    def tap_layer(self, name: str) -> str | None:
        """The layer whose call computes tap ``name`` from that layer's input — ``name`` itself
        where :meth:`can_call`, else None; a backend whose layers record their fused activation
        apart (Keras' ``conv:activation``) names the layer that computes it with its activation
        (:meth:`call_tap`)."""
        return name if self.can_call(name) else None

    def call_tap(self, name: str, x: np.ndarray) -> np.ndarray:
        """Tap ``name`` computed alone from ``x``, the input of the layer :meth:`tap_layer` names."""
        return self.call_layer(name, x)

    #: whether :meth:`call_from` can run a piece of this graph (graph formats that can be cut)
    runs_pieces: bool = False

    def call_from(self, name: str, source: str, x: np.ndarray) -> np.ndarray:
        """Tap ``name`` computed by the piece of the graph between tap ``source`` and it, fed
        ``x`` (in this model's layout) at ``source``: the layer's own computation where the
        model cannot call a layer alone, but its graph can be cut.  Raises
        :class:`NotImplementedError` where the graph cannot be cut there (the piece needs
        another input than ``source``, or holds control flow)."""
        raise NotImplementedError(f"{type(self).__name__} cannot run a piece of its graph")

    def layer_params(self, name: str) -> LayerParams | None:
        """The parameters of layer ``name`` (a tap name) in the canonical layout, or ``None``
        when this backend cannot read parameters (graph formats).  Raises
        :class:`~parity.errors.MappingError` when the model has no such layer."""
        return None

    @property
    def reads_params(self) -> bool:
        """Whether :meth:`layer_params` can read this model's parameters."""
        return False

    def twin(self, kind: str, *, seed: int = 0) -> "Backend | None":
        """A backend of a copy of this model: ``"fresh"`` (freshly initialised parameters
        and statistics), ``"randomized_stats"`` (fresh, with random normalisation statistics)
        or ``"float64"`` (the same weights, computing in float64).  ``None`` when this
        backend cannot make that twin; :class:`~parity.errors.ModelError` when it should
        and the model refuses."""
        return None

    def compute_dtype(self) -> str | None:
        """The floating dtype the model's parameters are in, when the backend can tell and they
        all agree (``"float64"`` for a ``model.double()``): floating inputs are cast to it, so a
        float64 model runs in float64.  ``None``: the inputs are given as they are (float32)."""
        return None

    def precision(self) -> tuple[str, str] | None:
        """The precision the model computes in, read from the model itself (a TFLite
        flatbuffer's tensor types), and how it was found: ``("int8", "detected: …")``;
        ``None`` when the model does not say (its recorded dtypes then decide)."""
        return None

    # --- helpers shared by backends -------------------------------------------------

    def _trace(self, taps: Sequence[Tap], arrays: Sequence[np.ndarray], notes: Sequence[str] = ()) -> Trace:
        """The trace of one run on ``arrays``: its taps, what the model is (read now, after the
        run), the input shapes and their digest."""
        return Trace(
            taps=tuple(taps),
            model=self.info(),
            input_shapes=tuple(tuple(a.shape) for a in arrays),
            inputs_digest=digest_inputs(arrays),
            notes=tuple(notes),
        )

    @property
    def default_layout(self) -> str | None:
        """The layout this framework uses for 4-D image tensors by convention."""
        return None


class TapSink(Protocol):
    """Where a capture's values go once they pass a memory budget (see :mod:`parity.spill`)."""

    def take(self, value: np.ndarray) -> np.ndarray:
        """``value`` itself, or a read-only memory map of a copy written to disk."""


_SINK: ContextVar[TapSink | None] = ContextVar("parity_tap_sink", default=None)


@contextmanager
def sink(target: TapSink | None) -> Iterator[None]:
    """Send every value recorded by :func:`append_tap` in this block through ``target``."""
    token = _SINK.set(target)
    try:
        yield
    finally:
        _SINK.reset(token)


def append_tap(
    taps: list[Tap],
    name: str,
    op: str,
    value: np.ndarray,
    layout: str | None,
    *,
    role: str = "layer",
    attrs: Mapping[str, Any] | None = None,
    dtype: str | None = None,
) -> Tap:
    """Record ``value`` as the next tap of ``taps`` (its index is its position); ``dtype``
    defaults to the array's own (give it when the framework's differs, e.g. bfloat16).

    Inside :func:`sink`, the value may be written to disk at once and kept as a memory map:
    a capture past its memory budget holds no more than the budget while the model runs."""
    target = _SINK.get()
    if target is not None:
        value = target.take(value)
    tap = Tap(
        name=name,
        op=op,
        index=len(taps),
        shape=tuple(value.shape),
        dtype=dtype if dtype is not None else str(value.dtype),
        layout=layout,
        value=value,
        role=role,
        attrs=dict(attrs) if attrs else {},
    )
    taps.append(tap)
    return tap


def digest_inputs(arrays: Sequence[np.ndarray]) -> str:
    """A short content hash of the inputs, so two traces can be checked to share them."""
    h = hashlib.sha256()
    for arr in arrays:
        arr = np.ascontiguousarray(arr)
        h.update(str(arr.dtype).encode())
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


def flatten_outputs(obj: Any, prefix: str, is_tensor) -> list[tuple[str, Any]]:
    """Flatten a nested tuple/list/dict output into ``(name, tensor)`` pairs.

    A single tensor keeps ``prefix`` as its name; elements get ``prefix[i]`` or
    ``prefix[key]``, nested as deep as the structure goes.  Non-tensor leaves
    (None, ints) are dropped.
    """
    if is_tensor(obj):
        return [(prefix, obj)]
    out: list[tuple[str, Any]] = []
    if isinstance(obj, Mapping):
        items = list(obj.items())
    elif isinstance(obj, (tuple, list)):
        items = list(enumerate(obj))
    else:
        # dataclass-like outputs (e.g. transformers ModelOutput) expose to_tuple / items
        if hasattr(obj, "items"):
            items = list(obj.items())
        else:
            return out
    for key, val in items:
        out.extend(flatten_outputs(val, f"{prefix}[{key}]", is_tensor))
    return out


def numpy_dtype_name(dtype: Any) -> str:
    """A dtype name as NumPy spells it (``float32``, ``bfloat16``, ``int64``)."""
    name = str(dtype)
    for prefix in ("torch.", "<dtype: '", "tf."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name.rstrip("'>")
