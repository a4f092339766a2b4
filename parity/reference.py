"""A float64 reference: each layer judged against the precision float32 can give it.

A single rtol per dtype is both too loose and too tight.  A BERT LayerNorm built with
Keras' default epsilon 1e-3 instead of 1e-12 moves its layer by ~5e-4, and an exact GELU
replaced by its tanh approximation by ~1e-4: both pass rtol 1e-3.  Yet a deep float32 net
accumulates honest rounding that a tighter rtol would flag.

``reference="float64"`` answers with a third opinion, the way PyTorch's accuracy
minifier does: a float64 twin of a live model (the backend's ``twin("float64")``: the same
weights, computing in float64) runs on the same inputs, and for every compared layer

* the **noise floor** is how far the float32 model is from its float64 twin there,
  ``‖x₃₂ − x₆₄‖ / ‖x₆₄‖`` — the rounding float32 gives that layer in this model, grown
  through every layer before it;
* the **reference error** is how far the other model is from the float64 twin.

A layer passes while its reference error is at most :data:`NOISE_FACTOR` × its noise
floor plus :data:`NOISE_FLOOR` (a layer computed exactly in float32 has a noise floor of
0, and another float32 kernel may still round it) — and never more than the dtype table
allows it (its tolerance, or :data:`TABLE_NOISE_FACTOR` × the noise floor where that is
larger): the reference tightens the table, it does not loosen it.  Where neither model has a float64
twin (graph formats on both sides), or a layer has no float64 reading, the dtype table
judges, and the report says so.

The twin is model A's when A is live, else model B's (a TF → PyTorch port whose A is a
frozen graph): the side that is float64 is the reference, the other side is judged.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from .metrics import relative_error, verdict
from .records import Alignment, LayerDiff, Reference, Trace
from .reruns import rerun_failed
from .spill import release

__all__ = ["NOISE_FACTOR", "NOISE_FLOOR", "TABLE_NOISE_FACTOR", "REFERENCES", "check_reference", "float64_trace", "judge", "min_factor"]

#: what a ``reference`` may be: the per-dtype tolerance table, or a float64 twin's run
REFERENCES = ("dtype", "float64")

#: a layer's error against the float64 reference may reach this multiple of its noise floor.
#: Measured on the faithful corpus (README, "Noise or bug"): a layer's error against float64 is
#: its own noise floor's size (median 0.95×, p99 1.7×); past the floor below, the largest per pair
#: is 5× (timm EfficientNet through dynamo ONNX) and 14× (transformers' OpenAI GPT, TF's GELU);
#: the bugs it must find measure 10³× and more.
NOISE_FACTOR = 32.0
#: ... plus this relative error, for layers float32 computes (nearly) exactly (noise floor ≈ 0):
#: ~80 float32 ulps — another framework's float32 kernels (TF's erf-based GELU: 8e-6 where
#: torch's float32 is 2e-7 from float64) differ by this much — and an order under the smallest
#: bug it must find (an exact vs tanh GELU, 1.5e-4)
NOISE_FLOOR = 1e-5


#: the dtype table's own allowance for ill-conditioned layers: a flagged float32 layer is judged no
#: tighter than this multiple of A's float32-vs-float64 error there (``parity.pipeline`` applies it)
TABLE_NOISE_FACTOR = 4.0


def check_reference(value: Any) -> str:
    """``value`` as one of :data:`REFERENCES`; :class:`~parity.errors.OptionError` otherwise."""
    from .errors import OptionError

    if value is None:
        return "dtype"
    text = str(value).strip().lower()
    if text in ("fp64", "double"):
        text = "float64"
    if text not in REFERENCES:
        raise OptionError(
            f"reference must be one of {', '.join(REFERENCES)}, got {value!r}: 'float64' judges each layer "
            "against a float64 twin of the live model, 'dtype' by the per-dtype tolerance table."
        )
    return text


def float64_trace(backend: Any, inputs: Any, who: str) -> tuple[Trace | None, str | None]:
    """The trace of ``backend``'s float64 twin on ``inputs`` (its own layout), or ``(None, why)``
    when it has none or it does not run."""
    if backend is None or inputs is None:
        return None, f"{who} is not a live model here (a saved trace)"
    try:
        twin = backend.twin("float64")
    except Exception as exc:  # noqa: BLE001 - a model that refuses the copy: the reason is the report's
        return None, f"{who}'s float64 twin could not be built ({type(exc).__name__}: {exc})"
    if twin is None:
        return None, f"{who} ({backend.info().kind}) has no float64 twin"
    try:
        return twin.capture(_as_float64(inputs)), None
    except Exception as exc:  # noqa: BLE001 - a model that does not run in float64: judged by the table
        rerun_failed(who, "in float64 (the float64 reference)", exc,
                     "its layers are judged by the per-dtype tolerance table instead")
        return None, f"{who}'s float64 twin did not run ({type(exc).__name__})"


def _as_float64(inputs: Any) -> Any:
    def cast(x: Any) -> Any:
        arr = np.asarray(x)
        return arr.astype(np.float64) if arr.dtype.kind == "f" else arr

    if isinstance(inputs, Mapping):
        return {k: cast(v) for k, v in inputs.items()}
    return [cast(x) for x in inputs]


def judge(alignment: Alignment, layers: tuple[LayerDiff, ...], trace64: Trace, side: str,
          min_argmax_agreement: float | None) -> tuple[tuple[LayerDiff, ...], Reference]:
    """``layers`` judged against ``trace64`` (the float64 run of side ``side``, "a" or "b"):
    each layer with a float64 reading gets its noise floor, its reference error and the verdict
    ``ref_err ≤ NOISE_FACTOR·noise + NOISE_FLOOR``; the others keep the dtype table's."""
    by_name = {t.name: t for t in trace64.taps}
    ordered = sorted(alignment.matches, key=lambda m: m.a.index)
    out, judged, missing = [], 0, []
    for d, m in zip(layers, ordered):
        reading = _reading(m, by_name, side)
        if reading is None or d.dtype != "float32":
            out.append(d)
            missing.append(d.a_name)
            continue
        noise, ref_err = reading
        by_noise = NOISE_FACTOR * noise + NOISE_FLOOR
        # never looser than the dtype table (with its allowance for ill-conditioned layers): where
        # rounding is already large (noise 1e-4), k × noise would pass a bug the table flags
        by_table = max(d.allowed_rel, TABLE_NOISE_FACTOR * noise)
        allowed = min(by_noise, by_table)
        ok, reasons = verdict(d.metrics, math.inf, 0.0, min_argmax_agreement=min_argmax_agreement)
        if not ref_err <= allowed:  # NaN fails too
            ratio = ref_err / noise if noise > 0 else math.inf
            times = f"{ratio:,.0f}× its" if math.isfinite(ratio) else "over a zero"
            if by_noise <= by_table:
                why = (f"error against the float64 reference {ref_err:.1e} is {times} float32 noise floor "
                       f"{noise:.1e} (at most {NOISE_FACTOR:g}× + {NOISE_FLOOR:.0e} allowed)")
            else:
                why = (f"error against the float64 reference {ref_err:.1e} exceeds the per-dtype tolerance "
                       f"{by_table:.1e} ({times} float32 noise floor {noise:.1e}: the float64 reference never allows "
                       "more than the tolerance table)")
            reasons = (why, *reasons)
            ok = False
        out.append(dataclasses.replace(d, noise=noise, ref_err=ref_err, rtol=allowed, atol=0.0, ok=ok, reasons=reasons))
        judged += 1
    why = None
    if missing:
        why = (f"{len(missing)} layer(s) have no float64 float32-vs-float64 reading (not in the twin's trace, another "
               f"shape, not float32, or all zero) and are judged by the dtype table: " + ", ".join(missing[:5])
               + (", …" if len(missing) > 5 else ""))
    ref = Reference(kind="float64", side=side, factor=NOISE_FACTOR, floor=NOISE_FLOOR, judged=judged, note=why)
    return tuple(out), ref


