"""``io_order``: the model's outputs handed back in another order.

Model outputs are paired by position (by name where both sides name them alike).  A converter
that reorders them — a TFLite signature sorts its outputs by name, so ``output_10`` comes before
``output_2`` — makes each pair compare two different quantities of equal shape.  The signature:
a flagged output of A is reproduced, within its tolerance, by *another* output of B, and the
layers inside agree.  The fix is on the caller's side (take the outputs by name, or reorder
them), and the report says which output of B is which of A.
"""

from __future__ import annotations

import numpy as np

from ..records import Diagnosis
from .base import Context, detector
from .base import rel_diff as _rel


@detector("io_order")
def io_order(ctx: Context) -> Diagnosis | None:
    if ctx.layer.role != "output":
        return None
    outputs = [m for m in ctx.alignment.matches if m.how == "output" and m.b.value is not None]
    if len(outputs) < 2:
        return None
    a = ctx.a.astype(np.float64)
    allowed = ctx.layer.allowed_rel
    here = _rel(a, ctx.b)
    best = None
    for m in outputs:
        if m is ctx.match:
            continue
        try:
            other = np.asarray(ctx.match.transform.apply(m.b.value))
        except Exception:  # noqa: BLE001 - an output of another rank: not this one moved
            continue
        if other.shape != a.shape:
            continue
        err = _rel(a, other)
        if best is None or err < best[1]:
            best = (m, err)
    if best is None or not (best[1] <= allowed and here > 10 * max(best[1], 1e-12)):
        return None
    m, err = best

    def named(tap) -> str:  # a graph format's own name of the output, where it has one
        own = tap.attrs.get("onnx_name") or tap.attrs.get("tensor_name")
        return f"{tap.name!r} ({own})" if own and own != tap.name else repr(tap.name)

    position = {id(x): i for i, x in enumerate(sorted(outputs, key=lambda x: x.b.index))}
    evidence = {
        "rel_err_as_compared": float(here), "rel_err_vs_other_output": float(err),
        "b_output_position": float(position.get(id(m), -1)),
        "compared_with_position": float(position.get(id(ctx.match), -1)),
    }
    msg = (
        f"B returns its outputs in another order: A's output {named(ctx.match.a)} is B's output {named(m.b)} "
        f"(rel err {err:.1e}), not {named(ctx.match.b)}, which it was paired with by position (rel err "
        f"{here:.2g}); the "
        "layers inside agree. A TFLite signature (and some converters) sort outputs by name: take B's outputs by "
        "name, or reorder them, before comparing or deploying."
    )
    return Diagnosis(code="io_order", layer=ctx.match.a.name, message=msg, evidence=evidence)
