"""What one worker does: the plan made on the first batch, and every batch counted into stats.

The first batch is captured whole on both models and aligned once, as :func:`parity.diff`
aligns (:func:`parity.align.align`, then the folded scales and unsure pairs taken out the way
the pipeline takes them out); the matched pairs, their layout transforms and tolerances
become a :class:`Plan`, a small picklable record a Ray worker receives.  Each batch is then
run on both models — captured again for ``layers="all"`` or globs, run plainly for
``layers="outputs"`` — and every planned pair's tensors are counted into :class:`Stats`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import AlignmentError, DataError, InputError, LabelsError, OptionError
from ..records import Transform
from .data import Batch
from .stats import LayerStats, OutputStats, Sample, Stats, WorstKeeper

__all__ = ["PairPlan", "Plan", "Runner", "build_plan", "select_layers"]


@dataclass(frozen=True)
class PairPlan:
    """One pair of tensors to compare on every batch: where each is in its trace, how B's
    is brought into A's layout, and its tolerance."""

    a_name: str
    a_index: int
    b_name: str
    b_index: int
    transform: Transform
    rtol: float
    atol: float
    op: str
    b_op: str
    role: str
    #: positions among each model's outputs, for a pair of model outputs
    a_output: int | None = None
    b_output: int | None = None


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs besides the two models: picklable, made once."""

    pairs: tuple[PairPlan, ...]
    #: (position in ``pairs``, number of classes, k) for each output of class scores
    classify: tuple[tuple[int, int, int], ...]
    #: "outputs": run both models plainly; "capture": record every layer
    mode: str
    #: whether each model's plain run gives its outputs (else they come from a capture)
    plain: tuple[bool, bool]
    worst: int
    max_disagreements: int
    input_map: Mapping[str, str] | None = None
    #: A's layers the alignment left out, as "name (reason)"
    unmatched: tuple[str, ...] = ()
    #: each model's output names, in the order of its outputs
    output_names: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())

    def empty_stats(self) -> Stats:
        layers = [LayerStats(p.a_name, p.b_name, p.op, p.b_op, p.role, p.transform.label, p.rtol, p.atol)
                  for p in self.pairs]
        outputs = [OutputStats(self.pairs[i].a_name, classes, k) for i, classes, k in self.classify]
        return Stats(layers, outputs, WorstKeeper(self.worst, self.max_disagreements))

    @property
    def first_output(self) -> int:
        return next(i for i, p in enumerate(self.pairs) if p.role == "output")


def select_layers(layers: Any) -> tuple[str, tuple[str, ...]]:
    """``layers`` → ("all" | "outputs" | "globs", patterns)."""
    if layers in ("all", None):
        return "all", ()
    if layers == "outputs":
        return "outputs", ()
    if isinstance(layers, str):
        patterns = tuple(p.strip() for p in layers.split(",") if p.strip())
    elif isinstance(layers, Sequence) and all(isinstance(p, str) for p in layers):
        patterns = tuple(layers)
    else:
        raise OptionError(f"layers must be 'all', 'outputs' or layer-name globs (a list, or comma-separated), got {layers!r}.")
    if not patterns:
        raise OptionError("layers is empty; give 'all', 'outputs' or layer-name globs such as 'layer1.*'.")
    return "globs", patterns


def _is_tensor(obj: Any) -> bool:
    return hasattr(obj, "shape") and hasattr(obj, "dtype") and not isinstance(obj, Mapping)


def _numpy(obj: Any) -> np.ndarray:
    if isinstance(obj, np.ndarray):
        return obj
    if hasattr(obj, "detach"):
        return obj.detach().cpu().numpy()
    return np.asarray(obj)


def plain_outputs(backend: Any, inputs: Any) -> dict[str, np.ndarray]:
    """The model's outputs from one plain run (no recording), named as a capture names them."""
    from ..capture.base import flatten_outputs

    return {name: _numpy(v) for name, v in flatten_outputs(backend.run(inputs), "output", _is_tensor)}