def _reading(m: Any, by_name: Mapping[str, Any], side: str) -> tuple[float, float] | None:
    """``(noise floor, reference error)`` of one pair, or None when the float64 run has no such
    tensor (or it is all zero: no relative precision to speak of)."""
    own, other = (m.a, m.b) if side == "a" else (m.b, m.a)
    t64 = by_name.get(own.name)
    if t64 is None or t64.value is None or own.value is None or other.value is None:
        return None
    if tuple(t64.shape) != tuple(own.shape):
        return None
    try:
        return _measured(m, t64, own, other, side)
    finally:  # a spilled pair's pages leave the process once measured
        for value in (t64.value, own.value, other.value):
            release(value)


def _measured(m: Any, t64: Any, own: Any, other: Any, side: str) -> tuple[float, float] | None:
    v64 = np.asarray(t64.value)
    if not v64.size or v64.dtype != np.float64:
        return None  # not float64: the twin did not compute this tensor in it
    if side == "a":  # both measured against A's float64 tensor, in one pass over it
        noise, ref_err = _relative(v64, np.asarray(own.value), np.asarray(m.transform.apply(other.value)))
    else:  # B is the reference: A's tensor is held against B's float64 one brought to A's layout
        (noise,) = _relative(v64, np.asarray(own.value))
        (ref_err,) = _relative(np.asarray(m.transform.apply(v64)), np.asarray(other.value))
    if noise is None or not math.isfinite(noise):
        return None  # all zero (no relative precision to speak of), or NaN/Inf on one run only
    return float(noise), float(math.inf if ref_err is None else ref_err)


