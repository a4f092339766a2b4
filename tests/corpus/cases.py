"""What a corpus case is, and how its outcome is judged.

A :class:`Case` builds a pair — model A, its conversion B by a real converter, inputs — either
faithful or with one injected :class:`Bug`.  :func:`judge` runs ``parity.diff`` on it and turns the
report into a :class:`Row`: a faithful pair must be ``ok`` (a false divergence is the worst bug
parity can have); a bug must be flagged at its layer (or a named fused neighbour), by a diagnosis
other than ``unexplained`` where one applies.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

#: reasons an unmatched layer of A counts as accounted for, not missing: folded into a compared
#: tensor of B, a step that exists on one side only, an identity at inference, or computed inside
#: one layer of B that records no tensor for it (the layer of B that holds it is compared)
ACCOUNTED = ("fused", "one-sided", "placeholder", "inside")


@dataclass(frozen=True)
class Bug:
    """A bug injected into B (or into what the converter is fed)."""

    name: str  # a stable id, e.g. "scaled-kernel"
    layer: str  # model A's layer where parity must flag it
    also: tuple[str, ...] = ()  # acceptable neighbours (the layer it is fused with)
    diagnosis: str | None = None  # the code expected, where a detector applies
    #: why the bug cannot be a test of parity (it changes nothing beyond float32 rounding: a
    #: BatchNorm epsilon next to variances in the hundreds), measured on model A itself
    invisible: str | None = None


@dataclass
class Pair:
    """What one build gives: the two models (live or paths), the inputs, options for ``parity.diff``."""

    a: Any
    b: Any
    inputs: Any = None
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    id: str  # "<source>/<model>/<route>", e.g. "timm/resnet18/onnx-dynamo"
    source: str  # timm | transformers | keras-hub | keras.applications | nobuco
    model: str
    route: str  # e.g. "torch.onnx.export (dynamo)"
    build: Callable[[Bug | None], Pair]  # None → the faithful pair
    bugs: tuple[Bug, ...] = ()
    sample: bool = False  # part of the deterministic subset `make test` runs
    #: for a pair that can only be built and diffed in another process (nobuco needs the Keras 2
    #: venv): judges the variant there and returns its Row; ``build`` is then not called here
    judge_elsewhere: Callable[[Bug | None], "Row"] | None = None


@dataclass(frozen=True)
class Row:
    case: str
    source: str
    model: str
    route: str
    bug: str | None
    layers: int  # layers of A that compute something (compared + accounted + unmatched)
    compared: int
    accounted: int
    unmatched: int
    max_rel_err: float  # over compared layers (faithful: the worst of them)
    verdict: str  # "ok" | "diverges at <layer> (<codes>)" | "crash: <error>"
    expected: str  # "ok" | the bug's layer
    passed: bool
    seconds: float
    unmatched_names: tuple[str, ...] = ()
    unsure: int = 0  # layers of A left "not compared" because their pairing could not be justified
    excluded: str | None = None  # why the pair could not be built (the converter failed): not parity's outcome
    diagnoses: tuple[str, ...] = ()  # the codes given at the first divergence
    measured: str = ""  # the commit (and date) the row was measured at, stamped by the runner

    @classmethod
    def from_dict(cls, d: dict) -> "Row":
        """A row from ``dataclasses.asdict(row)`` (e.g. read back as JSON from another process)."""
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        return cls(**{**d, "unmatched_names": tuple(d.get("unmatched_names", ())),
                      "diagnoses": tuple(d.get("diagnoses", ()))})

    @property
    def matched_share(self) -> float:
        """Compared or accounted for, of the layers that compute something."""
        return (self.compared + self.accounted) / self.layers if self.layers else 0.0


def _why_not_built(exc: BaseException) -> str:
    """The reason a pair could not be built, short: the error's first words and, for a converter
    that failed, the last error line of its log (where it says why: an op, a shape, a download)."""
    detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
    log = [line.strip() for line in str(getattr(exc, "log_tail", "") or "").splitlines() if line.strip()]
    cause = next((line for line in reversed(log) if "Error" in line or "error" in line), log[-1] if log else "")
    if cause:
        return f"{detail[:140]} … {cause[:220]}"
    return detail[:300]


def _keep_readings(case: Case, bug: Bug | None, report: Any) -> None:
    """With ``PARITY_CORPUS_READINGS=FILE``, one JSON line per pair: every compared layer's error,
    noise floor and error against the float64 reference — what :data:`parity.reference.NOISE_FACTOR`
    was chosen from (``python -m tests.corpus.noise FILE`` prints the distribution)."""
    path = os.environ.get("PARITY_CORPUS_READINGS")
    if not path:
        return
    layers = [(d.a_name, d.op, d.rel_err, d.noise, d.ref_err, d.ok) for d in report.layers]
    line = {"case": case.id, "bug": bug and bug.name, "expected": bug.layer if bug else None,
            "first": report.first_divergence.a_name if report.first_divergence else None, "layers": layers}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line, allow_nan=True) + "\n")


def judge(case: Case, bug: Bug | None = None) -> Row:
    """Build the pair, diff it, and say whether parity got it right."""
    if case.judge_elsewhere is not None:
        return case.judge_elsewhere(bug)
    import parity

    start = time.perf_counter()
    expected = "ok" if bug is None else bug.layer
    if bug is not None and bug.invisible:
        detail = f"the bug is invisible: {bug.invisible}"
        return Row(case.id, case.source, case.model, case.route, bug.name, 0, 0, 0, 0, float("nan"),
                   f"excluded: {detail}", expected, False, 0.0, excluded=detail)
    try:
        pair = case.build(bug)
    except Exception as exc:  # the model or its conversion could not be made: excluded, with the reason
        detail = _why_not_built(exc)
        return Row(case.id, case.source, case.model, case.route, bug and bug.name, 0, 0, 0, 0,
                   float("nan"), f"excluded: {detail}", expected, False, time.perf_counter() - start,
                   excluded=detail)
    options = dict(pair.options)
    reference = os.environ.get("PARITY_CORPUS_REFERENCE")  # the corpus judged with reference="float64"
    if reference:
        options.setdefault("reference", reference)
    try:
        report = parity.diff(pair.a, pair.b, pair.inputs, **options)
    except Exception as exc:  # a crash is an outcome of its own: recorded, never hidden
        detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return Row(case.id, case.source, case.model, case.route, bug and bug.name, 0, 0, 0, 0,
                   float("nan"), f"crash: {detail[:300]}", expected, False, time.perf_counter() - start)
    _keep_readings(case, bug, report)
    compared = sum(1 for d in report.layers if d.role != "output")
    accounted = sum(1 for u in report.unmatched_a if u.reason in ACCOUNTED)
    missing = [u.name for u in report.unmatched_a if u.reason not in ACCOUNTED]
    unsure = sum(1 for u in report.unmatched_a if u.reason.startswith("unsure"))
    errs = [d.metrics.rel_err for d in report.layers]
    first = report.first_divergence
    codes: list[str] = []
    if first is None:
        verdict = "ok" if report.ok else "not ok (no first divergence)"
    else:
        codes = sorted({g.code for g in report.diagnoses if g.layer == first.a_name})
        verdict = f"diverges at {first.a_name} ({', '.join(codes) or '-'})"
    if bug is None:
        passed = report.ok
    else:
        passed = first is not None and first.a_name in (bug.layer, *bug.also)
        if passed and bug.diagnosis is not None:
            passed = any(g.code == bug.diagnosis for g in report.diagnoses if g.layer == first.a_name)
    return Row(case.id, case.source, case.model, case.route, bug and bug.name,
               compared + accounted + len(missing), compared, accounted, len(missing),
               max(errs) if errs else float("nan"), verdict, expected, passed,
               time.perf_counter() - start, tuple(missing), unsure, None, tuple(codes))
