"""Diagnoses that need the models, not only the recorded tensors.

- ``nondeterminism``: a model gives different outputs for the same input twice
  (dropout or batch statistics left on, random ops).  Each model is run again
  and the first tensor that changed is named.
- ``input_preprocessing``: the first layer is right (its own error, replayed, is
  small) but the inputs the two first layers see differ by an affine map or a
  channel swap: a scale (1/255), a mean/std normalisation, RGB↔BGR, built into
  one model only.

Both run only when a report diverges; they cost one more forward pass of each
model (nondeterminism) or a replay of the first layer (preprocessing).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..metrics import relative_error
from ..records import Alignment, Diagnosis, Report
from ..reruns import rerun_failed
from .base import channel_axis as _channel_axis
from .base import rel_diff as _rel

__all__ = ["nondeterminism", "input_preprocessing", "attach", "detach"]


def nondeterminism(backend_a: Any, backend_b: Any, inputs_a: Any, inputs_b: Any, traces: tuple, alignment: Alignment) -> Diagnosis | None:
    """Run each model again; name the first tensor that differs between the two runs."""
    by_b = {m.b.name: m.a.name for m in alignment.matches}
    by_a = {m.a.name: m.a.name for m in alignment.matches}
    for side, backend, inputs, trace, names in (
        ("A", backend_a, inputs_a, traces[0], by_a), ("B", backend_b, inputs_b, traces[1], by_b),
    ):
        try:
            again = backend.capture(inputs)
        except Exception as exc:  # noqa: BLE001 - a second run that fails says nothing about determinism
            rerun_failed(f"model {side}", "to check that it is deterministic", exc,
                         "whether its outputs change between runs was not checked")
            continue
        second = {t.name: t for t in again.taps}
        for tap in trace.taps:
            other = second.get(tap.name)
            if tap.value is None or other is None or other.value is None or other.value.shape != tap.value.shape:
                continue
            if np.array_equal(tap.value, other.value, equal_nan=True):
                continue
            change = _rel(tap.value, other.value)
            if change <= 1e-6:
                continue
            layer = names.get(tap.name, tap.name)
            return Diagnosis(
                code="nondeterminism",
                layer=layer,
                message=(
                    f"model {side} ({trace.model.name}) gives different outputs for the same input: its "
                    f"{tap.name!r} ({tap.op}) changed by {change:.1e} (relative) between two runs. Dropout, "
                    "batch statistics or random ops are active at inference; call the model in inference mode "
                    "(Keras: training=False in every layer call, torch: model.eval()) and fix seeds."
                ),
                evidence={"relative_change_between_runs": change, "model_b": 1.0 if side == "B" else 0.0},
            )
    return None


def input_preprocessing(
    backend_a: Any, backend_b: Any, inputs_a: Any, inputs_b: Any, report: Report, alignment: Alignment
) -> Diagnosis | None:
    """Compare the inputs the first matched layers see (B's first layer input vs A's, in B's layout)."""
    from ..replay import recorded_inputs, to_b_layout

    first = next((d for d in report.layers if d.role != "output"), None)
    if first is None or first.ok:
        return None
    match = next((m for m in alignment.matches if m.a.name == first.a_name), None)
    if match is None:
        return None
    seen = []
    for side, backend, inputs, name in (("A", backend_a, inputs_a, first.a_name), ("B", backend_b, inputs_b, first.b_name)):
        try:
            seen.append(recorded_inputs(backend, inputs, [name]).get(name))
        except Exception as exc:  # noqa: BLE001 - the comparison stands; the report says the rerun failed
            rerun_failed(f"model {side}", "to record the input of its first layer", exc,
                         "whether the two models' inputs are preprocessed differently was not checked")
            return None
    seen_a, seen_b = seen
    if seen_a is None or seen_b is None:
        return None
    xa = to_b_layout(seen_a, match, None)
    if xa is None or xa.shape != seen_b.shape:
        return None
    xa64, xb64 = xa.astype(np.float64), seen_b.astype(np.float64)
    if _rel(xa64, xb64) < 1e-6:
        return None  # the same inputs: preprocessing is not it
    axis = _channel_axis(match.b.layout, xb64.ndim) if xb64.ndim > 2 else xb64.ndim - 1
    evidence: dict[str, float] = {"input_rel_diff": _rel(xa64, xb64)}
    # a channel permutation (RGB↔BGR)?
    if axis is not None and xb64.shape[axis] <= 4:
        n = xb64.shape[axis]
        flipped = np.flip(xa64, axis=axis)
        if n > 1 and _rel(flipped, xb64) < 1e-6:
            evidence["channels"] = float(n)
            return Diagnosis(
                code="input_preprocessing",
                layer=first.a_name,
                message=(
                    f"the first layer {first.a_name} is right, but its input differs between the models: B sees the "
                    f"{n} channels in reverse order (RGB↔BGR). Convert the channel order in one model's preprocessing."
                ),
                evidence=evidence,
            )
    # an affine map, global or per channel: x_b = scale·x_a + offset
    a_flat = xa64.reshape(-1)
    b_flat = xb64.reshape(-1)
    design = np.stack([a_flat, np.ones_like(a_flat)], axis=1)
    (scale, offset), *_ = np.linalg.lstsq(design, b_flat, rcond=None)
    resid = _rel(b_flat, scale * a_flat + offset)
    if resid < 1e-5:
        evidence.update(scale=float(scale), offset=float(offset), residual=resid)
        return Diagnosis(
            code="input_preprocessing",
            layer=first.a_name,
            message=(
                f"the first layer {first.a_name} is right, but its input differs between the models by an affine map: "
                f"B sees {scale:.4g}·x + {offset:.4g} where A sees x (a scaling such as 1/255 or a mean/std "
                "normalisation in one model only). Apply the same preprocessing to both, or feed each its own."
            ),
            evidence=evidence,
        )
    if axis is not None:
        a_ch = np.moveaxis(xa64, axis, 0).reshape(xa64.shape[axis], -1)
        b_ch = np.moveaxis(xb64, axis, 0).reshape(xb64.shape[axis], -1)
        scales, offsets, worst = [], [], 0.0
        for ac, bc in zip(a_ch, b_ch):
            d = np.stack([ac, np.ones_like(ac)], axis=1)
            (s, o), *_ = np.linalg.lstsq(d, bc, rcond=None)
            scales.append(float(s))
            offsets.append(float(o))
            worst = max(worst, _rel(bc, s * ac + o))
        if worst < 1e-5:
            for i, (s, o) in enumerate(zip(scales, offsets)):
                evidence[f"scale_{i}"] = s
                evidence[f"offset_{i}"] = o
            return Diagnosis(
                code="input_preprocessing",
                layer=first.a_name,
                message=(
                    f"the first layer {first.a_name} is right, but its input differs per channel by an affine map "
                    f"(scales {', '.join(f'{s:.4g}' for s in scales[:4])}; offsets "
                    f"{', '.join(f'{o:.4g}' for o in offsets[:4])}): a per-channel mean/std normalisation in one "
                    "model only. Apply the same normalisation to both."
                ),
                evidence=evidence,
            )
    return None


#: at most this many orders of B's inputs are tried (3 inputs of one shape: all 6)
_MAX_ORDERS = 6


def input_order(backend_b: Any, inputs_b: Any, report: Report, alignment: Alignment) -> Diagnosis | None:
    """``io_order`` for inputs: B fed its inputs in another order (among inputs of one shape and
    dtype) reproduces A's outputs — a converter (a TFLite signature sorting its inputs by name)
    reordered them.  Reruns B once per order tried."""
    import itertools

    first = report.first_divergence
    outs = [m for m in alignment.matches if m.how == "output" and m.a.value is not None]
    if first is None or not outs or inputs_b is None:
        return None
    keys = list(inputs_b) if isinstance(inputs_b, dict) else list(range(len(inputs_b)))
    values = [np.asarray(inputs_b[k]) for k in keys]
    if len(values) < 2:
        return None
    allowed = min(d.allowed_rel for d in report.outputs) if report.outputs else 1e-3
    groups: dict[tuple, list[int]] = {}
    for i, v in enumerate(values):
        groups.setdefault((v.shape, str(v.dtype)), []).append(i)
    for idx in (g for g in groups.values() if len(g) > 1):
        for order in list(itertools.permutations(idx))[1:_MAX_ORDERS + 1]:
            moved = list(values)
            for src, dst in zip(idx, order):
                moved[dst] = values[src]
            fed = dict(zip(keys, moved)) if isinstance(inputs_b, dict) else moved
            try:
                trace = backend_b.capture(fed)
            except Exception as exc:  # noqa: BLE001 - the report stands; the note says what was not checked
                rerun_failed("model B", "with its inputs in another order", exc, "whether B takes its inputs in "
                             "another order was not checked")
                return None
            worst = _outputs_error(trace, outs)
            if worst <= allowed:
                names = [str(k) for k in keys]
                fed_as = ", ".join(f"{names[src]} → {names[dst]}" for src, dst in zip(idx, order) if src != dst)
                return Diagnosis(
                    code="io_order",
                    layer=first.a_name,
                    message=(
                        f"B takes its inputs in another order: fed with {fed_as} (inputs of one shape swapped), B "
                        f"reproduces A's outputs (rel err {worst:.1e}). A TFLite signature (and some converters) "
                        "sort inputs by name: bind them by name (input_map=…), or reorder them, before comparing or "
                        "deploying."
                    ),
                    evidence={"rel_err_outputs_reordered": float(worst), "inputs_moved": float(sum(
                        1 for src, dst in zip(idx, order) if src != dst))},
                )
    return None


def _outputs_error(trace: Any, outs: list) -> float:
    """The worst relative error of B's outputs in ``trace`` against A's of the output pairs
    ``outs`` (inf where one is missing or of another shape)."""
    by_name = {t.name: t for t in trace.outputs}
    worst = 0.0
    for m in outs:
        t = by_name.get(m.b.name)
        if t is None or t.value is None:
            return float("inf")
        worst = max(worst, relative_error(np.asarray(m.a.value), np.asarray(m.transform.apply(np.asarray(t.value)))))
    return worst


def attach(report: Report, diagnosis: Diagnosis) -> Report:
    """``report`` with ``diagnosis`` added to the report and to its layer."""
    layers = tuple(
        dataclasses.replace(d, diagnoses=(*d.diagnoses, diagnosis)) if d.a_name == diagnosis.layer else d
        for d in report.layers
    )
    return dataclasses.replace(report, layers=layers, diagnoses=(*report.diagnoses, diagnosis))


def detach(report: Report, layer: str, codes: set[str]) -> Report:
    """``report`` without the diagnoses of ``codes`` at ``layer`` (a cause found by rerunning the
    models supersedes what the values alone suggested there)."""
    keep = lambda g: not (g.layer == layer and g.code in codes)  # noqa: E731
    layers = tuple(
        dataclasses.replace(d, diagnoses=tuple(filter(keep, d.diagnoses))) if d.a_name == layer else d
        for d in report.layers
    )
    return dataclasses.replace(report, layers=layers, diagnoses=tuple(filter(keep, report.diagnoses)))