def _plain_fits(backend: Any, inputs: Any, outputs: list[Any]) -> bool:
    """Whether a plain run gives the captured outputs (names, shapes, values): then batches skip
    the capture's bookkeeping."""
    if not callable(getattr(backend, "run", None)):
        return False
    try:
        got = plain_outputs(backend, inputs)
    except Exception:  # a backend whose plain run needs what only capture prepares: use capture
        return False
    for tap in outputs:
        v = got.get(tap.name)
        if v is None or tuple(v.shape) != tuple(tap.shape):
            return False
        if not np.allclose(np.asarray(v, dtype=np.float64), np.asarray(tap.value, dtype=np.float64),
                           rtol=1e-5, atol=1e-6, equal_nan=True):
            return False
    return True


def build_plan(backend_a: Any, backend_b: Any, batch: Batch, *, layers: Any, mapping: Mapping[str, str] | None,
               tolerances: Any, input_map: Mapping[str, str] | None, top_k: int, worst: int,
               max_disagreements: int) -> Plan:
    """Align the two models on ``batch`` and plan what every batch compares."""
    from ..align import align, unsure_pairs
    from ..compare import compare
    from ..pipeline import params_reader, same_params
    from ..unsure import folded_scales

    kind, patterns = select_layers(layers)
    inputs_a, inputs_b = prepared(backend_a, backend_b, batch, input_map)
    trace_a, trace_b = backend_a.capture(inputs_a), backend_b.capture(inputs_b)
    alignment = align(trace_a, trace_b, mapping)
    compared = compare(alignment, tolerances)
    alignment, compared, _ = folded_scales(alignment, compared, params_reader(backend_a))
    alignment, compared = unsure_pairs(alignment, compared, same_params(backend_a, backend_b))
    matches = sorted(alignment.matches, key=lambda m: m.a.index)
    outs_a = [t for t in trace_a.taps if t.role == "output"]
    outs_b = [t for t in trace_b.taps if t.role == "output"]
    if not any(m.a.role == "output" for m in matches):
        raise AlignmentError(
            f"no output of model A ({', '.join(t.name for t in outs_a) or 'none'}) could be paired with one of model B "
            f"({', '.join(t.name for t in outs_b) or 'none'}): a dataset run compares the outputs at least. "
            "Check that both models return the same outputs."
        )
    if kind == "outputs":
        matches = [m for m in matches if m.a.role == "output"]
    elif kind == "globs":
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(m.a.name, p) for m in matches)]
        if unmatched:
            names = ", ".join(m.a.name for m in matches if m.a.role != "output")
            raise OptionError(f"layers pattern {unmatched[0]!r} matches no compared layer of model A; "
                              f"the compared layers are: {names}.")
        matches = [m for m in matches if m.a.role == "output" or any(fnmatch.fnmatchcase(m.a.name, p) for p in patterns)]
    pairs = []
    for m in matches:
        rtol, atol = tolerances.for_layer(m.a.name, m.a.dtype, m.b.dtype)
        pairs.append(PairPlan(
            a_name=m.a.name, a_index=m.a.index, b_name=m.b.name, b_index=m.b.index, transform=m.transform,
            rtol=rtol, atol=atol, op=m.a.op, b_op=m.b.op, role=m.a.role,
            a_output=outs_a.index(m.a) if m.a in outs_a else None, b_output=outs_b.index(m.b) if m.b in outs_b else None,
        ))
    classify = []
    for i, p in enumerate(pairs):
        shape = matches[i].a.shape
        if p.role == "output" and len(shape) == 2 and shape[1] > 1:
            classify.append((i, int(shape[1]), min(int(top_k), int(shape[1]))))
    if batch.labels is not None and not classify:
        raise LabelsError(
            f"labels were given, but no output of model A holds class scores (a 2-D (N, classes) tensor; got "
            f"{', '.join(f'{t.name} {tuple(t.shape)}' for t in outs_a)}); accuracy needs logits or probabilities."
        )
    plain = (False, False)
    if kind == "outputs":
        plain = (_plain_fits(backend_a, inputs_a, outs_a), _plain_fits(backend_b, inputs_b, outs_b))
    left_out = tuple(f"{u.tap.name} ({u.reason})" for u in alignment.unmatched_a)
    return Plan(tuple(pairs), tuple(classify), "outputs" if kind == "outputs" else "capture", plain, worst,
                max_disagreements, input_map, left_out,
                (tuple(t.name for t in outs_a), tuple(t.name for t in outs_b)))


