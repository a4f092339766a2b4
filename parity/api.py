"""The public entry points: :func:`diff`, :func:`assert_parity`, :func:`capture`."""

from __future__ import annotations

import bisect
import dataclasses
from typing import Any, Mapping

import numpy as np

from .align import align, unsure_pairs
from .capture import backend_for
from .compare import compare
from .diagnose import diagnose
from .errors import ParityMismatch
from .inputs import prepare_inputs, random_inputs, normalize_inputs
from .loading import load_model
from .progress import steps
from .replay import own_errors
from .records import Alignment, InputsSummary, Report, Trace, UnmatchedLayer
from .spill import Spill, parse_max_memory, release_trace, return_freed_memory, trace_nbytes
from .tolerance import Tolerances

__all__ = ["diff", "diff_traces", "assert_parity", "capture"]


def capture(
    model: Any, inputs: Any = None, *, containers: bool = False, granularity: str = "modules", seed: int = 0
) -> Trace:
    """Run ``model`` once and record every layer's output.

    ``inputs`` are in the model's own layout; ``None`` makes a seeded random
    batch from the model's declared input shape.

    >>> trace = parity.capture(torch_model, x)          # doctest: +SKIP
    >>> trace["layer1.1"].shape, trace["layer1.1"].layout  # doctest: +SKIP
    ((8, 16, 28, 28), 'NCHW')

    ``granularity="ops"`` also records the functional calls of PyTorch
    models (``layer1.0:add#0``).
    """
    backend = backend_for(load_model(model), granularity=granularity)
    arrays = random_inputs(backend, backend, seed=seed) if inputs is None else normalize_inputs(inputs)
    return backend.capture(arrays, containers=containers)


def capture_pair(a: Any, b: Any, inputs: Any = None, *, granularity: str = "modules", seed: int = 0,
                 input_map: Mapping[str, str] | None = None) -> tuple[Trace, Trace]:
    """Both models' traces on the same inputs (given in A's layout, converted for B)."""
    a, b = load_model(a), load_model(b)
    backend_a, backend_b = backend_for(a, granularity=granularity), backend_for(b, granularity=granularity)
    inputs_a, inputs_b, _ = prepare_inputs(inputs, backend_a, backend_b, seed=seed, input_map=input_map)
    return backend_a.capture(inputs_a), backend_b.capture(inputs_b)


def diff(
    a: Any,
    b: Any,
    inputs: Any = None,
    *,
    mapping: Mapping[str, str] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    tolerances: Mapping[str, Any] | Tolerances | None = None,
    min_argmax_agreement: float | None = None,
    containers: bool = False,
    granularity: str = "modules",
    baseline: tuple[Any, Any] | Report | None = None,
    drift_factor: float | None = None,
    seed: int = 0,
    max_memory: int | str | None = None,
    input_map: Mapping[str, str] | None = None,
) -> Report:
    """Compare models ``a`` and ``b`` layer by layer on the same inputs.

    ``a`` and ``b`` are live models, paths to saved models (see
    :func:`parity.load`) or ``"package.module:factory"`` specs.
    ``inputs`` (an array, a tuple/list of arrays, or a dict by input name) are
    in model A's layout and converted for B; ``None`` makes a seeded random
    batch.  ``mapping`` pairs A layer names with B layer names where automatic
    alignment cannot.  ``rtol``/``atol`` (both or neither) override the
    per-dtype defaults; ``tolerances`` maps layer names or globs to
    ``(rtol, atol)``.  ``granularity="ops"`` records PyTorch's functional
    calls too (``x + y``, ``F.relu``, ``x.view``), where residual and flatten
    bugs live.  ``baseline=(a0, b0)`` (or a Report of them) compares each
    layer's error with the baseline pair's on the same inputs and flags layers
    whose error grew more than ``drift_factor`` (default 10×) — bugs that
    fresh weights hide; see :func:`parity.drift`.  ``max_memory`` (bytes, or
    ``"2GB"``; default a quarter of RAM) bounds the activations held in
    memory: past it, a finished side's are spilled to memory-mapped files in a
    temporary directory (removed afterwards); the report is the same.
    ``input_map={"input_ids": "token_ids", …}`` binds A's named inputs to B's where
    the names differ and the evidence (dtype, rank, a 0/1 mask vs token ids) cannot.

    >>> report = parity.diff(torch_model, keras_model, x)   # doctest: +SKIP
    >>> report.first_divergence.a_name                        # doctest: +SKIP
    'layer1.1'
    """
    tol = tolerances if isinstance(tolerances, Tolerances) else Tolerances.build(
        rtol=rtol, atol=atol, overrides=tolerances, min_argmax_agreement=min_argmax_agreement
    )
    budget = parse_max_memory(max_memory)
    with steps(4, "parity diff") as bar, Spill() as spill:
        return _diff(a, b, inputs, bar, tol=tol, mapping=mapping, rtol=rtol, atol=atol, containers=containers,
                     granularity=granularity, baseline=baseline, drift_factor=drift_factor, seed=seed,
                     budget=budget, spill=spill, input_map=input_map)


