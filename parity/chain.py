"""The conversion chain in one run: a model and each of its conversions, compared layer by layer.

>>> report = parity.chain([torch_model, "m.onnx", keras_twin, "m.tflite", "m_fp16.tflite"], x)  # doctest: +SKIP
>>> report.first_break                                                                       # doctest: +SKIP
ChainBreak(stage='keras', layer='stem_bn')

Every stage is captured once and aligned to stage 0 (the reference), whose trace
is captured once too.  Inputs are given in stage 0's layout and converted to each
stage's own layout, as :func:`parity.diff` does for a pair.  The result is a
layer × stage matrix: one row per layer of stage 0 (execution order), one column
per later stage, each cell that stage's relative error for the layer (blank when
the converter fused the layer away or it has no counterpart).

Since each stage is compared with stage 0, a stage *introduces* a divergence at a
layer when it is over tolerance there while the previous stage that compared the
layer was not; a stage that is over tolerance where the previous one already was
*inherits* it.  The first stage that introduces one is :attr:`ChainReport.first_break`.

Precision stages — float16 or int8 TFLite models (found from the flatbuffer's
tensor types and quantisation), models computing in float16/bfloat16, or any
stage given a ``precision=`` hint — are judged with their precision's tolerance
(float16: rtol 1e-2, atol 1e-3, see :mod:`parity.precision`); a passing cell
there reads "expected quantisation error", a failing one "beyond expected
quantisation error".

The records are here; their words, terminal view, HTML and JSON are :mod:`parity.report.chain`'s,
and the ``parity chain`` command is :mod:`parity.cli`'s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

from .chainspec import name_stages, per_stage, precision_hints, tolerance_overrides
from .errors import InputError, OptionError, StageNotFound
from .precision import PRECISION_TOLERANCES, normalize_precision, recorded_precision, stage_tolerances
from .records import InputsSummary, Report, Trace, tolerance_ratio
from .tolerance import DEFAULT_TOLERANCES, Tolerances

__all__ = ["chain", "chain_matrix", "Stage", "ChainReport", "ChainRow", "ChainCell", "ChainBreak",
           "PRECISION_TOLERANCES"]

#: cell statuses that mean the layer was not compared in that stage
_BLANK = ("fused", "one-sided", "placeholder", "no-match", "absent")
_DIFF_OPTIONS = ("tolerances", "min_argmax_agreement", "containers", "granularity", "seed", "mappings")


# --- records -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One stage of a chain with what parity cannot see by itself.

    ``model`` is a live model, a path or a ``"package.module:factory"`` spec;
    ``precision`` (``"float16"``, ``"int8"``, ``"float32"``…) overrides what parity
    detects; ``mapping`` pairs stage 0's layer names with this stage's.
    """

    model: Any
    name: str | None = None
    precision: str | None = None
    mapping: Mapping[str, str] | None = None


class ChainBreak(NamedTuple):
    """Where the chain first breaks: the stage that introduced a divergence, and its guilty layer."""

    stage: str
    layer: str | None


@dataclass(frozen=True)
class ChainCell:
    """One stage's comparison of one layer of stage 0."""

    stage: str
    #: "ok", "quantisation" (within the expected quantisation error of a precision stage),
    #: "introduced", "inherited", or — not compared — "fused", "one-sided", "no-match", "absent"
    status: str
    b_name: str | None = None
    rel_err: float | None = None
    tolerance_ratio: float | None = None
    rtol: float | None = None
    atol: float | None = None
    #: the stage's precision when it is a precision stage ("float16", "int8"), else None
    precision: str | None = None
    #: whether the error is also within the float32 default tolerance (precision stages only)
    within_float32: bool | None = None

    @property
    def compared(self) -> bool:
        return self.status not in _BLANK

    @property
    def ok(self) -> bool | None:
        """True/False for a compared layer, None for a blank cell."""
        if not self.compared:
            return None
        return self.status in ("ok", "quantisation")

    @property
    def label(self) -> str:
        """What the cell means, in words."""
        if not self.compared:
            return {"fused": "fused by the converter", "one-sided": "exists on one side only",
                    "placeholder": "an identity at inference", "no-match": "no counterpart", "absent": "not compared"}[self.status]
        if self.status == "ok":
            return "ok"
        if self.status == "quantisation":
            return "expected quantisation error"
        where = "introduced here" if self.status == "introduced" else "inherited from an earlier stage"
        return f"beyond expected quantisation error, {where}" if self.precision else f"over tolerance, {where}"


