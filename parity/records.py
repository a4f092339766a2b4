"""The records that flow through parity's pipeline.

capture -> :class:`Trace` (of :class:`Tap`) -> align -> :class:`Alignment`
(of :class:`Match`) -> compare -> :class:`LayerDiff` (with :class:`Metrics`)
-> :class:`Report`.

Records are frozen dataclasses that know NumPy and nothing of torch or
TensorFlow, so every stage can be tested with hand-made records and a saved
report can be re-rendered without the models.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol

import numpy as np

__all__ = [
    "Tap",
    "Trace",
    "ModelInfo",
    "InputSpec",
    "Transform",
    "Match",
    "Unmatched",
    "Alignment",
    "Metrics",
    "LayerDiff",
    "LayerDetail",
    "ErrorMap",
    "Histogram",
    "Diagnosis",
    "ParamDiff",
    "InputsSummary",
    "UnmatchedLayer",
    "QuantVerdict",
    "QuantSummary",
    "Report",
    "ReportRenderer",
    "set_report_renderer",
    "tolerance_ratio",
    "REPORT_RECORDS",
    "Reference",
    "Suggestion",
    "ShapeConflict",
    "min_rtol",
]


@dataclass(frozen=True)
class InputSpec:
    """One input a model declares: its name, shape (``None`` = any size), dtype, layout."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"
    layout: str | None = None
    #: "declared" (the model says so) or "inferred" (guessed from the first layer)
    source: str = "declared"
    #: whether the model cannot run without it (a functional model's input) or may be left out
    #: (transformers' ``attention_mask``, ``token_type_ids``)
    required: bool = True


@dataclass(frozen=True)
class ModelInfo:
    """What a report says about one side of the pair."""

    framework: str  # "torch", "keras", ...
    framework_version: str
    name: str  # the model's class or given name
    kind: str  # "nn.Module", "keras Sequential", "keras functional", "keras subclassed", ...
    param_count: int | None = None
    input_spec: tuple[InputSpec, ...] | None = None
    #: the torch model was in training mode when handed in (parity ran it in eval())
    was_training: bool = False


@dataclass(frozen=True, eq=False)
class Tap:
    """One recorded tensor.

    ``name`` is the framework's own (a torch module path ``layer1.0.conv1``, a
    Keras layer name), with ``#k`` appended for the k-th repeated call and
    ``[i]`` / ``[key]`` for elements of tuple/list/dict outputs.  ``layout``
    is ``"NCHW"``, ``"NHWC"``, ``"NC"``, ``"NCL"``, ``"NLC"``, ``"NCDHW"``,
    ``"NDHWC"``, a flattened layout ``"N(CHW)"`` / ``"N(HWC)"`` (then
    ``attrs["flat_from"]`` holds the per-sample shape before flattening, in
    that order), or ``None`` when unknown.
    """

    name: str
    op: str
    index: int
    shape: tuple[int, ...]
    dtype: str
    layout: str | None
    value: np.ndarray | None = field(default=None, repr=False)
    #: "layer" (a leaf layer), "container" (a module/model holding layers), "output" (a model output)
    role: str = "layer"
    #: op attributes worth knowing later (epsilon, data_format, flat_from, stride, ...)
    attrs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass(frozen=True, eq=False)
class Trace:
    """The taps of one run of one model, in execution order."""

    taps: tuple[Tap, ...]
    model: ModelInfo
    #: the inputs exactly as this model received them (its own layout)
    input_shapes: tuple[tuple[int, ...], ...] = ()
    inputs_digest: str = ""
    notes: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Tap]:
        return iter(self.taps)

    def __len__(self) -> int:
        return len(self.taps)

    def __getitem__(self, name: str) -> Tap:
        for tap in self.taps:
            if tap.name == name:
                return tap
        from .errors import MappingError, closest

        raise MappingError(
            f"{self.model.name} ({self.model.framework}) has no recorded tensor named {name!r}."
            + closest(name, self.names, label="Closest names")
        )

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.taps]

    @property
    def outputs(self) -> tuple[Tap, ...]:
        return tuple(t for t in self.taps if t.role == "output")

    @property
    def layers(self) -> tuple[Tap, ...]:
        return tuple(t for t in self.taps if t.role != "output")


