"""Pairs the values contradict: misalignments told apart from divergences.

Errors do not heal.  A "divergence" that vanishes at the next layer while the model
outputs agree is two different tensors paired by mistake, not a bug; such pairs are
taken out of the comparison as "not compared" with the reason ``unsure: …``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from .records import Alignment, Match, Unmatched
from .similarity import samples, similarity

__all__ = ["unsure_pairs", "rescaled", "HEALED_EXACTLY"]

def unsure_pairs(
    alignment: Alignment, layers: tuple, same_params: Callable[[Match], bool] | None = None
) -> tuple[Alignment, tuple]:
    """Pairs that the values contradict, taken out of the comparison.

    Errors do not heal.  A pair whose values are unrelated (cos < 0.99 on the fixed sample),
    paired only by execution order or name scope, while the next compared layers and every
    model output agree, holds two different tensors — a misalignment, not a divergence.  Such a
    pair becomes "not compared" on both sides with the reason ``unsure: …``.  A real bug keeps
    its pair: its values stay related (a scaled kernel, a wrong epsilon, a swapped activation
    move a tensor, they do not replace it), and it does not heal (the outputs differ).  A pair
    by name or scope whose values agree in direction is unsure only when B is exactly A scaled
    (:func:`rescaled`), the layer right after it agrees to rounding (1e-5, where a real scaled
    kernel damped by a residual and a LayerNorm leaves ~1e-4; the outputs may differ through a
    later bug of their own), and
    ``same_params`` (weight parity on the live models) says the two layers' parameters are equal."""
    outputs = [d for d in layers if d.role == "output"]
    outputs_agree = bool(outputs) and all(d.ok for d in outputs)
    by_name = {m.a.name: m for m in alignment.matches}
    inner = [d for d in layers if d.role != "output"]

    def suspect(d, healed_exactly: bool) -> bool:
        m = by_name.get(d.a_name)
        if m is None:
            return False
        if outputs_agree and m.how in ("order", "scope") and similarity(m.a, m.b, m.transform) < 1.0:
            return True
        # paired by order or by direction (a cosine cannot see a scale), B exactly A scaled, the
        # next layer agreeing to rounding and the outputs agreeing: B's tensor is a step later
        # (NFNet's ``act(x) * beta``), not a bug
        if outputs_agree and healed_exactly and m.how in ("order", "value") and rescaled(m) is not None:
            return True
        # a scaled copy only when what follows agrees to rounding: a real scaled kernel that a
        # residual and a LayerNorm damp below tolerance still leaves ~1e-4 downstream
        # ... and only where the two layers' parameters are known to be equal: a kernel scaled by
        # mistake whose effect a LayerNorm normalises away (ALBERT) heals to rounding too
        return (healed_exactly and m.how in ("name", "scope") and same_params is not None
                and rescaled(m) is not None and same_params(m))

    suspects = []
    i = 0
    while i < len(inner):
        if inner[i].ok:
            i += 1
            continue
        j = i
        while j < len(inner) and not inner[j].ok:
            j += 1  # inner[i:j]: a run of failing layers
        # what follows the run agrees (it ended there), and so do the outputs: it healed
        # (a scaled copy with equal weights needs no help from the outputs — a later bug of its
        # own may move them — but the layer right after it must agree to rounding)
        healed_exactly = j < len(inner) and inner[j].metrics.rel_err <= HEALED_EXACTLY
        if all(suspect(d, healed_exactly) for d in inner[i:j]):
            suspects.extend(by_name[d.a_name] for d in inner[i:j])
        i = j
    dropped = {id(m) for m in suspects}
    unmatched = list(alignment.unmatched)
    gone = set()
    for m in suspects:
        d = next(x for x in inner if x.a_name == m.a.name)
        if (scale := rescaled(m)) is not None:
            why = (f"unsure: paired by {m.how} with {m.b.name}, but B is A × {scale:.4g} (cos 1.000000) "
                   "while the next layers and the model outputs agree: not the same quantity (one side "
                   "applies a scale outside this layer)")
        else:
            why = (f"unsure: paired by {m.how} with {m.b.name}, but the values are unrelated (rel err "
                   f"{d.metrics.rel_err:.2g}) while the next layers and the model outputs agree")
        unmatched.append(Unmatched(tap=m.a, side="a", reason=why))
        unmatched.append(Unmatched(tap=m.b, side="b", reason=why.replace(f"with {m.b.name}", f"with A's {m.a.name}")))
        gone.add(m.a.name)
    matches = tuple(m for m in alignment.matches if id(m) not in dropped)
    kept = [d for d in layers if d.a_name not in gone]
    kept = tuple(dataclasses.replace(d, index=i) for i, d in enumerate(kept))
    return Alignment(matches=matches, unmatched=tuple(unmatched)), kept


#: the relative error below which the layer after a run and the outputs agree "to rounding"
#: (faithful float32 conversions measure 1e-7 … 1e-5)
HEALED_EXACTLY = 1e-5


def rescaled(m: Match) -> float | None:
    """``s`` where B is A × s exactly (up to float32 rounding) with s clearly not 1, else None.

    A pair by name whose values are one tensor scaled, in a run that heals while the outputs
    agree, is two different quantities under one name: transformers' XGLM scales its token
    embeddings by √d inside the PyTorch module and outside it in TF.  A real bug does not look
    like this: a tensor B scales by mistake stays scaled downstream, and the outputs differ."""
    if m.a.value is None or m.b.value is None or m.a.numel == 0 or similarity(m.a, m.b, m.transform) < 2.5:
        return None
    va, vb = samples(m.a, m.b, m.transform)
    with np.errstate(all="ignore"):
        na = float(np.dot(va, va))
        scale = float(np.dot(va, vb)) / na if na else 1.0
    return scale if np.isfinite(scale) and abs(scale - 1.0) > 1e-2 else None
