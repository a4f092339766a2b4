"""One comparison, stage by stage: the pipeline every entry point runs.

:func:`parity.diff`, :func:`parity.diff_traces`, :func:`parity.chain` and
:func:`parity.search` all end here, with the two traces, whatever they know of
the live models (a :class:`Side` each) and one :class:`DiffOptions` record:

1. **align** the two traces (:mod:`parity.align`);
2. **compare** every pair under its tolerance (:mod:`parity.compare`);
3. **noise floor**: where model A can run as a float64 twin and the user gave no
   tolerance of their own, a flagged float32 layer is judged no tighter than
   :data:`NOISE_FLOOR_FACTOR` × how far A's own float32 tensor is from its float64
   twin's (a deep random-weight net amplifies rounding past any fixed rtol);
4. **folded scales and unsure pairs**: a flagged pair whose B tensor is A's times a
   parameter of a module around the layer, folded in by the converter, is "fused"
   (:func:`parity.unsure.folded_scales`); pairs the values contradict become "not
   compared" (:func:`parity.align.unsure_pairs`);
5. **own error** of the first flagged layers, by isolated replay where both sides
   can call a layer alone, else from the error growth (:mod:`parity.replay`);
6. **diagnose** the flagged layers (:mod:`parity.diagnose`) — and, where the first
   divergence's error is born at an earlier layer under tolerance, that layer, which
   becomes the first divergence when a detector names a known cause there
   (:func:`born_under_tolerance`);
7. **weight parity** where both backends read parameters (:mod:`parity.weights`);
8. **model-level diagnoses** that rerun the models (nondeterminism, preprocessing);
9. the **baseline** pair's drift, when one is given (:mod:`parity.baseline`);
10. **explain** the first divergence (a known cause, or ``unexplained`` with where
    the error sits).

Every stage asks the backends what they can do (:class:`parity.capture.base.Backend`);
none names a framework.
"""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .align import align, unsure_pairs
from .conflicts import shape_conflicts
from .reference import TABLE_NOISE_FACTOR
from .unsure import folded_scales
from .compare import compare
from .diagnose import diagnose
from .errors import OptionError
from .metrics import relative_error
from .records import Alignment, InputsSummary, Reference, Report, Trace, UnmatchedLayer
from .replay import InputRecorder, own_errors, to_b_layout
from .quantsteps import quant_steps, quant_summary
from .reruns import collecting, rerun_failed
from .spill import release_trace
from .tolerance import Tolerances, suggest

__all__ = ["DiffOptions", "Side", "run", "NOISE_FLOOR_FACTOR", "environment", "inside_a_layer", "inside_b_layer"]

#: a layer's error vs B may reach this multiple of A's own float32 rounding error (B rounds too)
NOISE_FLOOR_FACTOR = TABLE_NOISE_FACTOR
_GRANULARITIES = ("modules", "ops")


