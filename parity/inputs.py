"""Inputs for a pair: validated, given in model A's layout, converted for model B.

Users think in one model's terms, so inputs come in model A's layout and
parity converts them for B (NCHW → NHWC when B declares channels-last
inputs).  With ``inputs=None`` a seeded random batch is made from whichever
side declares its input shape.
"""

from __future__ import annotations

import math

import re
from typing import Any, Mapping, Sequence

import numpy as np

from .capture.base import Backend, digest_inputs
from .errors import InputError, InputShapeUnknown, closest
from .layout import channels_first, channels_last, input_transform, permutation
from .records import IDENTITY, InputSpec, InputsSummary, Transform

__all__ = ["prepare_inputs", "normalize_inputs", "random_inputs", "bind_inputs", "input_role", "parse_input_map"]

DEFAULT_BATCH = 2


def _as_array(obj: Any, where: str, keep_float64: bool = False) -> np.ndarray:
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
    if arr.size == 0:
        raise InputError(
            f"{where} is empty (shape {tuple(arr.shape)}): a batch without samples compares nothing, "
            "and every layer would pass. Give at least one sample, e.g. x[:1] instead of x[:0]."
        )
    if arr.dtype == np.float64 and not keep_float64:
        # models run in float32; a float64 batch would be cast differently by each framework
        arr = arr.astype(np.float32)
    return arr


def normalize_inputs(inputs: Any, *, keep_float64: bool = False) -> list[np.ndarray] | dict[str, np.ndarray]:
    """An array, a tuple/list of arrays or a dict by input name → arrays (validated; float64
    cast to float32 unless ``keep_float64``: the model computes in float64)."""
    if isinstance(inputs, Mapping):
        if not inputs:
            raise InputError("inputs is an empty dict; give one array per model input.")
        return {str(k): _as_array(v, f"input {k!r}", keep_float64) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)) and inputs and not isinstance(inputs[0], (int, float)):
        return [_as_array(v, f"input {i}", keep_float64) for i, v in enumerate(inputs)]
    return [_as_array(inputs, "input 0", keep_float64)]


def _arrays(inputs: list[np.ndarray] | dict[str, np.ndarray]) -> list[np.ndarray]:
    return list(inputs.values()) if isinstance(inputs, dict) else list(inputs)


