"""Weight parity: the parameters of aligned layers, compared before any activation is.

For every matched pair whose layers hold parameters (convolutions, depthwise and
transposed convolutions, dense layers, BatchNorm, LayerNorm/GroupNorm/RMSNorm,
embeddings), each parameter is read through the models' backends as a
:class:`~parity.records.LayerParams` record in a canonical layout (PyTorch's: conv
``(O, I/g, *k)``, dense ``(out, in)``, depthwise ``(C·M, 1, *k)``; see
:meth:`parity.capture.base.Backend.layer_params`) and compared under the transform the pair implies — including the
row order of a dense layer that follows a flatten whose order differs between the
sides (torch flattens ``(C,H,W)``, a Keras ``Flatten`` of an NHWC tensor ``(H,W,C)``).

When a parameter differs, the usual conversion bugs are tried before saying so:

* ``"transposed"`` — the kernel equals A's transposed the other way (a square dense
  weight copied without ``.T``; a conv kernel with kh/kw swapped, as NumPy's ``.T``
  does; in/out channels swapped; a spatially flipped kernel), or the rows of a dense
  layer after a flatten are in the other flatten order (diagnosis ``flatten_order``);
* ``"swapped"`` — two parameters of the layer hold each other's values
  (``running_mean`` ↔ ``running_var``, ``weight`` ↔ ``bias``);
* ``"missing"`` — one side has the parameter (a bias, BatchNorm's ``gamma``/``beta``)
  and the other has none, or only zeros, while A's is not the neutral value;
* ``"shape"`` — no transform makes the shapes agree;
* ``"differs"`` — otherwise, with the relative error and, where it fits, how
  (``scaled by k``, ``offset by c``, ``variance holds the standard deviation``).

Deliberately ignored: ``num_batches_tracked`` (a training counter that changes no
output in eval mode) and optimizer state (slots, moments, iteration counters: not part
of what a model computes; Keras keeps it on the optimizer, never in ``layer.weights``).
Layers of other kinds are compared only by identical parameter names; parameters of
saved graph formats (ONNX, TFLite, TF graphs: backends whose ``reads_params`` is false) are
not read.

The flatten order of a dense layer's input is read from the taps before it on each
side (a Keras ``Flatten`` tap says ``N(HWC)``, a ``Permute`` before it changes that).
Pass the whole :class:`~parity.records.Alignment` so the unmatched taps (``Flatten``,
``Permute``) are seen; with matches alone the order cannot always be known, and a
kernel matching in either order is then accepted with a note.

All comparisons are whole-array NumPy operations in float64; nothing here imports a
framework.  The diagnoses the comparisons support are made in :mod:`parity.diagnose.params`.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable

import numpy as np

from .diagnose.params import weight_diagnoses, with_evidence
from .errors import MappingError, ModelError
from .metrics import relative_error
from .records import Alignment, LayerParams, Match, Param, ParamDiff, Tap, Unmatched
from .weight_layouts import KNOWN_KINDS, LayerPair, alternatives, expected_order, flat_info, reorder_rows

__all__ = ["weight_parity", "weight_diagnoses", "find_layer", "layer_params"]

#: relative error allowed for a parameter copied in a dtype (copies are exact; casts are not)
_TOL = {"float64": 1e-9, "float32": 1e-6, "float16": 2e-3, "bfloat16": 1.6e-2}
_DEFAULT_TOL = 1e-6
#: the value a parameter has when a layer leaves it out (no bias = zero bias)
_NEUTRAL = {"bias": 0.0, "beta": 0.0, "mean": 0.0, "gamma": 1.0, "var": 1.0}
_ROLE_ORDER = ("kernel", "recurrent", "bias", "recurrent_bias", "gamma", "beta", "mean", "var", "embeddings")


# --- reading parameters, through the backends ------------------------------------------------


def _backend(model: Any):
    """The backend of ``model`` (a backend is its own), or ``None`` for an object no backend takes."""
    from .capture import backend_for

    try:
        return backend_for(model)
    except ModelError:
        return None


def _base_name(tap_name: str) -> str:
    """The layer a tap belongs to: ``layer1.0#1`` / ``lstm[0]`` → ``layer1.0`` / ``lstm``."""
    name = tap_name.split("#", 1)[0]
    return name.split("[", 1)[0]