@dataclass(frozen=True)
class DiffOptions:
    """Everything that decides one comparison besides the two models and their inputs.

    Built once by :meth:`build` from the keyword arguments :func:`parity.diff` takes
    (the CLI, the pair tables, the plugin, :func:`parity.chain`, :func:`parity.search`
    and :func:`parity.drift` build it the same way), validated there, and passed
    whole: no stage receives a loose option.
    """

    tolerances: Tolerances = dataclasses.field(default_factory=Tolerances)
    mapping: Mapping[str, str] | None = None
    granularity: str = "modules"
    containers: bool = False
    seed: int = 0
    #: activations held in memory before a finished side's are spilled (bytes), or None
    max_memory: int | None = None
    #: a pair ``(a0, b0)`` or a :class:`Report` of it, whose errors each layer's are held against
    baseline: Any = None
    drift_factor: float | None = None
    input_map: Mapping[str, str] | None = None
    #: what judges a layer: "dtype" (the per-dtype tolerance table) or "float64" (a float64
    #: twin's run: :mod:`parity.reference`)
    reference: str = "dtype"
    #: layers of A whose repro sources are kept besides those where an error is born
    #: (``parity repro --layer``)
    repro_layers: tuple[str, ...] = ()

    #: the keyword arguments :meth:`build` takes (and :func:`parity.diff` with it)
    KEYWORDS = ("mapping", "rtol", "atol", "tolerances", "min_argmax_agreement", "containers", "granularity",
                "baseline", "drift_factor", "seed", "max_memory", "input_map", "reference")

    @classmethod
    def build(cls, *, where: str = "parity.diff", **options: Any) -> "DiffOptions":
        """The record of ``options`` (the keywords of :func:`parity.diff`), validated.

        An unknown keyword is an :class:`~parity.errors.OptionError` naming the ones
        accepted (``where`` says whose keywords they were)."""
        unknown = sorted(set(options) - set(cls.KEYWORDS))
        if unknown:
            raise OptionError(
                f"{where}() got unexpected keyword argument(s) {', '.join(unknown)}; it accepts "
                f"{', '.join(cls.KEYWORDS)}."
            )
        tol = options.get("tolerances")
        rtol, atol, min_argmax = options.get("rtol"), options.get("atol"), options.get("min_argmax_agreement")
        if isinstance(tol, Tolerances):
            if rtol is not None or atol is not None or min_argmax is not None:
                tol = Tolerances.build(
                    rtol=rtol if rtol is not None else tol.rtol, atol=atol if atol is not None else tol.atol,
                    overrides=dict(tol.overrides),
                    min_argmax_agreement=min_argmax if min_argmax is not None else tol.min_argmax_agreement,
                )
        else:
            tol = Tolerances.build(rtol=rtol, atol=atol, overrides=tol, min_argmax_agreement=min_argmax)
        granularity = options.get("granularity", "modules")
        if granularity not in _GRANULARITIES:
            raise OptionError(f"granularity must be one of {', '.join(_GRANULARITIES)}, got {granularity!r}.")
        from .reference import check_reference
        from .spill import parse_max_memory

        return cls(
            tolerances=tol,
            mapping=options.get("mapping"),
            granularity=granularity,
            containers=bool(options.get("containers", False)),
            seed=int(options.get("seed", 0) or 0),
            max_memory=parse_max_memory(options.get("max_memory")),
            baseline=options.get("baseline"),
            drift_factor=options.get("drift_factor"),
            input_map=options.get("input_map"),
            reference=check_reference(options.get("reference")),
        )

    @property
    def user_tolerance(self) -> bool:
        """Whether a global rtol/atol was given (a tolerance the user gave is theirs: the
        noise floor never loosens it)."""
        return self.tolerances.rtol is not None


@dataclass(frozen=True)
class Side:
    """One model of a comparison as the pipeline knows it: its trace, and — when the live
    model is at hand — its backend and the inputs it was run on (in its own layout)."""

    trace: Trace
    backend: Any = None
    inputs: Any = None


def run(a: Side, b: Side, options: DiffOptions, inputs: InputsSummary | None = None,
        baseline: Report | None = None) -> Report:
    """The report of ``a`` against ``b``: every stage of the module docstring, in order.
    ``baseline`` is the baseline pair's report (the caller ran it), or None."""
    with collecting() as failed_reruns:
        report = _run(a, b, options, inputs, baseline)
    if failed_reruns:
        kept = report.__dict__.get("_repro_sources")
        report = dataclasses.replace(report, notes=(*report.notes, *failed_reruns))
        if kept is not None:  # what save_repro needs is off the record: carried by hand
            object.__setattr__(report, "_repro_sources", kept)
    return report