@dataclass(frozen=True)
class Transform:
    """How a tensor of model B is brought into model A's layout.

    ``kind`` is ``"identity"``, ``"permute"`` (``perm`` as for ``np.transpose``),
    ``"reshape"`` (shapes that differ by size-1 axes only: ``(N, C, 1, 1)`` vs
    ``(N, C)``) or ``"reflatten"`` (a flattened tensor whose per-sample elements are in a
    different order: B is reshaped to ``(N, *flat_from)``, permuted by ``perm``
    and flattened again).  ``ambiguous`` is true when the shapes alone admit
    another transform too (e.g. ``(N, 16, 16, 16)``); the one used came from
    the layouts the backends declared.
    """

    kind: str = "identity"
    perm: tuple[int, ...] | None = None
    flat_from: tuple[int, ...] | None = None
    label: str = "identity"
    #: model A's shape, for ``"reshape"``
    target_shape: tuple[int, ...] | None = None
    ambiguous: bool = False

    def apply(self, b: np.ndarray) -> np.ndarray:
        if self.kind == "identity":
            return b
        if self.kind == "permute":
            assert self.perm is not None
            return np.transpose(b, self.perm)
        if self.kind == "reshape":
            assert self.target_shape is not None
            return b.reshape(self.target_shape)
        if self.kind == "reflatten":
            assert self.perm is not None and self.flat_from is not None
            n = b.shape[0]
            return np.transpose(b.reshape((n, *self.flat_from)), self.perm).reshape(b.shape)
        raise ValueError(f"unknown transform kind {self.kind!r}")

    def output_shape(self, shape_b: tuple[int, ...]) -> tuple[int, ...]:
        if self.kind == "permute":
            assert self.perm is not None
            return tuple(shape_b[i] for i in self.perm)
        if self.kind == "reshape" and self.target_shape is not None:
            return tuple(self.target_shape)
        return tuple(shape_b)


IDENTITY = Transform()


@dataclass(frozen=True, eq=False)
class Match:
    """Two taps matched as the same tensor, and why."""

    a: Tap
    b: Tap
    transform: Transform
    #: "mapping" | "output" | "name" | "scope" | "value" | "order" | "split" (B's tensors joined: q + k + v)
    how: str
    #: how sure the pairing is, 0–1 (see :mod:`parity.align`)
    confidence: float = 1.0


@dataclass(frozen=True, eq=False)
class Unmatched:
    """A tap left without a counterpart, and why."""

    tap: Tap
    side: str  # "a" | "b"
    #: "one-sided" (an op that exists on one side only: Flatten, Dropout, ...), "placeholder" (an
    #: identity at inference: timm's DropPath), "fused" (folded by the converter into a tensor of B
    #: that was compared), "unsure: <why>" (a pairing the values contradict: not compared) or
    #: "no-match"; a report's :class:`UnmatchedLayer` may also say "inside" (computed inside one
    #: layer of the other model, which records no tensor there: B's step inside a layer of A, or
    #: A's layer that B computes inside one of its own)
    reason: str


@dataclass(frozen=True, eq=False)
class Alignment:
    matches: tuple[Match, ...]
    unmatched: tuple[Unmatched, ...] = ()

    @property
    def unmatched_a(self) -> tuple[Unmatched, ...]:
        return tuple(u for u in self.unmatched if u.side == "a")

    @property
    def unmatched_b(self) -> tuple[Unmatched, ...]:
        return tuple(u for u in self.unmatched if u.side == "b")


@dataclass(frozen=True)
class Metrics:
    """How far model B's tensor is from model A's, computed in float64.

    ``rel_err`` is ``‖b−a‖₂ / ‖a‖₂`` over the elements finite on both sides
    (0 when both norms are 0, ``inf`` when only ``a`` is all zeros).
    ``max_abs_index`` is in model A's layout.  ``mismatched`` counts elements
    with ``|b−a| > atol + rtol·|a|`` plus elements finite on one side only.
    ``argmax_agreement`` is the fraction of rows whose argmax agrees, for 2-D
    tensors (logits) only.
    """

    numel: int
    rel_err: float
    #: ‖b−a‖₂ over the elements finite on both sides
    err_norm: float
    max_abs: float
    max_abs_index: tuple[int, ...] | None
    mean_abs: float
    cosine: float
    mismatched: int
    norm_a: float
    norm_b: float
    rms_a: float
    nan_a: int = 0
    nan_b: int = 0
    inf_a: int = 0
    inf_b: int = 0
    #: elements that are NaN/Inf on one side and not identically so on the other
    nonfinite_mismatch: int = 0
    argmax_agreement: float | None = None


