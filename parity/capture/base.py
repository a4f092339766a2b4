"""The small interface every framework backend fills in.

A backend wraps one live model.  It knows its framework and nothing else:
it reports what the model is (:meth:`Backend.info`), what inputs it declares
(:meth:`Backend.input_spec`), and runs it once on NumPy inputs recording
every intermediate tensor (:meth:`Backend.capture`).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, Mapping, Protocol, Sequence

import numpy as np

from ..records import InputSpec, ModelInfo, Tap, Trace

#: the inputs as a backend receives them: positional arrays or arrays by input name
Inputs = Sequence[np.ndarray] | Mapping[str, np.ndarray]


class Backend(ABC):
    """One live model of one framework."""

    #: short framework name used in records and reports ("torch", "keras")
    framework: str = ""

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
