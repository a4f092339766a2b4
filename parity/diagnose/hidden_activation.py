"""An activation computed inside B's layer, not as a layer of its own: which function each side uses.

transformers' TF models (and keras-hub's) apply a block's activation as a function between two
Dense layers, where PyTorch has a module (``intermediate_act_fn``, ``mlp.act``).  A's activation
tap then has no counterpart, and a wrong function (exact GELU against ``gelu_new``, ``quick_gelu``,
``gelu_pytorch_tanh``) first shows at the Dense after it — whose replay on A's recorded input is
right, since the activation is not part of it.

The evidence, from the numbers only: the tap just before A's Dense is an activation whose output
one known function of its input reproduces (A's); the pair before that agrees (so both sides
received the same input); B's Dense output is reproduced by B's own weights applied to a
*different* function of the same family of that input, and not by A's.  The diagnosis names the
activation layer of A and both functions.
"""

from __future__ import annotations

import numpy as np

from ..records import Diagnosis, LayerParams
from .activation import FIXES, FUNCTIONS, REPRODUCES
from .base import Context, detector
from .base import rel_diff as _rel

#: B's Dense output reproduced from a candidate input within this (float32 matmul rounding)
_DENSE_REPRODUCES = 1e-4


def _activation_before(ctx: Context):
    """A's unmatched tap right before this layer, right after the previous matched pair, or None."""
    prev = ctx.previous
    if prev is None:
        return None
    between = [u.tap for u in ctx.alignment.unmatched_a if prev.a.index < u.tap.index < ctx.match.a.index]
    if len(between) != 1:
        return None
    (tap,) = between
    return tap if tap.value is not None else None


def _dense_weights(params: LayerParams | None) -> tuple[np.ndarray, np.ndarray | None] | None:
    """A dense layer's weight as ``(out, in)`` (the canonical layout) and its bias, in float64."""
    kernel = params.params.get("kernel") if params is not None else None
    if kernel is None or kernel.value.ndim != 2:
        return None
    bias = params.params.get("bias")
    return kernel.value.astype(np.float64), None if bias is None else bias.value.astype(np.float64).ravel()


@detector("activation_approximation", {"dense", "conv"})  # conv: transformers' Conv1D, GPT-2's dense layer
def hidden_activation(ctx: Context) -> Diagnosis | None:
    act = _activation_before(ctx)
    prev = ctx.previous_values()
    if act is None or prev is None:
        return None
    before = next((d for d in ctx.layers if d.a_name == ctx.previous.a.name), None)
    if before is None or not before.ok:
        return None  # the activation's input already differs: not this detector's case
    x = prev[0].astype(np.float64)
    y_act = np.asarray(act.value, np.float64)
    if x.shape != y_act.shape or not np.all(np.isfinite(x)):
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        outs = {name: fn(x) for name, (_, fn, _) in FUNCTIONS.items()}
    errs_a = {n: _rel(y_act, y) for n, y in outs.items() if np.all(np.isfinite(y))}
    if not errs_a:
        return None
    name_a = min(errs_a, key=errs_a.get)
    if errs_a[name_a] > REPRODUCES:
        return None  # not a known function of the previous pair's value
    weights = _dense_weights(ctx.params_b)
    if weights is None:
        return None
    w, bias = weights
    b = ctx.b.astype(np.float64)
    if x.shape[-1] != w.shape[1] or b.shape[:-1] != x.shape[:-1] or b.shape[-1] != w.shape[0]:
        return None
    family = FUNCTIONS[name_a][2]
    dense_errs = {}
    for n, (_, _, fam) in FUNCTIONS.items():
        if fam != family or n not in errs_a:
            continue
        y = outs[n] @ w.T + (bias if bias is not None else 0.0)
        dense_errs[n] = _rel(y, b)
    others = [n for n in dense_errs if n != name_a]
    if not others:
        return None
    name_b = min(others, key=dense_errs.get)
    err_b, err_a = dense_errs[name_b], dense_errs[name_a]
    if err_b > _DENSE_REPRODUCES or err_a < 10 * max(err_b, 1e-12):
        return None
    evidence = {
        "rel_err_a_activation_vs_a_function": float(errs_a[name_a]),
        "rel_err_b_vs_b_function_then_dense": float(err_b),
        "rel_err_b_vs_a_function_then_dense": float(err_a),
        "input_abs_max": float(np.max(np.abs(x))),
    }
    msg = (
        f"Different activation functions at {act.name!r} ({act.op}), which B computes inside, not as a layer: "
        f"A computes {FUNCTIONS[name_a][0]} (reproduced from its input to {errs_a[name_a]:.1e}); B's "
        f"{ctx.match.b.name!r} is reproduced by its own weights applied to {FUNCTIONS[name_b][0]} of the same input "
        f"(to {err_b:.1e}; with A's function {err_a:.2g}). {FIXES[family]} In transformers, check the config's "
        "hidden_act / activation_function (gelu, gelu_new, gelu_pytorch_tanh, quick_gelu) on both sides."
    )
    return Diagnosis(code="activation_approximation", layer=ctx.match.a.name, message=msg, evidence=evidence)