@dataclass(frozen=True)
class Diagnosis:
    """A named cause of a divergence, with the numbers that support it."""

    code: str
    layer: str
    message: str
    evidence: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ErrorMap:
    """Mean ``|b−a|`` over the spatial axes of one layer, in model A's layout.

    ``values`` is a grid of at most ``MAX_MAP`` rows and columns (block
    averages when the tensor is larger); ``rows``/``cols`` are the tensor's own
    height and width.  A padding bug shows as a bright last row or column.
    ``border`` holds the mean error of the first/last row/column and of the
    interior, so the pattern is a number too.
    """

    rows: int
    cols: int
    values: tuple[tuple[float, ...], ...]
    border: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Histogram:
    """Both tensors' values counted in the same bins (``len(edges) == len(counts) + 1``)."""

    edges: tuple[float, ...]
    counts_a: tuple[int, ...]
    counts_b: tuple[int, ...]
    #: values outside ``edges`` (beyond the 0.1/99.9 percentiles), per side
    outside_a: int = 0
    outside_b: int = 0


@dataclass(frozen=True)
class LayerDetail:
    """What the HTML report draws for a flagged layer, small enough to keep in the JSON."""

    histogram: Histogram
    error_map: ErrorMap | None = None


@dataclass(frozen=True)
class LayerDiff:
    """The comparison of one matched pair, in model A's terms."""

    index: int  # position in model A's execution order
    a_name: str
    b_name: str
    op: str  # model A's op type
    b_op: str
    shape: tuple[int, ...]  # model A's shape
    b_shape: tuple[int, ...]
    dtype: str
    transform: str  # Transform.label
    ambiguous: bool
    how: str
    metrics: Metrics
    rtol: float
    atol: float
    ok: bool
    #: why the verdict is a failure, one short sentence each
    reasons: tuple[str, ...] = ()
    role: str = "layer"
    diagnoses: tuple[Diagnosis, ...] = ()
    #: heat map and histograms, kept for the first flagged layers only
    detail: LayerDetail | None = None
    #: the layer's own error: B's layer fed A's recorded input ("replay"), or the growth of
    #: the error over this layer's input error ("growth") where replay is impossible
    own_err: float | None = None
    own_method: str | None = None
    #: this layer's relative error in the baseline pair, and the ratio rel_err / baseline_err
    baseline_err: float | None = None
    drift: float | None = None
    #: how sure the pairing of the two tensors is, 0–1 (see :mod:`parity.align`)
    confidence: float | None = None
    #: with a float64 reference (:mod:`parity.reference`): how far the reference side's float32
    #: tensor is from its float64 twin's (the noise floor), and how far the judged side is from
    #: the float64 tensor; the verdict is then ``ref_err ≤ rtol`` (rtol = k·noise + floor, atol 0)
    noise: float | None = None
    ref_err: float | None = None
    #: a quantized layer of B judged in steps of its output scale (:mod:`parity.quantsteps`):
    #: its verdict replaces the float tolerance's in ``ok``
    quant: QuantVerdict | None = None

    @property
    def rel_err(self) -> float:
        return self.metrics.rel_err

    @property
    def tolerance_ratio(self) -> float:
        """``‖b−a‖₂`` over the allowed ``atol·√n + rtol·‖a‖₂`` (with a float64 reference, the
        reference error over the error allowed it): at most 1 passes."""
        if self.ref_err is not None:
            if self.ref_err == 0:
                return 0.0
            return float(self.ref_err / self.rtol) if self.rtol > 0 else math.inf
        return tolerance_ratio(self.metrics, self.rtol, self.atol)

    @property
    def noise_ratio(self) -> float | None:
        """The reference error in units of the noise floor ("× noise"); None without a float64
        reading, inf over a zero noise floor."""
        if self.ref_err is None or self.noise is None:
            return None
        if self.noise == 0:
            return 0.0 if self.ref_err == 0 else math.inf
        return float(self.ref_err / self.noise)

    @property
    def allowed_rel(self) -> float:
        """The relative error the tolerance allows this layer (``atol`` folded in)."""
        m = self.metrics
        if m.norm_a == 0:
            return float("inf")
        return float(self.rtol + self.atol * np.sqrt(max(m.numel, 1)) / m.norm_a)

    @property
    def own_ok(self) -> bool | None:
        """Whether the layer's own error is within tolerance (None when not computed); for a
        quantized layer judged in steps, whether it is within the limit alone."""
        if self.quant is not None and self.quant.local is not None:
            return bool(self.quant.local <= self.quant.limit)
        if self.own_err is None:
            return None
        return bool(self.own_err <= self.allowed_rel)