def _run(a: Side, b: Side, options: DiffOptions, inputs: InputsSummary | None, baseline: Report | None) -> Report:
    tol = options.tolerances
    alignment = align(a.trace, b.trace, options.mapping)
    release_trace(a.trace)  # alignment read spilled values: their pages leave the process again
    release_trace(b.trace)
    compared = compare(alignment, tol)
    notes: list[str] = []
    reference = None
    if options.reference == "float64":
        compared, reference = float64_reference(a, b, alignment, compared, tol, options.max_memory)
        if reference.note is not None:
            notes.append(reference.note)
    elif not options.user_tolerance and not all(d.ok for d in compared):
        raised, note = noise_floor_tolerances(a, compared, tol)
        if raised is not None:
            compared = compare(alignment, raised)
            notes.append(note)
    alignment, compared, note = folded_scales(alignment, compared, params_reader(a.backend))
    if note is not None:
        notes.append(note)
    alignment, compared = unsure_pairs(alignment, compared, same_params(a.backend, b.backend))
    compared = quant_steps(a, b, alignment, compared)  # B's quantized layers: judged in steps of their scale
    # A's layer inputs, recorded once for replay and the detectors
    recorder = InputRecorder(a.backend, a.inputs) if a.backend is not None and a.inputs is not None else None
    compared = own_errors(a.backend, b.backend, a.inputs, alignment, compared, recorder, b.inputs)
    both = a.backend is not None and b.backend is not None
    models = (a.backend, b.backend) if both else None
    recorder = recorder if both else None
    layers, diagnoses = diagnose(alignment, compared, models, recorder)
    born = born_under_tolerance(compared)
    if born is not None:  # the error that crosses tolerance later starts here: a known cause there?
        tried, found = diagnose(alignment, born, models, recorder)
        if _explained_where_born(tried):
            layers, diagnoses = tried, found
    report = _assemble(a.trace, b.trace, alignment, layers, diagnoses, inputs, tol, notes)
    report = dataclasses.replace(report, reference=reference)
    if both:
        if a.backend.reads_params and b.backend.reads_params:
            report = _weight_parity(report, a.backend, b.backend, alignment)
        if not report.ok and a.inputs is not None and b.inputs is not None:
            report = _model_level_diagnoses(report, alignment, a, b)
    if baseline is not None:
        from .baseline import DRIFT_FACTOR, apply_baseline

        report = apply_baseline(report, baseline, options.drift_factor or DRIFT_FACTOR)
    report = explain_first(report, alignment)
    # layers judged in steps of their quantization scale (quant) take no float tolerance to suggest
    report = dataclasses.replace(report, suggestion=suggest(tuple(d for d in report.layers if d.quant is None), tol))
    report = quant_summary(report)  # the deny-list of B's quantized layers judged in steps
    if both and recorder is not None:
        keep_repro_sources(report, alignment, a.backend, b.backend, recorder, options.repro_layers, b.inputs)
    return report


def keep_repro_sources(report: Report, alignment: Alignment, backend_a: Any, backend_b: Any,
                       recorder: InputRecorder, also: tuple[str, ...] = (), inputs_b: Any = None) -> None:
    """Keep on ``report`` what :meth:`Report.save_repro` needs for each layer where an error is
    born, and each layer ``also`` names (its recorded input, both outputs, the live backends): a
    few tensors, not the traces; ``inputs_b``, B's model inputs, for a B whose runtime reruns
    whole models only."""
    from .repro import ReproSource

    named = {d.a_name for d in report.born_here}
    born = (*report.born_here, *(d for d in report.layers if d.a_name in also and d.a_name not in named))
    if not born:
        return
    ordered = sorted(alignment.matches, key=lambda m: m.a.index)
    at = {m.a.name: i for i, m in enumerate(ordered)}
    inputs = recorder.get([d.a_name for d in born])  # recorded for replay already; a failed rerun is a note
    sources = {}
    for d in born:
        i = at.get(d.a_name)
        if i is None or ordered[i].a.value is None or ordered[i].b.value is None:
            continue
        m = ordered[i]
        x_a = inputs.get(d.a_name)
        source, x_b = recorder.sources.get(d.a_name, (None, None))
        if x_b is None and x_a is not None:
            x_b = to_b_layout(x_a, m, ordered[i - 1] if i else None)
        t = m.transform
        sources[d.a_name] = ReproSource(
            a_name=d.a_name, b_name=d.b_name, a_op=d.op, b_op=d.b_op, input_a=x_a, input_b=x_b,
            output_a=np.asarray(m.a.value), output_b=np.asarray(m.b.value),
            transform=(t.kind if t.kind in ("identity", "permute") else "identity", t.perm if t.kind == "permute" else None),
            rel_err=float(d.metrics.rel_err), own_err=d.own_err, backend_a=backend_a, backend_b=backend_b, b_source=source,
            model_inputs_b=inputs_b, b_attrs=dict(m.b.attrs),
        )
    object.__setattr__(report, "_repro_sources", sources)


# --- the stages -------------------------------------------------------------------------