#: past this magnitude a float64 sum of squares could overflow: the scaled sums of relative_error
_PLAIN_LIMIT = 1e150


def _relative(ref: np.ndarray, *others: np.ndarray) -> tuple[float | None, ...]:
    """``‖x − ref‖ / ‖ref‖`` in float64 for each ``x`` of ``others`` (None where ``ref`` is all zero).

    The float64 reference reads every tensor of a model twice, so this is measured one sample
    (first axis) at a time, in one pass over ``ref``: each difference cast to float64 as it is
    taken, into one buffer, then BLAS dot products.  Where a value is non-finite or huge,
    :func:`~parity.metrics.relative_error`'s scaled sums measure instead."""
    if ref.ndim == 0 or any(x.shape != ref.shape for x in others):
        return tuple(_scaled(ref, x) for x in others)
    buf = np.empty(ref.shape[1:], dtype=np.float64)
    flat = buf.reshape(-1)
    nums = [0.0] * len(others)
    den = 0.0
    for i in range(ref.shape[0]):
        r = ref[i]
        for k, x in enumerate(others):
            np.subtract(x[i], r, out=buf, dtype=np.float64)
            nums[k] += float(np.dot(flat, flat))
        r = r.reshape(-1) if r.flags.c_contiguous and r.dtype == np.float64 else np.ascontiguousarray(r, np.float64).reshape(-1)
        den += float(np.dot(r, r))
    if not math.isfinite(den) or den > _PLAIN_LIMIT or not all(math.isfinite(n) and n <= _PLAIN_LIMIT for n in nums):
        return tuple(_scaled(ref, x) for x in others)
    if den == 0:
        return tuple(None for _ in others)
    return tuple(math.sqrt(n / den) for n in nums)


def _scaled(ref: np.ndarray, x: np.ndarray) -> float | None:
    if not np.any(ref):
        return None
    return relative_error(ref, x)


def min_factor(d: LayerDiff) -> float:
    """The smallest noise factor k at which a layer judged by the float64 reference passes
    (0 when the floor alone passes it; inf over a zero noise floor)."""
    if d.ref_err is None or d.noise is None:
        raise ValueError(f"{d.a_name} was not judged by a float64 reference")
    spare = d.ref_err - NOISE_FLOOR
    if spare <= 0:
        return 0.0
    return float(spare / d.noise) if d.noise > 0 else math.inf