def min_rtol(m: Metrics, atol: float) -> float:
    """The smallest rtol at which ``m`` passes ``rms(b−a) ≤ atol + rtol·rms(a)`` with this atol
    (0 when atol alone passes it; inf when ‖a‖ is 0 and atol does not)."""
    if math.isnan(m.rel_err):
        return math.inf
    spare = m.err_norm - atol * math.sqrt(max(m.numel, 1))
    if spare <= 0 or m.rel_err == 0:
        return 0.0
    if m.norm_a == 0:
        return math.inf
    if m.norm_a > 1.0:  # the scaled sums' rel_err: nothing overflows where the norms are past range
        return max(0.0, float(m.rel_err - atol * math.sqrt(max(m.numel, 1)) / m.norm_a))
    return float(spare / m.norm_a)


def tolerance_ratio(m: Metrics, rtol: float, atol: float) -> float:
    """The norm error over the norm error the tolerance allows.

    This is ``allclose`` carried over to norms: ``rms(b−a) ≤ atol + rtol·rms(a)``.
    The ``rtol`` part makes it scale-free, the ``atol`` part keeps an all-zero
    tensor (a dead ReLU) comparable.
    """
    if m.err_norm == 0 and m.rel_err == 0:
        return 0.0
    root_n = math.sqrt(max(m.numel, 1))
    if m.norm_a > 1.0:
        # (‖b−a‖/‖a‖) / (rtol + atol·√n/‖a‖): nothing overflows, even where the norms are past
        # float64's range (inf) — rel_err comes from the scaled sums
        allowed_rel = rtol + atol * root_n / m.norm_a
        ratio = m.rel_err / allowed_rel if allowed_rel > 0 else math.inf
    else:  # a small ‖a‖ (down to 5e-324, whose rel_err overflows): the allowed error itself
        allowed = atol * root_n + rtol * m.norm_a
        ratio = m.err_norm / allowed if allowed > 0 else math.inf
    return math.inf if math.isnan(ratio) else float(ratio)


@dataclass(frozen=True)
class Param:
    """One parameter of a layer, read from a live model as NumPy in the canonical layout
    (PyTorch's: conv ``(O, I/g, *k)``, dense ``(out, in)``, depthwise ``(C·M, 1, *k)``)."""

    #: the framework's own name ("weight", "moving_variance", ...)
    name: str
    value: np.ndarray
    #: the framework's dtype name (a bfloat16 parameter is read as float32 but says bfloat16)
    dtype: str
    #: the shape as the framework stores it
    raw_shape: tuple[int, ...]