def float64_reference(a: Side, b: Side, alignment: Alignment, layers: tuple, tol: Tolerances,
                      max_memory: int | None) -> tuple[tuple, Reference]:
    """``layers`` judged against a float64 twin's run (:mod:`parity.reference`): model A's twin
    when A has one, else model B's; where neither has one, the dtype table's verdicts with the
    reason in :attr:`Reference.note`.  The twin's values (twice the float32 model's bytes) are
    held within what ``max_memory`` leaves beside the two traces, the rest spilled to disk."""
    from .reference import NOISE_FACTOR, NOISE_FLOOR, float64_trace, judge
    from .spill import Spill, trace_nbytes

    reasons = []
    budget = None if max_memory is None else max(max_memory - trace_nbytes(a.trace) - trace_nbytes(b.trace), 0)
    for side, who, here in (("a", "model A", a), ("b", "model B", b)):
        with Spill() as spill:
            if budget is None:
                trace64, why = float64_trace(here.backend, here.inputs, who)
            else:
                with spill.capturing(budget):
                    trace64, why = float64_trace(here.backend, here.inputs, who)
            if trace64 is not None:
                return judge(alignment, layers, trace64, side, tol.min_argmax_agreement)
        reasons.append(why)
    note = ("reference='float64' was asked for, but no float64 twin ran (" + "; ".join(r for r in reasons if r)
            + "): every layer is judged by the per-dtype tolerance table")
    return layers, Reference(kind="dtype", side="", factor=NOISE_FACTOR, floor=NOISE_FLOOR, judged=0, note=note)



def noise_floor_tolerances(a: Side, layers: tuple, tol: Tolerances) -> tuple[Tolerances | None, str | None]:
    """Tolerances raised, for the flagged float32 layers only, to :data:`NOISE_FLOOR_FACTOR` ×
    how far A's own float32 tensor is from a float64 twin's on the same inputs — the precision
    float32 can give that layer in this model.  ``(None, None)`` when model A has no float64
    twin, its inputs are not float32 arrays, or no flagged layer is that ill-conditioned."""
    flagged = [d for d in layers if not d.ok and d.dtype == "float32"]
    inputs = a.inputs
    if not flagged or a.backend is None or inputs is None or isinstance(inputs, Mapping):
        return None, None
    if not all(getattr(x, "dtype", None) == np.float32 for x in inputs):
        return None, None
    try:
        twin = a.backend.twin("float64")
        if twin is None:
            return None, None
        trace64 = twin.capture([np.asarray(x, dtype=np.float64) for x in inputs])
    except Exception as exc:  # noqa: BLE001 - a model that does not run in float64: keep the tolerances given
        rerun_failed("model A", "in float64 (its float32 noise floor)", exc,
                     "the flagged layers are judged by the tolerances given, not by A's own float32 precision")
        return None, None
    by_name = {t.name: t for t in trace64.taps}
    overrides, worst = {}, 0.0
    for d in flagged:
        t32 = a.trace[d.a_name] if d.a_name in a.trace.names else None
        t64 = by_name.get(d.a_name)
        if t32 is None or t64 is None or t32.shape != t64.shape:
            continue
        v64 = np.asarray(t64.value, dtype=np.float64)
        if not np.any(v64):
            continue  # an all-zero tensor has no relative precision to speak of
        floor = relative_error(v64, np.asarray(t32.value, dtype=np.float64))
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


def params_reader(backend: Any):
    """``backend.layer_params`` where the backend reads parameters, else None."""
    if backend is None or not backend.reads_params:
        return None
    return backend.layer_params


def same_params(backend_a: Any, backend_b: Any):
    """Whether a pair's two layers hold equal parameters (weight parity through the backends),
    or None where the backends cannot read parameters."""
    if backend_a is None or backend_b is None or not (backend_a.reads_params and backend_b.reads_params):
        return None
    from .weights import weight_parity

    def same(match) -> bool:
        try:
            params = weight_parity(backend_a, backend_b, [match])
        except Exception:  # noqa: BLE001 - a layer weight parity cannot read: no evidence
            return False
        return bool(params) and all(p.status == "ok" for p in params)

    return same


def inside_a_layer(alignment: Alignment, trace_a: Trace) -> dict[int, Any]:
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


