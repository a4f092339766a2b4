"""Activations that differ: a clamp on one side only, and an approximation of the function.

``activation_clamp``: the two outputs agree everywhere except where one of
them saturates at a bound the other does not have (ReLU vs ReLU6, a clip at
some value).  Every mismatched element then has one side exactly at the bound
and the other beyond it, and no element inside the bound differs.

``activation_approximation``: the input of the activation (the previous
pair's value, A's) is run through known pairs of a function and its cheap
approximation — exact vs tanh GELU, sigmoid vs hard sigmoid, SiLU/swish vs
hard swish — and the detector names the one that reproduces A and the other
one that reproduces B.
"""

from __future__ import annotations

from math import sqrt

import numpy as np

from .base import Context, detector
from .base import rel_diff as _rel
from ..records import Diagnosis

__all__ = ["activation_clamp", "activation_approximation", "FUNCTIONS", "REPRODUCES", "FIXES"]


# --- activation_clamp ---------------------------------------------------------------------


#: the rounding an element carries from the layers before it, relative to its tensor's rms: a deep
#: float32 conversion that agrees to 1e-6 overall still moves a near-zero element by ~1e-5 of it
_CARRIED_NOISE = 1e-4


def _clamp_on(clamped: np.ndarray, free: np.ndarray, mism: np.ndarray):
    """If ``clamped`` saturates at one bound where ``free`` goes beyond it, (bound, "upper"|"lower")."""
    c, f = clamped[mism], free[mism]
    for kind, beyond in (("upper", f > c), ("lower", f < c)):
        if not np.all(beyond):
            continue
        bound = float(np.median(c))
        spread = float(np.max(np.abs(c - bound)))
        if spread > 1e-5 * max(1.0, abs(bound)):
            continue  # not one value: not a clamp
        return bound, kind
    return None


@detector("activation_clamp", {"activation"})
def activation_clamp(ctx: Context) -> Diagnosis | None:
    a, b = ctx.a.astype(np.float64), ctx.b.astype(np.float64)
    if a.shape != b.shape or a.size == 0 or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return None
    rtol, atol = ctx.layer.rtol, ctx.layer.atol
    # an element near zero carries the rounding of every layer before it, far above its own rtol:
    # an element differs only beyond that carried noise too
    tol = atol + rtol * np.abs(a) + _CARRIED_NOISE * float(np.sqrt(np.mean(a * a)))
    mism = np.abs(b - a) > tol
    n_mism = int(mism.sum())
    if n_mism == 0:
        return None
    found = None
    for side, clamped, free in (("B", b, a), ("A", a, b)):
        hit = _clamp_on(clamped, free, mism)
        if hit is not None:
            found = (side, *hit)
            break
    if found is None:
        return None
    side, bound, kind = found
    free = a if side == "B" else b
    eps = 1e-6 * max(1.0, abs(bound))
    beyond = free > bound + eps if kind == "upper" else free < bound - eps
    inside = ~beyond
    n_beyond, n_inside = int(beyond.sum()), int(inside.sum())
    frac_beyond = float(mism[beyond].mean()) if n_beyond else 0.0
    frac_inside = float(mism[inside].mean()) if n_inside else 0.0
    # every element beyond the bound differs (up to tolerance near it), none inside does
    if frac_inside > 0 or frac_beyond < 0.9:
        return None
    evidence = {
        "bound": bound,
        "mismatch_frac_beyond_bound": frac_beyond,
        "mismatch_frac_within_bound": frac_inside,
        "elements_beyond_bound": float(n_beyond),
        "mismatched": float(n_mism),
        "b_clamps": 1.0 if side == "B" else 0.0,
        "max_unclamped_value": float(free.max() if kind == "upper" else free.min()),
    }
    prev = ctx.previous_values()
    x_note = ""
    if prev is not None and prev[0].shape == a.shape:
        x = prev[0].astype(np.float64)
        x_bound = float(x[mism].min() if kind == "upper" else x[mism].max())
        evidence["input_bound"] = x_bound
        x_note = (f" The smallest pre-activation (this layer's input) where they disagree is {x_bound:.4g}." if kind == "upper"
                  else f" The largest pre-activation where they disagree is {x_bound:.4g}.")
    other = "A" if side == "B" else "B"
    relu6 = kind == "upper" and abs(bound - 6.0) < 1e-4
    fix = (
        "Use ReLU6 on both sides (torch nn.ReLU6 ↔ Keras ReLU(max_value=6) / activation 'relu6')"
        if relu6 else f"Give {other}'s activation the same clip (max_value / clamp at {bound:.4g}) or remove it from {side}'s"
    )
    direction = "above" if kind == "upper" else "below"
    msg = (
        f"{side}'s {ctx.match.b.op if side == 'B' else ctx.match.a.op} clips at {bound:.4g} where {other}'s does not"
        f"{' (ReLU6 vs ReLU)' if relu6 else ''}: all {n_mism} mismatched elements have {side} exactly at {bound:.4g} "
        f"and {other} {direction} it (up to {evidence['max_unclamped_value']:.4g}); {frac_beyond:.0%} of the "
        f"{n_beyond} elements {direction} the bound differ, none of the {n_inside} within it.{x_note} {fix}."
    )
    return Diagnosis(code="activation_clamp", layer=ctx.match.a.name, message=msg, evidence=evidence)


# --- activation_approximation -------------------------------------------------------------


