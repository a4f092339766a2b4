"""The public entry points: :func:`diff`, :func:`assert_parity`, :func:`capture`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from . import pipeline
from .capture import backend_for
from .errors import ParityMismatch
from .inputs import prepare_inputs, random_inputs, normalize_inputs
from .loading import load_mapping, load_model
from .pipeline import DiffOptions
from .progress import steps
from .records import InputsSummary, Report, Trace
from .spill import Spill, return_freed_memory, trace_nbytes
from .tolerance import Tolerances

__all__ = ["diff", "diff_with", "diff_traces", "assert_parity", "capture", "DiffOptions"]


def capture(
    model: Any, inputs: Any = None, *, containers: bool = False, granularity: str = "modules", seed: int = 0,
    trust: bool = False,
) -> Trace:
    """Run ``model`` once and record every layer's output.

    ``inputs`` are in the model's own layout; ``None`` makes a seeded random
    batch from the model's declared input shape.

    >>> trace = parity.capture(torch_model, x)          # doctest: +SKIP
    >>> trace["layer1.1"].shape, trace["layer1.1"].layout  # doctest: +SKIP
    ((8, 16, 28, 28), 'NCHW')

    ``granularity="ops"`` also records the functional calls of PyTorch
    models (``layer1.0:add#0``).  ``trust=True`` lets a model file run code (:mod:`parity.trust`).
    """
    backend = backend_for(load_model(model, trust=trust), granularity=granularity)
    keep64 = backend.compute_dtype() == "float64"  # a float64 model keeps a float64 batch's digits
    arrays = random_inputs(backend, backend, seed=seed) if inputs is None else normalize_inputs(inputs, keep_float64=keep64)
    return backend.capture(arrays, containers=containers)


def capture_pair(a: Any, b: Any, inputs: Any = None, *, granularity: str = "modules", seed: int = 0,
                 input_map: Mapping[str, str] | None = None, trust: bool = False) -> tuple[Trace, Trace]:
    """Both models' traces on the same inputs (given in A's layout, converted for B)."""
    a, b = load_model(a, trust=trust), load_model(b, trust=trust)
    backend_a, backend_b = backend_for(a, granularity=granularity), backend_for(b, granularity=granularity)
    inputs_a, inputs_b, _ = prepare_inputs(inputs, backend_a, backend_b, seed=seed, input_map=input_map)
    return backend_a.capture(inputs_a), backend_b.capture(inputs_b)


def diff(
    a: Any,
    b: Any,
    inputs: Any = None,
    *,
    mapping: Mapping[str, str] | str | Path | None = None,
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
    trust: bool = False,
    reference: str | None = None,
) -> Report:
    """Compare models ``a`` and ``b`` layer by layer on the same inputs.

    ``a`` and ``b`` are live models, paths to saved models (see
    :func:`parity.load`) or ``"package.module:factory"`` specs.
    ``inputs`` (an array, a tuple/list of arrays, or a dict by input name) are
    in model A's layout and converted for B; ``None`` makes a seeded random
    batch.  ``mapping`` pairs A layer names with B layer names where automatic
    alignment cannot (a table, or a ``.toml``/``.json``/``.yaml`` file of them as
    ``parity diff --map`` takes).  ``rtol``/``atol`` (both or neither) override the
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
    A model file that would run code (TorchScript, a pickle, a graph op outside the pure-math
    allow-list, a Keras custom object) is refused unless ``trust=True`` (:mod:`parity.trust`).
    ``reference="float64"`` judges each float32 layer against a float64 twin of the live model
    (A's, else B's): it fails when its error against float64 exceeds ``k ×`` how far the float32
    model itself is from float64 there (its noise floor), see :mod:`parity.reference`; the default,
    ``"dtype"``, is the per-dtype tolerance table.

    Thread-safe, also for one model object shared by several calls at once (model A
    against several Bs, each call in its own thread): each capture records only the
    forward its own thread runs, and the model's train/eval modes are restored when the
    last capture using it ends.

    >>> report = parity.diff(torch_model, keras_model, x)   # doctest: +SKIP
    >>> report.first_divergence.a_name                        # doctest: +SKIP
    'layer1.1'
    """
    if isinstance(mapping, (str, Path)):
        mapping = load_mapping(mapping)  # a file, as the CLI's --map takes it
    options = DiffOptions.build(
        mapping=mapping, rtol=rtol, atol=atol, tolerances=tolerances, min_argmax_agreement=min_argmax_agreement,
        containers=containers, granularity=granularity, baseline=baseline, drift_factor=drift_factor, seed=seed,
        max_memory=max_memory, input_map=input_map, reference=reference,
    )
    return diff_with(a, b, inputs, options, trust=trust)


def diff_with(a: Any, b: Any, inputs: Any, options: DiffOptions, *, trust: bool = False) -> Report:
    """:func:`diff` with its options as one :class:`~parity.pipeline.DiffOptions` record
    (``trust``: let model files run code, :mod:`parity.trust`)."""
    with steps(4, "parity diff") as bar, Spill() as spill:
        bar.advance("loading the models")
        a, b = load_model(a, trust=trust), load_model(b, trust=trust)  # paths and "package.module:factory" specs
        backend_a = backend_for(a, granularity=options.granularity)
        backend_b = backend_for(b, granularity=options.granularity)
        inputs_a, inputs_b, summary = prepare_inputs(inputs, backend_a, backend_b, seed=options.seed,
                                                     input_map=options.input_map)
        # past the budget, values go to memory-mapped files as they are recorded: A's wait for B on
        # disk, and B's capture holds only what is left of the budget
        budget = options.max_memory
        bar.advance("running model A")
        with _spilling(spill, budget):
            trace_a = backend_a.capture(inputs_a, containers=options.containers)
        bar.advance("running model B")
        with _spilling(spill, None if budget is None else max(budget - trace_nbytes(trace_a), 0)):
            trace_b = backend_b.capture(inputs_b, containers=options.containers)
        if spill.count:
            return_freed_memory()
        bar.advance("aligning and comparing")
        baseline = options.baseline
        if baseline is not None and not isinstance(baseline, Report):
            a0, b0 = baseline
            baseline = diff_with(a0, b0, inputs, dataclasses.replace(options, baseline=None), trust=trust)
        return pipeline.run(
            pipeline.Side(trace_a, backend_a, inputs_a), pipeline.Side(trace_b, backend_b, inputs_b),
            options, summary, baseline,
        )


def _spilling(spill: Spill, budget: int | None):
    import contextlib

    return spill.capturing(budget) if budget is not None else contextlib.nullcontext()


def diff_traces(
    trace_a: Trace,
    trace_b: Trace,
    *,
    mapping: Mapping[str, str] | str | Path | None = None,
    tolerances: Tolerances | None = None,
    inputs: InputsSummary | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> Report:
    """Align and compare two recorded traces (the models are not needed; a layer's own
    error is then estimated from the error growth, since nothing can be replayed)."""
    if isinstance(mapping, (str, Path)):
        mapping = load_mapping(mapping)
    options = DiffOptions.build(where="parity.diff_traces", mapping=mapping, rtol=rtol, atol=atol,
                                tolerances=tolerances)
    return pipeline.run(pipeline.Side(trace_a), pipeline.Side(trace_b), options, inputs)


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
    from .report.text import displayed

    report = displayed(report)  # names are data: shown with their control characters visible
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
