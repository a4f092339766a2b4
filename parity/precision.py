"""The precision a conversion computes in, and the tolerance it is judged with.

A stage of a chain (:func:`parity.chain`) is a *precision stage* when it computes in
float16, bfloat16 or int8: a hint given by the user (:func:`normalize_precision` reads
``"fp16"``, ``"half"``, ``"quantised"``…), else what the model says about itself
(:meth:`parity.capture.base.Backend.precision`, e.g. a TFLite flatbuffer's tensor types),
else the least precise float dtype its recorded tensors have (:func:`recorded_precision`).
A precision stage is judged with its precision's tolerance (:data:`PRECISION_TOLERANCES`),
loosened — never tightened — by a global ``rtol``/``atol`` (:func:`stage_tolerances`).
"""

from __future__ import annotations

from typing import Any, Mapping

from .errors import ToleranceError
from .records import Trace
from .tolerance import DEFAULT_TOLERANCES, Tolerances

__all__ = ["PRECISION_TOLERANCES", "normalize_precision", "recorded_precision", "stage_tolerances"]

#: (rtol, atol) of the precision stages; int8 is parity's own allowance for per-layer
#: quantisation error (correct int8 TFLite conversions measure about 0.3–2e-2 per layer)
PRECISION_TOLERANCES: dict[str, tuple[float, float]] = {
    "float16": DEFAULT_TOLERANCES["float16"],
    "bfloat16": DEFAULT_TOLERANCES["bfloat16"],
    "int8": (5e-2, 1e-2),
}
_ALIASES = {
    "float32": "float32", "fp32": "float32", "f32": "float32", "float": "float32", "full": "float32",
    "float64": "float64", "fp64": "float64", "double": "float64",
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "int8": "int8", "uint8": "int8", "int16": "int8", "quant": "int8", "quantized": "int8", "quantised": "int8",
}


def normalize_precision(value: str, stage: str) -> str:
    """``value`` as one of float32, float64, float16, bfloat16, int8; :class:`ToleranceError`
    naming ``stage`` for anything else."""
    key = str(value).lower().replace("-", "").replace("_", "")
    if key not in _ALIASES:
        raise ToleranceError(
            f"stage {stage!r}: precision {value!r} is not one of float32, float64, float16, bfloat16, int8; "
            "give one of those (or fp16, half, bf16, quantized…)."
        )
    return _ALIASES[key]


def recorded_precision(trace: Trace) -> tuple[str, str]:
    """The least precise float dtype among a trace's tensors, and how it was found."""
    kinds = {t.dtype for t in trace.taps}
    for low in ("bfloat16", "float16"):
        if low in kinds:
            return low, f"detected: {low} tensors recorded"
    return "float32", "default"


def stage_tolerances(
    precision: str, rtol: float | None, atol: float | None, overrides: Mapping[str, Any], min_argmax: Any
) -> tuple[Tolerances, float | None, float | None]:
    """The tolerances a stage of ``precision`` is judged with, and its global (rtol, atol): a
    precision stage's own, or the looser of those and the given ``rtol``/``atol``; a
    full-precision stage the given ones (``None``: per-dtype defaults)."""
    if precision in PRECISION_TOLERANCES:
        pr, pa = PRECISION_TOLERANCES[precision]
        if rtol is not None and atol is not None:
            pr, pa = max(pr, float(rtol)), max(pa, float(atol))
        return Tolerances.build(rtol=pr, atol=pa, overrides=overrides, min_argmax_agreement=min_argmax), pr, pa
    tol = Tolerances.build(rtol=rtol, atol=atol, overrides=overrides, min_argmax_agreement=min_argmax)
    return tol, rtol, atol