@dataclass(frozen=True)
class LayerParams:
    """The parameters of one layer, by role, as a backend reads them (see
    :meth:`parity.capture.base.Backend.layer_params`): what weight parity and the detectors get
    instead of the live layer."""

    #: "torch" | "keras"
    framework: str
    #: conv, depthwise, convtranspose, dense, batchnorm, norm, embedding, generic
    kind: str
    #: the layer's class name
    cls: str
    #: by role (kernel, bias, gamma, beta, mean, var, embeddings), or by own name for "generic"
    params: Mapping[str, Param]
    #: what else the layer declares that the detectors read (epsilon, activation, units, ...)
    attrs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParamDiff:
    """One parameter of an aligned layer, compared under the layout transform the pair implies."""

    a_layer: str
    b_layer: str
    #: the parameter's name on each side ("weight" / "kernel", "running_var" / "moving_variance", ...)
    a_param: str
    b_param: str
    #: "ok", "differs", "transposed", "swapped", "missing", "shape"
    status: str
    rel_err: float | None = None
    message: str = ""


@dataclass(frozen=True)
class InputsSummary:
    """What the two models were fed."""

    shapes_a: tuple[tuple[int, ...], ...]
    shapes_b: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    #: how A's inputs were converted for B, one label per input ("identity", "NCHW→NHWC")
    conversions: tuple[str, ...]
    #: "given" or "generated (seed 0)"
    source: str
    digest: str = ""
    #: how each of A's inputs was bound to B's: "input_ids → token_ids (by evidence: …)"
    bindings: tuple[str, ...] = ()


@dataclass(frozen=True)
class UnmatchedLayer:
    """A layer of one side that has no counterpart, as a report keeps it (no values)."""

    side: str
    name: str
    op: str
    shape: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class ShapeConflict:
    """A layer of A and one of B that carry the same name (or are the models' outputs in the same
    place) with shapes no layout transform reconciles: the models compute different tensors there."""

    a_name: str
    b_name: str
    a_op: str
    b_op: str
    a_shape: tuple[int, ...]
    #: B's shape, its axes in A's layout where both layouts are known
    b_shape: tuple[int, ...]
    b_layout: str | None
    #: a model output: the report fails
    output: bool
    code: str  # "pool_ceil_mode" | "shape_mismatch"
    message: str


@dataclass(frozen=True)
class QuantVerdict:
    """A quantized tensor of B against A's float one, in steps of its quantization scale
    (RMSE / scale; rounding alone gives 1/√12 ≈ 0.29), see :mod:`parity.quantsteps`."""

    #: the output scale (per tensor; for a per-channel scale, their mean) and zero point
    scale: float
    zero_point: int
    #: "int8", "uint8", ...
    dtype: str
    #: the axis of a per-channel scale in B's layout, None for one scale per tensor
    axis: int | None
    #: where the parameters were read: "tensor" (TFLite), "DequantizeLinear", "QuantizeLinear", "DEQUANTIZE"
    via: str
    #: B's dequantized output against A's, in steps
    cumulative: float
    #: the layer alone, in steps (None when not measurable: ``local_note`` says why)
    local: float | None
    #: how ``local`` was measured, or why it could not be
    local_note: str
    #: the figure judged (``local`` where measured, else ``cumulative``) and the limit it is held to
    steps: float
    limit: float
    ok: bool
    #: share of elements where B sits at its integer range's limit while A is past it by a step
    clipped: float
    #: what to name in the converter's selective-quantization option to keep this layer float
    #: (a TFLite tensor name; ONNX node names: the layer's, and for a clipped range its readers')
    exclude: tuple[str, ...]
    #: the cumulative steps of B's input of this layer, where that input is a quantized pair too
    input_steps: float | None = None
    #: how B's layer's weights are quantized, where it has int weights: one scale per output
    #: channel or per tensor, and the largest |q − zero point| each output channel reaches
    weight_per_channel: bool | None = None
    weight_levels: tuple[int, ...] = ()

    @property
    def born_here(self) -> bool:
        """Whether the layer's error is its own: flagged on an input within the limit (a layer
        fed an input already off was calibrated for other values: it inherits)."""
        return not self.ok and (self.input_steps is None or self.input_steps <= self.limit)


@dataclass(frozen=True)
class QuantSummary:
    """A quantized B's layers judged in steps, and the deny-list for its converter."""

    #: "tflite" or "onnxruntime"
    converter: str
    #: the layers of B judged in steps, and the limit in steps each is held to
    layers: int
    limit: float
    #: the names to keep in float, worst first (TFLite tensor names / ONNX node names)
    exclude: tuple[str, ...] = ()
    #: the converter's option, ready to paste
    option: str = ""


