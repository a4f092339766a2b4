"""Pairs the values contradict: misalignments told apart from divergences.

Errors do not heal.  A "divergence" that vanishes at the next layer while the model
outputs agree is two different tensors paired by mistake, not a bug; such pairs are
taken out of the comparison as "not compared" with the reason ``unsure: …``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from .records import Alignment, LayerParams, Match, Unmatched
from .similarity import sample_index, samples, similarity

__all__ = ["unsure_pairs", "rescaled", "folded_scales", "HEALED_EXACTLY", "FOLDED_SCALE_AGREEMENT"]

#: B's tensor equals A's times a parameter of a module around A's layer to this relative error
#: (a scale folded into a kernel rounds once more: faithful folds measure ~1e-7)
FOLDED_SCALE_AGREEMENT = 1e-5


def folded_scales(
    alignment: Alignment, layers: tuple, params_of: Callable[[str], LayerParams | None] | None
) -> tuple[Alignment, tuple, str | None]:
    """Flagged pairs whose B tensor is A's layer output times a parameter of a module around
    that layer, which the converter folded into B's op, taken out as ``fused``.

    timm's ConvNeXt block multiplies its MLP's output by its own ``gamma`` (a layer scale held
    by the block, applied in its forward, no module of its own); litert-torch folds that
    multiply into the ``fc2`` convolution and names the tensor after both the block and
    ``fc2``.  A's ``fc2`` output is then not a quantity B records: B's tensor is
    ``fc2(x) · gamma``.  The pair goes as ``fused`` only where that is proven: B's tensor names
    an enclosing module of A's layer as fused into it (``attrs["fused_modules"]``), and B equals
    A times one of that module's own 1-D parameters along an axis of its size, to
    :data:`FOLDED_SCALE_AGREEMENT`.  A kernel scaled by mistake in ``fc2`` is ``gamma · s``:
    not the parameter, so it stays compared and flagged.  ``params_of(name)`` reads A's module
    parameters (None where A's backend cannot).  Where the parameter cannot be read, a B that is
    A scaled per channel exactly, with the next layer and the outputs agreeing to rounding, is
    "unsure" (not compared) rather than a divergence.  Returns the alignment and layers without
    those pairs, and a note naming the fused ones (None when there were none)."""
    by_name = {m.a.name: m for m in alignment.matches}
    inner = [d for d in layers if d.role != "output"]
    outputs = [d for d in layers if d.role == "output"]
    outputs_agree = bool(outputs) and all(d.ok for d in outputs)
    folded: dict[str, tuple[Match, str]] = {}
    unsure: dict[str, tuple[Match, str]] = {}
    for k, d in enumerate(inner):
        m = by_name.get(d.a_name)
        if d.ok or m is None:
            continue
        base = m.a.name.split("#")[0].split("[")[0]
        around = [f for f in m.b.attrs.get("fused_modules", ()) if f == "" or base.startswith(f + ".")]
        for module in around:
            what = _scaled_by(m, params_of, module) if params_of is not None else None
            if what is not None:
                folded[m.a.name] = (m, what)
                break
        else:
            healed = k + 1 < len(inner) and inner[k + 1].metrics.rel_err <= HEALED_EXACTLY
            if around and healed and outputs_agree and _per_channel_scale(m):
                unsure[m.a.name] = (m, around[0] or "the model")
    why_unsure = ("unsure: paired by {how} with {b}, which names {module} as fused into it, and B is A scaled per "
                  "channel while the next layer and the outputs agree: B's tensor likely holds a scale {module} "
                  "applies after this layer, but model A's parameters cannot be read to prove it")
    reasons = {name: (m, "fused") for name, (m, _) in folded.items()}
    reasons.update({name: (m, why_unsure.format(how=m.how, b=m.b.name, module=module))
                    for name, (m, module) in unsure.items()})
    alignment, kept = _taken_out(alignment, layers, reasons)
    if not folded:
        return alignment, kept, None
    shown = ", ".join(f"{name} × {what}" for name, (_, what) in list(folded.items())[:3])
    more = f" and {len(folded) - 3} more" if len(folded) > 3 else ""
    note = (f"{len(folded)} layer(s) of A are fused, not compared on their own: B's tensor is the layer's "
            f"output times a parameter of the module around it, which the converter folded into B's op "
            f"({shown}{more}; equal to {FOLDED_SCALE_AGREEMENT:g} relative). What follows them is compared.")
    return alignment, kept, note


def _per_channel_scale(m: Match) -> bool:
    """Whether B is A times one factor per index of some axis of A's tensor (not all equal to
    1), to :data:`FOLDED_SCALE_AGREEMENT`, on the fixed sample."""
    if m.a.value is None or m.b.value is None or m.a.numel == 0:
        return False
    va, vb = samples(m.a, m.b, m.transform)
    coords = np.unravel_index(sample_index(m.a.shape), m.a.shape)
    nb = float(np.sqrt(np.dot(vb, vb)))
    with np.errstate(all="ignore"):
        for axis, size in enumerate(m.a.shape):
            if size < 2:
                continue
            c = coords[axis]
            saa = np.bincount(c, weights=va * va, minlength=size)
            sab = np.bincount(c, weights=va * vb, minlength=size)
            scale = np.where(saa > 0, sab / np.where(saa > 0, saa, 1.0), 1.0)
            err = float(np.linalg.norm(vb - va * scale[c]))
            if nb > 0 and np.isfinite(err) and err <= FOLDED_SCALE_AGREEMENT * nb and np.ptp(scale) > 1e-3:
                return True
    return False


def _scaled_by(m: Match, params_of: Callable[[str], LayerParams | None], module: str) -> str | None:
    """``"<module>.<param>"`` when B is A times that 1-D parameter of ``module`` (A's), broadcast
    along an axis of A's tensor of its size; else None."""
    if m.a.value is None or m.b.value is None or m.a.numel == 0:
        return None
    try:
        params = params_of(module)
    except Exception:  # noqa: BLE001 - a module A cannot read: no evidence
        return None
    if params is None:
        return None
    va, vb = samples(m.a, m.b, m.transform)
    coords = np.unravel_index(sample_index(m.a.shape), m.a.shape)
    with np.errstate(all="ignore"):
        nb = float(np.sqrt(np.dot(vb, vb)))
        for role, param in params.params.items():
            p = np.asarray(param.value, dtype=np.float64).reshape(-1)
            if p.size < 2 or p.size != int(np.prod(param.value.shape)) or max(param.value.shape) != p.size:
                continue
            for axis, size in enumerate(m.a.shape):
                if size != p.size:
                    continue
                err = float(np.linalg.norm(vb - va * p[coords[axis]]))
                if nb > 0 and np.isfinite(err) and err <= FOLDED_SCALE_AGREEMENT * nb:
                    return f"{module}.{param.name}" if module else param.name
    return None

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
    reasons: dict[str, tuple[Match, str]] = {}
    for m in suspects:
        d = next(x for x in inner if x.a_name == m.a.name)
        if (scale := rescaled(m)) is not None:
            why = (f"unsure: paired by {m.how} with {m.b.name}, but B is A × {scale:.4g} (cos 1.000000) "
                   "while the next layers and the model outputs agree: not the same quantity (one side "
                   "applies a scale outside this layer)")
        else:
            why = (f"unsure: paired by {m.how} with {m.b.name}, but the values are unrelated (rel err "
                   f"{d.metrics.rel_err:.2g}) while the next layers and the model outputs agree")
        reasons[m.a.name] = (m, why)
    return _taken_out(alignment, layers, reasons)


def _taken_out(alignment: Alignment, layers: tuple, reasons: dict[str, tuple[Match, str]]) -> tuple[Alignment, tuple]:
    """The alignment and layers without the pairs of ``reasons`` (A's layer → its match and why),
    each side of such a pair unmatched with that reason (B's naming A's layer), layers renumbered."""
    if not reasons:
        return alignment, layers
    unmatched = list(alignment.unmatched)
    for m, why in reasons.values():
        unmatched.append(Unmatched(tap=m.a, side="a", reason=why))
        b_why = why.replace(f"with {m.b.name}", f"with A's {m.a.name}") if why.startswith("unsure") else why
        unmatched.append(Unmatched(tap=m.b, side="b", reason=b_why))
    matches = tuple(m for m in alignment.matches if m.a.name not in reasons)
    kept = [d for d in layers if d.a_name not in reasons]
    kept_layers = tuple(dataclasses.replace(d, index=i) for i, d in enumerate(kept))
    return Alignment(matches=matches, unmatched=tuple(unmatched)), kept_layers


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
