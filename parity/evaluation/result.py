"""The result of :func:`parity.evaluate`: an :class:`Evaluation`, and its kept samples.

An Evaluation holds the summaries of the merged statistics (plain data, what the JSON
holds), the verdict and the samples kept by index.  It renders itself with rich, writes JSON
(schema ``parity.evaluation``, ``parity/schemas/evaluation.schema.json``) and HTML, and each
:class:`WorstSample` can be diffed layer by layer with :func:`parity.diff`.

The JSON holds nothing of how the run was made (engine, workers, time), so the same batches
give the same bytes on the local engine and on Ray.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..files import write_text
from .stats import HIST_EDGES, Sample, Stats

__all__ = ["Evaluation", "WorstSample", "SCHEMA", "SCHEMA_VERSION", "load_evaluation", "is_evaluation"]

SCHEMA = "parity.evaluation"
SCHEMA_VERSION = 1


@dataclass(frozen=True, eq=False)
class WorstSample:
    """A sample kept by index: its output error, both top-1 classes, its label, and its inputs
    (model A's layout, a batch of one) when the run that kept it still has them."""

    index: int
    error: float
    top1_a: int | None
    top1_b: int | None
    label: int | None
    inputs: Any = field(default=None, repr=False)
    _owner: Any = field(default=None, repr=False, compare=False)

    @property
    def disagrees(self) -> bool:
        return self.top1_a is not None and self.top1_a != self.top1_b

    def diff(self, a: Any = None, b: Any = None, **options: Any):
        """:func:`parity.diff` of both models on this sample alone: the layer-by-layer report with
        its diagnoses.  ``a``/``b`` default to the models the evaluation ran; ``options`` go to
        ``diff`` (the evaluation's mapping, tolerances and input map by default).

        >>> result.worst[0].diff().first_divergence.a_name   # doctest: +SKIP
        'layer1.1'
        """
        from ..api import diff
        from ..errors import InputError

        owner = self._owner
        a = a if a is not None else (owner.models[0] if owner is not None else None)
        b = b if b is not None else (owner.models[1] if owner is not None else None)
        if a is None or b is None:
            raise InputError(f"sample {self.index} has no models to diff: this evaluation was loaded from a file. "
                             "Pass them: worst[i].diff(model_a, model_b).")
        if self.inputs is None:
            raise InputError(f"sample {self.index}'s inputs are not at hand (loaded without its .npy); "
                             "load the evaluation with its samples directory beside the JSON.")
        if owner is not None:
            for key, value in owner.diff_options.items():
                options.setdefault(key, value)
        return diff(a, b, self.inputs, **options)

    def as_dict(self) -> dict[str, Any]:
        from .stats import json_number

        return {"index": self.index, "error": json_number(self.error), "top1_a": self.top1_a, "top1_b": self.top1_b,
                "label": self.label}


@dataclass(frozen=True, eq=False)
class Evaluation:
    """Two models over a dataset: agreement, accuracies, per-layer error, worst samples.

    >>> result = parity.evaluate(torch_model, keras_model, "data/val.npz")   # doctest: +SKIP
    >>> result.ok, result.first_divergence                                     # doctest: +SKIP
    (False, 'layer1.1')
    """

    model_a: dict[str, str]
    model_b: dict[str, str]
    data: str
    batch_size: int | None
    samples: int
    batches: int
    layers_mode: str
    tolerance: str
    layers: tuple[dict[str, Any], ...]
    outputs: tuple[dict[str, Any], ...]
    worst: tuple[WorstSample, ...]
    disagreements: tuple[WorstSample, ...]
    first_divergence: str | None
    failures: tuple[str, ...] = ()
    partial: bool = False
    notes: tuple[str, ...] = ()
    thresholds: dict[str, float | None] = field(default_factory=dict)
    #: off the record: the live models (or their specs) and diff's options, for worst[i].diff()
    models: tuple[Any, Any] = field(default=(None, None), repr=False)
    diff_options: dict[str, Any] = field(default_factory=dict, repr=False)
    #: how the run went (engine, workers, seconds, Ray retries): never in the JSON
    run_info: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        """No layer over tolerance over the data, and every threshold held."""
        return not self.failures

    @property
    def output(self) -> dict[str, Any] | None:
        """The first output of class scores (agreement, accuracies), or None."""
        return self.outputs[0] if self.outputs else None

    def layer(self, name: str) -> dict[str, Any]:
        from ..errors import MappingError, closest

        for x in self.layers:
            if x["a_name"] == name:
                return x
        raise MappingError(f"no compared layer {name!r} in this evaluation.{closest(name, [x['a_name'] for x in self.layers])}")

    def summary(self) -> str:
        """One line: the verdict, agreement and accuracies."""
        head = "✓ PARITY" if self.ok else "✗ DIVERGES"
        if self.first_divergence:
            head += f" at {self.first_divergence} (over the data)"
        parts = [f"{self.samples} samples"]
        out = self.output
        if out is not None and out["top1_agreement"] is not None:
            parts.append(f"top-1 agreement {100 * out['top1_agreement']:.2f}%")
            acc = out["accuracy"]
            if acc is not None:
                parts.append(f"accuracy A {100 * acc['a']:.2f}% / B {100 * acc['b']:.2f}% (McNemar p={acc['mcnemar_p']:.3g})")
        text = f"{head}: " + ", ".join(parts)
        if self.partial:
            text += " [partial: interrupted]"
        if self.failures and not self.first_divergence:
            text += "; " + "; ".join(self.failures)
        return text

    # --- building -------------------------------------------------------------------------

    @classmethod
    def build(cls, stats: Stats, *, model_a: dict[str, str], model_b: dict[str, str], data: str,
              batch_size: int | None, layers_mode: str, tolerance: str, partial: bool = False,
              notes: tuple[str, ...] = (), min_agreement: float | None = None,
              max_accuracy_drop: float | None = None, models: tuple[Any, Any] = (None, None),
              diff_options: dict[str, Any] | None = None) -> "Evaluation":
        layers = tuple(x.summary() for x in stats.layers)
        outputs = tuple(o.summary() for o in stats.outputs)
        first = next((x for x in layers if not x["ok"]), None)
        failures = []
        if first is not None:
            failures.append(
                f"{first['a_name']} ({first['op']}) is over tolerance over the data: relative error "
                f"{_fmt(first['rel_err'])} (rtol {first['rtol']:g}), {first['over_tolerance']} of {first['samples']} "
                "samples over tolerance")
        out = outputs[0] if outputs else None
        if min_agreement is not None and out is not None and out["top1_agreement"] is not None \
                and out["top1_agreement"] < min_agreement:
            failures.append(f"top-1 agreement {100 * out['top1_agreement']:.2f}% is below min_agreement "
                            f"{100 * min_agreement:.2f}%")
        if max_accuracy_drop is not None and out is not None and out["accuracy"] is not None:
            drop = out["accuracy"]["a"] - out["accuracy"]["b"]
            if drop > max_accuracy_drop:
                failures.append(f"B's accuracy is {100 * drop:.2f} points below A's, more than max_accuracy_drop "
                                f"{100 * max_accuracy_drop:.2f}")
        if stats.samples == 0:
            failures.append("no samples were compared")

        evaluation = cls(
            model_a=model_a, model_b=model_b, data=data, batch_size=batch_size, samples=stats.samples,
            batches=stats.batches, layers_mode=layers_mode, tolerance=tolerance, layers=layers, outputs=outputs,
            worst=(), disagreements=(), first_divergence=first["a_name"] if first else None,
            failures=tuple(failures), partial=partial, notes=notes,
            thresholds={"min_agreement": min_agreement, "max_accuracy_drop": max_accuracy_drop},
            models=models, diff_options=dict(diff_options or {}),
        )

        def kept(s: Sample) -> WorstSample:
            return WorstSample(s.index, s.error, s.top1_a, s.top1_b, s.label, s.inputs, evaluation)

        object.__setattr__(evaluation, "worst", tuple(kept(s) for s in stats.keeper.worst))
        object.__setattr__(evaluation, "disagreements", tuple(kept(s) for s in stats.keeper.disagreements))
        return evaluation

    # --- JSON -----------------------------------------------------------------------------

    def as_dict(self, samples_dir: str | None = None) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "version": SCHEMA_VERSION,
            "ok": self.ok, "partial": self.partial, "summary": self.summary(),
            "models": {"a": self.model_a, "b": self.model_b},
            "data": {"source": self.data, "samples": self.samples, "batches": self.batches,
                     "batch_size": self.batch_size},
            "layers_mode": self.layers_mode, "tolerance": self.tolerance,
            "thresholds": self.thresholds,
            "first_divergence": self.first_divergence,
            "failures": list(self.failures),
            "outputs": list(self.outputs),
            "layers": list(self.layers),
            "worst": [w.as_dict() for w in self.worst],
            "disagreements": [w.as_dict() for w in self.disagreements],
            "samples_dir": samples_dir,
            "histogram_edges": list(HIST_EDGES),
            "notes": list(self.notes),
        }

    def to_json_text(self, samples_dir: str | None = None) -> str:
        return json.dumps(self.as_dict(samples_dir), indent=1, ensure_ascii=False) + "\n"

    def to_json(self, path: str | Path, *, samples: bool = True) -> Path:
        """Write the JSON to ``path``; with ``samples`` the kept samples' inputs go beside it as
        ``<stem>-samples/sample-<index>.npy`` (``.npz`` for several inputs)."""
        path = Path(path)
        samples_dir = None
        if samples and any(w.inputs is not None for w in self.worst + self.disagreements):
            folder = path.parent / f"{path.stem}-samples"
            self.save_samples(folder)
            samples_dir = folder.name
        return write_text(path, self.to_json_text(samples_dir))

    def save_samples(self, folder: str | Path) -> list[Path]:
        """Each kept sample's inputs (A's layout, a batch of one) as ``sample-<index>.npy``, or
        ``.npz`` by input name / position for several inputs."""
        from ..errors import OutputError

        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(folder, exc) from exc
        paths = []
        seen = set()
        for w in self.worst + self.disagreements:
            if w.inputs is None or w.index in seen:
                continue
            seen.add(w.index)
            paths.append(_save_sample(folder, w.index, w.inputs))
        return paths

    # --- rendering ------------------------------------------------------------------------

    def __rich_console__(self, console: Any, options: Any):
        from .report import render_console

        yield from render_console(self)

    def render_text(self, width: int = 120) -> str:
        from rich.console import Console

        buf = io.StringIO()
        Console(file=buf, width=width, color_system=None).print(self)
        return buf.getvalue()

    def failure_text(self, width: int = 120) -> str:
        """What a failing ``pytest --parity`` pair shows."""
        return self.render_text(width)

    def to_html(self, path: str | Path) -> Path:
        from .report import render_html

        return write_text(path, render_html(self))