def _diff(a, b, inputs, bar, *, tol, mapping, rtol, atol, containers, granularity, baseline, drift_factor, seed,
          budget=None, spill=None, input_map=None):
    bar.advance("loading the models")
    a, b = load_model(a), load_model(b)  # paths and "package.module:factory" specs
    backend_a, backend_b = backend_for(a, granularity=granularity), backend_for(b, granularity=granularity)
    inputs_a, inputs_b, summary = prepare_inputs(inputs, backend_a, backend_b, seed=seed, input_map=input_map)
    # past the budget, values go to memory-mapped files as they are recorded: A's wait for B on
    # disk, and B's capture holds only what is left of the budget
    bar.advance("running model A")
    with _spilling(spill, budget):
        trace_a = backend_a.capture(inputs_a, containers=containers)
    bar.advance("running model B")
    with _spilling(spill, None if budget is None else max(budget - trace_nbytes(trace_a), 0)):
        trace_b = backend_b.capture(inputs_b, containers=containers)
    if spill is not None and spill.count:
        return_freed_memory()
    bar.advance("aligning and comparing")
    replay = lambda alignment, layers: own_errors(backend_a, backend_b, inputs_a, alignment, layers)  # noqa: E731
    alignments: list[Alignment] = []

    def replay_and_keep(alignment: Alignment, layers: tuple) -> tuple:
        alignments.append(alignment)
        return replay(alignment, layers)

    report = diff_traces(
        trace_a, trace_b, mapping=mapping, tolerances=tol, inputs=summary, rtol=rtol, atol=atol,
        _replay=replay_and_keep, _explain=False, _models=(a, b),
    )
    if not report.ok and rtol is None and atol is None:
        # a model that amplifies rounding: judge each flagged layer no tighter than its float32
        # noise floor (the per-dtype defaults only: a tolerance the user gave is theirs)
        base = tol if isinstance(tol, Tolerances) else Tolerances.build(rtol=rtol, atol=atol)
        raised, note = _noise_floor_tolerances(backend_a, inputs_a, trace_a, report, base)
        if raised is not None:
            alignments.clear()
            report = diff_traces(
                trace_a, trace_b, mapping=mapping, tolerances=raised, inputs=summary,
                _replay=replay_and_keep, _explain=False, _models=(a, b),
            )
            report = dataclasses.replace(report, notes=(*report.notes, note))
    live = ("TorchBackend", "KerasBackend")
    if alignments and type(backend_a).__name__ in live and type(backend_b).__name__ in live:
        report = _weight_parity(report, a, b, alignments[0])
    if not report.ok and alignments:
        report = _model_level_diagnoses(report, alignments[0], backend_a, backend_b, inputs_a, inputs_b, (trace_a, trace_b))
    if baseline is not None:
        from .baseline import DRIFT_FACTOR, apply_baseline

        if not isinstance(baseline, Report):
            a0, b0 = baseline
            baseline = diff(a0, b0, inputs, mapping=mapping, tolerances=tol, containers=containers,
                            granularity=granularity, seed=seed, max_memory=budget, input_map=input_map)
        report = apply_baseline(report, baseline, drift_factor or DRIFT_FACTOR)
    return _explain_first(report, alignments[0]) if alignments else report


