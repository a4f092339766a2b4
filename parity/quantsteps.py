"""Quantized layers judged by their quantization step.

An int8 tensor holds ``q = round(y / scale) + zero_point``: dequantized, it is A's float value
up to half a step, and rounding alone leaves an RMS error of ``scale/√12`` (0.29 steps).  So a
quantized layer of B is judged by ``RMSE(B − A) / scale`` — its error in steps of its own output
scale, as TFLite's quantization debugger does — and never by a float rtol (an int8 layer held to
1e-3 fails for being int8):

- **cumulative**: B's dequantized output against A's at that layer (every earlier layer's
  rounding included);
- **local**: the layer alone — A's float layer fed B's dequantized input of it, against B's
  output (the layer's own rounding and weight quantization), where model A can compute the
  layer alone (a live torch/Keras layer, or the chain of A's layers a converter fused into B's
  op; an ONNX graph cut between the two tensors); else "not measurable", with why.  A's layer
  inputs are recorded by one more run of model A.

A layer is flagged when its local figure (its cumulative one where local is not measurable) is
over :data:`STEP_LIMIT` steps; the flagged layers, worst first, are the deny-list for the
converter's selective quantization (TFLite's ``QuantizationDebugOptions(denylisted_nodes=…)``,
ONNX Runtime's ``quantize_static(…, nodes_to_exclude=…)``).  The share of elements where B
sits at its integer range's limit while A is past it is kept too: the evidence of a clipped
range (:mod:`parity.diagnose.quant_range`).

The quantization parameters come from the taps (``attrs["quantized"]``: scale, zero point,
axis, the integer limits, and ``via`` where they were read), which the TFLite and ONNX
backends record.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from .metrics import relative_error
from .records import Alignment, LayerDiff, Match, QuantSummary, QuantVerdict, Report, Tap

__all__ = ["CLIPPED_SHARE", "ROUNDING_FLOOR", "STEP_LIMIT", "quant_steps", "quant_summary", "steps_of"]

#: RMS of rounding to a grid of step 1: the error of a healthy quantized layer, in steps
ROUNDING_FLOOR = 1.0 / math.sqrt(12.0)
#: a layer more than this many steps off alone is flagged.  Measured (tests/test_quant_steps.py,
#: 8 test inputs): healthy layers of an int8 TFLite CNN 0.25–0.32 alone per conv (0.0 for a
#: max-pool, 0.29 a mean, 0.85 the dense head, where a test input leaves its calibrated range a
#: little), 0.32–0.90 cumulative; of an ONNX QDQ CNN 0.14–0.28 alone, 0.20–0.42 cumulative; the
#: faults 6.2 (per-tensor weights leaving 15 channels ±3 levels), 87 (a range cut to a quarter)
#: and 468 (a range pinned to a twelfth).  1.5 — about 5× the rounding floor — passes the worst
#: healthy layer with 1.8× margin and flags the mildest fault by 4×; TFLite's debugger guide takes
#: 0.7 as "suspect", which would flag that healthy dense head.
STEP_LIMIT = 1.5
#: a range is clipped when at least this share of B's elements sit at a limit A goes past
#: (healthy layers measured 0–0.04%, and 1.25% at a dense head with 80 elements; the ranges
#: clipped in the tests 25% and 43%)
CLIPPED_SHARE = 0.01
#: ops that only quantize or dequantize a tensor: the same values on another grid
_PLUMBING = frozenset({"QuantizeLinear", "DequantizeLinear", "QUANTIZE", "DEQUANTIZE"})
#: A's recorded input is the tensor B's layer reads when they agree this well
_SAME_TENSOR = 1e-6


def _scales(q: dict, shape: tuple[int, ...]) -> np.ndarray:
    """The scale and zero point of every element of a tensor of ``shape`` (B's layout)."""
    scale = np.asarray(q["scale"], np.float64).reshape(-1)
    axis = q.get("axis")
    if scale.size > 1 and axis is not None and len(shape) > axis and shape[axis] == scale.size:
        view = [1] * len(shape)
        view[axis] = scale.size
        return np.broadcast_to(scale.reshape(view), shape)
    return np.broadcast_to(np.float64(scale.mean()), shape)


def steps_of(a: np.ndarray, b: np.ndarray, scale: np.ndarray) -> float:
    """``RMSE(b − a) / scale`` over the elements finite on both sides (``scale`` per element)."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    finite = np.isfinite(a64) & np.isfinite(b64)
    if not np.any(finite):
        return math.inf
    return float(np.sqrt(np.mean(((b64 - a64)[finite] / scale[finite]) ** 2)))


def _clipped(a: np.ndarray, b: np.ndarray, scale: np.ndarray, q: dict) -> float:
    """The share of elements where B sits at its grid's lowest or highest level while A is
    past that level by more than a step."""
    zp = np.asarray(q["zero_point"], np.float64).reshape(-1)
    zp_v = float(zp.mean()) if zp.size else 0.0
    lo, hi = (q["qmin"] - zp_v) * scale, (q["qmax"] - zp_v) * scale
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    at_hi = (np.abs(b64 - hi) <= scale / 2) & (a64 > hi + scale)
    at_lo = (np.abs(b64 - lo) <= scale / 2) & (a64 < lo - scale)
    return float(np.mean(at_hi | at_lo)) if a64.size else 0.0


class _Graph:
    """B's taps by name, each with what it reads (``attrs["fed_by"]``), and A's model inputs."""

    def __init__(self, a: Any, b: Any, alignment: Alignment) -> None:
        self.a, self.b = a, b
        self.taps = {t.name: t for t in b.trace.taps if t.role != "output"}
        self.match_of_b = {id(m.b): m for m in alignment.matches}
        self.read_by: dict[str, list[Tap]] = {}
        for t in self.taps.values():
            for name in t.attrs.get("fed_by") or ():
                self.read_by.setdefault(name, []).append(t)

    def producer(self, tap: Tap) -> Tap | str | None:
        """The tap ``tap`` reads first, ``"<input k>"`` for model input k, or None."""
        fed = tap.attrs.get("fed_by") or ()
        if not fed:
            return None
        first = fed[0]
        return first if first.startswith("<input ") else self.taps.get(first)

    def readers(self, tap: Tap) -> list[str]:
        """The nodes that compute with ``tap``'s values, past its quantize/dequantize steps."""
        out: list[str] = []
        frontier = [tap.name]
        while frontier:
            name = frontier.pop(0)
            for t in self.read_by.get(name, ()):
                if t.op in _PLUMBING:
                    frontier.append(t.name)
                else:
                    out.append(str(t.attrs.get("node") or t.name))
        return out

    def layer_input(self, tap: Tap) -> tuple[Tap | str, Tap] | None:
        """(what B's layer of ``tap`` reads, the tap that computes the layer): past the
        quantize/dequantize steps of ``tap`` itself, the input of the op that computed it."""
        cur: Tap | str | None = tap
        while isinstance(cur, Tap) and cur.op in _PLUMBING:
            cur = self.producer(cur)
        if not isinstance(cur, Tap):
            return None
        x = self.producer(cur)
        return (x, cur) if x is not None else None

    def counterpart(self, x: Tap | str) -> tuple[Match | None, int | None]:
        """The pair whose B tap is ``x`` (through quantize/dequantize steps), or the model
        input it is: ``(match, None)`` or ``(None, k)``; ``(None, None)`` when neither."""
        cur: Tap | str | None = x
        while isinstance(cur, Tap):
            m = self.match_of_b.get(id(cur))
            if m is not None:
                return m, None
            if cur.op not in _PLUMBING:
                return None, None
            cur = self.producer(cur)
        if isinstance(cur, str):
            return None, int(cur[len("<input "):-1])
        return None, None


def _inputs(side: Any) -> list[np.ndarray] | None:
    inputs = side.inputs
    if inputs is None:
        return None
    return [np.asarray(v) for v in (inputs.values() if isinstance(inputs, dict) else inputs)]


def _input_pair(graph: _Graph, m: Match) -> tuple[Tap | str | None, Match | None, int | None]:
    """What B's layer of pair ``m`` reads, and its counterpart in A: the pair or model input."""
    found = graph.layer_input(m.b)
    if found is None:
        return None, None, None
    p, k = graph.counterpart(found[0])
    return found[0], p, k


def _kept(q: dict, scale: np.ndarray):
    """What a ``QuantizeLinear`` keeps of the float values it is fed, for each side: B's clamped
    to the grid's range; A's clamped at a lower end of 0 (a ReLU the quantizer folded into the
    range: ``zero_point`` at the type's minimum) — past the upper end A is left as it is, so a
    range clipped short shows.  Identity for a tensor already on its grid."""
    if q.get("via") != "QuantizeLinear":
        return (lambda x: x), (lambda x: x)
    zp = float(np.mean(q["zero_point"]))
    lo, hi = (q["qmin"] - zp) * scale, (q["qmax"] - zp) * scale
    relu = zp == q["qmin"]
    return (lambda x: np.maximum(x, lo) if relu else x), (lambda x: np.clip(x, lo, hi))


def _same(x: np.ndarray | None, y: np.ndarray) -> bool:
    return x is not None and x.shape == y.shape and relative_error(y, x) <= _SAME_TENSOR


def _a_chain(graph: _Graph, m: Match, p: Match | None, own_a: np.ndarray,
             recorded: dict[str, np.ndarray]) -> list[str] | None:
    """A's layers that compute pair ``m``'s tensor from ``own_a`` (the tensor B's op reads, in A):
    the layer alone where it reads ``own_a``; else the layers of A recorded between the two — the
    ones a converter fused into B's op (TFLite's CONV_2D of a Conv, a BatchNorm and a ReLU) —
    when each reads the one before it; None otherwise."""
    if _same(recorded.get(m.a.name), own_a):
        return [m.a.name]
    start = p.a.index if p is not None else -1
    between = [t for t in graph.a.trace.taps if start < t.index < m.a.index and t.role == "layer"]
    chain = [*between, m.a]
    backend = graph.a.backend
    if len(chain) < 2 or any(backend.tap_layer(t.name) is None for t in chain):
        return None
    feeds = [own_a, *(np.asarray(t.value) for t in between if t.value is not None)]
    if len(feeds) != len(chain) or not all(_same(recorded.get(t.name), x) for t, x in zip(chain, feeds)):
        return None
    return [t.name for t in chain]


def _local(graph: _Graph, m: Match, value_b: np.ndarray, scale: np.ndarray,
           recorded: dict[str, np.ndarray], keep_a: Any = None) -> tuple[float | None, str]:
    """The layer's own error in steps (A's float layer fed B's dequantized input of it), or
    None and why it cannot be measured."""
    a, b = graph.a, graph.b
    x, p, k = _input_pair(graph, m)
    if x is None:
        return None, "not measurable: B's trace does not say which tensor this op reads"
    inputs_a, inputs_b = _inputs(a), _inputs(b)
    if p is not None and p.a.value is not None:
        if not isinstance(x, Tap) or x.value is None:
            return None, "not measurable: B's input of this layer was not recorded"
        x_b = np.asarray(x.value)
        source_a, own_a = p.a.name, np.asarray(p.a.value)
        x_a = np.asarray(p.transform.apply(x_b)) if x_b.shape == tuple(p.b.shape) else None
    elif k is not None and inputs_a is not None and inputs_b is not None and k < len(inputs_a):
        x_b = np.asarray(x.value) if isinstance(x, Tap) and x.value is not None else inputs_b[k]
        own_a = inputs_a[k]
        spec = a.backend.input_spec() if a.backend is not None else None
        source_a = spec[k].name if spec and k < len(spec) else ""
        if x_b.shape == own_a.shape:
            x_a = x_b
        elif m.transform.kind == "permute" and m.transform.perm is not None and x_b.ndim == len(m.transform.perm):
            x_a = np.transpose(x_b, m.transform.perm)
        else:
            x_a = None
    else:
        return None, "not measurable: the tensor B's layer reads has no counterpart in A"
    if x_a is None or x_a.shape != own_a.shape:
        return None, "not measurable: B's input of this layer cannot be brought into A's layout"
    x_a = x_a.astype(own_a.dtype, copy=False)
    backend = a.backend
    try:
        if backend is not None and backend.tap_layer(m.a.name) is not None:
            chain = _a_chain(graph, m, p, own_a, recorded)
            if chain is None:
                return None, ("not measurable: A's layers between the two tensors do not read one another's "
                              "outputs (a branch), or cannot be called alone")
            out = x_a
            for name in chain:
                out = np.asarray(backend.call_tap(name, out)).astype(own_a.dtype, copy=False)
            how = ("A's layer fed B's dequantized input" if len(chain) == 1 else
                   f"A's {len(chain)} layers B's op computes ({', '.join(chain)}), fed B's dequantized input")
        elif backend is not None and backend.runs_pieces and source_a:
            again = np.asarray(backend.call_from(m.a.name, source_a, own_a))
            if again.shape != tuple(m.a.shape) or relative_error(np.asarray(m.a.value), again) > 1e-5:
                return None, "not measurable: A's graph between the two tensors is not this layer alone"
            out = backend.call_from(m.a.name, source_a, x_a)
            how = "A's graph piece fed B's dequantized input"
        else:
            return None, "not measurable: model A cannot run one layer alone (no live model, graph not cut)"
    except Exception as exc:  # noqa: BLE001 - a layer that cannot run alone: the cumulative figure stands
        return None, f"not measurable: A's layer did not run alone ({type(exc).__name__})"
    out = np.asarray(out, np.float64)
    if keep_a is not None:
        out = keep_a(out)
    if out.shape != value_b.shape:
        return None, "not measurable: A's layer alone gave another shape"
    return steps_of(out, value_b, scale), how


def _exclude_names(graph: _Graph, tap: Tap, clipped: bool) -> tuple[str, ...]:
    """The names the converter's selective quantization takes to keep B's layer of ``tap`` in
    float: the TFLite tensor name; the ONNX node that computes it (not its Q/DQ steps) — and,
    for a clipped range, the nodes that read the tensor too: ONNX Runtime quantizes a tensor
    while any node reading it is quantized, so only excluding its readers drops its range."""
    q = tap.attrs["quantized"]
    if "tensor" in q:
        return (str(q["tensor"]).split("#")[0],)
    if tap.role == "output":  # a model output is the tensor it copies
        inner = graph.producer(tap)
        tap = inner if isinstance(inner, Tap) and "quantized" in inner.attrs else tap
    found = graph.layer_input(tap)
    node_tap = found[1] if found is not None else tap
    names = [str(node_tap.attrs.get("node") or node_tap.name)]
    if clipped:
        names.extend(graph.readers(node_tap))
    return tuple(dict.fromkeys(names))


def _judge(graph: _Graph, d: LayerDiff, m: Match, recorded: dict[str, np.ndarray], earlier: dict[str, LayerDiff],
           layer_of: dict[str, QuantVerdict]) -> QuantVerdict:
    """The verdict in steps of pair ``m`` (``earlier``: the pairs judged before, by A's name; a
    model output takes the figures alone of the layer whose tensor it is from ``layer_of``)."""
    q = m.b.attrs["quantized"]
    value_a = np.asarray(m.a.value, np.float64)
    scale = np.asarray(m.transform.apply(_scales(q, tuple(m.b.shape))), np.float64)
    if scale.shape != value_a.shape:
        scale = np.broadcast_to(np.float64(np.mean(q["scale"])), value_a.shape)
    keep_a, keep_b = _kept(q, scale)
    value_a, value_b = keep_a(value_a), keep_b(np.asarray(m.transform.apply(m.b.value), np.float64))
    cumulative = steps_of(value_a, value_b, scale)
    clipped = _clipped(value_a, value_b, scale, q)
    names = _exclude_names(graph, m.b, clipped >= CLIPPED_SHARE)
    weights = None
    if d.role == "output":
        inner = layer_of.get(names[0])
        local = inner.local if inner is not None else None
        note = inner.local_note if inner is not None else "not measurable: a model output whose layer was not compared"
        input_steps = inner.input_steps if inner is not None else None
    else:
        local, note = _local(graph, m, value_b, scale, recorded, keep_a)
        _, p, _ = _input_pair(graph, m)
        before = earlier.get(p.a.name) if p is not None else None
        input_steps = before.quant.cumulative if before is not None and before.quant is not None else None
        found = graph.layer_input(m.b)
        weights = found[1].attrs.get("weight_quant") if found is not None else None
    steps = local if local is not None else cumulative
    zp = np.asarray(q["zero_point"]).reshape(-1)
    return QuantVerdict(
        scale=float(np.mean(q["scale"])), zero_point=int(zp[0]) if zp.size else 0, dtype=str(q["dtype"]),
        axis=q.get("axis"), via=str(q.get("via", "tensor")), cumulative=cumulative, local=local, local_note=note,
        steps=steps, limit=STEP_LIMIT, ok=bool(steps <= STEP_LIMIT) and not d.metrics.nonfinite_mismatch,
        clipped=clipped, exclude=names, input_steps=input_steps,
        weight_per_channel=None if weights is None else bool(weights["per_channel"]),
        weight_levels=() if weights is None else tuple(weights["levels"]),
    )


def quant_steps(a: Any, b: Any, alignment: Alignment, layers: tuple[LayerDiff, ...]) -> tuple[LayerDiff, ...]:
    """``layers`` with every pair whose B tensor is quantized judged in steps of its scale
    (:class:`~parity.records.QuantVerdict` on ``quant``; ``ok`` and ``reasons`` from it).
    ``a``/``b`` are the pipeline's sides (trace, backend, inputs)."""
    matches = {m.a.name: m for m in alignment.matches}
    judged = [d for d in layers if (m := matches.get(d.a_name)) is not None and "quantized" in m.b.attrs
              and m.a.value is not None and m.b.value is not None]
    if not judged:
        return layers
    graph = _Graph(a, b, alignment)
    recorded: dict[str, np.ndarray] = {}
    backend = a.backend
    if backend is not None and a.inputs is not None:
        # the judged layers, and the layers of A a converter may have fused into one op of B
        fused = [u.tap.name for u in alignment.unmatched_a if u.reason == "fused"]
        wanted = {name: backend.tap_layer(name) for name in [*(d.a_name for d in judged), *fused]}
        layer_names = sorted({n for n in wanted.values() if n is not None})
        if layer_names:
            try:
                by_layer = backend.layer_inputs(a.inputs, layer_names)
            except Exception:  # noqa: BLE001 - no recorded inputs: local not measured by A's layers
                by_layer = {}
            recorded = {t: by_layer[n] for t, n in wanted.items() if n is not None and n in by_layer}
    out: dict[str, LayerDiff] = {}
    layer_of: dict[str, QuantVerdict] = {}  # by B's layer (its first name to exclude): an output is its layer's
    for d in sorted(judged, key=lambda d: d.role == "output"):  # outputs last
        verdict = _judge(graph, d, matches[d.a_name], recorded, out, layer_of)
        layer_of.setdefault(verdict.exclude[0], verdict)
        reasons = () if verdict.ok else (
            f"{verdict.steps:.2f} steps of its output scale {verdict.scale:.3g} "
            f"({'alone' if verdict.local is not None else 'cumulative'}), over the limit of {STEP_LIMIT:g} "
            f"(rounding alone gives {ROUNDING_FLOOR:.2f})",)
        out[d.a_name] = dataclasses.replace(d, quant=verdict, ok=verdict.ok, reasons=reasons)
    return tuple(out.get(d.a_name, d) for d in layers)


def quant_summary(report: Report) -> Report:
    """``report`` with its :class:`~parity.records.QuantSummary` (when a layer was judged in
    steps): the flagged quantized layers' names for B's converter, worst first."""
    judged = [d for d in report.layers if d.quant is not None]
    if not judged:
        return report
    tflite = report.b.framework == "tflite"
    # a layer whose input is already off by more than the limit was calibrated for other inputs:
    # its error follows the one before it, and keeping it float would not remove it
    flagged = sorted((d for d in judged if d.quant is not None and not d.quant.ok and d.quant.born_here),
                     key=lambda d: -(d.quant.steps if d.quant is not None else 0.0))
    names = tuple(dict.fromkeys(n for d in flagged if d.quant is not None for n in d.quant.exclude))
    listed = "[" + ", ".join(repr(n) for n in names) + "]"
    option = (f"tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes={listed})" if tflite
              else f"quantize_static(..., nodes_to_exclude={listed})")
    summary = QuantSummary(converter="tflite" if tflite else "onnxruntime", layers=len(judged), limit=STEP_LIMIT,
                           exclude=names, option=option if names else "")
    return dataclasses.replace(report, quant=summary)