def inside_b_layer(alignment: Alignment, trace_b: Trace) -> dict[int, Any]:
    """A's unmatched layers that B computes inside one of its own layers without recording a
    tensor there, by ``id``, each with B's tap of that layer: layers of A between the outputs of
    two compared layers that are next to each other in B (nothing of B recorded between them),
    or before the first compared layer when B records nothing before it — an activation a Keras
    layer applies inside its ``call`` (transformers' TF ResNet, BERT's intermediate GELU), an
    embedding lookup inside TF's embeddings layer."""
    pairs = sorted((m for m in alignment.matches if m.a.role != "output"), key=lambda m: m.a.index)
    # B's steps that compute nothing at inference (a Dropout, an Identity) hold no counterpart
    idle = {id(u.tap) for u in alignment.unmatched_b if u.reason in ("one-sided", "placeholder")}
    b_index = sorted(t.index for t in trace_b.taps if t.role != "container" and id(t) not in idle)
    stray_a = sorted((u.tap for u in alignment.unmatched_a if u.reason == "no-match"), key=lambda t: t.index)
    out: dict[int, Any] = {}
    for before, after in zip([None, *pairs], pairs):
        lo_a, lo_b = (before.a.index, before.b.index) if before is not None else (-1, -1)
        if not lo_b < after.b.index:
            continue
        if bisect.bisect_right(b_index, lo_b) != bisect.bisect_left(b_index, after.b.index):
            continue  # B recorded something between the two: it may be the counterpart
        for t in stray_a:
            if lo_a < t.index < after.a.index:
                out[id(t)] = after.b
    return out


def declared_mismatches(alignment: Alignment, layers: tuple) -> list[str]:
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


def _assemble(trace_a: Trace, trace_b: Trace, alignment: Alignment, layers: tuple, diagnoses: tuple,
              inputs: InputsSummary | None, tol: Tolerances, notes: list[str]) -> Report:
    inside = inside_a_layer(alignment, trace_a)
    inside_b = inside_b_layer(alignment, trace_b)
    inside_any = {**inside, **inside_b}
    conflicts = shape_conflicts(alignment)
    differ = {("a", c.a_name) for c in conflicts} | {("b", c.b_name) for c in conflicts}
    unmatched = tuple(
        UnmatchedLayer(
            side=u.side, name=u.tap.name, op=u.tap.op, shape=tuple(u.tap.shape),
            reason="inside" if id(u.tap) in inside_any else "shape" if (u.side, u.tap.name) in differ else u.reason,
        )
        for u in alignment.unmatched
    )
    if inputs is None:
        inputs = InputsSummary(
            shapes_a=trace_a.input_shapes, shapes_b=trace_b.input_shapes, dtypes=(), conversions=(),
            source="recorded traces", digest=trace_a.inputs_digest,
        )
    notes = [*trace_a.notes, *trace_b.notes, *notes]
    ambiguous = [d.a_name for d in layers if d.ambiguous]
    if ambiguous:
        notes.append(
            f"{len(ambiguous)} pair(s) have shapes that fit more than one layout ({', '.join(ambiguous[:5])}"
            f"{', …' if len(ambiguous) > 5 else ''}); the transform used follows the layouts the "
            "frameworks declare."
        )
    notes.extend(declared_mismatches(alignment, layers))
    if inside:
        notes.append(_inside_note(alignment, inside, "tensor(s) of B", "one layer of A", "nothing of A", ""))
    if inside_b:
        notes.append(_inside_note(alignment, inside_b, "layer(s) of A", "one layer of B", "nothing of B",
                                  " (the layer of B that holds them is compared)"))
    stray = [u for u in unmatched if u.reason == "no-match"]
    if stray:
        notes.append(
            f"{len(stray)} layer(s) found no counterpart and were not compared: "
            + ", ".join(f"{u.side.upper()}:{u.name}" for u in stray[:8])
            + (", …" if len(stray) > 8 else "")
            + ". Give a mapping to compare them."
        )
    return Report(
        a=trace_a.model, b=trace_b.model, layers=layers, unmatched=unmatched, inputs=inputs,
        rtol=tol.rtol, atol=tol.atol, notes=tuple(notes), diagnoses=diagnoses,
        environment=environment(trace_a.model, trace_b.model), conflicts=conflicts,
    )


def _inside_note(alignment: Alignment, holders: dict[int, Any], what: str, where: str, nothing: str,
                 after: str) -> str:
    """The note naming the taps computed inside a layer of the other model (``holders``: tap id →
    that layer's tap), the first eight of them."""
    within = [(u, holders[id(u.tap)]) for u in alignment.unmatched if id(u.tap) in holders]
    return (
        f"{len(within)} {what} are computed inside {where}, which records no tensor there, so {nothing} can be "
        f"compared with them{after}: "
        + ", ".join(f"{u.tap.name} ({u.tap.op}, inside {t.name} {t.op})" for u, t in within[:8])
        + (", …" if len(within) > 8 else "")
        + "."
    )