def find_layer(model: Any, name: str) -> Any:
    """The live layer of ``model`` (a torch or Keras model, or its backend) a tap named
    ``name`` came from.

    torch: ``model.get_submodule`` of the module path; Keras: the layer of that name in
    ``model.layers``, searched breadth-first through nested models (the top level first),
    ``parent/child`` for the names capture gives duplicate layers of nested models.
    Tap suffixes (``#k`` for repeated calls, ``[i]`` for output elements) are dropped.
    Raises :class:`~parity.errors.MappingError` when there is no such layer.
    """
    from .capture.keras_params import find_layer as find_keras_layer
    from .capture.torch_params import find_module

    backend = _backend(model)
    finders = {"torch": find_module, "keras": find_keras_layer}  # the live layer objects, by framework
    if backend is None or not backend.reads_params or backend.framework not in finders:
        kind = type(backend.model if backend is not None else model).__name__
        raise MappingError(f"cannot look up layers of a {kind}: weight parity reads torch and Keras models only")
    return finders[backend.framework](backend.model, name)


def layer_params(model: Any, name: str) -> LayerParams:
    """The parameters of ``model``'s layer ``name`` (a tap name), by role, in PyTorch's layout:
    what ``backend_for(model).layer_params(name)`` reads.  Raises
    :class:`~parity.errors.MappingError` when there is no such layer or the model is of a kind
    whose parameters cannot be read (graph formats)."""
    backend = _backend(model)
    found = backend.layer_params(name) if backend is not None else None
    if found is None:
        kind = type(backend.model if backend is not None else model).__name__
        raise MappingError(f"cannot read the parameters of a {kind}: weight parity reads torch and Keras models only")
    return found


# --- comparing ---------------------------------------------------------------------------


def _float(x: np.ndarray) -> np.ndarray:
    """A parameter as a floating array (float32/float64 as they are, anything else float64)."""
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)


def _tol(*dtypes: str) -> float:
    return max(_TOL.get(d, _DEFAULT_TOL) for d in dtypes)


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    return "0" if x == 0 else f"{x:.2g}"