def _inside_a_layer(alignment: Alignment, trace_a: Trace) -> dict[int, Any]:
    """B's unmatched tensors that no layer of A can correspond to, by ``id``, each with the layer
    of A it is computed inside: tensors B computes between the outputs of two compared layers
    that are next to each other in A (nothing of A recorded between them) — the Sigmoid of
    ONNX's decomposed SiLU, a reshape's plumbing."""
    pairs = sorted((m for m in alignment.matches), key=lambda m: m.a.index)
    a_index = sorted(t.index for t in trace_a.taps if t.role != "container")
    stray_b = sorted((u.tap for u in alignment.unmatched_b if u.reason == "no-match"), key=lambda t: t.index)
    out: dict[int, Any] = {}
    for before, after in zip(pairs, pairs[1:]):
        if not before.b.index < after.b.index:
            continue
        if bisect.bisect_right(a_index, before.a.index) != bisect.bisect_left(a_index, after.a.index):
            continue  # A recorded something between the two: it may be the counterpart
        for t in stray_b:
            if before.b.index < t.index < after.b.index:
                out[id(t)] = after.a
    return out


#: a layer's error vs B may reach this multiple of A's own float32 rounding error (B rounds too)
NOISE_FLOOR_FACTOR = 4.0


def _noise_floor_tolerances(backend: Any, inputs: Any, trace_a: Trace, report: Report, tol: Tolerances):
    """Tolerances raised, for the flagged layers only, to :data:`NOISE_FLOOR_FACTOR` × how far A's
    own float32 tensor is from its backend's float64 twin's on the same inputs — the precision float32
    can give that layer in this model (a deep random-weight net with large activations amplifies
    rounding past any fixed rtol).  ``(None, None)`` when no flagged layer is that ill-conditioned,
    or A's backend makes no float64 twin (graph formats)."""
    flagged = [d for d in report.layers if not d.ok and d.dtype == "float32"]
    if not flagged or isinstance(inputs, Mapping) or not all(getattr(x, "dtype", None) == np.float32 for x in inputs):
        return None, None
    try:
        twin = backend.twin("float64")
        if twin is None:
            return None, None
        trace64 = twin.capture(inputs)  # the twin casts the float32 inputs itself
    except Exception:  # a model that does not run in float64: keep the tolerances given
        return None, None
    by_name = {t.name: t for t in trace64.taps}
    overrides, worst = {}, 0.0
    for d in flagged:
        t32, t64 = trace_a[d.a_name] if d.a_name in trace_a.names else None, by_name.get(d.a_name)
        if t32 is None or t64 is None or t32.shape != t64.shape:
            continue
        v64 = np.asarray(t64.value, dtype=np.float64)
        norm = float(np.linalg.norm(v64))
        if not norm:
            continue
        floor = float(np.linalg.norm(np.asarray(t32.value, dtype=np.float64) - v64)) / norm
        rtol, atol = tol.for_layer(d.a_name, "float32", "float32")
        if NOISE_FLOOR_FACTOR * floor > rtol:
            overrides[d.a_name] = (NOISE_FLOOR_FACTOR * floor, atol)
            worst = max(worst, floor)
    if not overrides:
        return None, None
    raised = dataclasses.replace(tol, overrides=(*overrides.items(), *tol.overrides))
    note = (f"{len(overrides)} layer(s) judged at their float32 noise floor: model A in float32 differs from its "
            f"float64 twin by up to {worst:.1e} there (the model amplifies rounding), so an error of "
            f"{NOISE_FLOOR_FACTOR:g}× that is float32 arithmetic, not a conversion bug: "
            + ", ".join(list(overrides)[:5]) + (", …" if len(overrides) > 5 else ""))
    return raised, note


def _declared_mismatches(alignment: Alignment, layers: tuple) -> list[str]:
    """Layers that pass although the two sides declare different epsilons (BERT's LayerNorm
    1e-12 against Keras' default 1e-3: 5e-4 here, maybe more with other inputs)."""
    from .diagnose.bn import differing_declared_eps

    passed = {d.a_name: d for d in layers if d.ok}
    out = []
    for m in alignment.matches:
        d = passed.get(m.a.name)
        declared = differing_declared_eps(m) if d is not None else None
        if declared is not None:
            eps_a, eps_b = declared
            out.append(
                f"{d.a_name} ({d.op}) passes, but the two sides declare different epsilons (A {eps_a:.0e}, B "
                f"{eps_b:.0e}): rel err {d.rel_err:.1e} of {d.allowed_rel:.1e} allowed here, more where a row's or "
                "channel's variance is near the larger epsilon. Give B's layer A's epsilon."
            )
    return out


