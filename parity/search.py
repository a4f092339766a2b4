"""Search for inputs on which two models part, with Hypothesis.

A pair that agrees on unit-range random inputs can still part on others: a
``ReLU`` converted as ``ReLU(max_value=6)`` agrees until an activation passes
6, a padding bug shows only where the border is not zero, a wrong
preprocessing constant only when the mean is not.  :func:`search` lets
Hypothesis look for such inputs, steering towards the largest tolerance ratio
(error ÷ allowed) over all layers, then shrinks what it found to a minimal
diverging input and saves it as ``.npy``:

>>> result = parity.search(torch_model, keras_model, max_examples=100)   # doctest: +SKIP
>>> result.found, result.report.first_divergence.a_name                # doctest: +SKIP
(True, 'features.3')
>>> parity.diff(torch_model, keras_model, np.load(result.path)).ok     # doctest: +SKIP
False

An input is built with NumPy from a few drawn numbers — an :class:`InputRecipe`
(pattern, log-uniform scale 1e-3…1e3, offset, per-channel offsets, spike
density, seed) — not element by element: generation stays fast and a shrunk
example reads as a sentence ("uniform values, scale 10, seed 0").
The same inputs serve property tests of one's own through
:func:`inputs_strategy`:

>>> @given(parity.search.inputs_strategy((2, 3, 32, 32)))                # doctest: +SKIP
... def test_converted_model(x):
...     parity.assert_parity(torch_model, keras_model, x)

``parity.search(a, b)`` is :func:`search`, a plain function; ``parity.search.inputs_strategy``,
``.recipes``, ``.InputRecipe``, ``.SearchResult`` and ``.PATTERNS`` are attributes of it, so
code written when ``parity.search`` was a module keeps working.
Hypothesis is imported when a search or a strategy is asked for, not before.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import InputError, ParityError
from .records import Report

__all__ = [
    "search",
    "SearchResult",
    "InputRecipe",
    "PATTERNS",
    "recipes",
    "inputs_strategy",
    "score",
]

#: the input patterns, simplest first (Hypothesis shrinks towards the front)
PATTERNS: tuple[str, ...] = ("uniform", "normal", "constant", "ramp", "checker", "border", "spikes")

#: the range of the log-uniform scale, as powers of ten
LOG_SCALE_RANGE = (-3.0, 3.0)
#: offsets (whole tensor, and the spread of per-channel offsets), in units of the scale
OFFSET_RANGE = (-4.0, 4.0)
CHANNEL_OFFSET_RANGE = (-2.0, 2.0)
#: fraction of non-zero elements of the "spikes" pattern
DENSITY_RANGE = (0.001, 0.2)

#: a ratio Hypothesis can target (it needs finite scores)
_MAX_SCORE = 1e300


# --- inputs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class InputRecipe:
    """The few numbers one input is built from (see :meth:`build`).

    ``x = 10**log_scale · (pattern + offset + channel_offset · z_c)`` with
    ``z_c`` one standard-normal number per channel, all drawn from ``seed``.
    Patterns: ``uniform`` ([0, 1)), ``normal``, ``constant`` (ones), ``ramp``
    (−1…1 across the spatial axes), ``checker`` (±1), ``border`` (uniform
    values on the first/last row and column, zeros inside), ``spikes`` (±1 at
    a fraction ``density`` of the elements, zeros elsewhere).
    """

    pattern: str = "uniform"
    log_scale: float = 0.0
    offset: float = 0.0
    channel_offset: float = 0.0
    density: float = 0.01
    seed: int = 0

    @property
    def scale(self) -> float:
        return float(10.0 ** self.log_scale)

    def build(self, shape: Sequence[int], layout: str | None = None, dtype: str = "float32") -> np.ndarray:
        """The array for ``shape`` in ``layout`` (``"NCHW"``, ``"NHWC"``, ``"NC"``, …; ``None``:
        channels at axis 1, spatial axes after it)."""
        shape = tuple(int(s) for s in shape)
        if not np.issubdtype(np.dtype(dtype), np.floating):
            raise InputError(f"parity.search builds floating-point inputs only, not {dtype}.")
        rng = np.random.default_rng(self.seed)
        channel, spatial = _axes(len(shape), layout)
        base = _pattern(self.pattern, shape, spatial, self.density, rng)
        x = base + self.offset
        if self.channel_offset and channel is not None:
            per = rng.standard_normal(shape[channel])
            view = [1] * len(shape)
            view[channel] = shape[channel]
            x = x + self.channel_offset * per.reshape(view)
        return np.ascontiguousarray((self.scale * x).astype(dtype))

    def describe(self) -> str:
        """``"uniform values, scale 10, offset +0.5×scale, seed 3"``."""
        parts = [f"{self.pattern} values" + (f" (density {self.density:.3g})" if self.pattern == "spikes" else ""),
                 f"scale {self.scale:.3g}"]
        if self.offset:
            parts.append(f"offset {self.offset:+.3g}×scale")
        if self.channel_offset:
            parts.append(f"per-channel offsets {self.channel_offset:+.3g}×scale×N(0,1)")
        parts.append(f"seed {self.seed}")
        return ", ".join(parts)


def _axes(rank: int, layout: str | None) -> tuple[int | None, tuple[int, ...]]:
    """The channel axis and the spatial axes of a tensor of ``rank`` in ``layout``."""
    if layout and len(layout) == rank and layout.isalpha():
        channel = layout.index("C") if "C" in layout else None
        spatial = tuple(i for i, c in enumerate(layout) if c in "DHWL")
        return channel, spatial
    if rank >= 3:
        return 1, tuple(range(2, rank))
    if rank == 2:
        return 1, (1,)
    return None, tuple(range(rank))


def _pattern(kind: str, shape: tuple[int, ...], spatial: tuple[int, ...], density: float,
             rng: np.random.Generator) -> np.ndarray:
    if kind == "uniform":
        return rng.random(shape)
    if kind == "normal":
        return rng.standard_normal(shape)
    if kind == "constant":
        return np.ones(shape)
    if kind == "ramp":
        out = np.zeros(shape)
        for weight, axis in zip((1.0, 0.5, 0.25), reversed(spatial)):
            view = [1] * len(shape)
            view[axis] = shape[axis]
            out = out + weight * np.linspace(-1.0, 1.0, shape[axis]).reshape(view)
        return out
    if kind == "checker":
        grids = np.indices(tuple(shape[a] for a in spatial)).sum(axis=0) if spatial else np.zeros(())
        view = [1] * len(shape)
        for a in spatial:
            view[a] = shape[a]
        return np.broadcast_to(np.where(grids % 2 == 0, 1.0, -1.0).reshape(view), shape).copy()
    if kind == "border":
        values = rng.random(shape)
        mask = np.zeros(shape, dtype=bool)
        for axis in spatial:
            index = [slice(None)] * len(shape)
            for end in (0, -1):
                index[axis] = end
                mask[tuple(index)] = True
        return np.where(mask, values, 0.0)
    if kind == "spikes":
        out = np.zeros(shape)
        hit = rng.random(shape) < density
        if not hit.any() and out.size:
            hit.flat[rng.integers(out.size)] = True
        out[hit] = rng.choice((-1.0, 1.0), size=int(hit.sum()))
        return out
    raise InputError(f"unknown input pattern {kind!r}; choose one of {', '.join(PATTERNS)}.")


def recipes(patterns: Sequence[str] | None = None, *, log_scale: tuple[float, float] = LOG_SCALE_RANGE) -> Any:
    """A Hypothesis strategy of :class:`InputRecipe` (the numbers behind :func:`inputs_strategy`)."""
    from hypothesis import strategies as st

    patterns = tuple(patterns or PATTERNS)
    unknown = [p for p in patterns if p not in PATTERNS]
    if unknown:
        raise InputError(f"unknown input pattern(s) {', '.join(map(repr, unknown))}; give patterns from "
                         f"{', '.join(PATTERNS)} (or none for all of them).")
    lo, hi = float(log_scale[0]), float(log_scale[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise InputError(f"log_scale must be a (low, high) pair of finite powers of ten with low ≤ high, "
                         f"e.g. (-3, 3); got {log_scale!r}.")

    def number(low: float, high: float, digits: int = 3) -> Any:
        # rounded, so that a recipe reads as a sentence (no offsets of 3.7e-269)
        return st.floats(low, high, allow_nan=False).map(lambda v: min(max(round(v, digits), low), high))

    return st.builds(
        InputRecipe,
        pattern=st.sampled_from(patterns),
        log_scale=number(lo, hi),
        offset=number(*OFFSET_RANGE),
        channel_offset=number(*CHANNEL_OFFSET_RANGE),
        density=number(*DENSITY_RANGE, digits=4),
        seed=st.integers(0, 2**32 - 1),
    )


def inputs_strategy(
    shape: Sequence[int],
    dtype: str = "float32",
    *,
    layout: str | None = None,
    patterns: Sequence[str] | None = None,
    log_scale: tuple[float, float] = LOG_SCALE_RANGE,
) -> Any:
    """A Hypothesis strategy of input arrays of ``shape`` — the inputs :func:`search` tries.

    ``layout`` names the axes (``"NCHW"``, ``"NHWC"``, ``"NC"``); by default
    channels are axis 1 and the axes after it are spatial.  ``patterns``
    restricts the patterns (see :data:`PATTERNS`), ``log_scale`` the range of
    the scale as powers of ten.

    >>> @given(parity.search.inputs_strategy((2, 3, 32, 32)))   # doctest: +SKIP
    ... def test_pair(x):
    ...     parity.assert_parity(torch_model, keras_model, x)
    """
    shape = tuple(int(s) for s in shape)
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise InputError(f"inputs_strategy makes floating-point inputs only, not {dtype}.")
    return recipes(patterns, log_scale=log_scale).map(lambda r: r.build(shape, layout, dtype))


# --- the search -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SearchResult:
    """What :func:`search` found.

    ``inputs`` are in model A's layout: the minimal diverging input when
    ``found``, else the input with the largest tolerance ratio seen; ``report``
    is the pair's report on them.  ``worst_ratio`` is the largest
    ``error ÷ allowed`` of any layer over all examples (above 1 fails).
    ``path`` is where the diverging input was saved (``None`` when nothing was
    found or ``save_to=None``).
    """

    found: bool
    inputs: Any
    report: Report
    examples: int
    path: Path | None
    worst_ratio: float
    recipe: Any = None  # the InputRecipe (a tuple of them for several inputs)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        """Two or three lines: the verdict, the input, where it was saved."""
        from .report.console import fmt_float

        how = _describe_recipe(self.recipe)
        shapes = ", ".join(str(s) for s in self.report.inputs.shapes_a)
        if self.found:
            d = self.report.first_divergence
            where = (
                f"{d.a_name} ({d.op} ↔ {d.b_op} {d.b_name}): rel err {fmt_float(d.rel_err)}, "
                f"{d.tolerance_ratio:.3g}× the tolerance"
                if d is not None else "no layer compared"
            )
            lines = [
                f"✗ FOUND diverging inputs after {self.examples} examples: first divergence at {where}",
                f"  minimal input {shapes}: {how}",
            ]
            if self.path is not None:
                lines.append(f"  saved to {self.path} — reproduce with parity.diff(a, b, np.load({str(self.path)!r}))")
        else:
            worst = max(self.report.layers, key=lambda x: x.tolerance_ratio, default=None)
            at = f" at {worst.a_name}" if worst is not None else ""
            lines = [
                f"✓ NOT FOUND: {self.examples} examples, every layer within tolerance; worst "
                f"{self.worst_ratio:.3g}× the tolerance{at}",
                f"  on input {shapes}: {how}",
            ]
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary() + "\n\n" + str(self.report)

    def __repr__(self) -> str:
        return (
            f"SearchResult(found={self.found}, examples={self.examples}, worst_ratio={self.worst_ratio:.3g}, "
            f"path={str(self.path) if self.path else None!r})"
        )

    def __rich_console__(self, console, options):  # pragma: no cover - exercised via rich
        from rich.text import Text

        yield Text(self.summary(), style="bold red" if self.found else "bold green")
        yield Text("")
        yield self.report


def _describe_recipe(recipe: Any) -> str:
    if recipe is None:
        return "given"
    if isinstance(recipe, InputRecipe):
        return recipe.describe()
    return "; ".join(f"input {i}: {r.describe()}" for i, r in enumerate(recipe))


def score(report: Report) -> float:
    """The largest tolerance ratio (error ÷ allowed) of any compared layer; what the search maximises."""
    ratios = [d.tolerance_ratio for d in report.layers]
    ratios = [r if r == r else math.inf for r in ratios]  # a NaN ratio is as bad as it gets
    return max(ratios, default=0.0)


@dataclass(frozen=True)
class _Slot:
    name: str | None
    shape: tuple[int, ...]
    layout: str | None
    dtype: str


class _Diverged(Exception):
    """Raised inside the Hypothesis test so that Hypothesis shrinks the recipe."""

    def __init__(self, key: Any) -> None:
        super().__init__("models diverge")
        self.key = key


def _slots(a: Any, b: Any, shape: Any, batch: int, granularity: str) -> list[_Slot]:
    from .capture import backend_for
    from .inputs import conventional_layout, random_inputs

    backend_a, backend_b = backend_for(a, granularity=granularity), backend_for(b, granularity=granularity)
    spec_a = backend_a.input_spec() or ()
    if shape is not None:
        if isinstance(shape, dict):
            named = [(str(k), v) for k, v in shape.items()]
        elif len(shape) and not isinstance(shape[0], (int, np.integer, type(None))):
            named = [(None, s) for s in shape]
        else:
            named = [(None, shape)]
        slots_in = []
        for i, (name, s) in enumerate(named):
            s = tuple(batch if (j == 0 and d is None) else d for j, d in enumerate(s))
            if any(d is None for d in s):
                raise InputError(f"shape= must be complete (None only for the batch axis), got {s}.")
            slots_in.append((name, tuple(int(d) for d in s), spec_a[i].dtype if i < len(spec_a) else "float32"))
    else:
        try:
            arrays = random_inputs(backend_a, backend_b, seed=0, batch=batch)
        except InputError as exc:
            raise InputError(
                f"parity.search needs the input shape: {exc} For a search, give it in model A's layout, "
                "e.g. parity.search(a, b, shape=(2, 3, 224, 224))."
            ) from exc
        items = list(arrays.items()) if isinstance(arrays, dict) else [(None, x) for x in arrays]
        slots_in = [(name, tuple(x.shape), str(x.dtype)) for name, x in items]
    slots = []
    for i, (name, s, dtype) in enumerate(slots_in):
        layout = spec_a[i].layout if i < len(spec_a) and spec_a[i].layout else conventional_layout(backend_a, len(s))
        if not np.issubdtype(np.dtype(dtype), np.floating):
            raise InputError(
                f"model A's input {name or i} is {dtype}: parity.search explores floating-point inputs "
                "only (it cannot guess valid token ids or indices)."
            )
        slots.append(_Slot(name=name, shape=s, layout=layout, dtype=dtype))
    return slots


def _pack(slots: list[_Slot], arrays: list[np.ndarray]) -> Any:
    if len(slots) == 1 and slots[0].name is None:
        return arrays[0]
    if all(s.name is not None for s in slots):
        return {s.name: x for s, x in zip(slots, arrays)}
    return list(arrays)


def _save(inputs: Any, report: Report, save_to: str | Path) -> Path:
    directory = Path(save_to)
    directory.mkdir(parents=True, exist_ok=True)
    slug = lambda s: re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "model"  # noqa: E731
    stem = f"{slug(report.a.name)}-vs-{slug(report.b.name)}-{report.inputs.digest or 'inputs'}"
    if isinstance(inputs, np.ndarray):
        path = directory / f"{stem}.npy"
        np.save(path, inputs)
    else:
        path = directory / f"{stem}.npz"
        items = inputs.items() if isinstance(inputs, dict) else ((f"input_{i}", x) for i, x in enumerate(inputs))
        np.savez(path, **dict(items))
    return path


def search(
    a: Any,
    b: Any,
    *,
    shape: Any = None,
    max_examples: int = 200,
    seed: int = 0,
    rtol: float | None = None,
    atol: float | None = None,
    save_to: str | Path | None = "reports/search",
    batch: int = 2,
    patterns: Sequence[str] | None = None,
    max_shrinks: int | None = None,
    trust: bool = False,
    **diff_options: Any,
) -> SearchResult:
    """Look for inputs on which ``a`` and ``b`` part, and shrink them to a minimal one.

    Each example builds an input from an :class:`InputRecipe` and runs
    :func:`parity.diff` on it (both models, every layer); Hypothesis targets
    the largest tolerance ratio over the layers, so it climbs towards a
    divergence, and shrinks the first diverging recipe it meets.

    ``shape`` is the input shape in model A's layout including the batch axis
    (a list or a dict by name for several inputs); by default it comes from
    the models' declared input spec with batch ``batch``.  ``max_examples``
    bounds the examples generated (each runs both models); shrinking runs at
    most ``max_shrinks`` (default ``max(max_examples, 100)``) more.  ``seed`` makes the
    search reproducible.  ``rtol``/``atol`` and ``diff_options`` (``mapping``,
    ``tolerances``, ``granularity``, …) go to :func:`parity.diff`.  A
    diverging input is saved as ``.npy`` (``.npz`` for several inputs) under
    ``save_to`` (``None``: not saved) and the path printed.  ``trust=True`` lets model files run
    code (:mod:`parity.trust`).

    >>> result = parity.search(torch_model, keras_model, max_examples=100)   # doctest: +SKIP
    >>> print(result.summary())                                              # doctest: +SKIP
    ✗ FOUND diverging inputs after 41 examples: first divergence at act (ReLU ↔ ReLU act): …
    """
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings, target
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    from .api import diff_with
    from .loading import load_model
    from .pipeline import DiffOptions

    options = DiffOptions.build(where="parity.search", rtol=rtol, atol=atol, **diff_options)  # refused before any run
    if max_examples < 1:
        raise InputError(f"max_examples must be at least 1 (the number of inputs to try); got {max_examples}.")
    a, b = load_model(a, trust=trust), load_model(b, trust=trust)
    slots = _slots(a, b, shape, batch, options.granularity)
    shrink_budget = max(max_examples, 100) if max_shrinks is None else int(max_shrinks)

    # every recipe run once: the report of the failing ones kept, so that Hypothesis's final
    # replay of the shrunk example (and repeats) cost nothing and stay consistent
    seen: dict[Any, tuple[float, bool]] = {}
    failing: dict[Any, Report] = {}
    state: dict[str, Any] = {"examples": 0, "after_failure": 0, "worst": None, "out_of_budget": False,
                             "shrinking": False}

    def build(key: tuple[InputRecipe, ...]) -> Any:
        return _pack(slots, [r.build(s.shape, s.layout, s.dtype) for r, s in zip(key, slots)])

    def evaluate(key: tuple[InputRecipe, ...]) -> tuple[float, bool]:
        inputs = build(key)  # rebuilt, not kept: a recipe is a few numbers, a batch of images is not
        report = diff_with(a, b, inputs, options)
        if not report.layers:
            raise ParityError(
                "parity.search: no layer of model A was matched in model B, so nothing can diverge. "
                + " ".join(report.notes)
            )
        state["examples"] += 1
        ratio = score(report)
        worst = state["worst"]
        if worst is None or ratio > worst[0]:
            state["worst"] = (ratio, key, report)
        if not report.ok:
            failing[key] = report
        return ratio, report.ok

    def probe(key: tuple[InputRecipe, ...]) -> None:
        if key not in seen:
            if failing_before_budget_spent():
                seen[key] = evaluate(key)
            else:
                state["out_of_budget"] = True
                return  # shrinking budget spent: Hypothesis sees a pass and stops shrinking soon
        ratio, ok = seen[key]
        target(min(ratio, _MAX_SCORE), label="worst tolerance ratio")
        if not ok:
            state["shrinking"] = True
            raise _Diverged(key)

    def failing_before_budget_spent() -> bool:
        if not state["shrinking"]:
            return True
        state["after_failure"] += 1
        return state["after_failure"] <= shrink_budget

    strategy = st.tuples(*[recipes(patterns) for _ in slots])
    run = settings(
        max_examples=max_examples,
        database=None,
        deadline=None,
        derandomize=False,
        report_multiple_bugs=False,
        phases=(Phase.generate, Phase.target, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
        print_blob=False,
    )(given(strategy)(probe))
    run = hypothesis_seed(seed)(run)

    # the plainest input first, outside Hypothesis: a pair that compares nothing fails here, once
    plain = tuple(InputRecipe() for _ in slots)
    seen[plain] = evaluate(plain)

    found_key = None
    try:
        run()
    except _Diverged as exc:
        found_key = exc.key
    if found_key is None and plain in failing:
        found_key = plain

    notes: list[str] = []
    if found_key is not None:
        inputs, report = build(found_key), failing[found_key]
        recipe: Any = found_key[0] if len(found_key) == 1 else found_key
        path = _save(inputs, report, save_to) if save_to is not None else None
        if state["out_of_budget"]:
            notes.append(f"shrinking stopped after {shrink_budget} more runs (max_shrinks); the input may shrink further")
        if path is not None:
            print(f"parity.search: the minimal diverging input ({_describe_recipe(recipe)}) is saved to {path}")
        return SearchResult(
            found=True, inputs=inputs, report=report, examples=state["examples"], path=path,
            worst_ratio=float(state["worst"][0]), recipe=recipe, notes=tuple(notes),
        )
    ratio, key, report = state["worst"]
    return SearchResult(
        found=False, inputs=build(key), report=report, examples=state["examples"], path=None,
        worst_ratio=float(ratio), recipe=key[0] if len(key) == 1 else key, notes=tuple(notes),
    )


# ``parity.search`` is this function; what was reached through the module stays reachable on it
search.inputs_strategy = inputs_strategy  # type: ignore[attr-defined]
search.recipes = recipes  # type: ignore[attr-defined]
search.InputRecipe = InputRecipe  # type: ignore[attr-defined]
search.SearchResult = SearchResult  # type: ignore[attr-defined]
search.PATTERNS = PATTERNS  # type: ignore[attr-defined]
search.score = score  # type: ignore[attr-defined]