def _fit_shape(b: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """``b`` in ``shape`` when they differ by size-1 axes only (a 1×1 conv vs a dense)."""
    if b.shape == shape:
        return b
    if tuple(d for d in b.shape if d != 1) == tuple(d for d in shape if d != 1):
        return b.reshape(shape)
    return None


def _pd(ctx: LayerPair, role: str, status: str, rel: float | None, message: str, evidence: dict | None = None) -> ParamDiff:
    pa, pb = ctx.a.params.get(role), ctx.b.params.get(role)
    diff = ParamDiff(
        a_layer=ctx.a_layer,
        b_layer=ctx.b_layer,
        a_param=pa.name if pa else "",
        b_param=pb.name if pb else "",
        status=status,
        rel_err=None if rel is None else float(rel),
        message=message,
    )
    return with_evidence(diff, evidence) if evidence else diff  # off the record: never serialised


def _who(ctx: LayerPair, side: str) -> str:
    layer = ctx.a_layer if side == "a" else ctx.b_layer
    fw = ctx.a.framework if side == "a" else ctx.b.framework
    return f"{side.upper()}'s {layer!r} ({fw})"


def _expected_b(ctx: LayerPair, role: str, b: np.ndarray, a_shape: tuple[int, ...]) -> tuple[np.ndarray | None, str]:
    """B's parameter under the transform the pair implies, and a note when it was a guess."""
    note = ""
    if role == "kernel" and ctx.flat_a is not None and b.ndim == 2:
        order_a, sizes_a, certain_a = ctx.flat_a
        expected = expected_order(ctx)
        certain = certain_a and ctx.flat_b is not None and ctx.flat_b[2]
        if expected != order_a:
            value = reorder_rows(b, expected, order_a, sizes_a)
            if value is not None:
                b = value
        if not certain and ctx.flat_b is None:
            note = "flatten order of B's input unknown"
        elif not certain:
            note = "flatten order not certain"
    if role in ("gamma", "beta", "mean", "var") and b.shape != a_shape and b.size == int(np.prod(a_shape)):
        t = ctx.match.transform
        if t.kind == "permute" and t.perm is not None and b.ndim == len(t.perm) - 1:
            inner = tuple(p - 1 for p in t.perm[1:])  # the per-sample part of the activation transform
            if all(p >= 0 for p in inner):
                permuted = np.transpose(b, inner)
                if permuted.shape == a_shape:
                    return permuted, note
    return _fit_shape(b, a_shape), note


def _compare_layer(ctx: LayerPair, rtol: float | None) -> list[ParamDiff]:
    a_roles, b_roles = ctx.a.params, ctx.b.params
    known = ctx.a.kind in KNOWN_KINDS and ctx.b.kind in KNOWN_KINDS
    if known:
        roles = [r for r in _ROLE_ORDER if r in a_roles or r in b_roles]
        roles += [r for r in a_roles if r not in roles and r in b_roles]
    else:  # unknown layer kinds: parameters of the same name only
        roles = [r for r in a_roles if r in b_roles]
    results: dict[str, ParamDiff] = {}
    expected: dict[str, np.ndarray] = {}
    for role in roles:
        pa, pb = a_roles.get(role), b_roles.get(role)
        if pa is None or pb is None:
            results[role] = _one_sided(ctx, role, pa, pb)
            continue
        tol = rtol if rtol is not None else _tol(pa.dtype, pb.dtype)
        a, b_raw = _float(pa.value), _float(pb.value)
        b, note = _expected_b(ctx, role, b_raw, a.shape)
        if b is not None:
            rel = relative_error(a, b)
            if rel <= tol:  # the common case, in the parameters' own precision
                expected[role] = b
                results[role] = _pd(ctx, role, "ok", rel, "")
                continue
        # what differs is looked at closely, in float64
        a, b_raw = a.astype(np.float64, copy=False), b_raw.astype(np.float64, copy=False)
        b, note = _expected_b(ctx, role, b_raw, a.shape)
        if b is None:
            results[role] = _shape_or_alternative(ctx, role, a, b_raw, tol)
            continue
        expected[role] = b
        rel = relative_error(a, b)
        if role in ("bias", "beta") and not np.any(b) and np.any(a):
            results[role] = _pd(ctx, role, "missing", rel, (
                f"{role if role == 'bias' else pa.name} missing: {_who(ctx, 'b')} has {pb.name} all zeros while "
                f"{_who(ctx, 'a')} has a non-zero {pa.name} (‖{pa.name}‖ = {_fmt(float(np.linalg.norm(a)))}); "
                "copy it"))
            continue
        results[role] = _explain(ctx, role, a, b, b_raw, rel, tol, note)
    _find_swaps(ctx, results, expected, rtol)
    return [results[r] for r in roles]


def _rounded_to(a: np.ndarray, b: np.ndarray) -> str | None:
    """``"float16"`` or ``"bfloat16"`` when ``b`` is exactly ``a`` rounded to that half precision
    (and ``a`` is not already representable in it), else None."""
    if a.shape != b.shape or not a.size or not np.all(np.isfinite(a)):
        return None
    kinds: list[tuple[str, Any]] = [("float16", np.float16)]
    try:
        import ml_dtypes

        kinds.append(("bfloat16", ml_dtypes.bfloat16))
    except ImportError:  # pragma: no cover - ml_dtypes comes with TensorFlow and JAX
        pass
    for name, dtype in kinds:
        with np.errstate(over="ignore"):
            half = a.astype(dtype).astype(np.float64)
        if not np.array_equal(half, a) and np.array_equal(half, b):
            return name
    return None


def _explain(ctx: LayerPair, role: str, a: np.ndarray, b: np.ndarray, b_raw: np.ndarray, rel: float, tol: float, note: str) -> ParamDiff:
    pa, pb = ctx.a.params[role].name, ctx.b.params[role].name
    for alt in alternatives(ctx, role, a, b_raw):
        if alt.value.shape != a.shape:
            continue
        alt_rel = relative_error(a, alt.value)
        if alt_rel > tol:
            continue
        if alt.code == "flatten_order" and note:
            return _pd(ctx, role, "ok", alt_rel, (
                f"matches {alt.label} ({note}: pass the whole Alignment so the "
                "Flatten/Permute taps show which order B's input has)"))
        message = (
            f"{alt.message}. {_who(ctx, 'b')} {pb} vs {_who(ctx, 'a')} {pa}: rel err {_fmt(rel)} as copied, "
            f"{_fmt(alt_rel)} {alt.label}."
        )
        return _pd(ctx, role, alt.status, rel, message, {
            "code": alt.code, "rel_err_as_copied": rel, "rel_err_alternative": alt_rel,
        })
    rounded = _rounded_to(a, b)
    if rounded is not None:
        return _pd(ctx, role, "differs", rel, (
            f"{pb} of {_who(ctx, 'b')} is {pa} of {_who(ctx, 'a')} rounded to {rounded}: every value equals A's in "
            f"{rounded} (rel err {_fmt(rel)}), so the converter, or the checkpoint it read, kept the weights in "
            "half precision."), {"code": "weight_precision", "rel_err_as_copied": rel})
    how = _how_it_differs(a, b, role, tol)
    what = f"{pb} of {_who(ctx, 'b')} differs from {pa} of {_who(ctx, 'a')}: rel err {_fmt(rel)}"
    if how:
        what += f"; {how}"
    return _pd(ctx, role, "differs", rel, what + ".", {"rel_err_as_copied": rel})


def _how_it_differs(a: np.ndarray, b: np.ndarray, role: str, tol: float) -> str:
    """Scaled by k, offset by c, the standard deviation for the variance — or nothing."""
    if a.shape != b.shape or a.size == 0 or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return ""
    aa = float(np.dot(a.ravel(), a.ravel()))
    if aa > 0:
        k = float(np.dot(a.ravel(), b.ravel())) / aa
        if k != 0 and relative_error(k * a, b) <= max(tol, 1e-6):
            return f"B's equals A's scaled by {k:.6g}"
    if a.size > 1:
        c = float(np.mean(b - a))
        if c != 0 and relative_error(a + c, b) <= max(tol, 1e-6):
            extra = " (an epsilon folded into the variance?)" if role == "var" and 0 < c <= 1e-2 else ""
            return f"B's equals A's offset by {c:.6g}{extra}"
    if role == "var" and np.all(a >= 0):
        if relative_error(np.sqrt(a), b) <= max(tol, 1e-6):
            return "B's holds the standard deviation (sqrt of A's variance): copy the variance itself"
        if np.all(b >= 0) and relative_error(a, np.sqrt(b)) <= max(tol, 1e-6):
            return "A's holds the standard deviation of B's variance: B's is A's squared"
    return ""


def _shape_or_alternative(ctx: LayerPair, role: str, a: np.ndarray, b_raw: np.ndarray, tol: float) -> ParamDiff:
    pa, pb = ctx.a.params[role], ctx.b.params[role]
    for alt in alternatives(ctx, role, a, b_raw):
        if alt.value.shape == a.shape and relative_error(a, alt.value) <= tol:
            return _pd(ctx, role, alt.status, None, (
                f"{alt.message}. {_who(ctx, 'b')} {pb.name} {pb.raw_shape} vs {_who(ctx, 'a')} {pa.name} "
                f"{pa.raw_shape}."), {"code": alt.code})
    return _pd(ctx, role, "shape", None, (
        f"{pb.name} of {_who(ctx, 'b')} has shape {pb.raw_shape} ({ctx.b.framework} layout), which no "
        f"transform makes fit {pa.name} {pa.raw_shape} of {_who(ctx, 'a')}: the layers are configured "
        "differently (channels, kernel size, groups, units)."))


def _one_sided(ctx: LayerPair, role: str, pa: Param | None, pb: Param | None) -> ParamDiff:
    present, side, other = (pa, "a", "b") if pa is not None else (pb, "b", "a")
    assert present is not None
    neutral = _NEUTRAL.get(role)
    name = role if role in ("bias",) else present.name
    other_kind = ctx.b.cls if other == "b" else ctx.a.cls
    if neutral is not None and np.all(present.value == neutral):
        return _pd(ctx, role, "ok", 0.0, (
            f"{present.name} exists in {_who(ctx, side)} only, and is all {neutral:g}: the same as none"))
    if neutral is None:
        return _pd(ctx, role, "missing", None, (
            f"{name} missing: {_who(ctx, side)} has {present.name} {present.raw_shape}, "
            f"{_who(ctx, other)} ({other_kind}) has no such parameter"))
    flag = {"bias": "use_bias=True" if ctx.b.framework == "keras" else "bias=True",
            "beta": "center=True" if ctx.b.framework == "keras" else "affine=True",
            "gamma": "scale=True" if ctx.b.framework == "keras" else "affine=True"}.get(role)
    fix = f"build B's layer with {flag} and copy it" if (flag and side == "a") else "make both layers agree"
    return _pd(ctx, role, "missing", None, (
        f"{name} missing: {_who(ctx, side)} has a {present.name} (‖{present.name}‖ = "
        f"{_fmt(float(np.linalg.norm(present.value)))}, not all {neutral:g}) and {_who(ctx, other)} "
        f"({other_kind}) has none; {fix}"))


def _find_swaps(ctx: LayerPair, results: dict[str, ParamDiff], expected: dict[str, np.ndarray], rtol: float | None) -> None:
    """Two parameters of one layer that hold each other's values (running_mean ↔ running_var)."""
    failing = [r for r, d in results.items() if d.status != "ok" and r in expected]
    for r1, r2 in itertools.combinations(failing, 2):
        if results[r1].status == "swapped" or results[r2].status == "swapped":
            continue
        p1a, p2a = ctx.a.params[r1], ctx.a.params[r2]
        p1b, p2b = ctx.b.params[r1], ctx.b.params[r2]
        if p1a.value.shape != p2a.value.shape:
            continue
        tol = rtol if rtol is not None else _tol(p1a.dtype, p2a.dtype, p1b.dtype, p2b.dtype)
        a1, a2 = p1a.value.astype(np.float64), p2a.value.astype(np.float64)
        e1, e2 = relative_error(a1, expected[r2]), relative_error(a2, expected[r1])
        if e1 > tol or e2 > tol:
            continue
        what = (
            f"{p1a.name} and {p2a.name} swapped: {_who(ctx, 'b')} {p1b.name} holds {_who(ctx, 'a')} {p2a.name} "
            f"and {p2b.name} holds {p1a.name}"
        )
        for role, other in ((r1, r2), (r2, r1)):
            rel = results[role].rel_err
            results[role] = _pd(ctx, role, "swapped", rel, (
                f"{what} (rel err {_fmt(rel)} as copied, {_fmt(max(e1, e2))} swapped back); copy each into its own "
                "variable"), {
                "code": "bn_statistics" if {r1, r2} == {"mean", "var"} else "weight_mismatch",
                "rel_err_as_copied": rel if rel is not None else float("nan"),
                "rel_err_alternative": max(e1, e2),
            })


# --- flatten order of a dense layer's input ------------------------------------------------


def _side_taps(matches: list[Match], unmatched: Iterable[Any]) -> tuple[dict[int, Tap], dict[int, Tap]]:
    ta: dict[int, Tap] = {}
    tb: dict[int, Tap] = {}
    for m in matches:
        ta.setdefault(m.a.index, m.a)
        tb.setdefault(m.b.index, m.b)
    for u in unmatched:
        if isinstance(u, Unmatched):
            (ta if u.side == "a" else tb).setdefault(u.tap.index, u.tap)
    return ta, tb


# --- the entry points --------------------------------------------------------------------


def weight_parity(
    model_a: Any,
    model_b: Any,
    matches: Alignment | Iterable[Match],
    *,
    unmatched: Iterable[Unmatched] = (),
    rtol: float | None = None,
) -> tuple[ParamDiff, ...]:
    """Compare the parameters of every aligned pair of parametrised layers.

    ``matches`` is an :class:`Alignment` (best: its unmatched ``Flatten``/``Permute`` taps
    tell a dense layer's input flatten order) or the matches alone (``unmatched`` may be
    given separately).  ``model_a``/``model_b`` are the live torch or Keras models, or their
    backends (any backend whose ``reads_params`` is true).  ``rtol`` overrides the per-dtype tolerance (1e-6 for float32: copies are
    exact).  Returns one :class:`ParamDiff` per parameter, in A's layer order; a layer
    called several times is compared once.  Models whose parameters cannot be read (graph
    formats, objects of no framework) give ``()``.
    """
    if isinstance(matches, Alignment):
        unmatched = tuple(unmatched) + tuple(matches.unmatched)
        matches = matches.matches
    matches = list(matches)
    backends = _backend(model_a), _backend(model_b)
    if any(b is None or not b.reads_params for b in backends):
        return ()
    taps_a, taps_b = _side_taps(matches, unmatched)
    out: list[ParamDiff] = []
    seen: set[tuple[str, str]] = set()
    cache: dict[tuple[int, str], LayerParams | None] = {}

    def read(side: int, name: str) -> LayerParams | None:
        if (side, name) not in cache:
            try:
                cache[side, name] = backends[side].layer_params(name)
            except MappingError:  # a tap that is no layer of its own
                cache[side, name] = None
        return cache[side, name]

    for m in matches:
        out.extend(_compare_match(m, read, seen, taps_a, taps_b, rtol))
    return tuple(out)


def _compare_match(m: Match, read, seen: set, taps_a, taps_b, rtol: float | None) -> list[ParamDiff]:
    """The parameters of one aligned pair of layers (nothing for outputs, functional ops, a pair
    already compared or a converter's fold)."""
    if m.a.role == "output" or m.b.role == "output" or m.how == "output":
        return []
    name_a, name_b = _base_name(m.a.name), _base_name(m.b.name)
    if ":" in name_a or ":" in name_b or (name_a, name_b) in seen:
        return []  # functional torch ops have no parameters of their own
    seen.add((name_a, name_b))
    la, lb = read(0, name_a), read(1, name_b)
    if la is None or lb is None or not (la.params or lb.params):
        return []
    if la.kind != lb.kind and "generic" not in (la.kind, lb.kind):
        return []  # a converter's fold (Conv+BatchNorm → one Conv): no one-to-one parameters
    ctx = LayerPair(m, la, lb, name_a, name_b)
    kernel = la.params.get("kernel")
    if "dense" in (la.kind, lb.kind) and kernel is not None and kernel.value.ndim == 2:
        in_features = kernel.value.shape[1]
        flat_a = flat_info(m.a, taps_a, in_features)
        if flat_a is not None and sum(1 for d in flat_a[1] if d > 1) > 1:  # else every order is the same
            ctx.flat_a = flat_a
            ctx.flat_b = flat_info(m.b, taps_b, in_features)
    return _compare_layer(ctx, rtol)