def _spilling(spill: Spill | None, budget: int | None):
    import contextlib

    return spill.capturing(budget) if spill is not None and budget is not None else contextlib.nullcontext()


def _explain_first(report: Report, alignment: Alignment) -> Report:
    """The first divergence always gets a diagnosis: a known cause, or ``unexplained`` with
    where the error sits."""
    first = report.first_divergence
    if first is None or first.diagnoses:
        return report
    from .diagnose.fallback import context_for, unexplained
    from .diagnose.runs import attach

    ctx = context_for(alignment, report.layers, first)
    return attach(report, unexplained(ctx)) if ctx is not None else report


def _weight_parity(report: Report, a: Any, b: Any, alignment: Alignment) -> Report:
    """Parameters of aligned layers compared before any activation, and the diagnoses they support."""
    import dataclasses

    from .diagnose.runs import attach
    from .weights import weight_diagnoses, weight_parity

    params = weight_parity(a, b, alignment)
    report = dataclasses.replace(report, params=params)
    present = {(d.code, d.layer) for d in report.diagnoses}
    for diagnosis in weight_diagnoses(params):
        if (diagnosis.code, diagnosis.layer) not in present:
            report = attach(report, diagnosis)
    return report


def _model_level_diagnoses(report, alignment, backend_a, backend_b, inputs_a, inputs_b, traces) -> Report:
    """Diagnoses that rerun the models: nondeterminism, input preprocessing."""
    from .diagnose.runs import attach, input_preprocessing, nondeterminism

    for found in (
        nondeterminism(backend_a, backend_b, inputs_a, inputs_b, traces, alignment),
        input_preprocessing(backend_a, backend_b, inputs_a, inputs_b, report, alignment),
    ):
        if found is not None:
            report = attach(report, found)
    return report


def _same_params(models: tuple | None):
    """Whether a pair's two layers hold equal parameters (weight parity on the live models), or
    None where the models are not at hand."""
    if models is None:
        return None
    from .weights import weight_parity

    def same(match) -> bool:
        try:
            params = weight_parity(models[0], models[1], [match])
        except Exception:  # models weight parity cannot read (graph formats): no evidence
            return False
        return bool(params) and all(p.status == "ok" for p in params)

    return same


def diff_traces(
    trace_a: Trace,
    trace_b: Trace,
    *,
    mapping: Mapping[str, str] | None = None,
    tolerances: Tolerances | None = None,
    inputs: InputsSummary | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    _replay: Any = None,
    _explain: bool = True,
    _models: tuple | None = None,
) -> Report:
    """Align and compare two recorded traces (the models are not needed; a layer's own
    error is then estimated from the error growth, since nothing can be replayed)."""
    tol = tolerances or Tolerances.build(rtol=rtol, atol=atol)
    alignment = align(trace_a, trace_b, mapping)
    release_trace(trace_a)  # alignment read spilled values: their pages leave the process again
    release_trace(trace_b)
    compared = compare(alignment, tol)
    alignment, compared = unsure_pairs(alignment, compared, _same_params(_models))
    compared = _replay(alignment, compared) if _replay is not None else own_errors(None, None, None, alignment, compared)
    layers, diagnoses = diagnose(alignment, compared, _models)
    inside = _inside_a_layer(alignment, trace_a)
    unmatched = tuple(
        UnmatchedLayer(
            side=u.side, name=u.tap.name, op=u.tap.op, shape=tuple(u.tap.shape),
            reason="inside" if id(u.tap) in inside else u.reason,
        )
        for u in alignment.unmatched
    )
    if inputs is None:
        inputs = InputsSummary(
            shapes_a=trace_a.input_shapes,
            shapes_b=trace_b.input_shapes,
            dtypes=(),
            conversions=(),
            source="recorded traces",
            digest=trace_a.inputs_digest,
        )
    notes = list(trace_a.notes) + list(trace_b.notes)
    ambiguous = [d.a_name for d in layers if d.ambiguous]
    if ambiguous:
        notes.append(
            f"{len(ambiguous)} pair(s) have shapes that fit more than one layout ({', '.join(ambiguous[:5])}"
            f"{', …' if len(ambiguous) > 5 else ''}); the transform used follows the layouts the "
            "frameworks declare."
        )
    notes.extend(_declared_mismatches(alignment, layers))
    if inside:
        within = [(u, inside[id(u.tap)]) for u in alignment.unmatched if id(u.tap) in inside]
        notes.append(
            f"{len(within)} tensor(s) of B are computed inside one layer of A, which records no tensor there, so "
            "nothing of A can be compared with them: "
            + ", ".join(f"{u.tap.name} ({u.tap.op}, inside {a.name} {a.op})" for u, a in within[:8])
            + (", …" if len(within) > 8 else "")
            + "."
        )
    stray = [u for u in unmatched if u.reason == "no-match"]
    if stray:
        notes.append(
            f"{len(stray)} layer(s) found no counterpart and were not compared: "
            + ", ".join(f"{u.side.upper()}:{u.name}" for u in stray[:8])
            + (", …" if len(stray) > 8 else "")
            + ". Give a mapping to compare them."
        )
    report = Report(
        a=trace_a.model,
        b=trace_b.model,
        layers=layers,
        unmatched=unmatched,
        inputs=inputs,
        rtol=rtol,
        atol=atol,
        notes=tuple(notes),
        diagnoses=diagnoses,
        environment=environment(trace_a.model, trace_b.model),
    )
    return _explain_first(report, alignment) if _explain else report