def _weight_parity(report: Report, backend_a: Any, backend_b: Any, alignment: Alignment) -> Report:
    """Parameters of aligned layers compared before any activation, and the diagnoses they support."""
    from .diagnose.runs import attach
    from .weights import weight_diagnoses, weight_parity

    params = weight_parity(backend_a, backend_b, alignment)
    report = dataclasses.replace(report, params=params)
    present = {(d.code, d.layer) for d in report.diagnoses}
    for diagnosis in weight_diagnoses(params):
        if (diagnosis.code, diagnosis.layer) not in present:
            report = attach(report, diagnosis)
    return report


def _model_level_diagnoses(report: Report, alignment: Alignment, a: Side, b: Side) -> Report:
    """Diagnoses that rerun the models: nondeterminism, input preprocessing, inputs in another order."""
    from .diagnose.runs import attach, detach, input_order, input_preprocessing, nondeterminism

    for found in (
        nondeterminism(a.backend, b.backend, a.inputs, b.inputs, (a.trace, b.trace), alignment),
        input_preprocessing(a.backend, b.backend, a.inputs, b.inputs, report, alignment),
        input_order(b.backend, b.inputs, report, alignment),
    ):
        if found is not None:
            if found.code == "input_preprocessing":
                # B's inputs scaled: the first layer's output is scaled too, which its values alone
                # read as scaled weights; the rerun with the inputs transformed proves the cause
                report = detach(report, found.layer, {"weight_scale", "bias_offset"})
            report = attach(report, found)
    return report


#: an error is "born" at a layer when it is this many times every error before it
BIRTH_JUMP = 30.0
#: ... and at least this share of the error at the first layer over tolerance (a later layer
#: may amplify it: one that removes a large offset), and of its own tolerance
BIRTH_SHARE = 0.01
BIRTH_NEAR_TOLERANCE = 0.1


def born_under_tolerance(layers: tuple) -> tuple | None:
    """``layers`` with the layer where the first divergence's error is born flagged, when that
    layer is earlier and under tolerance; else None.

    An error injected under tolerance (a BatchNorm epsilon of 1e-3 on large variances moves its
    layer by 9e-4 against an rtol of 1e-3) may cross the tolerance only blocks later, at a layer
    that computes nothing wrong.  The error is born at the first layer whose error reaches
    :data:`BIRTH_SHARE` of the first flagged layer's and :data:`BIRTH_NEAR_TOLERANCE` of its own
    tolerance while every layer before it is :data:`BIRTH_JUMP` times smaller.  The caller keeps the flag only where a detector then names
    a known cause at that layer: that is where the bug is, and where the report points."""
    inner = [d for d in layers if d.role != "output"]
    first = next((k for k, d in enumerate(inner) if not d.ok), None)
    if first is None or first == 0:
        return None
    level = inner[first].rel_err
    before = 0.0
    for k in range(first):
        d = inner[k]
        if d.rel_err >= BIRTH_SHARE * level and d.rel_err >= BIRTH_NEAR_TOLERANCE * d.allowed_rel:
            if not before * BIRTH_JUMP <= d.rel_err:
                return None  # the error grew layer by layer: no one layer made it
            why = (f"under tolerance here (rel err {d.rel_err:.2g}, allowed {d.allowed_rel:.2g}), but the error "
                   f"that crosses it at {inner[first].a_name} is born here: "
                   + (f"{d.rel_err / before:.0f}× every layer before it" if before > 0 else "every layer before it is exact"))
            flagged = dataclasses.replace(d, ok=False, reasons=(*d.reasons, why))
            return tuple(flagged if x is d else x for x in layers)
        before = max(before, d.rel_err)
    return None


def _explained_where_born(layers: tuple) -> bool:
    """Whether the layer :func:`born_under_tolerance` flagged got a known cause."""
    first = next((d for d in layers if d.role != "output" and not d.ok), None)
    return first is not None and any(g.code != "unexplained" for g in first.diagnoses)


def explain_first(report: Report, alignment: Alignment) -> Report:
    """The first divergence always gets a diagnosis: a known cause, or ``unexplained`` with
    where the error sits."""
    first = report.first_divergence
    if first is None or first.diagnoses:
        return report
    from .diagnose.fallback import context_for, unexplained
    from .diagnose.runs import attach

    ctx = context_for(alignment, report.layers, first)
    return attach(report, unexplained(ctx)) if ctx is not None else report


def environment(*models: Any) -> dict[str, str]:
    """Versions of what computed a report (no timestamps or host names: identical runs give identical JSON)."""
    import platform

    import numpy

    from .version import __version__

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
