""":func:`evaluate`: two models over a dataset, on the local engine or on Ray.

The driver reads the data (:mod:`.data`), loads both models, makes the plan on the first batch
(:mod:`.engine`), then counts every batch — itself (``engine="local"``) or through Ray workers
(:mod:`.ray_engine`) — merging the statistics of each batch in batch order.  A progress bar
with samples/s and the time left shows on a terminal only; Ctrl-C stops the run with what was
counted (``partial``); ``checkpoint=`` writes the merged statistics every ``checkpoint_every``
batches and ``resume=`` continues from such a file.
"""

from __future__ import annotations

import json
import math
import os
from itertools import chain, takewhile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from ..errors import DataError, ModelNotShippable, OptionError
from .data import Batch, Source, as_source
from .engine import Plan, Runner, build_plan, select_layers
from .result import Evaluation
from .stats import Stats

__all__ = ["evaluate", "ENGINES"]

ENGINES = ("local", "ray")
CHECKPOINT_SCHEMA = "parity.evaluation.checkpoint"


def evaluate(
    a: Any,
    b: Any,
    data: Any,
    *,
    labels: Any = None,
    layers: Any = "all",
    engine: str = "local",
    batch_size: int = 32,
    mapping: Mapping[str, str] | str | Path | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    tolerances: Any = None,
    input_map: Mapping[str, str] | None = None,
    top_k: int = 5,
    worst: int = 8,
    max_disagreements: int = 64,
    min_agreement: float | None = None,
    max_accuracy_drop: float | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 20,
    resume: str | Path | None = None,
    workers: int = 2,
    shard_batches: int = 4,
    progress: bool | None = None,
    trust: bool = False,
    base_dir: str | Path | None = None,
    max_batches: int | None = None,
) -> Evaluation:
    """Compare models ``a`` and ``b`` over a whole dataset: agreement, both accuracies against
    ``labels`` with a paired interval and an exact McNemar test, per-layer error distributions,
    the dataset-level first divergence and the worst samples (each diffable layer by layer).

    ``data`` (inputs in model A's layout, converted for B as :func:`parity.diff` converts them):
    an array or a dict of arrays, ``(x, y)``, a ``.npy``/``.npz`` file or a directory of them
    (memory-mapped), an iterable of batches (arrays, lists, dicts, ``(x, y)``), a torch
    DataLoader, a tf.data.Dataset or a Ray Dataset; see :mod:`parity.evaluation.data`.
    ``labels``: one integer class per sample (an array or a ``.npy``), unless the data carries
    them.  ``layers``: ``"all"`` (default), ``"outputs"`` (fastest: both models run plainly) or
    layer-name globs.  ``engine="ray"`` shards the batches over ``workers`` Ray actors (the
    models must then be paths or ``"package.module:factory"`` specs).  ``min_agreement`` and
    ``max_accuracy_drop`` (fractions) make :attr:`Evaluation.ok` false when not met.

    >>> result = parity.evaluate(torch_model, keras_model, (x_val, y_val))   # doctest: +SKIP
    >>> result.output["accuracy"]["mcnemar_p"], result.first_divergence       # doctest: +SKIP
    (0.0002, 'layer1.1')
    >>> result.worst[0].diff()                                                 # doctest: +SKIP
    """
    from ..capture import backend_for
    from ..loading import load_mapping, load_model
    from ..tolerance import Tolerances

    if engine not in ENGINES:
        raise OptionError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}.")
    for name, value in (("min_agreement", min_agreement), ("max_accuracy_drop", max_accuracy_drop)):
        if value is not None and not (isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0):
            raise OptionError(f"{name} is a fraction in [0, 1], got {value!r}.")
    for name, value in (("top_k", top_k), ("worst", worst), ("checkpoint_every", checkpoint_every),
                        ("workers", workers), ("shard_batches", shard_batches)):
        if not isinstance(value, int) or value < 1:
            raise OptionError(f"{name} must be a positive integer, got {value!r}.")
    kind, _ = select_layers(layers)
    tol = tolerances if isinstance(tolerances, Tolerances) else Tolerances.build(rtol=rtol, atol=atol, overrides=tolerances)
    source = as_source(data, labels, batch_size)  # a bad dataset is refused before any model loads
    if engine == "ray":
        for side, spec in (("A", a), ("B", b)):
            shippable(spec, side)
    if isinstance(mapping, (str, Path)):
        mapping = load_mapping(mapping, base_dir)
    model_a, model_b = load_model(a, base_dir, trust=trust), load_model(b, base_dir, trust=trust)
    backend_a, backend_b = backend_for(model_a), backend_for(model_b)

    state = read_checkpoint(resume) if resume is not None else None
    start = int(state["next_batch"]) if state else 0
    stream = source.batches(0)
    first = next(stream, None)
    if first is None:
        raise DataError(f"{source.describe()} yielded no batches; give at least one batch of samples.")
    plan = build_plan(backend_a, backend_b, first, layers=layers, mapping=mapping, tolerances=tol,
                      input_map=input_map, top_k=top_k, worst=worst, max_disagreements=max_disagreements)
    fingerprint = _fingerprint(plan, source, backend_a, backend_b, batch_size)
    if state is not None:
        if state["fingerprint"] != fingerprint:
            raise DataError(
                f"checkpoint {str(resume)!r} was written for another run ({_what_differs(state['fingerprint'], fingerprint)}); "
                "resume with the same models, data, batch size and layers, or start afresh without --resume."
            )
        total = Stats.from_state(state["stats"], read_samples(Path(resume)))
    else:
        total = plan.empty_stats()
    saver = _Checkpointer(checkpoint, checkpoint_every, fingerprint) if checkpoint is not None else None

    batches: Iterator[Batch] = (
        source.batches(start) if source.random_access and start > 0 else chain([first], stream))
    if start and not source.random_access:
        batches = (x for x in batches if x.index >= start)
    if max_batches is not None:
        limit = max_batches
        batches = takewhile(lambda x: x.index < limit, batches)
    nb = source.num_batches if source.random_access else None
    total_batches = min(nb, max_batches) if nb is not None and max_batches is not None else nb
    bar = _Bar(source.length, total.samples, progress)
    partial = False
    notes: list[str] = []
    run_info: dict[str, Any] = {"engine": engine, "workers": workers if engine == "ray" else 1}
    t0 = _now()
    try:
        if engine == "local":
            runner = Runner(backend_a, backend_b, plan)
            for batch in batches:
                total.merge(runner.process(batch))
                bar.advance(total.samples)
                if saver is not None:
                    saver.maybe(total, batch.index + 1)
        else:
            from .ray_engine import run_on_ray

            specs = (_absolute(a, base_dir), _absolute(b, base_dir))

            def merged(stats: Stats, next_batch: int) -> None:
                bar.advance(stats.samples)
                if saver is not None:
                    saver.maybe(stats, next_batch)

            total = run_on_ray(specs, plan, source, batches, total, start=start, total_batches=total_batches,
                               workers=workers, shard_batches=shard_batches, trust=trust, base_dir=base_dir,
                               on_merged=merged, log=run_info)
    except KeyboardInterrupt:
        partial = True
        notes.append(f"interrupted after {total.batches} batches ({total.samples} samples): these statistics are "
                     "partial" + (f"; resume with --resume {checkpoint}" if checkpoint else ""))
    finally:
        bar.close()
    run_info["seconds"] = _now() - t0
    if saver is not None:
        saver.write(total, total.batches)  # batches are merged in order from 0: the next one to count
    if source.length is not None and not partial and max_batches is None and total.samples != source.length:
        raise DataError(f"{source.describe()} declared {source.length} samples but yielded {total.samples}.")
    if plan.unmatched:
        notes.append(f"{len(plan.unmatched)} layer(s) of A not compared: {', '.join(plan.unmatched[:8])}"
                     + (", …" if len(plan.unmatched) > 8 else ""))
    result = Evaluation.build(
        total, model_a=_info(backend_a), model_b=_info(backend_b), data=source.describe(),
        batch_size=batch_size if source.random_access else None, layers_mode=kind if kind != "globs" else str(layers),
        tolerance=tol.describe(), partial=partial, notes=tuple(notes), min_agreement=min_agreement,
        max_accuracy_drop=max_accuracy_drop, models=(model_a, model_b),
        diff_options={"mapping": mapping, "tolerances": tol, "input_map": input_map},
    )
    object.__setattr__(result, "run_info", run_info)  # how it ran: off the record (not in the JSON)
    return result