def _fmt(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("None" if s is None else str(s) for s in shape) + ")"


def conventional_layout(backend: Backend, rank: int) -> str | None:
    """The layout a tensor of ``rank`` has by ``backend``'s framework's convention (Keras
    channels-last, PyTorch channels-first), or ``None`` when the framework has none."""
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
    layout_b = conventional_layout(backend_b, rank)
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
    tokens = token_inputs(backend_a, backend_b, seed=seed, batch=batch)
    if tokens is not None:
        return tokens

    if spec_a and all(complete(s) for s in spec_a):
        shapes = [((batch,) + tuple(s.shape[1:]), s) for s in spec_a]
        named = len(spec_a) > 1
        arrays = [_random(rng, shape, s) for shape, s in shapes]
        return {s.name: a for (_, s), a in zip(shapes, arrays)} if named else arrays
    if spec_b and all(complete(s) for s in spec_b):
        out = []
        for i, s in enumerate(spec_b):
            arr_b = _random(rng, (batch,) + tuple(s.shape[1:]), s)
            layout_a = spec_a[i].layout if spec_a and i < len(spec_a) else conventional_layout(backend_a, arr_b.ndim)
            layout_b = s.layout or conventional_layout(backend_b, arr_b.ndim)
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


def _widened(arr: np.ndarray) -> np.ndarray:
    return arr.astype(np.float64) if arr.dtype in (np.float16, np.float32) else arr


#: the largest input parity generates itself (a declared shape past it is asked for instead)
MAX_GENERATED_BYTES = 1 << 30


def _random(rng: np.random.Generator, shape: tuple, spec: InputSpec) -> np.ndarray:
    if spec.dtype.startswith(("int", "uint", "bool")):
        raise InputError(
            f"input {spec.name!r} is {spec.dtype}: parity cannot guess valid values for it "
            "(token ids, indices). Pass inputs explicitly."
        )
    dtype = np.dtype(spec.dtype if spec.dtype.startswith("float") else "float32")
    nbytes = math.prod(int(d) for d in shape) * dtype.itemsize
    if nbytes > MAX_GENERATED_BYTES:
        raise InputError(
            f"input {spec.name!r} is declared as {tuple(int(d) for d in shape)} ({dtype.name}, "
            f"{nbytes / 2**30:,.1f} GiB): too large to generate a random batch for (parity generates at "
            f"most {MAX_GENERATED_BYTES / 2**30:g} GiB per input). Pass inputs of the size you mean, "
            "e.g. parity.diff(a, b, x) or parity diff A B --inputs x.npy."
        )
    if any(int(d) == 0 for d in shape):
        raise InputError(
            f"input {spec.name!r} is declared as {tuple(int(d) for d in shape)}: an empty batch compares "
            "nothing. Pass inputs with at least one sample."
        )
    return rng.standard_normal(shape).astype(dtype)


def prepare_inputs(
    inputs: Any,
    backend_a: Backend,
    backend_b: Backend,
    *,
    seed: int = 0,
    input_map: Mapping[str, str] | None = None,
) -> tuple[Any, Any, InputsSummary]:
    """Validate ``inputs`` (model A's layout), bind each to B's input (by name, by
    ``input_map``, or by unambiguous evidence — never silently by position), convert them
    for B, and summarise both."""
    source = "given"
    a64 = backend_a.compute_dtype() == "float64"
    if inputs is None:
        norm = random_inputs(backend_a, backend_b, seed=seed)
        source = f"generated ({_generated_what(norm)}, seed {seed})"
    else:
        norm = normalize_inputs(inputs, keep_float64=a64)
    if a64:  # a float64 model A runs in float64: given float32 samples (or generated ones) are widened
        norm = {k: _widened(v) for k, v in norm.items()} if isinstance(norm, dict) else [_widened(v) for v in norm]
    spec_a, spec_b = backend_a.input_spec(), backend_b.input_spec()
    names = list(norm.keys()) if isinstance(norm, dict) else [None] * len(norm)
    arrays_a = _arrays(norm)
    needed = [s for s in spec_a or () if s.required]  # transformers' TF models need none of their signature
    if needed and spec_a[0].source == "declared" and len(spec_a) != len(arrays_a):
        raise InputError(
            f"model A ({backend_a.info().name}) takes {len(spec_a)} inputs "
            f"({', '.join(s.name for s in spec_a)}); got {len(arrays_a)}."
        )
    if isinstance(norm, dict):
        binding = bind_inputs(norm, spec_b, input_map, backend_a=backend_a, backend_b=backend_b)
        b_names = [binding[n][0] for n in names]
        bound = tuple(f"{n} → {binding[n][0]} ({binding[n][1]})" for n in names)
    else:
        if input_map:
            raise InputError(
                f"input_map={dict(input_map)!r} names inputs, but the inputs were given by position "
                f"({len(arrays_a)} array(s)). Give them as a dict by model A's input names."
            )
        b_names = [None] * len(arrays_a)
        bound = tuple(f"input {i} → input {i} (by position)" for i in range(len(arrays_a))) if len(arrays_a) > 1 else ()
    converted: list[np.ndarray] = []
    labels: list[str] = []
    for i, (name, b_name, arr) in enumerate(zip(names, b_names, arrays_a)):
        sa = _spec_for(spec_a, i, name)
        _check_a(arr, sa, backend_a, i)
        layout_a = sa.layout if sa and sa.layout else conventional_layout(backend_a, arr.ndim)
        sb = _spec_named(spec_b, b_name) if b_name is not None else _spec_for(spec_b, i, None)
        t = _convert_for_b(arr, layout_a, sb, backend_b, i)
        arr_b = np.ascontiguousarray(t.apply(arr))
        if arr_b.dtype == np.float64 and backend_b.compute_dtype() != "float64":
            arr_b = arr_b.astype(np.float32)  # B computes in float32: it gets what it would be given
        converted.append(arr_b)
        labels.append(t.label + (" (ambiguous: equal dimensions)" if t.ambiguous else ""))
    inputs_b: Any = dict(zip(b_names, converted)) if isinstance(norm, dict) else converted
    summary = InputsSummary(
        shapes_a=tuple(tuple(a.shape) for a in arrays_a),
        shapes_b=tuple(tuple(a.shape) for a in converted),
        dtypes=tuple(str(a.dtype) for a in arrays_a),
        conversions=tuple(labels),
        source=source,
        digest=digest_inputs(arrays_a),
        bindings=bound,
    )
    return norm, inputs_b, summary


# --- binding A's named inputs to B's ------------------------------------------------------

#: what an input is, read from its name: (role, pattern).  The first that matches wins.
_ROLES = (
    ("mask", re.compile(r"mask")),
    ("segment ids", re.compile(r"token_?type|segment")),
    ("position ids", re.compile(r"position")),
    ("token ids", re.compile(r"(input|token)_?ids?$|^ids$|^tokens?$|^token_ids")),
    ("pixels", re.compile(r"pixel|image")),
    ("audio", re.compile(r"input_(values|features)|audio|wave")),
)


def input_role(name: str) -> tuple[bool, str | None]:
    """``(decoder?, role)`` an input's name says: ``attention_mask`` → (False, "mask"),
    ``decoder_token_ids`` → (True, "token ids"); the role is ``None`` when the name says nothing."""
    low = name.lower()
    decoder = low.startswith("decoder")
    return decoder, next((role for role, pattern in _ROLES if pattern.search(low)), None)


def _values_kind(arr: np.ndarray) -> str:
    """``"0/1"`` (an integer or bool array holding only 0 and 1), ``"integers"``, or ``"floats"``."""
    if arr.dtype == bool:
        return "0/1"
    if np.issubdtype(arr.dtype, np.integer):
        return "0/1" if arr.size and int(arr.min()) >= 0 and int(arr.max()) <= 1 else "integers"
    return "floats"


def _describe(arr: np.ndarray) -> str:
    kind = _values_kind(arr)
    span = f", values {arr.min()}…{arr.max()}" if arr.size and kind != "floats" else ""
    return f"{arr.dtype} {tuple(arr.shape)}{span}"


def _fits(name_a: str, arr: np.ndarray, spec: InputSpec) -> str | None:
    """Why A's input ``name_a`` can be B's ``spec`` (the evidence, for the report), or ``None``."""
    kind = _values_kind(arr)
    b_float = spec.dtype.startswith(("float", "bfloat", "half"))
    if (kind == "floats") != b_float:
        return None
    if len(spec.shape) != arr.ndim:
        return None
    dec_a, role_a = input_role(name_a)
    dec_b, role_b = input_role(spec.name)
    if dec_a != dec_b:
        return None
    if role_a is not None and role_b is not None and role_a != role_b:
        return None
    role = role_a or role_b
    if role == "mask" and kind != "0/1":
        return None
    if role in ("token ids", "segment ids", "position ids") and kind == "floats":
        return None
    if role is None:
        return f"the only {kind} input of rank {arr.ndim}"
    said = "both names say" if role_a and role_b else f"{'A' if role_a else 'B'}'s name says"
    return f"by evidence: {said} {role}; values {kind}"


def _perfect_matchings(candidates: dict[str, list[str]], limit: int = 2) -> list[dict[str, str]]:
    """Up to ``limit`` one-to-one assignments of every key to one of its candidates."""
    keys = sorted(candidates, key=lambda k: len(candidates[k]))
    found: list[dict[str, str]] = []

    def extend(i: int, taken: dict[str, str]) -> None:
        if len(found) >= limit:
            return
        if i == len(keys):
            found.append(dict(taken))
            return
        for c in candidates[keys[i]]:
            if c not in taken.values():
                taken[keys[i]] = c
                extend(i + 1, taken)
                del taken[keys[i]]

    extend(0, {})
    return found


def _sides(norm: Mapping[str, np.ndarray], spec_b: Sequence[InputSpec]) -> str:
    a = ", ".join(f"{n} ({_describe(v)})" for n, v in norm.items())
    b = ", ".join(f"{s.name} ({s.dtype} {_fmt(s.shape)})" for s in spec_b)
    return f"model A was given {a}; model B takes {b}"


def bind_inputs(
    norm: Mapping[str, np.ndarray],
    spec_b: Sequence[InputSpec] | None,
    input_map: Mapping[str, str] | None = None,
    *,
    backend_a: Backend | None = None,
    backend_b: Backend | None = None,
) -> dict[str, tuple[str, str]]:
    """B's input name for each of A's named inputs, with how it was bound: ``"same name"``,
    ``"input_map"``, or the evidence (``"by evidence: both names say mask; values 0/1"``).

    A name B also has binds to it; the rest bind only where exactly one one-to-one
    assignment fits dtype, rank and what names and values say (integer token ids vs a 0/1
    mask).  Anything else raises :class:`InputError` listing both sides and asking for
    ``input_map``."""
    names_b = [s.name for s in spec_b] if spec_b else []
    by_name = {s.name: s for s in spec_b or ()}
    binding: dict[str, tuple[str, str]] = {}
    for a, b in (input_map or {}).items():
        if a not in norm:
            raise InputError(
                f"input_map names {a!r}, which is not one of model A's inputs ({', '.join(norm)})."
                + closest(a, norm)
            )
        if names_b and b not in by_name:
            raise InputError(
                f"input_map binds {a!r} to {b!r}, which is not one of model B's inputs ({', '.join(names_b)})."
                + closest(b, names_b)
            )
        binding[a] = (b, "input_map")
    if not names_b:  # B declares no input names: it is called with A's
        for a in norm:
            binding.setdefault(a, (a, "same name"))
        return binding
    taken = {b for b, _ in binding.values()}
    for a in norm:
        if a not in binding and a in by_name and a not in taken:
            binding[a] = (a, "same name")
            taken.add(a)
    rest_a = [a for a in norm if a not in binding]
    rest_b = [s for s in spec_b or () if s.name not in taken]
    if rest_a:
        candidates = {a: [s.name for s in rest_b if _fits(a, norm[a], s)] for a in rest_a}
        matchings = _perfect_matchings(candidates)
        if len(matchings) != 1:
            problem = (
                "more than one way to bind them fits" if matchings
                else "no one-to-one binding fits their dtypes, ranks, names and values"
            )
            raise InputError(
                f"cannot tell which of model B's inputs each of model A's inputs {', '.join(rest_a)} is: {problem} "
                f"({_sides(norm, spec_b or ())}). Name them, e.g. input_map="
                + "{" + ", ".join(f"{a!r}: {b!r}" for a, b in zip(rest_a, [s.name for s in rest_b] + ["…"] * len(rest_a))) + "}"
                + " (CLI: --input-map a=b,c=d; pair key input_map)."
            )
        (found,) = matchings
        for a, b in found.items():
            binding[a] = (b, _fits(a, norm[a], by_name[b]) or "by evidence")
    missing = [s for s in spec_b or () if s.required and s.name not in {b for b, _ in binding.values()}]
    if missing:
        raise InputError(
            f"model B needs input(s) {', '.join(s.name for s in missing)} that no input given for model A binds to "
            f"({_sides(norm, spec_b or ())}). Give model A the same input (e.g. zeros for segment ids) and bind it, "
            "or say which is which with input_map."
        )
    return binding


def _spec_named(specs: tuple[InputSpec, ...] | None, name: str) -> InputSpec | None:
    return next((s for s in specs or () if s.name == name), None)


# --- inputs for token models ---------------------------------------------------------------

#: the length of a generated token sequence
TOKENS = 8


def declared_vocabulary(backend: Backend) -> int | None:
    """The vocabulary size a token model declares (transformers' ``config.vocab_size``,
    keras-hub's ``vocabulary_size``), or ``None``."""
    model = getattr(backend, "model", None)
    for holder, attr in ((getattr(model, "config", None), "vocab_size"), (model, "vocabulary_size")):
        value = getattr(holder, attr, None) if holder is not None else None
        if isinstance(value, int) and value > 1:
            return value
    return None


def _declared_names(backend: Backend) -> list[str]:
    spec = backend.input_spec()
    if spec:
        return [s.name for s in spec]
    names = getattr(backend, "_input_names", None)
    return list(names()) if callable(names) else []


def token_inputs(backend_a: Backend, backend_b: Backend, *, seed: int, batch: int) -> dict[str, np.ndarray] | None:
    """Valid inputs for a token model: ids drawn below the declared vocabulary size, a full
    mask, zero segment ids — named as model A takes them — or ``None`` when neither model
    declares a vocabulary."""
    vocab = declared_vocabulary(backend_a) or declared_vocabulary(backend_b)
    if vocab is None:
        return None
    names = _declared_names(backend_a)
    declared = {s.name: s for s in backend_a.input_spec() or ()}
    config = getattr(getattr(backend_a, "model", None), "config", None)
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name in names:
        decoder, role = input_role(name)
        if decoder and not encoder_decoder and name not in declared:
            continue  # an optional decoder input of a model without a decoder of its own
        dtype = declared[name].dtype if name in declared and declared[name].dtype.startswith(("int", "uint")) else "int64"
        if role == "token ids":
            out[name] = rng.integers(0, vocab, (batch, TOKENS)).astype(dtype)
        elif role == "mask" and re.search("attention|padding", name):
            out[name] = np.ones((batch, TOKENS), dtype=dtype)
        elif role == "segment ids" and name in declared and declared[name].required:
            out[name] = np.zeros((batch, TOKENS), dtype=dtype)
    return out if any(input_role(n)[1] == "token ids" for n in out) else None


def _generated_what(norm: Any) -> str:
    if isinstance(norm, dict) and any(input_role(n)[1] == "token ids" for n in norm):
        return "token ids below the declared vocabulary size, full masks"
    return "standard normal"


def parse_input_map(text: str | None) -> dict[str, str] | None:
    """``"input_ids=token_ids,attention_mask=padding_mask"`` (the CLI's ``--input-map``) → a dict."""
    if text is None:
        return None
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        a, sep, b = part.partition("=")
        if not sep or not a.strip() or not b.strip():
            raise InputError(
                f"--input-map {text!r}: {part!r} is not A_NAME=B_NAME; give e.g. "
                "--input-map input_ids=token_ids,attention_mask=padding_mask."
            )
        out[a.strip()] = b.strip()
    return out