SCHEMA_VERSION = 2


class ReportRenderer(Protocol):
    """What turns a :class:`Report` into text, a page or JSON.

    The records are the bottom layer: :mod:`parity.report` depends on them, never the other
    way round, so a Report's rendering methods go through the renderer that
    :mod:`parity.report` installs with :func:`set_report_renderer` when it is imported
    (``import parity`` imports it)."""

    def rich(self, report: Report, console: Any, options: Any) -> Iterator[Any]: ...
    def summary(self, report: Report) -> str: ...
    def text(self, report: Report) -> str: ...
    def to_dict(self, report: Report) -> dict: ...
    def to_json(self, report: Report, path: Any) -> str: ...
    def to_html(self, report: Report, path: Any) -> str: ...
    def compact_html(self, report: Report) -> str: ...
    def to_model_explorer(self, report: Report, path: Any, *, side: str, graph_id: str) -> dict: ...


_renderer: ReportRenderer | None = None


def set_report_renderer(renderer: ReportRenderer) -> None:
    """Make ``renderer`` render every :class:`Report` (``parity.report`` does this on import)."""
    global _renderer
    _renderer = renderer


def _rendering() -> ReportRenderer:
    if _renderer is None:
        raise RuntimeError(
            "no renderer is installed for parity reports; importing parity (or parity.report) installs it"
        )
    return _renderer


@dataclass(frozen=True)
class Reference:
    """What judged the layers beyond the per-dtype table: a float64 twin's run (:mod:`parity.reference`)."""

    kind: str  # "float64"
    side: str  # "a" or "b": whose float64 twin ran
    factor: float  # k: a layer may be k × its noise floor …
    floor: float  # … plus this relative error
    judged: int  # layers judged by it (the others by the dtype table)
    #: why some layers (or all) were judged by the dtype table instead
    note: str | None = None


@dataclass(frozen=True)
class Suggestion:
    """The tightest tolerance the pair passes at (Polygraphy's "minimum required tolerance"):
    a global ``rtol`` (with ``atol``) for the layers the dtype table judges, rounded up to two
    significant digits, and the noise factor for those a float64 reference judges."""

    rtol: float | None
    atol: float | None
    #: the layer that sets ``rtol``
    rtol_layer: str | None
    factor: float | None
    factor_layer: str | None
    #: flagged layers no tolerance makes pass (an argmax or NaN/Inf pattern that differs)
    unfixable: tuple[str, ...] = ()


