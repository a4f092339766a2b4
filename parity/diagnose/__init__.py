"""Why a layer diverges: causes recognised by their numerical signature.

Each detector looks at the recorded values of one matched pair and returns a
:class:`~parity.records.Diagnosis` with the numbers that support it, or
nothing.  Detectors never decide from layer names alone.
"""

from __future__ import annotations

from dataclasses import replace

from ..align import op_family
from ..records import Alignment, Diagnosis, LayerDiff
from .bn import diagnose_bn_epsilon

__all__ = ["diagnose"]


def diagnose(alignment: Alignment, layers: tuple[LayerDiff, ...]) -> tuple[tuple[LayerDiff, ...], tuple[Diagnosis, ...]]:
    """Run the detectors on every layer over tolerance; attach what they find."""
    by_a = {m.a.name: m for m in alignment.matches}
    found: list[Diagnosis] = []
    out = []
    for d in layers:
        diags: list[Diagnosis] = []
        m = by_a.get(d.a_name)
        if not d.ok and m is not None and m.b.value is not None:
            if op_family(m.a.op) == "batchnorm" or op_family(m.b.op) == "batchnorm":
                diag = diagnose_bn_epsilon(m, m.transform.apply(m.b.value))
                if diag is not None:
                    diags.append(diag)
        if diags:
            d = replace(d, diagnoses=tuple(diags))
            found.extend(diags)
        out.append(d)
    return tuple(out), tuple(found)
