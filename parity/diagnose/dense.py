"""``flatten_order``: a dense layer after a flatten whose weights expect another element order.

Flattening an NCHW tensor gives the features in C,H,W order; flattening NHWC
gives H,W,C.  A dense kernel copied from torch to Keras with only the
``(out, in) → (in, out)`` transpose keeps torch's C,H,W row order, while the
Keras Flatten feeds it H,W,C: every output is a dense layer applied to a
shuffled input.  The inputs agree (the previous pair is fine), the dense
output does not.

The recorded tensors alone cannot show it (finding the weights from a batch
of inputs and outputs needs more samples than features), so this detector
uses the layers' parameters when the live models are at hand:
``ctx.params_a`` and/or ``ctx.params_b``, :class:`~parity.records.LayerParams`
records the backends read (NumPy, the kernel ``(out, in)``).  With either layer's weights
it recomputes the layer on A's recorded input flattened in every order of the
input's axes: the order that reproduces A and a different order that
reproduces B are the diagnosis.
"""

from __future__ import annotations

from itertools import permutations

import numpy as np

from .base import Context, detector
from .base import rel_diff as _rel
from ..records import Diagnosis, LayerParams

#: an order "reproduces" a side's output within this relative error
_REPRODUCES = 1e-3


def dense_params(params: LayerParams | tuple | None) -> tuple[np.ndarray, np.ndarray | None] | None:
    """``(kernel (in, out), bias or None)`` in float64 of a dense layer's
    :class:`~parity.records.LayerParams` (kernel ``(out, in)``, the canonical layout) or of a
    ``(kernel (in, out), bias)`` pair of arrays; ``None`` for anything else."""
    if params is None:
        return None
    if isinstance(params, LayerParams):
        k, b = params.params.get("kernel"), params.params.get("bias")
        if k is None or k.value.ndim != 2:
            return None
        kernel = np.asarray(k.value, dtype=np.float64).T
        bias = None if b is None else np.asarray(b.value, dtype=np.float64)
    elif isinstance(params, (tuple, list)) and len(params) == 2:
        kernel = np.asarray(params[0], dtype=np.float64)
        bias = None if params[1] is None else np.asarray(params[1], dtype=np.float64)
    else:
        return None
    if kernel.ndim != 2:
        return None
    if bias is not None and bias.shape != (kernel.shape[1],):
        bias = None
    return kernel, bias


def _per_sample(ctx: Context) -> tuple[np.ndarray, str | None] | None:
    """A's recorded input of the dense layer with its per-sample axes, and their letters."""
    prev = ctx.previous_values()
    if prev is None or ctx.previous is None:
        return None
    x = np.asarray(prev[0], dtype=np.float64)
    tap = ctx.previous.a
    layout = tap.layout
    if x.ndim == 2:
        flat_from = tap.attrs.get("flat_from")
        if not flat_from or int(np.prod(flat_from)) != x.shape[1]:
            return None
        x = x.reshape((x.shape[0], *tuple(int(v) for v in flat_from)))
        letters = layout[layout.index("(") + 1 : layout.index(")")] if layout and "(" in layout else None
    else:
        letters = layout[1:] if layout and "(" not in layout and len(layout) == x.ndim else None
    if x.ndim < 3:
        return None
    return x, letters


@detector("flatten_order", {"dense"})
def flatten_order(ctx: Context) -> Diagnosis | None:
    a, b = ctx.a, ctx.b
    if a.ndim != 2 or a.shape != b.shape:
        return None
    found = _per_sample(ctx)
    if found is None:
        return None
    x, letters = found
    n, features = x.shape[0], int(np.prod(x.shape[1:]))
    if n != a.shape[0]:
        return None
    for key, layer in (("a_layer", ctx.params_a), ("b_layer", ctx.params_b)):
        params = dense_params(layer)
        if params is None:
            continue
        kernel, bias = params
        if kernel.shape != (features, a.shape[1]):
            continue
        errs: dict[tuple[int, ...], tuple[float, float]] = {}
        for rest in permutations(range(1, x.ndim)):
            perm = (0, *rest)
            out = np.transpose(x, perm).reshape(n, features) @ kernel
            if bias is not None:
                out = out + bias
            errs[perm] = (_rel(a, out), _rel(b, out))
        order_a = min(errs, key=lambda p: errs[p][0])
        order_b = min(errs, key=lambda p: errs[p][1])
        err_a, err_b = errs[order_a][0], errs[order_b][1]
        as_compared = _rel(a, b)
        if order_a == order_b or err_a > _REPRODUCES or err_b > _REPRODUCES or as_compared < 10 * max(err_b, 1e-12):
            return None
        return _diagnosis(ctx, key, letters, order_a, order_b, err_a, err_b, as_compared, x.shape[1:])
    return None


def _order_name(perm: tuple[int, ...], letters: str | None) -> str:
    if letters and len(letters) == len(perm) - 1:
        return "".join(letters[p - 1] for p in perm[1:])
    return "(" + ",".join(str(p) for p in perm[1:]) + ")"


def _diagnosis(ctx, key, letters, order_a, order_b, err_a, err_b, as_compared, shape) -> Diagnosis:
    name_a, name_b = _order_name(order_a, letters), _order_name(order_b, letters)
    side = "A" if key == "a_layer" else "B"
    dims = "×".join(str(s) for s in shape)
    msg = (
        f"Flatten order: B's {ctx.match.b.op} reads its flattened input in {name_b} order while its weights expect "
        f"{name_a} order. {side}'s dense weights applied to A's input ({dims}, axes {letters or 'as recorded'}) "
        f"flattened {name_a} reproduce A (rel err {err_a:.1e}), flattened {name_b} reproduce B (rel err "
        f"{err_b:.1e}; {as_compared:.2g} as compared). The dense kernel was copied without permuting its rows: "
        f"reorder them from {name_a} to {name_b}"
        + (" (torch→Keras: W.reshape(out, C, H, W).transpose(0, 2, 3, 1).reshape(out, -1).T), or put "
           "Permute((3, 1, 2)) before B's Flatten so it flattens in torch's order." if (name_a, name_b) == ("CHW", "HWC")
           else f", or permute B's input to {name_a} before its flatten.")
    )
    evidence = {
        "rel_err_as_compared": float(as_compared),
        "rel_err_after_reordering": float(err_b),
        "rel_err_a_recomputed": float(err_a),
        "weights_from_b": 1.0 if key == "b_layer" else 0.0,
    }
    evidence.update({f"order_a_{i}": float(p) for i, p in enumerate(order_a[1:])})
    evidence.update({f"order_b_{i}": float(p) for i, p in enumerate(order_b[1:])})
    return Diagnosis(code="flatten_order", layer=ctx.match.a.name, message=msg, evidence=evidence)