@dataclass(frozen=True)
class ChainRow:
    """One layer of stage 0 and its cell in every later stage."""

    index: int
    layer: str
    op: str
    role: str
    cells: tuple[ChainCell, ...]

    @property
    def introduced_by(self) -> str | None:
        """The first stage that introduced a divergence at this layer, or None."""
        return next((c.stage for c in self.cells if c.status == "introduced"), None)

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.cells)

    def cell(self, stage: str) -> ChainCell:
        for c in self.cells:
            if c.stage == stage:
                return c
        raise StageNotFound(f"no stage {stage!r} in this chain; give one of the stages compared with stage 0: "
                            f"{', '.join(c.stage for c in self.cells)}.")


@dataclass(frozen=True)
class ChainReport:
    """The answer to "where in the conversion chain does the model go wrong?".

    ``stages`` names every stage (stage 0, the reference, first); ``reports`` holds one
    :class:`~parity.Report` per later stage (stage 0 vs that stage); ``matrix`` one
    :class:`ChainRow` per layer of stage 0, in execution order.
    """

    stages: tuple[str, ...]
    reports: tuple[Report, ...]
    matrix: tuple[ChainRow, ...]
    #: per stage (stage 0 too): "float32", "float16", "int8", ...
    precisions: tuple[str, ...]
    #: per stage: how its precision was known ("given", "detected: …", "default")
    precision_sources: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    # --- verdicts --------------------------------------------------------------------------

    @property
    def ok(self) -> bool:
        return bool(self.reports) and all(r.ok for r in self.reports)

    def is_precision_stage(self, i: int) -> bool:
        """Whether stage ``i`` (0-based, 1..n) is judged with a precision tolerance."""
        return self.precisions[i] in PRECISION_TOLERANCES

    @property
    def stage_status(self) -> tuple[str, ...]:
        """Per stage 1..n: "ok", "ok (expected quantisation error)", "introduces", "inherits",
        or "nothing compared"."""
        out = []
        for i, report in enumerate(self.reports, start=1):
            column = [row.cells[i - 1] for row in self.matrix]
            if not report.layers:
                out.append("nothing compared")
            elif report.ok:
                out.append("ok (expected quantisation error)" if self.is_precision_stage(i) else "ok")
            elif any(c.status == "introduced" for c in column):
                out.append("introduces")
            else:
                out.append("inherits")
        return tuple(out)

    @property
    def first_break(self) -> ChainBreak | None:
        """The first stage that introduces a divergence, and the layer: its report's guilty layer
        (:attr:`Report.first_divergence`) when that is one it introduced, else the first it
        introduced.  None when every stage agrees with stage 0."""
        for i, (status, report) in enumerate(zip(self.stage_status, self.reports), start=1):
            if status == "nothing compared":
                return ChainBreak(self.stages[i], None)
            if status != "introduces":
                continue
            introduced = [row.layer for row in self.matrix if row.cells[i - 1].status == "introduced"]
            guilty = report.first_divergence
            layer = guilty.a_name if guilty is not None and guilty.a_name in introduced else introduced[0]
            return ChainBreak(self.stages[i], layer)
        return None

    def row(self, layer: str) -> ChainRow:
        """The row of stage 0's layer ``layer``."""
        for r in self.matrix:
            if r.layer == layer:
                return r
        from .errors import MappingError, closest

        hint = closest(layer, [r.layer for r in self.matrix])
        raise MappingError(f"stage 0 ({self.stages[0]}) has no layer {layer!r} in this chain.{hint}")

    def report(self, stage: str | int) -> Report:
        """The report of stage ``stage`` (its name, or its index 1..n) against stage 0."""
        i = stage if isinstance(stage, int) else self._index(stage)
        if not 1 <= i < len(self.stages):
            raise StageNotFound(f"stage index {i} is not one of the compared stages 1..{len(self.stages) - 1} "
                                f"(stage 0, {self.stages[0]}, is the reference); give an index in that range or a name.")
        return self.reports[i - 1]

    def _index(self, stage: str) -> int:
        try:
            return self.stages.index(stage)
        except ValueError:
            raise StageNotFound(f"no stage {stage!r} in this chain; give one of {', '.join(self.stages)}.") from None

    # --- words and files (written by parity.report.chain) -------------------------------------

    def stage_line(self, i: int) -> str:
        """One line on stage ``i`` (1..n): its verdict against stage 0 and the pair's summary."""
        from .report.chain import stage_line

        return stage_line(self, i)

    def summary(self) -> str:
        """The chain's verdict on the first line, then one line per stage."""
        from .report.chain import chain_summary

        return chain_summary(self)

    def __str__(self) -> str:
        return self.summary()

    def __rich_console__(self, console, options):  # pragma: no cover - exercised via rich
        from .report.chain import render_chain

        yield from render_chain(self, options.max_width)

    def to_dict(self) -> dict:
        """Plain JSON-ready data: schema and version first, then stages, verdict, matrix, reports."""
        from .report.chain import chain_to_dict

        return chain_to_dict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        """Deterministic JSON (no timestamps; identical runs give identical bytes); written to
        ``path`` (parents created) when given."""
        from .report.chain import chain_to_json

        return chain_to_json(self, path)

    def to_html(self, path: str | Path | None = None) -> str:
        """A self-contained HTML page (no external resources); written to ``path`` when given."""
        from .report.chain import chain_html

        return chain_html(self, path)

    def _repr_html_(self) -> str:
        from .report.chain import chain_html

        return chain_html(self, fragment=True)


