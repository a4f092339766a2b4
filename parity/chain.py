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
(float16: rtol 1e-2, atol 1e-3, see :mod:`parity.tolerance`); a passing cell
there reads "expected quantisation error", a failing one "beyond expected
quantisation error".

This module is callable (``parity.chain(stages, inputs)``), as :mod:`parity.search` is.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

from .errors import InputError, ParityError, ToleranceError
from .records import InputsSummary, Report, Trace, tolerance_ratio
from .tolerance import DEFAULT_TOLERANCES, Tolerances

__all__ = [
    "chain",
    "Stage",
    "ChainReport",
    "ChainRow",
    "ChainCell",
    "ChainBreak",
    "PRECISION_TOLERANCES",
    "add_chain_command",
    "run_chain_command",
]

SCHEMA_NAME = "parity.chain"
SCHEMA_VERSION = 1

#: (rtol, atol) of the precision stages; int8 is parity's own allowance for per-layer
#: quantisation error (correct int8 TFLite conversions measure about 0.3–2e-2 per layer)
PRECISION_TOLERANCES: dict[str, tuple[float, float]] = {
    "float16": DEFAULT_TOLERANCES["float16"],
    "bfloat16": DEFAULT_TOLERANCES["bfloat16"],
    "int8": (5e-2, 1e-2),
}
_FULL = ("float32", "float64")
_ALIASES = {
    "float32": "float32", "fp32": "float32", "f32": "float32", "float": "float32", "full": "float32",
    "float64": "float64", "fp64": "float64", "double": "float64",
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "int8": "int8", "uint8": "int8", "int16": "int8", "quant": "int8", "quantized": "int8", "quantised": "int8",
}
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
        raise KeyError(f"no stage {stage!r} in this chain (stages 1..n: {', '.join(c.stage for c in self.cells)})")


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
            raise KeyError(f"stage index {i} is not 1..{len(self.stages) - 1}")
        return self.reports[i - 1]

    def _index(self, stage: str) -> int:
        try:
            return self.stages.index(stage)
        except ValueError:
            raise KeyError(f"no stage {stage!r}; stages: {', '.join(self.stages)}") from None

    # --- words -----------------------------------------------------------------------------

    def stage_line(self, i: int) -> str:
        """One line on stage ``i`` (1..n): its verdict against stage 0 and the pair's summary."""
        report = self.reports[i - 1]
        status = self.stage_status[i - 1]
        info = report.b
        prec = self.precisions[i]
        what = f"{info.framework}" + (f", {prec}" if self.is_precision_stage(i) else "")
        mark = "✓" if report.ok else "✗"
        line = f"{mark} {self.stages[i]} ({what}): {status}"
        if self.is_precision_stage(i):
            rtol, atol = _stage_tolerance(report)
            line += f" — judged with {prec} tolerance (rtol {rtol:g}, atol {atol:g})"
        return f"{line} — {report.summary()}"

    def summary(self) -> str:
        """The chain's verdict on the first line, then one line per stage."""
        path = " → ".join(self.stages)
        brk = self.first_break
        if self.ok:
            quant = [self.stages[i] for i in range(1, len(self.stages)) if self.is_precision_stage(i)]
            extra = f" ({', '.join(quant)} within expected quantisation error)" if quant else ""
            head = f"✓ CHAIN OK: {path}: every stage matches {self.stages[0]}{extra}"
        elif brk is not None and brk.layer is None:
            head = f"✗ CHAIN BREAKS at {brk.stage}: no layer of {self.stages[0]} could be compared with it"
        elif brk is not None:
            i = self._index(brk.stage)
            cell = self.row(brk.layer).cells[i - 1]
            later = [self.stages[j] for j, s in enumerate(self.stage_status, start=1) if s == "inherits" and j > i]
            head = (
                f"✗ CHAIN BREAKS at {brk.stage} (stage {i} of {len(self.stages) - 1}), layer {brk.layer} "
                f"({self.row(brk.layer).op}): rel err {_fmt(cell.rel_err)} > rtol {_fmt(cell.rtol)}"
            )
            if later:
                head += f"; inherited by {', '.join(later)}"
        else:  # pragma: no cover - a failing report always has a failing cell
            head = f"✗ CHAIN DIVERGES: {path}"
        return "\n".join([head] + [f"  {self.stage_line(i)}" for i in range(1, len(self.stages))])

    def __str__(self) -> str:
        return self.summary()

    def __rich_console__(self, console, options):  # pragma: no cover - exercised via rich
        yield from _render(self, options.max_width)

    # --- files -----------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Plain JSON-ready data: schema and version first, then stages, verdict, matrix, reports."""
        from .report.jsonio import _encode, report_to_dict

        brk = self.first_break
        stages = [
            {
                "index": 0,
                "name": self.stages[0],
                "role": "reference",
                "model": _encode(self.reports[0].a) if self.reports else None,
                "precision": self.precisions[0],
                "precision_source": self.precision_sources[0] if self.precision_sources else None,
            }
        ]
        for i, (report, status) in enumerate(zip(self.reports, self.stage_status), start=1):
            rtol, atol = _stage_tolerance(report)
            stages.append(
                {
                    "index": i,
                    "name": self.stages[i],
                    "role": "precision" if self.is_precision_stage(i) else "conversion",
                    "model": _encode(report.b),
                    "precision": self.precisions[i],
                    "precision_source": self.precision_sources[i] if self.precision_sources else None,
                    "tolerance": {"rtol": rtol, "atol": atol} if self.is_precision_stage(i) else None,
                    "ok": report.ok,
                    "status": status,
                    "summary": self.stage_line(i),
                    "coverage": list(report.coverage),
                }
            )
        matrix = [
            {
                "index": row.index,
                "layer": row.layer,
                "op": row.op,
                "role": row.role,
                "introduced_by": row.introduced_by,
                "cells": [
                    {
                        "stage": c.stage,
                        "status": c.status,
                        "label": c.label,
                        "b_name": c.b_name,
                        "rel_err": _encode(c.rel_err),
                        "tolerance_ratio": _encode(c.tolerance_ratio),
                        "rtol": c.rtol,
                        "atol": c.atol,
                        "precision": c.precision,
                        "within_float32": c.within_float32,
                    }
                    for c in row.cells
                ],
            }
            for row in self.matrix
        ]
        return {
            "schema": SCHEMA_NAME,
            "version": SCHEMA_VERSION,
            "ok": self.ok,
            "summary": self.summary().splitlines()[0],
            "first_break": {"stage": brk.stage, "layer": brk.layer} if brk is not None else None,
            "stages": stages,
            "matrix": matrix,
            "notes": list(self.notes),
            "reports": [report_to_dict(r) for r in self.reports],
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """Deterministic JSON (no timestamps; identical runs give identical bytes); written to
        ``path`` (parents created) when given."""
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        if path is not None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return text

    def to_html(self, path: str | Path | None = None) -> str:
        """A self-contained HTML page (no external resources); written to ``path`` when given."""
        text = _render_html(self)
        if path is not None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return text

    def _repr_html_(self) -> str:
        return _render_html(self, fragment=True)


# --- running the chain ---------------------------------------------------------------------


def chain(
    stages: Sequence[Any],
    inputs: Any = None,
    *,
    names: Sequence[str] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    precision: Sequence[str | None] | Mapping[Any, str] | None = None,
    **diff_options: Any,
) -> ChainReport:
    """Compare stage 0 with every later stage of a conversion chain, layer by layer.

    ``stages`` are live models, paths (see :func:`parity.load`), ``"package.module:factory"``
    specs or :class:`Stage` records (also as dicts with ``model`` and optionally ``name``,
    ``precision``, ``mapping``).  Each model is loaded and captured once.  ``inputs`` are in stage 0's layout (``None``: a seeded random
    batch).  ``names`` name the stages (default: file names, or framework and model name).
    ``rtol``/``atol`` (both or neither) judge the full-precision stages; a precision stage is
    judged with the looser of them and its precision's default.  ``precision`` hints stages'
    precisions (a list aligned with ``stages``, or a dict by stage name or index).  Also:
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
        raise TypeError(f"chain() got unexpected keyword argument(s) {', '.join(unknown)}{hint}; "
                        f"it accepts {', '.join(_DIFF_OPTIONS)}.")
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
    models = [load_model(s.model) for s in specs]
    backends = [backend_for(m, granularity=granularity) for m in models]
    stage_names = _stage_names(specs, names, backends)
    hints = _precision_hints(precision, stage_names)
    mappings = _per_stage(diff_options.get("mappings"), stage_names, "mappings")
    overrides, min_argmax = _overrides(diff_options.get("tolerances"), diff_options.get("min_argmax_agreement"))
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
            precisions.append(_normalize_precision(hint, stage_names[i]))
            sources.append("given")
        else:
            prec, how = _detect_precision(backends[i], traces[i])
            precisions.append(prec)
            sources.append(how)
    reports: list[Report] = []
    notes: list[str] = []
    base = DiffOptions(granularity=granularity, containers=containers, seed=seed)
    for i in range(1, len(specs)):
        tol, _, _ = _stage_tolerances(precisions[i], rtol, atol, overrides, min_argmax)
        options = dataclasses.replace(base, tolerances=tol, mapping=specs[i].mapping or mappings[i])
        reports.append(pipeline.run(
            pipeline.Side(trace0, backends[0], inputs0), pipeline.Side(traces[i], backends[i], stage_inputs[i]),
            options, summaries[i],
        ))
    matrix = _matrix(trace0, reports, stage_names, precisions)
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


def _stage_names(specs: list[Stage], names: Sequence[str] | None, backends: list) -> list[str]:
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(specs):
            raise InputError(f"names has {len(names)} name(s) for {len(specs)} stages; give one per stage.")
        if len(set(names)) != len(names):
            raise InputError(f"stage names must be unique; got {', '.join(names)}.")
        return names
    out: list[str] = []
    for spec, backend in zip(specs, backends):
        if spec.name:
            base = spec.name
        elif isinstance(spec.model, (str, Path)):
            base = Path(str(spec.model)).name or str(spec.model)
        else:
            info = backend.info()
            base = f"{info.framework}:{info.name}"
        name, k = base, 2
        while name in out:
            name, k = f"{base}#{k}", k + 1
        out.append(name)
    return out


def _per_stage(value: Any, names: list[str], what: str) -> list[Any]:
    if value is None:
        return [None] * len(names)
    if isinstance(value, Mapping):
        out = [None] * len(names)
        for key, v in value.items():
            if isinstance(key, int) and 0 <= key < len(names):
                out[key] = v
            elif key in names:
                out[names.index(key)] = v
            else:
                raise InputError(f"{what} names stage {key!r}, which is not in the chain ({', '.join(names)}).")
        return out
    value = list(value)
    if len(value) != len(names):
        raise InputError(f"{what} has {len(value)} entries for {len(names)} stages; give one per stage (None for none).")
    return value


def _precision_hints(precision: Any, names: list[str]) -> list[str | None]:
    if isinstance(precision, str):
        raise InputError("precision= is per stage: a list aligned with the stages, or a dict by stage name; "
                         f"got the single value {precision!r}.")
    return _per_stage(precision, names, "precision")


def _normalize_precision(value: str, stage: str) -> str:
    key = str(value).lower().replace("-", "").replace("_", "")
    if key not in _ALIASES:
        raise ToleranceError(
            f"stage {stage!r}: precision {value!r} is not one of float32, float64, float16, bfloat16, int8."
        )
    return _ALIASES[key]


def _detect_precision(backend: Any, trace: Trace) -> tuple[str, str]:
    """A stage's precision: from a TFLite flatbuffer's tensor types and quantisation, else the
    least precise float dtype its recorded tensors have."""
    if type(backend).__name__ == "TFLiteBackend":
        import numpy as np

        try:
            details = backend._interpreter_for_inspection().get_tensor_details()
        except Exception:  # pragma: no cover - an interpreter that cannot be inspected
            details = []
        quantized = float16 = 0
        for d in details:
            dtype = np.dtype(d["dtype"])
            scales = (d.get("quantization_parameters") or {}).get("scales")
            if dtype.kind in "iu" and dtype.itemsize <= 2 and scales is not None and len(scales):
                quantized += 1
            elif dtype == np.float16:
                float16 += 1
        if quantized:
            return "int8", f"detected: {quantized} quantized integer tensor(s) in the flatbuffer"
        if float16:
            return "float16", f"detected: {float16} float16 tensor(s) in the flatbuffer"
        return "float32", "detected: no float16 or quantized tensors"
    kinds = {t.dtype for t in trace.taps}
    for low in ("bfloat16", "float16"):
        if low in kinds:
            return low, f"detected: {low} tensors recorded"
    return "float32", "default"


def _overrides(tolerances: Any, min_argmax: Any) -> tuple[dict, Any]:
    if tolerances is None:
        return {}, min_argmax
    if isinstance(tolerances, Tolerances):
        return dict(tolerances.overrides), min_argmax if min_argmax is not None else tolerances.min_argmax_agreement
    if isinstance(tolerances, Mapping):
        return dict(tolerances), min_argmax
    raise ToleranceError(f"tolerances must map layer names or globs to (rtol, atol), got {type(tolerances).__name__}.")


def _stage_tolerances(precision: str, rtol, atol, overrides, min_argmax) -> tuple[Tolerances, Any, Any]:
    if precision in PRECISION_TOLERANCES:
        pr, pa = PRECISION_TOLERANCES[precision]
        if rtol is not None:
            pr, pa = max(pr, float(rtol)), max(pa, float(atol))
        return Tolerances.build(rtol=pr, atol=pa, overrides=overrides, min_argmax_agreement=min_argmax), pr, pa
    tol = Tolerances.build(rtol=rtol, atol=atol, overrides=overrides, min_argmax_agreement=min_argmax)
    return tol, rtol, atol


def _stage_tolerance(report: Report) -> tuple[float, float]:
    """The stage's global (rtol, atol): the report's, else the float32 default."""
    if report.rtol is not None and report.atol is not None:
        return float(report.rtol), float(report.atol)
    return DEFAULT_TOLERANCES["float32"]


def _matrix(trace0: Trace, reports: list[Report], names: list[str], precisions: list[str]) -> tuple[ChainRow, ...]:
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


# --- rendering -----------------------------------------------------------------------------


def _fmt(x: float | None) -> str:
    from .report.console import fmt_float

    return fmt_float(x)


_STYLE = {"ok": "green", "quantisation": "cyan", "introduced": "bold red", "inherited": "red"}
_MARK = {"ok": "✓", "quantisation": "≈", "introduced": "✗", "inherited": "✗ ←"}
_LEGEND = (
    "✓ within tolerance · ≈ expected quantisation error (a precision stage, judged with its tolerance) · "
    "✗ over tolerance, introduced by this stage (◀ its guilty layer) · ✗ ← over tolerance, inherited from "
    "an earlier stage · fused / one-sided / no-match: not compared"
)


def _guilty(report: ChainReport) -> set[tuple[str, str]]:
    """(layer, stage) of each introducing stage's guilty layer (its report's first divergence)."""
    out = set()
    for i, r in enumerate(report.reports, start=1):
        d = r.first_divergence
        if d is not None:
            try:
                if report.row(d.a_name).cells[i - 1].status == "introduced":
                    out.add((d.a_name, report.stages[i]))
            except ParityError:
                pass
    return out


def _cell_text(c: ChainCell, guilty: bool = False) -> tuple[str, str]:
    if not c.compared:
        return ("·" if c.status == "absent" else c.status), "dim"
    style = _STYLE[c.status]
    if c.status == "ok" and c.tolerance_ratio is not None and c.tolerance_ratio >= 0.1:
        style = "yellow"  # within tolerance, but not by much
    return f"{_fmt(c.rel_err)} {_MARK[c.status]}{' ◀' if guilty else ''}", style


def _shown_rows(report: ChainReport, limit: int = 40) -> list[ChainRow | tuple[int, int]]:
    """Long matrices fold runs of rows that say nothing new: kept are the head, the tail, each
    guilty layer and every row where some stage's verdict changes (blank cells change nothing),
    with a row of context on each side; a fold is ``(first index, count)``."""
    rows = report.matrix
    if len(rows) <= limit:
        return list(rows)
    keep = {0, 1, 2, len(rows) - 3, len(rows) - 2, len(rows) - 1}
    guilty_layers = {layer for layer, _ in _guilty(report)}
    carried: list[str | None] = [None] * (len(report.stages) - 1)
    for r in rows:
        changed = r.layer in guilty_layers
        for j, c in enumerate(r.cells):
            if c.compared:
                changed |= carried[j] is not None and carried[j] != c.status
                carried[j] = c.status
        if changed:
            keep.update(range(r.index - 1, r.index + 2))
    out: list[ChainRow | tuple[int, int]] = []
    run = 0
    for r in rows:
        if r.index in keep:
            if run:
                out.append((r.index - run, run))
                run = 0
            out.append(r)
        else:
            run += 1
    if run:
        out.append((len(rows) - run, run))
    return [x if not isinstance(x, tuple) or x[1] > 1 else rows[x[0]] for x in out]


def _render(report: ChainReport, width: int = 200) -> Iterator[Any]:
    from rich.text import Text

    from .report.columns import Column, fitted_table, left_out_line

    head, *stage_lines = report.summary().splitlines()
    yield Text(head, style="bold green" if report.ok else "bold red")
    # the layer names stay whole; "introduced by" (the ◀ marks say it too) goes first, then op
    columns = [
        Column("#", justify="right", style="dim"),
        Column("layer", floor=max((len(r.layer) for r in report.matrix), default=5), give=1),
        Column("op", style="dim", floor=8, give=2, drop=1),
    ]
    stage_columns = [
        Column(name + (f"\n({report.precisions[i]})" if report.is_precision_stage(i) else ""), justify="right")
        for i, name in enumerate(report.stages[1:], start=1)
    ]
    intro_column = Column("introduced by", drop=2)
    columns += stage_columns + [intro_column]
    guilty = _guilty(report)
    loose = set()
    for r, row in enumerate(_shown_rows(report)):
        if isinstance(row, tuple):
            _, count = row
            for col in columns:
                col.cells.append(Text(f"… {count} rows as above …", style="dim") if col is columns[1] else "")
            loose.add(r)
            continue
        cells: list[Any] = [str(row.index), row.layer, row.op]
        cells += [Text(*_cell_text(c, (row.layer, c.stage) in guilty)) for c in row.cells]
        cells.append(Text(row.introduced_by or "", style="bold red"))
        for col, cell in zip(columns, cells):
            col.cells.append(cell)
    columns[1].loose = frozenset(loose)
    table, dropped = fitted_table(columns, width)
    yield table
    left_out = left_out_line(dropped, width)
    if left_out is not None:
        yield left_out
    yield Text(_LEGEND, style="dim")
    for line, report_ok in zip(stage_lines, (r.ok for r in report.reports)):
        yield Text(line.strip(), style="green" if report_ok else "red")
    for note in report.notes:
        yield Text(f"note: {note}", style="yellow")


_HTML = """{% if not fragment %}<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>parity chain: {{ stages | join(" → ") }}</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.3em; } .ok { color: #17803d; } .bad { color: #b42318; }
table.matrix { border-collapse: collapse; margin: 1em 0; }
table.matrix th, table.matrix td { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: right; }
table.matrix th.l, table.matrix td.l { text-align: left; } td.op { color: #777; }
td.c-ok { color: #17803d; } td.c-quantisation { color: #0e7490; }
td.c-introduced { color: #fff; background: #b42318; font-weight: bold; }
td.c-inherited { color: #b42318; background: #fde8e7; }
td.blank { color: #aaa; } .legend, .note { color: #555; } ul.stages li { margin: 0.2em 0; }
</style></head><body>{% endif %}
<h1 class="{{ 'ok' if ok else 'bad' }}">{{ head }}</h1>
<ul class="stages">
{% for s in stage_lines %}<li class="{{ 'ok' if s.ok else 'bad' }}">{{ s.text }}</li>
{% endfor %}</ul>
<table class="matrix">
<thead><tr><th>#</th><th class="l">layer</th><th class="l">op</th>
{% for s in columns %}<th>{{ s.name }}{% if s.precision %}<br><small>{{ s.precision }}</small>{% endif %}</th>{% endfor %}
<th class="l">introduced by</th></tr></thead>
<tbody>
{% for row in rows %}<tr><td>{{ row.index }}</td><td class="l">{{ row.layer }}</td><td class="l op">{{ row.op }}</td>
{% for c in row.cells %}<td class="{{ c.css }}" title="{{ c.title }}">{{ c.text }}</td>{% endfor %}
<td class="l bad">{{ row.introduced_by or "" }}</td></tr>
{% endfor %}</tbody></table>
<p class="legend">{{ legend }}. Each stage is compared with {{ stages[0] }}; cells are ‖b−a‖/‖a‖.</p>
{% for note in notes %}<p class="note">note: {{ note }}</p>{% endfor %}
{% if not fragment %}</body></html>{% endif %}
"""


def _render_html(report: ChainReport, fragment: bool = False) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    head, *lines = report.summary().splitlines()
    rows = []
    guilty = _guilty(report)
    for row in report.matrix:
        cells = []
        for c in row.cells:
            text, _ = _cell_text(c, (row.layer, c.stage) in guilty)
            title = c.label + (f" — {c.stage}: {c.b_name}" if c.b_name else "")
            if c.compared:
                title += f" (rtol {c.rtol:g}, atol {c.atol:g})"
            cells.append({"text": text, "css": f"c-{c.status}" if c.compared else "blank", "title": title})
        rows.append({"index": row.index, "layer": row.layer, "op": row.op, "cells": cells,
                     "introduced_by": row.introduced_by})
    columns = [{"name": name, "precision": report.precisions[i] if report.is_precision_stage(i) else None}
               for i, name in enumerate(report.stages) if i]
    text = env.from_string(_HTML).render(
        fragment=fragment, stages=list(report.stages), ok=report.ok, head=head,
        stage_lines=[{"text": line.strip(), "ok": r.ok} for line, r in zip(lines, report.reports)],
        columns=columns, rows=rows, notes=list(report.notes), legend=_LEGEND,
    )
    return text


# --- command line --------------------------------------------------------------------------


def add_chain_command(subparsers: Any) -> Any:
    """``parity chain A B C …``: add the subcommand to ``parity``'s subparsers."""
    from .cli import _add_input_options
    from .options import add_tolerance_options

    p = subparsers.add_parser(
        "chain",
        help="compare a model with each of its conversions (A → B → C …), layer by layer, in one run",
        description="Stage 0 is the reference; every later stage is compared with it. Exit status: "
        "0 every stage agrees, 1 a stage diverges, 2 bad usage or input.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="the stages in order: package.module:factory, or saved models (.pt2, .pt, .onnx, "
                        ".tflite, .keras, .pb, SavedModel directories)")
    p.add_argument("--names", metavar="N0,N1,…", help="names of the stages, comma-separated, one per model")
    p.add_argument("--precision", action="append", default=[], metavar="STAGE=DTYPE",
                   help="a stage's precision (name or index = float16/int8/float32…), when detection "
                        "cannot see it; repeatable")
    _add_input_options(p)
    p.add_argument("--json", dest="json_out", metavar="PATH", help="write the chain report as JSON here")
    p.add_argument("--html", dest="html_out", metavar="PATH", help="write the chain report as an HTML page here")
    add_tolerance_options(p.add_argument)
    return p


def run_chain_command(args: Any, console: Any = None) -> int:
    """Run ``parity chain`` for parsed ``args``: 0 all stages agree, 1 a stage diverges, 2 usage
    or load errors (a :class:`ParityError`, whose message goes to stderr)."""
    from rich.console import Console

    console = console if console is not None else Console()
    try:
        from .cli import _inputs, _require_files

        models = list(args.models)
        _require_files(args, *models)  # a missing file fails before any stage loads
        if len(models) < 2:
            raise InputError(f"parity chain needs at least two models (a model and a conversion); got {len(models)}.")
        names = None
        if getattr(args, "names", None):
            names = [n.strip() for n in args.names.split(",")]
            if len(names) != len(models):
                raise InputError(f"--names gives {len(names)} name(s) for {len(models)} models; give one per model.")
        hints: dict[Any, str] = {}
        for item in getattr(args, "precision", None) or ():
            stage, sep, dtype = item.partition("=")
            if not sep or not stage.strip() or not dtype.strip():
                raise InputError(f"--precision takes STAGE=DTYPE (e.g. --precision 4=float16); got {item!r}.")
            key: Any = int(stage) if stage.strip().isdigit() else stage.strip()
            hints[key] = dtype.strip()
        report = chain(
            models, _inputs(args), names=names, rtol=args.rtol, atol=args.atol, precision=hints or None,
            seed=getattr(args, "seed", 0) or 0, granularity="ops" if getattr(args, "ops", False) else "modules",
        )
        console.print(report)
        for attr, method, what in (("json_out", "to_json", "JSON chain report"), ("html_out", "to_html", "HTML chain report")):
            path = getattr(args, attr, None)
            if path:
                getattr(report, method)(path)
                console.print(f"{what} written to {path}", highlight=False)
        return 0 if report.ok else 1
    except ParityError as exc:
        errors = Console(stderr=True, soft_wrap=True)
        errors.print(f"[bold red]parity:[/] {type(exc).__name__}: ", end="")
        errors.print(str(exc), markup=False, highlight=False)
        return 2


class _CallableModule(types.ModuleType):
    """``parity.chain(stages, inputs)`` calls :func:`chain`; the module's other names stay reachable."""

    def __call__(self, *args: Any, **kwargs: Any) -> ChainReport:
        return chain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