def _erf(x: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erf

        return erf(x)
    except ImportError:  # pragma: no cover - scipy ships with the TF/torch stacks
        import math

        return np.vectorize(math.erf, otypes=[np.float64])(x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


#: short id → (name, function, family); approximations are looked for within a family
FUNCTIONS = {
    "gelu": ("GELU (exact, erf)", lambda x: 0.5 * x * (1.0 + _erf(x / sqrt(2.0))), "gelu"),
    "gelu_tanh": ("GELU (tanh approximation)",
                  lambda x: 0.5 * x * (1.0 + np.tanh(sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3))), "gelu"),
    "gelu_sigmoid": ("GELU (sigmoid approximation x·σ(1.702x))", lambda x: x * _sigmoid(1.702 * x), "gelu"),
    "sigmoid": ("sigmoid", _sigmoid, "sigmoid"),
    "hard_sigmoid": ("hard sigmoid relu6(x+3)/6", lambda x: _relu6(x + 3.0) / 6.0, "sigmoid"),
    "hard_sigmoid_legacy": ("hard sigmoid clip(0.2x+0.5, 0, 1) (Keras 2)",
                            lambda x: np.clip(0.2 * x + 0.5, 0.0, 1.0), "sigmoid"),
    "silu": ("SiLU/swish x·σ(x)", lambda x: x * _sigmoid(x), "swish"),
    "hard_silu": ("hard swish x·relu6(x+3)/6", lambda x: x * _relu6(x + 3.0) / 6.0, "swish"),
    "tanh": ("tanh", np.tanh, "tanh"),
    "hard_tanh": ("hard tanh clip(x, -1, 1)", lambda x: np.clip(x, -1.0, 1.0), "tanh"),
}

#: a candidate "reproduces" a side's output within this relative error
REPRODUCES = 1e-5

#: family → how to make both sides use the same function
FIXES = {
    "gelu": "Use the same GELU on both sides: torch nn.GELU(approximate='none'|'tanh') ↔ Keras "
            "activations.gelu(x, approximate=False|True) (Keras' Activation('gelu') is the exact one).",
    "sigmoid": "Use the same sigmoid on both sides (torch nn.Hardsigmoid is relu6(x+3)/6; Keras 3's hard_sigmoid "
               "too, Keras 2's was clip(0.2x+0.5)); a hard sigmoid for a sigmoid is not a conversion detail.",
    "swish": "Use the same function on both sides: torch nn.SiLU ↔ Keras 'silu'/'swish', torch nn.Hardswish ↔ "
             "Keras 'hard_silu'/'hard_swish'.",
    "tanh": "Use the same function on both sides: torch nn.Tanh ↔ Keras 'tanh', nn.Hardtanh ↔ a clip to ±1.",
}


@detector("activation_approximation", {"activation"})
def activation_approximation(ctx: Context) -> Diagnosis | None:
    x_in = ctx.own_input()  # the layer's own recorded input, not a neighbour's output
    a, b = ctx.a, ctx.b
    if x_in is None or x_in.shape != a.shape or a.shape != b.shape or a.size == 0:
        return None
    x = x_in.astype(np.float64)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return None
    errs = {}
    with np.errstate(over="ignore", invalid="ignore"):
        for name, (_, fn, _) in FUNCTIONS.items():
            y = fn(x)
            if np.all(np.isfinite(y)):
                errs[name] = (_rel(a, y), _rel(b, y))
    if not errs:
        return None
    name_a = min(errs, key=lambda n: errs[n][0])
    if errs[name_a][0] > REPRODUCES:
        return None  # A's activation is not one of the known functions (or the previous pair is not its input)
    family = FUNCTIONS[name_a][2]
    same_family = [n for n in errs if FUNCTIONS[n][2] == family and n != name_a]
    if not same_family:
        return None
    name_b = min(same_family, key=lambda n: errs[n][1])
    err_b = errs[name_b][1]
    err_a_on_b = errs[name_a][1]  # A's function against B's output: the error as compared, essentially
    # B computed its function on its own input, which carries the rounding of every layer before:
    # B's function reproduces B's output to that, not better (LeViT's folded BatchNorm1d: 1e-4)
    prev = ctx.previous_values()
    carried = _rel(prev[0], prev[1]) if prev is not None and prev[0].shape == prev[1].shape else 0.0
    if err_b > max(REPRODUCES, 3 * carried) or err_a_on_b < 10 * max(err_b, 1e-12):
        return None
    evidence = {
        "rel_err_b_vs_a_function": float(err_a_on_b),
        "rel_err_b_vs_b_function": float(err_b),
        "rel_err_a_vs_a_function": float(errs[name_a][0]),
        "rel_err_a_vs_b_function": float(errs[name_b][0]),
        "input_abs_max": float(np.max(np.abs(x))),
    }
    for n, (ea, eb) in errs.items():
        if FUNCTIONS[n][2] == family:
            evidence[f"rel_err_b_vs_{n}"] = float(eb)
    msg = (
        f"Different activation functions: A computes {FUNCTIONS[name_a][0]} (reproduced from A's input to {errs[name_a][0]:.1e}), "
        f"B computes {FUNCTIONS[name_b][0]} (reproduced to {err_b:.1e}; A's function is {err_a_on_b:.2g} away from B's output). "
        f"{FIXES[family]}"
    )
    return Diagnosis(code="activation_approximation", layer=ctx.match.a.name, message=msg, evidence=evidence)