# --- running the chain ---------------------------------------------------------------------


def chain(
    stages: Sequence[Any],
    inputs: Any = None,
    *,
    names: Sequence[str] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    precision: Sequence[str | None] | Mapping[Any, str] | None = None,
    trust: bool = False,
    **diff_options: Any,
) -> ChainReport:
    """Compare stage 0 with every later stage of a conversion chain, layer by layer.

    ``stages`` are live models, paths (see :func:`parity.load`), ``"package.module:factory"``
    specs or :class:`Stage` records (also as dicts with ``model`` and optionally ``name``,
    ``precision``, ``mapping``).  Each model is loaded and captured once.  ``inputs`` are in stage 0's layout (``None``: a seeded random
    batch).  ``names`` name the stages (default: file names, or framework and model name).
    ``rtol``/``atol`` (both or neither) judge the full-precision stages; a precision stage is
    judged with the looser of them and its precision's default.  ``precision`` hints stages'
    precisions (a list aligned with ``stages``, or a dict by stage name or index).  ``trust=True``
    lets the stages' model files run code (:mod:`parity.trust`).  Also:
    ``tolerances`` (per-layer overrides, for every stage), ``min_argmax_agreement``,
    ``containers``, ``granularity``, ``seed``, ``mappings`` (a list aligned with ``stages``, or
    a dict by stage name, of stage-0-name → stage-name mappings).

    >>> report = parity.chain([torch_model, "m.onnx", "m.tflite"], x)   # doctest: +SKIP
    >>> report.ok, report.first_break                                    # doctest: +SKIP
    (True, None)
    """
    unknown = sorted(set(diff_options) - set(_DIFF_OPTIONS))
    if unknown:
        hint = " (per-stage mappings go in mappings=[…] or Stage(mapping=…))" if "mapping" in unknown else ""
        raise OptionError(f"chain() got unexpected keyword argument(s) {', '.join(unknown)}{hint}; "
                          f"it accepts names, rtol, atol, precision, trust and {', '.join(_DIFF_OPTIONS)}.")
    from . import pipeline
    from .capture import backend_for
    from .inputs import prepare_inputs
    from .loading import load_model
    from .pipeline import DiffOptions

    specs = [_as_stage(s, i) for i, s in enumerate(stages)]
    if len(specs) < 2:
        raise InputError(f"a chain needs at least two stages (a model and one conversion); got {len(specs)}.")
    granularity = diff_options.get("granularity", "modules")
    containers = bool(diff_options.get("containers", False))
    seed = int(diff_options.get("seed", 0))
    models = [load_model(s.model, trust=trust) for s in specs]
    backends = [backend_for(m, granularity=granularity) for m in models]
    stage_names = name_stages(specs, names, backends)
    hints = precision_hints(precision, stage_names)
    mappings = per_stage(diff_options.get("mappings"), stage_names, "mappings")
    overrides, min_argmax = tolerance_overrides(diff_options.get("tolerances"), diff_options.get("min_argmax_agreement"))
    if rtol is None and atol is None and isinstance(diff_options.get("tolerances"), Tolerances):
        rtol, atol = diff_options["tolerances"].rtol, diff_options["tolerances"].atol
    Tolerances.build(rtol=rtol, atol=atol)  # refuses one of the pair early

    # stage 0: inputs in its layout, captured once; every later stage gets them in its own layout
    inputs0, _, first_summary = prepare_inputs(inputs, backends[0], backends[1], seed=seed)
    trace0 = backends[0].capture(inputs0, containers=containers)
    traces: list[Trace] = [trace0]
    summaries: list[InputsSummary | None] = [first_summary]
    stage_inputs: list[Any] = [inputs0]
    for backend in backends[1:]:
        _, inputs_i, summary = prepare_inputs(inputs0, backends[0], backend, seed=seed)
        summaries.append(dataclasses.replace(summary, source=first_summary.source))
        stage_inputs.append(inputs_i)
        traces.append(backend.capture(inputs_i, containers=containers))
    # precisions: a hint first, else what the model (or its recorded dtypes) says
    precisions, sources = [], []
    for i, spec in enumerate(specs):
        hint = spec.precision if spec.precision is not None else hints[i]
        if hint is not None:
            precisions.append(normalize_precision(hint, stage_names[i]))
            sources.append("given")
        else:
            # what the model says (a TFLite flatbuffer's tensor types), else its recorded dtypes
            prec, how = backends[i].precision() or recorded_precision(traces[i])
            precisions.append(prec)
            sources.append(how)
    reports: list[Report] = []
    notes: list[str] = []
    base = DiffOptions.build(where="parity.chain", granularity=granularity, containers=containers, seed=seed)
    for i in range(1, len(specs)):
        tol, _, _ = stage_tolerances(precisions[i], rtol, atol, overrides, min_argmax)
        options = dataclasses.replace(base, tolerances=tol, mapping=specs[i].mapping or mappings[i])
        reports.append(pipeline.run(
            pipeline.Side(trace0, backends[0], inputs0), pipeline.Side(traces[i], backends[i], stage_inputs[i]),
            options, summaries[i],
        ))
    matrix = chain_matrix(trace0, reports, stage_names, precisions)
    for i in range(1, len(specs)):
        if precisions[i] in PRECISION_TOLERANCES and sources[i] != "given":
            notes.append(f"{stage_names[i]} is judged as {precisions[i]} ({sources[i]}); give precision= to override.")
    return ChainReport(
        stages=tuple(stage_names),
        reports=tuple(reports),
        matrix=matrix,
        precisions=tuple(precisions),
        precision_sources=tuple(sources),
        notes=tuple(notes),
    )