def prepared(backend_a: Any, backend_b: Any, batch: Batch, input_map: Mapping[str, str] | None) -> tuple[Any, Any]:
    """The batch's inputs for A and converted for B (:func:`parity.inputs.prepare_inputs`), with a
    refusal that names the batch and its samples."""
    from ..inputs import prepare_inputs

    try:
        inputs_a, inputs_b, _ = prepare_inputs(batch.inputs, backend_a, backend_b, input_map=input_map)
    except InputError as exc:
        raise DataError(f"batch {batch.index} (samples {batch.start}–{batch.start + batch.size - 1}): {exc}") from exc
    return inputs_a, inputs_b


def _apply(t: Transform, b: np.ndarray, a_shape: tuple) -> np.ndarray:
    if t.kind == "reshape":  # the planned target shape holds the first batch's size
        return b.reshape(a_shape)
    return np.asarray(t.apply(b))


def _sample_inputs(inputs: Any, i: int) -> Any:
    if isinstance(inputs, dict):
        return {k: np.array(v[i:i + 1]) for k, v in inputs.items()}
    return [np.array(v[i:i + 1]) for v in inputs]


class Runner:
    """Both models' backends and the plan: :meth:`process` counts one batch."""

    def __init__(self, backend_a: Any, backend_b: Any, plan: Plan) -> None:
        self.a, self.b, self.plan = backend_a, backend_b, plan

    def _values(self, inputs_a: Any, inputs_b: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        plan = self.plan
        if plan.mode == "outputs":
            got_a = self._outputs(self.a, inputs_a, plan.plain[0], plan.output_names[0])
            got_b = self._outputs(self.b, inputs_b, plan.plain[1], plan.output_names[1])
            return [(got_a[p.a_output or 0], got_b[p.b_output or 0]) for p in plan.pairs]
        trace_a, trace_b = self.a.capture(inputs_a), self.b.capture(inputs_b)
        return [(_tap(trace_a, p.a_index, p.a_name), _tap(trace_b, p.b_index, p.b_name)) for p in plan.pairs]

    @staticmethod
    def _outputs(backend: Any, inputs: Any, plain: bool, names: tuple[str, ...]) -> list[np.ndarray]:
        if plain:
            got = plain_outputs(backend, inputs)
            return [got[name] for name in names]
        return [np.asarray(t.value) for t in backend.capture(inputs).taps if t.role == "output"]

    def process(self, batch: Batch) -> Stats:
        """The statistics of one batch."""
        plan = self.plan
        stats = plan.empty_stats()
        inputs_a, inputs_b = prepared(self.a, self.b, batch, plan.input_map)
        values = self._values(inputs_a, inputs_b)
        n = batch.size
        errors = None
        for i, (layer, p, (a, b)) in enumerate(zip(stats.layers, plan.pairs, values)):
            b = _apply(p.transform, np.asarray(b), a.shape)
            if tuple(a.shape) != tuple(b.shape):
                raise DataError(
                    f"batch {batch.index}: layer {p.a_name!r} of model A has shape {tuple(a.shape)} but model B's "
                    f"{p.b_name!r} has {tuple(b.shape)} after {p.transform.label}, though they matched on the first "
                    "batch; give batches of one shape per sample."
                )
            rel = layer.add(a, b, batch.start)
            if i == plan.first_output:
                errors = rel
        assert errors is not None
        tops: tuple[Any, Any, Any] = (None, None, np.zeros(n, dtype=bool))
        for k, (out, (pos, _, _)) in enumerate(zip(stats.outputs, plan.classify)):
            a, b = values[pos]
            got = out.add(np.asarray(a), _apply(plan.pairs[pos].transform, np.asarray(b), a.shape), batch.labels)
            if k == 0:
                tops = got
        keeper = stats.keeper
        wanted = keeper.would_keep(errors) | tops[2]
        samples = []
        for i in np.flatnonzero(wanted):
            samples.append(Sample(
                index=batch.start + int(i), error=float(errors[i]),
                top1_a=None if tops[0] is None else int(tops[0][i]), top1_b=None if tops[1] is None else int(tops[1][i]),
                label=None if batch.labels is None else int(batch.labels[i]), inputs=_sample_inputs(batch.inputs, int(i)),
            ))
        keeper.offer(samples)
        stats.samples, stats.batches = n, 1
        return stats


def _tap(trace: Any, index: int, name: str) -> np.ndarray:
    taps = trace.taps
    if index < len(taps) and taps[index].name == name:
        return np.asarray(taps[index].value)
    return np.asarray(trace[name].value)