@dataclass(frozen=True)
class Report:
    """The answer to "do these two models compute the same thing?".

    ``layers`` are in model A's execution order; ``first_divergence`` is the
    earliest of them over tolerance (``None`` when all pass).  A report renders
    itself in a terminal (``rich.print(report)``) and saves as JSON
    (:meth:`to_json`).
    """

    a: ModelInfo
    b: ModelInfo
    layers: tuple[LayerDiff, ...]
    unmatched: tuple[UnmatchedLayer, ...]
    inputs: InputsSummary
    rtol: float | None  # the global override given, None when per-dtype defaults applied
    atol: float | None
    notes: tuple[str, ...] = ()
    diagnoses: tuple[Diagnosis, ...] = ()
    #: versions of what computed the report: python, numpy, parity, the frameworks
    environment: Mapping[str, str] = field(default_factory=dict)
    #: parameters of aligned layers compared before any activation (weight parity)
    params: tuple[ParamDiff, ...] = ()
    #: a float64 reference, when one judged (None: the per-dtype tolerance table judged every layer)
    reference: Reference | None = None
    #: the tightest tolerance this pair passes at
    suggestion: Suggestion | None = None
    #: layers (and model outputs) whose shapes differ between the two models
    conflicts: tuple[ShapeConflict, ...] = ()
    #: a quantized B judged by its quantization step: the deny-list for its converter
    quant: QuantSummary | None = None
    #: the ``parity diff`` arguments that rerun this comparison (files as absolute paths; never
    #: ``--trust``): what ``parity repro REPORT`` runs; empty when the models were live objects
    command: tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        """Every compared layer within tolerance, and no model output of another shape."""
        return bool(self.layers) and all(d.ok for d in self.layers) and not any(c.output for c in self.conflicts)

    @property
    def first_divergence(self) -> LayerDiff | None:
        """The guilty layer: the earliest over tolerance whose *own* error (replayed, or
        estimated from the error growth) is over tolerance too; where no own error says so,
        the earliest over tolerance."""
        flagged = [d for d in self.layers if not d.ok]
        guilty = next((d for d in flagged if d.own_ok is False), None)
        return guilty or (flagged[0] if flagged else None)

    @property
    def born_here(self) -> tuple[LayerDiff, ...]:
        """Every layer where an error is born: the first divergence, then each later flagged
        layer whose error is its own — B's layer, fed A's recorded input of it, is still over
        tolerance (a second, independent bug) — not one inherited from the layers before.
        Only a replayed own error counts here: the growth estimate cannot tell a new error from
        an inherited one that a layer amplifies."""
        first = self.first_divergence
        if first is None:
            return ()
        later = [d for d in self.layers if not d.ok and d.role != "output" and d.index > first.index
                 and d.own_method == "replay" and d.own_ok is False]
        return (first, *later)

    @property
    def outputs(self) -> tuple[LayerDiff, ...]:
        return tuple(d for d in self.layers if d.role == "output")

    @property
    def unmatched_a(self) -> tuple[UnmatchedLayer, ...]:
        return tuple(u for u in self.unmatched if u.side == "a")

    @property
    def unmatched_b(self) -> tuple[UnmatchedLayer, ...]:
        return tuple(u for u in self.unmatched if u.side == "b")

    @property
    def coverage(self) -> tuple[int, int]:
        """``(compared, total)`` layers of model A (model outputs not counted)."""
        compared = sum(1 for d in self.layers if d.role != "output")
        return compared, compared + len(self.unmatched_a)

    def layer(self, a_name: str) -> LayerDiff:
        """The LayerDiff of model A's layer ``a_name``."""
        for d in self.layers:
            if d.a_name == a_name:
                return d
        from .errors import MappingError, closest

        hint = closest(a_name, [d.a_name for d in self.layers])
        raise MappingError(f"the report has no compared layer {a_name!r} of model A.{hint}")

    def __rich_console__(self, console, options):  # pragma: no cover - exercised via rich
        yield from _rendering().rich(self, console, options)

    def summary(self) -> str:
        """The one-line verdict."""
        return _rendering().summary(self)

    def to_dict(self) -> dict:
        return _rendering().to_dict(self)

    def save_repro(self, out, layer: str | None = None):
        """Write a repro bundle of ``layer`` (default: the first divergence) to the directory
        ``out``: its recorded input, both outputs, each model's layer alone and a ``repro.py``
        that reruns them (:mod:`parity.repro`).  Needs the report of a live :func:`parity.diff`
        in this process; returns the directory."""
        from .repro import save_repro

        first = self.first_divergence
        return save_repro(self.__dict__.get("_repro_sources"), out, layer, first.a_name if first else None)

    def to_json(self, path=None) -> str:
        """The report as versioned JSON; written to ``path`` when given."""
        return _rendering().to_json(self, path)

    def to_html(self, path=None) -> str:
        """A self-contained HTML page (works offline); written to ``path`` when given."""
        return _rendering().to_html(self, path)

    def _repr_html_(self) -> str:
        return _rendering().compact_html(self)

    def to_model_explorer(self, path, *, side: str = "b", graph_id: str = "main") -> dict:
        """Per-node error data that Model Explorer overlays on one model's graph; see :mod:`parity.report.explorer`."""
        return _rendering().to_model_explorer(self, path, side=side, graph_id=graph_id)

    def __str__(self) -> str:
        return _rendering().text(self)


#: the records a saved report is made of, the report first (JSON decoding and the JSON Schema)
REPORT_RECORDS: tuple[type, ...] = (
    Report, ModelInfo, InputSpec, InputsSummary, LayerDiff, Metrics, LayerDetail, ErrorMap, Histogram, Diagnosis,
    UnmatchedLayer, ParamDiff, Reference, Suggestion, ShapeConflict, QuantVerdict, QuantSummary,
)
