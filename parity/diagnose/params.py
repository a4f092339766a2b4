"""Diagnoses from weight parity: the parameters that differ, grouped by layer and cause.

:func:`parity.weights.weight_parity` gives one :class:`~parity.records.ParamDiff` per
parameter; a ``ParamDiff`` made there carries, off the record (never serialised), the
evidence of its comparison (:func:`with_evidence`, :func:`evidence_of`).  A report read back
from JSON has no such evidence, and the cause is then told from the status and the wording.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from ..records import Diagnosis, ParamDiff

__all__ = ["weight_diagnoses", "weight_code", "with_evidence", "evidence_of", "ADVICE"]

#: what to do, by diagnosis code
ADVICE = {
    "weight_transpose": "Copy the kernel with the layout transform the pair needs (torch OIHW → Keras HWIO is "
    "weight.permute(2, 3, 1, 0), a dense weight .T), not the one used.",
    "flatten_order": "Reorder the dense layer's input rows to the flatten order B's input has, or "
    "Permute B's tensor to A's layout before its Flatten.",
    "bn_statistics": "Copy running_mean into moving_mean and running_var into moving_variance.",
    "weight_precision": "Load the weights in float32 (the float32 checkpoint, or the converter's dtype set to "
    "float32); if half precision is meant, judge the pair as such — the error is rounding, not a wrong weight.",
    "weight_mismatch": "Re-copy these parameters from model A (check the conversion script's mapping of names).",
    "rnn_gate_order": "Reorder the gate blocks when copying: torch LSTM i,f,g,o is Keras i,f,c,o (the same); torch "
    "GRU r,z,n is Keras z,r,h (swap the first two blocks of weight_ih/weight_hh and of both biases, and use "
    "reset_after=True with the biases stacked (2, 3H)); kernels are transposed (weight_ih.T).",
}

_EVIDENCE = "_evidence"


def with_evidence(diff: ParamDiff, evidence: Mapping[str, object]) -> ParamDiff:
    """``diff`` carrying ``evidence`` (the diagnosis code, the relative errors) off the record:
    not a field, so never serialised."""
    object.__setattr__(diff, _EVIDENCE, dict(evidence))
    return diff


def evidence_of(diff: ParamDiff) -> dict:
    """The evidence :func:`with_evidence` gave ``diff``, or ``{}`` (a ParamDiff read back from JSON)."""
    return getattr(diff, _EVIDENCE, None) or {}


def weight_diagnoses(params: Iterable[ParamDiff]) -> list[Diagnosis]:
    """One :class:`Diagnosis` per layer and cause among the parameters that are not ``ok``:
    ``weight_transpose`` (a kernel transposed or permuted the other way), ``flatten_order``
    (a dense layer's rows in the other flatten order), ``bn_statistics`` (running mean and
    variance swapped), ``weight_precision`` (B's are A's rounded to float16/bfloat16) and
    ``weight_mismatch`` (anything else), on A's layer name."""
    grouped: dict[tuple[str, str], list[ParamDiff]] = {}
    for p in params:
        if p.status == "ok":
            continue
        grouped.setdefault((weight_code(p), p.a_layer), []).append(p)
    out = []
    for (code, layer), diffs in grouped.items():
        evidence: dict[str, float] = {}
        for p in diffs:
            ev = evidence_of(p) or {"rel_err_as_copied": p.rel_err}
            suffix = "" if len(diffs) == 1 else f"[{p.a_param or p.b_param}]"
            for key, val in ev.items():
                if key != "code" and val is not None:
                    evidence[key + suffix] = float(val)
        names = ", ".join(f"{p.a_param or '—'}/{p.b_param or '—'} ({p.status})" for p in diffs)
        detail = " ".join(p.message.rstrip(".") + "." for p in diffs if p.message)
        if code == "bn_statistics":
            detail = diffs[0].message.rstrip(".") + "."
        message = f"Parameters of {layer!r} differ from model B's {diffs[0].b_layer!r}: {names}. {detail} {ADVICE[code]}"
        out.append(Diagnosis(code=code, layer=layer, message=message, evidence=evidence))
    return out


def weight_code(p: ParamDiff) -> str:
    """The diagnosis code of a parameter that is not ``ok``."""
    ev = evidence_of(p)
    if "code" in ev:
        return str(ev["code"])
    # a ParamDiff read back from JSON: decide from status and wording
    if p.status == "transposed":
        if "gate blocks" in p.message:
            return "rnn_gate_order"
        return "flatten_order" if "flatten order" in p.message else "weight_transpose"
    if p.status == "swapped":
        stats = ("mean", "var")
        return "bn_statistics" if any(k in (p.a_param or p.b_param).lower() for k in stats) else "weight_mismatch"
    if p.status == "differs" and (" rounded to float16:" in p.message or " rounded to bfloat16:" in p.message):
        return "weight_precision"
    return "weight_mismatch"