def shippable(spec: Any, side: str) -> None:
    """Refuse a live model for an engine whose workers load the models themselves."""
    if isinstance(spec, (str, os.PathLike)) or (isinstance(spec, Mapping) and "path" in spec):
        return
    raise ModelNotShippable(
        f"model {side} is a live {type(spec).__module__}.{type(spec).__qualname__}, and engine='ray' loads the "
        "models in each worker: pass a saved model's path (e.g. 'model.pt2', 'model.keras', 'model.onnx') or a "
        "'package.module:factory' spec that builds it, importable on the workers — or use engine='local'."
    )


def _absolute(spec: Any, base_dir: Any) -> Any:
    """A relative path made absolute for workers that run elsewhere (a spec stays as it is)."""
    if isinstance(spec, (str, os.PathLike)):
        p = Path(base_dir or ".") / Path(spec)
        if p.exists():
            return str(p.resolve())
    return spec


def _info(backend: Any) -> dict[str, str]:
    info = backend.info()
    return {"name": info.name, "framework": info.framework}


def _fingerprint(plan: Plan, source: Source, backend_a: Any, backend_b: Any, batch_size: int) -> dict[str, Any]:
    return {
        "models": [_info(backend_a), _info(backend_b)],
        "data": source.describe(), "batch_size": batch_size, "mode": plan.mode,
        "layers": [f"{p.a_name}={p.b_name}" for p in plan.pairs],
    }


