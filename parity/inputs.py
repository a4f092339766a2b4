"""Inputs for a pair: validated, given in model A's layout, converted for model B.

Users think in one model's terms, so inputs come in model A's layout and
parity converts them for B (NCHW → NHWC when B declares channels-last
inputs).  With ``inputs=None`` a seeded random batch is made from whichever
side declares its input shape.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .capture.base import Backend, digest_inputs
from .errors import InputError, InputShapeUnknown
from .layout import channels_first, channels_last, input_transform, permutation
from .records import IDENTITY, InputSpec, InputsSummary, Transform

__all__ = ["prepare_inputs", "normalize_inputs", "random_inputs"]

DEFAULT_BATCH = 2


def _as_array(obj: Any, where: str) -> np.ndarray:
    if isinstance(obj, np.ndarray):
        arr = obj
    elif hasattr(obj, "detach") and hasattr(obj, "cpu"):  # a torch tensor
        arr = obj.detach().cpu().numpy()
    elif hasattr(obj, "numpy") and callable(obj.numpy):  # a tf.Tensor
        arr = np.asarray(obj.numpy())
    elif isinstance(obj, (list, tuple, int, float)) or hasattr(obj, "__array__"):
        arr = np.asarray(obj)
    else:
        raise InputError(
            f"{where} is a {type(obj).__name__}; expected a NumPy array (or a torch/TF tensor). "
            "Pass inputs as an array, a tuple/list of arrays, or a dict by input name."
        )
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InputError(f"{where} has dtype {arr.dtype}; expected a numeric array.")
    if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating):
        bad_nan = int(np.isnan(arr).sum())
        bad_inf = int(np.isinf(arr).sum())
        if bad_nan or bad_inf:
            raise InputError(
                f"{where} holds {bad_nan} NaN and {bad_inf} Inf values (shape {arr.shape}); "
                "parity compares models on finite inputs, where a difference means a bug. "
                "Replace them (e.g. np.nan_to_num) or pick other samples."
            )
    if arr.dtype == np.float64:
        # models run in float32; a float64 batch would be cast differently by each framework
        arr = arr.astype(np.float32)
    return arr


def normalize_inputs(inputs: Any) -> list[np.ndarray] | dict[str, np.ndarray]:
    """An array, a tuple/list of arrays or a dict by input name → arrays (validated)."""
    if isinstance(inputs, Mapping):
        if not inputs:
            raise InputError("inputs is an empty dict; give one array per model input.")
        return {str(k): _as_array(v, f"input {k!r}") for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)) and inputs and not isinstance(inputs[0], (int, float)):
        return [_as_array(v, f"input {i}") for i, v in enumerate(inputs)]
    return [_as_array(inputs, "input 0")]


def _arrays(inputs: list[np.ndarray] | dict[str, np.ndarray]) -> list[np.ndarray]:
    return list(inputs.values()) if isinstance(inputs, dict) else list(inputs)


def _fmt(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("None" if s is None else str(s) for s in shape) + ")"


def _conventional_layout(backend: Backend, rank: int) -> str | None:
    if backend.framework == "keras":
        return channels_last(rank)
    if backend.framework == "torch":
        return {2: "NC", 4: "NCHW", 5: "NCDHW"}.get(rank)
    return None


def _spec_for(specs: tuple[InputSpec, ...] | None, i: int, name: str | None) -> InputSpec | None:
    if not specs:
        return None
    if name is not None:
        for s in specs:
            if s.name == name:
                return s
    return specs[i] if i < len(specs) else None


def _check_a(arr: np.ndarray, spec: InputSpec | None, backend: Backend, i: int) -> None:
    if spec is None:
        return
    fits = len(spec.shape) == arr.ndim and all(
        s is None or s == d for s, d in zip(spec.shape, arr.shape)
    )
    if fits:
        return
    model = backend.info().name
    if spec.source == "inferred":
        if len(spec.shape) != arr.ndim:
            return  # the guess was about rank; let the model speak for itself
        hint = ""
        other = channels_last(arr.ndim) if spec.layout == channels_first(arr.ndim) else None
        if other and spec.layout and input_transform(arr.shape, other, spec.shape, spec.layout):
            hint = f" The shape looks like {other}."
        raise InputError(
            f"model A ({model}, {backend.framework}) takes input {spec.name!r} in {spec.layout} "
            f"layout with {spec.shape[1]} channels at axis 1 (its first convolution says so); "
            f"got shape {arr.shape}.{hint} Inputs are given in model A's layout; parity converts "
            "them for model B."
        )
    raise InputError(
        f"model A ({model}, {backend.framework}) expects input {spec.name!r} of shape "
        f"{_fmt(spec.shape)} ({spec.layout or 'layout unknown'}); got {arr.shape} for input {i}. "
        "Inputs are given in model A's layout; parity converts them for model B."
    )


def _convert_for_b(
    arr: np.ndarray,
    layout_a: str | None,
    spec_b: InputSpec | None,
    backend_b: Backend,
    i: int,
) -> Transform:
    rank = arr.ndim
    if spec_b is not None and (spec_b.source == "declared" or len(spec_b.shape) == rank):
        t = input_transform(arr.shape, layout_a, spec_b.shape, spec_b.layout)
        if t is None:
            raise InputError(
                f"model B ({backend_b.info().name}, {backend_b.framework}) expects input "
                f"{spec_b.name!r} of shape {_fmt(spec_b.shape)} ({spec_b.layout or 'layout unknown'}); "
                f"input {i} has shape {arr.shape} in model A's layout ({layout_a or 'unknown'}) and no "
                "NCHW↔NHWC-style permutation of it fits. Check that both models take the same input."
            )
        return t
    layout_b = _conventional_layout(backend_b, rank)
    if layout_a and layout_b and layout_a != layout_b and sorted(layout_a) == sorted(layout_b):
        return Transform(kind="permute", perm=permutation(layout_a, layout_b), label=f"{layout_a}→{layout_b}")
    return IDENTITY


def random_inputs(
    backend_a: Backend, backend_b: Backend, *, seed: int = 0, batch: int = DEFAULT_BATCH
) -> list[np.ndarray] | dict[str, np.ndarray]:
    """A seeded standard-normal batch shaped from A's input spec, or from B's converted back."""
    rng = np.random.default_rng(seed)
    spec_a, spec_b = backend_a.input_spec(), backend_b.input_spec()

    def complete(spec: InputSpec) -> bool:
        return all(s is not None for s in spec.shape[1:])

    # a model exported with a fixed batch (an ONNX or TFLite file) takes only that batch
    fixed = [s.shape[0] for spec in (spec_a, spec_b) if spec for s in spec if s.shape and s.shape[0] is not None]
    if fixed:
        batch = int(fixed[0])

    if spec_a and all(complete(s) for s in spec_a):
        shapes = [((batch,) + tuple(s.shape[1:]), s) for s in spec_a]
        named = len(spec_a) > 1
        arrays = [_random(rng, shape, s) for shape, s in shapes]
        return {s.name: a for (_, s), a in zip(shapes, arrays)} if named else arrays
    if spec_b and all(complete(s) for s in spec_b):
        out = []
        for i, s in enumerate(spec_b):
            arr_b = _random(rng, (batch,) + tuple(s.shape[1:]), s)
            layout_a = spec_a[i].layout if spec_a and i < len(spec_a) else _conventional_layout(backend_a, arr_b.ndim)
            layout_b = s.layout or _conventional_layout(backend_b, arr_b.ndim)
            if layout_a and layout_b and sorted(layout_a) == sorted(layout_b):
                arr_b = np.ascontiguousarray(np.transpose(arr_b, permutation(layout_b, layout_a)))
            out.append(arr_b)
        return out
    declared = {side: ", ".join(f"{s.name} {_fmt(s.shape)}" for s in spec)
                for side, spec in (("A", spec_a), ("B", spec_b)) if spec}
    said = "; ".join(f"{side} declares {shapes}" for side, shapes in declared.items()) or (
        "neither model declares its input shape")
    raise InputShapeUnknown(
        f"inputs=None needs a model that declares a complete input shape, and {said}. "
        "Pass inputs explicitly, e.g. parity.diff(a, b, np.random.rand(8, 3, 224, 224).astype('float32')).",
        declared,
    )


def _random(rng: np.random.Generator, shape: tuple, spec: InputSpec) -> np.ndarray:
    if spec.dtype.startswith(("int", "uint", "bool")):
        raise InputError(
            f"input {spec.name!r} is {spec.dtype}: parity cannot guess valid values for it "
            "(token ids, indices). Pass inputs explicitly."
        )
    return rng.standard_normal(shape).astype(spec.dtype if spec.dtype.startswith("float") else "float32")


def prepare_inputs(
    inputs: Any, backend_a: Backend, backend_b: Backend, *, seed: int = 0
) -> tuple[Any, Any, InputsSummary]:
    """Validate ``inputs`` (model A's layout), convert them for B, and summarise both."""
    source = "given"
    if inputs is None:
        norm = random_inputs(backend_a, backend_b, seed=seed)
        source = f"generated (standard normal, seed {seed})"
    else:
        norm = normalize_inputs(inputs)
    spec_a, spec_b = backend_a.input_spec(), backend_b.input_spec()
    names = list(norm.keys()) if isinstance(norm, dict) else [None] * len(norm)
    arrays_a = _arrays(norm)
    if spec_a and spec_a[0].source == "declared" and len(spec_a) != len(arrays_a):
        raise InputError(
            f"model A ({backend_a.info().name}) takes {len(spec_a)} inputs "
            f"({', '.join(s.name for s in spec_a)}); got {len(arrays_a)}."
        )
    converted: list[np.ndarray] = []
    labels: list[str] = []
    for i, (name, arr) in enumerate(zip(names, arrays_a)):
        sa = _spec_for(spec_a, i, name)
        _check_a(arr, sa, backend_a, i)
        layout_a = sa.layout if sa and sa.layout else _conventional_layout(backend_a, arr.ndim)
        t = _convert_for_b(arr, layout_a, _spec_for(spec_b, i, name), backend_b, i)
        converted.append(np.ascontiguousarray(t.apply(arr)))
        labels.append(t.label + (" (ambiguous: equal dimensions)" if t.ambiguous else ""))
    if isinstance(norm, dict):
        b_names = [s.name for s in spec_b] if spec_b else []
        keys = list(norm.keys())
        if b_names and set(keys) != set(b_names) and len(b_names) == len(keys):
            keys = b_names  # same order, the other side's names
        inputs_b: Any = dict(zip(keys, converted))
    else:
        inputs_b = converted
    summary = InputsSummary(
        shapes_a=tuple(tuple(a.shape) for a in arrays_a),
        shapes_b=tuple(tuple(a.shape) for a in converted),
        dtypes=tuple(str(a.dtype) for a in arrays_a),
        conversions=tuple(labels),
        source=source,
        digest=digest_inputs(arrays_a),
    )
    return norm, inputs_b, summary