def _as_stage(obj: Any, i: int) -> Stage:
    """A :class:`Stage`; a dict with ``model`` is one too (any other dict, such as
    ``{path=…, factory=…}``, is a model table for :func:`parity.loading.load_model`)."""
    if isinstance(obj, Stage):
        return obj
    if isinstance(obj, Mapping) and "model" in obj:
        unknown = set(obj) - {"model", "name", "precision", "mapping"}
        if unknown:
            raise InputError(f"stage {i} is a dict with unknown key(s) {sorted(unknown)}; give model "
                             "and optionally name, precision, mapping.")
        return Stage(model=obj["model"], name=obj.get("name"), precision=obj.get("precision"),
                     mapping=obj.get("mapping"))
    return Stage(model=obj)


def chain_matrix(trace0: Trace, reports: Sequence[Report], names: Sequence[str],
                 precisions: Sequence[str]) -> tuple[ChainRow, ...]:
    """The layer × stage matrix: a row per tap of stage 0's ``trace0``, a cell per later stage
    from its report against stage 0 (``names``/``precisions``: every stage, stage 0 first)."""
    f32 = DEFAULT_TOLERANCES["float32"]
    columns = []
    for i, report in enumerate(reports, start=1):
        precision = precisions[i] if precisions[i] in PRECISION_TOLERANCES else None
        compared = {d.a_name: d for d in report.layers}
        unmatched = {u.name: u.reason for u in report.unmatched_a}
        columns.append((names[i], precision, compared, unmatched))
    rows = []
    for tap in trace0.taps:
        cells = []
        previous_ok = True  # stage 0 agrees with itself
        for stage, precision, compared, unmatched in columns:
            d = compared.get(tap.name)
            if d is None:
                reason = unmatched.get(tap.name, "absent")
                cells.append(ChainCell(stage=stage, status=reason if reason in _BLANK else "no-match"))
                continue
            if d.ok:
                status = "quantisation" if precision else "ok"
            else:
                status = "introduced" if previous_ok else "inherited"
            previous_ok = d.ok
            cells.append(
                ChainCell(
                    stage=stage, status=status, b_name=d.b_name, rel_err=float(d.rel_err),
                    tolerance_ratio=float(d.tolerance_ratio), rtol=float(d.rtol), atol=float(d.atol),
                    precision=precision,
                    within_float32=(tolerance_ratio(d.metrics, *f32) <= 1.0) if precision else None,
                )
            )
        rows.append(ChainRow(index=len(rows), layer=tap.name, op=tap.op, role=tap.role, cells=tuple(cells)))
    return tuple(rows)
