"""``quant_io``: a quantized tensor read without its scale and zero point.

An int8/uint8 model's output is ``q = round(y / scale) + zero_point``; read without
dequantizing, ``q`` is compared with A's float ``y``.  The signature: B holds integers within
the int8/uint8 range, and is an affine map of A — ``B ≈ A / scale + zero_point`` — up to the
rounding of quantization (an RMS residual near 1/√12 ≈ 0.29 of one step); the fit gives the
scale and zero point to dequantize with.
"""

from __future__ import annotations

import numpy as np

from ..records import Diagnosis
from .base import Context, detector

#: quantization rounds to the step: a residual of this RMS (in steps) or less is rounding, not error
_ROUNDING_RMS = 0.45


@detector("quant_io")
def quant_io(ctx: Context) -> Diagnosis | None:
    a = np.asarray(ctx.a, dtype=np.float64).ravel()
    b = np.asarray(ctx.b, dtype=np.float64).ravel()
    if a.size < 16 or a.shape != b.shape or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return None
    if np.max(np.abs(b - np.round(b))) > 1e-6 or b.min() < -128 or b.max() > 255 or np.ptp(b) < 8:
        return None  # not integers in an 8-bit range, or too few levels to fit a scale
    design = np.stack([a, np.ones_like(a)], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(design, b, rcond=None)
    residual = float(np.sqrt(np.mean((design @ np.array([alpha, beta]) - b) ** 2)))
    if alpha <= 1.0 or residual > _ROUNDING_RMS or abs(beta - round(beta)) > 0.25:
        return None
    scale, zero_point = 1.0 / alpha, int(round(beta))
    kind = "uint8" if b.min() >= 0 and b.max() > 127 else "int8"
    evidence = {"scale": float(scale), "zero_point": float(zero_point), "residual_rms_steps": residual,
                "levels": float(np.unique(b).size), "b_min": float(b.min()), "b_max": float(b.max())}
    plus = f"+ {zero_point}" if zero_point >= 0 else f"− {-zero_point}"
    minus = f"− {zero_point}" if zero_point >= 0 else f"+ {-zero_point}"
    msg = (
        f"B's {ctx.match.b.op} holds A's values quantized to {kind} and never dequantized: B ≈ A / {scale:.4g} {plus} "
        f"(residual {residual:.2f} of one step, the rounding of quantization). Dequantize it — "
        f"(q {minus}) × {scale:.4g}, from the tensor's quantization parameters — or keep the model's inputs "
        "and outputs float (TFLiteConverter inference_input_type/inference_output_type = tf.float32)."
    )
    return Diagnosis(code="quant_io", layer=ctx.match.a.name, message=msg, evidence=evidence)