def _what_differs(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in new if old.get(k) != new[k]]
    return "; ".join(f"{k}: {old.get(k)!r} then, {new[k]!r} now" for k in keys) or "its fingerprint differs"


# --- checkpoints ---------------------------------------------------------------------------


class _Checkpointer:
    def __init__(self, path: str | Path, every: int, fingerprint: dict[str, Any]) -> None:
        self.path, self.every, self.fingerprint = Path(path), every, fingerprint
        self.written_at = -1

    def maybe(self, total: Stats, next_batch: int) -> None:
        if next_batch // self.every != max(self.written_at, 0) // self.every:
            self.write(total, next_batch)

    def write(self, total: Stats, next_batch: int) -> None:
        write_checkpoint(self.path, total, next_batch, self.fingerprint)
        self.written_at = next_batch


def write_checkpoint(path: Path, total: Stats, next_batch: int, fingerprint: dict[str, Any]) -> None:
    """The merged statistics as JSON (sums as exact integers), the kept samples' inputs beside
    it (``<path>.samples.npz``); both replaced atomically."""
    from ..errors import OutputError

    body = {"schema": CHECKPOINT_SCHEMA, "version": 1, "next_batch": next_batch, "fingerprint": fingerprint,
            "stats": total.state()}
    arrays: dict[str, np.ndarray] = {}
    for s in total.keeper.worst + total.keeper.disagreements:
        if s.inputs is None:
            continue
        items = s.inputs.items() if isinstance(s.inputs, dict) else ((str(i), v) for i, v in enumerate(s.inputs))
        for key, v in items:
            arrays[f"{s.index}|{'d' if isinstance(s.inputs, dict) else 'p'}|{key}"] = v
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(body), encoding="utf-8")
        tmp_npz = path.with_name(path.name + ".samples.tmp.npz")
        np.savez(tmp_npz, **arrays)
        os.replace(tmp_npz, _samples_path(path))
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(path, exc) from exc


def _samples_path(path: Path) -> Path:
    return path.with_name(path.name + ".samples.npz")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {str(path)!r} does not exist; give a file written by checkpoint= / --checkpoint.")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"checkpoint {str(path)!r} is not readable JSON ({exc}).") from exc
    if not isinstance(state, dict) or state.get("schema") != CHECKPOINT_SCHEMA:
        raise DataError(f"{str(path)!r} is not a parity evaluation checkpoint (schema {CHECKPOINT_SCHEMA!r}).")
    return state


def read_samples(path: Path) -> dict[int, Any]:
    f = _samples_path(path)
    if not f.is_file():
        return {}
    out: dict[int, Any] = {}
    with np.load(f) as z:
        for key in z.files:
            index, kind, name = key.split("|", 2)
            slot = out.setdefault(int(index), {} if kind == "d" else [])
            if kind == "d":
                slot[name] = z[key]
            else:
                slot.append((int(name), z[key]))
    return {i: (v if isinstance(v, dict) else [x for _, x in sorted(v)]) for i, v in out.items()}


# --- progress ------------------------------------------------------------------------------


class _Bar:
    """samples/s and the time left, on an interactive terminal only (see :mod:`parity.progress`)."""

    def __init__(self, length: int | None, done: int, wanted: bool | None) -> None:
        from ..progress import shows_progress

        self.progress: Any = None
        self.task: Any = None
        if not (shows_progress() if wanted is None else wanted):
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.progress = Progress(
            TextColumn("[bold]parity evaluate[/]"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[rate]} samples/s"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(stderr=True), transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("samples", total=length, completed=done, rate="–")
        self.started, self.first = _now(), done

    def advance(self, samples: int) -> None:
        if self.progress is None:
            return
        elapsed = max(_now() - self.started, 1e-9)
        rate = (samples - self.first) / elapsed
        self.progress.update(self.task, completed=samples, rate=f"{rate:.0f}" if math.isfinite(rate) else "–")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _now() -> float:
    import time

    return time.perf_counter()


Callback = Callable[[Stats, int], Any]