def _save_sample(folder: Path, index: int, inputs: Any) -> Path:
    if isinstance(inputs, dict):
        path = folder / f"sample-{index:06d}.npz"
        np.savez(path, **inputs)
    elif len(inputs) == 1:
        path = folder / f"sample-{index:06d}.npy"
        np.save(path, inputs[0])
    else:
        path = folder / f"sample-{index:06d}.npz"
        np.savez(path, **{f"input{i}": v for i, v in enumerate(inputs)})
    return path


def _npz_inputs(path: Path) -> Any:
    """A saved sample of several inputs: by name, or by position when saved as input0, input1, …"""
    with np.load(path) as z:
        named = {k: z[k] for k in z.files}
    positional = [f"input{i}" for i in range(len(named))]
    return [named[k] for k in positional] if sorted(named) == sorted(positional) else named


def _fmt(x: Any) -> str:
    return x if isinstance(x, str) else f"{x:.3g}"


def is_evaluation(path: str | Path) -> bool:
    """Whether ``path`` holds a saved evaluation (its schema says so), not a diff report."""
    try:
        with open(path, "rb") as f:
            head = f.read(200)
    except OSError:
        return False
    return f'"schema": "{SCHEMA}"'.encode() in head  # bytes: a file that is no text is no evaluation either