def environment(*models: Any) -> dict[str, str]:
    """Versions of what computed a report (no timestamps or host names: identical runs give identical JSON)."""
    import platform

    import numpy

    from . import __version__

    env = {
        "parity": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "platform": f"{platform.system()} {platform.machine()}",
    }
    for model in models:
        if model.framework and model.framework_version:
            env[model.framework] = model.framework_version
    return env


def assert_parity(a: Any, b: Any, inputs: Any = None, **options: Any) -> Report:
    """Like :func:`diff`, but raise :class:`ParityMismatch` unless the models agree.

    The message reads like ``torch.testing.assert_close``'s and names both layers.

    >>> parity.assert_parity(torch_model, keras_model, x)   # doctest: +SKIP
    """
    __tracebackhide__ = True
    report = diff(a, b, inputs, **options)
    if not report.ok:
        raise ParityMismatch(mismatch_message(report), report)
    return report


def mismatch_message(report: Report) -> str:
    """The assertion text: where the models part, and by how much."""
    from .report.console import fmt_float

    d = report.first_divergence
    if d is None:
        return "No layers could be compared: " + "; ".join(report.notes or ("nothing matched",))
    m = d.metrics
    over = sum(1 for x in report.layers if not x.ok)
    lines = [
        f"Models diverge at {d.a_name!r} ({d.op}) in model A ↔ {d.b_name!r} ({d.b_op}) in model B, "
        f"layer {d.index + 1} of {len(report.layers)} compared in model A's order.",
        f"Relative error ‖b−a‖/‖a‖: {fmt_float(m.rel_err)} (up to {fmt_float(d.rtol)} allowed, "
        f"atol {fmt_float(d.atol)}).",
    ]
    if m.numel:
        lines.append(
            f"Mismatched elements: {m.mismatched} / {m.numel} ({100.0 * m.mismatched / m.numel:.1f}%)."
        )
        lines.append(
            f"Greatest absolute difference: {fmt_float(m.max_abs)} at index {m.max_abs_index} "
            f"(up to {fmt_float(d.atol)} + {fmt_float(d.rtol)}·|a| allowed)."
        )
    lines.append(f"Cosine similarity: {m.cosine:.6f}.")
    if m.argmax_agreement is not None:
        lines.append(f"Argmax agreement: {100.0 * m.argmax_agreement:.1f}% of rows.")
    for reason in d.reasons:
        lines.append(f"- {reason}")
    for diag in d.diagnoses:
        lines.append(f"Likely cause ({diag.code}): {diag.message}")
    if d.transform != "identity":
        lines.append(f"Model B's tensor was compared after {d.transform}.")
    lines.append(f"{over} of {len(report.layers)} compared layers are over tolerance; the first is shown.")
    return "\n".join(lines)