def load_evaluation(path: str | Path) -> Evaluation:
    """An evaluation saved with ``to_json``, with its kept samples' inputs when their directory
    is beside it (``worst[i].diff(a, b)`` then needs only the models)."""
    from ..errors import ReportFormatError

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportFormatError(f"{str(path)!r} is not a readable JSON evaluation ({exc}).") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ReportFormatError(f"{str(path)!r} is not a parity evaluation (schema {SCHEMA!r}).")
    folder = path.parent / data["samples_dir"] if data.get("samples_dir") else None
    th = data.get("thresholds") or {}
    evaluation = Evaluation(
        model_a=data["models"]["a"], model_b=data["models"]["b"], data=data["data"]["source"],
        batch_size=data["data"]["batch_size"], samples=data["data"]["samples"], batches=data["data"]["batches"],
        layers_mode=data["layers_mode"], tolerance=data["tolerance"], layers=tuple(data["layers"]),
        outputs=tuple(data["outputs"]), worst=(), disagreements=(), first_divergence=data["first_divergence"],
        failures=tuple(data["failures"]), partial=data["partial"], notes=tuple(data["notes"]), thresholds=th,
    )

    def kept(d: dict[str, Any]) -> WorstSample:
        inputs = None
        if folder is not None:
            for suffix in (".npy", ".npz"):
                f = folder / f"sample-{d['index']:06d}{suffix}"
                if f.is_file():
                    inputs = [np.load(f)] if suffix == ".npy" else _npz_inputs(f)
        return WorstSample(d["index"], float(d["error"]), d["top1_a"], d["top1_b"], d["label"], inputs, evaluation)

    object.__setattr__(evaluation, "worst", tuple(kept(d) for d in data["worst"]))
    object.__setattr__(evaluation, "disagreements", tuple(kept(d) for d in data["disagreements"]))
    return evaluation
