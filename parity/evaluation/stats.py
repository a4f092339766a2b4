"""Statistics over a dataset that merge exactly, in memory independent of its size.

Each batch adds, per compared layer, a few numbers per sample (the norm-relative error, the
cosine, the largest absolute difference, whether the sample is over tolerance) into sums,
maxima and a log-binned histogram; per model output of classes, counts of agreement and of
correct answers.  Sums are :class:`~parity.evaluation.exact.ExactSum` and maxima break ties
by the lower sample index, so merging shards in any grouping gives the same result, bit for
bit: the local engine and Ray write the same JSON for the same batches.

The paired tests on the outputs (:func:`mcnemar_exact`, :func:`paired_difference_interval`)
are written here with the standard library: exact binomial sums on integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .exact import ExactSum

__all__ = [
    "HIST_EDGES", "LayerStats", "OutputStats", "Sample", "WorstKeeper", "Stats",
    "mcnemar_exact", "paired_difference_interval", "histogram_percentile", "per_sample_errors", "json_number",
]

#: per-sample relative error histogram: bin 0 is [0, 1e-12), bin i (1 ≤ i ≤ 280) is
#: [10**(-12 + (i-1)/20), 10**(-12 + i/20)), the last bin [100, inf]
_DECADES = (-12, 2)
_PER_DECADE = 20
HIST_EDGES: tuple[float, ...] = tuple(
    10.0 ** (_DECADES[0] + i / _PER_DECADE) for i in range((_DECADES[1] - _DECADES[0]) * _PER_DECADE + 1)
)
_NBINS = len(HIST_EDGES) + 1
_EDGES = np.asarray(HIST_EDGES)


def _bins(values: np.ndarray) -> np.ndarray:
    """The histogram bin of each value (NaN and Inf in the last bin)."""
    v = np.where(np.isfinite(values), values, np.inf)
    return np.searchsorted(_EDGES, v, side="right")


def histogram_percentile(counts: np.ndarray, q: float, maximum: float) -> float:
    """The ``q``-quantile (0–1) read off the histogram: the geometric middle of the bin that
    holds the sample of rank round(q·(n−1)), capped at the exact ``maximum``; NaN when empty."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    if n == 0:
        return math.nan
    rank = int(round(q * (n - 1)))
    i = int(np.searchsorted(np.cumsum(counts), rank, side="right"))
    if i == 0:
        value = HIST_EDGES[0] / 2 if maximum > 0 else 0.0
    elif i >= len(HIST_EDGES):
        value = maximum
    else:
        value = math.sqrt(HIST_EDGES[i - 1] * HIST_EDGES[i])
    return min(value, maximum)


def per_sample_errors(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """Per sample (axis 0) of A's tensor ``a`` and B's ``b`` (already in A's layout), in
    float64: ``err_ssq`` = Σ(b−a)², ``a_ssq`` = Σa², ``b_ssq``, ``dot`` = Σa·b, ``max_abs``
    and ``finite`` (both sides finite everywhere)."""
    n = a.shape[0]
    a64 = np.asarray(a, dtype=np.float64).reshape(n, -1)
    b64 = np.asarray(b, dtype=np.float64).reshape(n, -1)
    finite = np.isfinite(a64).all(axis=1) & np.isfinite(b64).all(axis=1)
    if not finite.all():
        a64 = np.where(np.isfinite(a64), a64, 0.0)
        b64 = np.where(np.isfinite(b64), b64, 0.0)
    d = b64 - a64
    return {
        "err_ssq": np.einsum("ij,ij->i", d, d),
        "a_ssq": np.einsum("ij,ij->i", a64, a64),
        "b_ssq": np.einsum("ij,ij->i", b64, b64),
        "dot": np.einsum("ij,ij->i", a64, b64),
        "max_abs": np.abs(d).max(axis=1) if d.shape[1] else np.zeros(n),
        "finite": finite,
    }


def _relative(err_ssq: np.ndarray, a_ssq: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.sqrt(err_ssq) / np.sqrt(a_ssq)
    return np.where(a_ssq > 0, rel, np.where(err_ssq > 0, np.inf, 0.0))


def _cosine(dot: np.ndarray, a_ssq: np.ndarray, b_ssq: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = dot / np.sqrt(a_ssq * b_ssq)
    both_zero = (a_ssq == 0) & (b_ssq == 0)
    return np.where(a_ssq * b_ssq > 0, cos, np.where(both_zero, 1.0, 0.0))


def _take_max(cur: float, cur_at: int, values: np.ndarray, start: int) -> tuple[float, int]:
    """The larger of (cur, cur_at) and the batch's maximum; ties go to the lower sample index."""
    if not values.size:
        return cur, cur_at
    i = int(np.argmax(values))  # the first of equal maxima
    v = float(values[i])
    if v > cur or (v == cur and (cur_at < 0 or start + i < cur_at)):
        return v, start + i
    return cur, cur_at


def _merge_max(x: tuple[float, int], y: tuple[float, int]) -> tuple[float, int]:
    if y[1] < 0:
        return x
    if x[1] < 0 or y[0] > x[0] or (y[0] == x[0] and y[1] < x[1]):
        return y
    return x


@dataclass
class LayerStats:
    """One compared pair of layers over the samples seen so far."""

    a_name: str
    b_name: str
    op: str
    b_op: str
    role: str
    transform: str
    rtol: float
    atol: float
    count: int = 0
    numel: int = 0
    sum_rel: ExactSum = field(default_factory=ExactSum)
    sum_cos: ExactSum = field(default_factory=ExactSum)
    err_ssq: ExactSum = field(default_factory=ExactSum)
    a_ssq: ExactSum = field(default_factory=ExactSum)
    max_abs: float = 0.0
    max_abs_sample: int = -1
    max_rel: float = 0.0
    max_rel_sample: int = -1
    over: int = 0
    nonfinite: int = 0
    #: samples whose relative error is finite (those sum_rel holds; A all zeros and B not: inf)
    rel_count: int = 0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(_NBINS, dtype=np.int64))

    def add(self, a: np.ndarray, b: np.ndarray, start: int) -> np.ndarray:
        """Add a batch (A's tensor and B's in A's layout, samples ``start``…); returns each
        sample's relative error (inf for a sample with NaN or Inf)."""
        e = per_sample_errors(a, b)
        n = a.shape[0]
        per = int(np.prod(a.shape[1:], dtype=np.int64))
        # a sample whose sums overflow float64 is counted as non-finite, like one holding NaN or Inf
        fin = e["finite"] & np.isfinite(e["err_ssq"]) & np.isfinite(e["a_ssq"]) & np.isfinite(e["b_ssq"])
        rel = np.where(fin, _relative(e["err_ssq"], e["a_ssq"]), np.inf)
        cos = _cosine(e["dot"], e["a_ssq"], e["b_ssq"])
        ok_rel = np.isfinite(rel)
        self.count += n
        self.numel += n * per
        self.sum_rel.add(rel[ok_rel])
        self.rel_count += int(np.count_nonzero(ok_rel))
        self.sum_cos.add(cos[fin])
        self.err_ssq.add(e["err_ssq"][fin])
        self.a_ssq.add(e["a_ssq"][fin])
        self.max_abs, self.max_abs_sample = _take_max(self.max_abs, self.max_abs_sample, e["max_abs"], start)
        self.max_rel, self.max_rel_sample = _take_max(self.max_rel, self.max_rel_sample, rel, start)
        # the sample's own verdict, as diff judges a layer: rms(b−a) ≤ atol + rtol·rms(a)
        over = np.sqrt(e["err_ssq"] / max(per, 1)) > self.atol + self.rtol * np.sqrt(e["a_ssq"] / max(per, 1))
        self.over += int(np.count_nonzero(over | ~fin))
        self.nonfinite += int(np.count_nonzero(~fin))
        np.add.at(self.hist, _bins(rel), 1)
        return rel

    def merge(self, other: "LayerStats") -> None:
        self.count += other.count
        self.numel += other.numel
        for name in ("sum_rel", "sum_cos", "err_ssq", "a_ssq"):
            getattr(self, name).merge(getattr(other, name))
        self.max_abs, self.max_abs_sample = _merge_max((self.max_abs, self.max_abs_sample),
                                                       (other.max_abs, other.max_abs_sample))
        self.max_rel, self.max_rel_sample = _merge_max((self.max_rel, self.max_rel_sample),
                                                       (other.max_rel, other.max_rel_sample))
        self.over += other.over
        self.nonfinite += other.nonfinite
        self.rel_count += other.rel_count
        self.hist = self.hist + other.hist

    def empty_copy(self) -> "LayerStats":
        return LayerStats(self.a_name, self.b_name, self.op, self.b_op, self.role, self.transform, self.rtol, self.atol)

    # --- what the reports show ------------------------------------------------------------

    @property
    def rel_err(self) -> float:
        """The dataset's norm-relative error ‖b−a‖/‖a‖ over every sample's elements."""
        a, e = self.a_ssq.value, self.err_ssq.value
        return math.sqrt(e) / math.sqrt(a) if a > 0 else (math.inf if e > 0 else 0.0)

    @property
    def ok(self) -> bool:
        """The layer over the whole dataset, judged as diff judges one batch (and no NaN/Inf)."""
        if self.nonfinite:
            return False
        n = max(self.numel, 1)
        return math.sqrt(self.err_ssq.value / n) <= self.atol + self.rtol * math.sqrt(self.a_ssq.value / n)

    def summary(self) -> dict[str, Any]:
        finite = self.count - self.nonfinite
        return {
            "a_name": self.a_name, "b_name": self.b_name, "op": self.op, "b_op": self.b_op, "role": self.role,
            "transform": self.transform, "rtol": self.rtol, "atol": self.atol,
            "samples": self.count,
            "ok": self.ok,
            "rel_err": json_number(self.rel_err),
            "mean_rel_err": json_number(self.sum_rel.value / self.rel_count) if self.rel_count else None,
            "mean_cosine": json_number(self.sum_cos.value / finite) if finite else None,
            "p50_rel_err": json_number(histogram_percentile(self.hist, 0.5, self.max_rel)),
            "p99_rel_err": json_number(histogram_percentile(self.hist, 0.99, self.max_rel)),
            "max_rel_err": json_number(self.max_rel), "max_rel_err_sample": self.max_rel_sample,
            "max_abs": json_number(self.max_abs), "max_abs_sample": self.max_abs_sample,
            "over_tolerance": self.over,
            "over_tolerance_share": self.over / self.count if self.count else 0.0,
            "nonfinite_samples": self.nonfinite,
            "histogram": [int(c) for c in self.hist],
        }

    def state(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("a_name", "b_name", "op", "b_op", "role", "transform", "rtol", "atol",
                                              "count", "numel", "max_abs", "max_abs_sample", "max_rel",
                                              "max_rel_sample", "over", "nonfinite", "rel_count")}
        out.update({k: getattr(self, k).state() for k in ("sum_rel", "sum_cos", "err_ssq", "a_ssq")})
        out["hist"] = [int(c) for c in self.hist]
        return out

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> "LayerStats":
        plain = {k: v for k, v in s.items() if k not in ("sum_rel", "sum_cos", "err_ssq", "a_ssq", "hist")}
        out = cls(**plain)
        for k in ("sum_rel", "sum_cos", "err_ssq", "a_ssq"):
            setattr(out, k, ExactSum.from_state(s[k]))
        out.hist = np.asarray(s["hist"], dtype=np.int64)
        return out


def json_number(x: float) -> float | str:
    """A float for JSON; Inf and NaN as strings (JSON has no such numbers)."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return float(x)


@dataclass
class OutputStats:
    """One model output of classes (2-D logits or probabilities) over the samples seen so far."""

    name: str
    classes: int
    k: int
    count: int = 0
    top1_agree: int = 0
    topk_agree: int = 0
    labeled: int = 0
    correct_a: int = 0
    correct_b: int = 0
    #: A right and B wrong / A wrong and B right: McNemar's discordant pairs
    a_only: int = 0
    b_only: int = 0
    #: disagreements counted by the true label (when labels are given) or by A's top-1 class
    by_class: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        if self.by_class.size != self.classes:
            self.by_class = np.zeros(self.classes, dtype=np.int64)

    def add(self, a: np.ndarray, b: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Add a batch of A's and B's outputs; returns (A's top-1, B's top-1, disagrees)."""
        top_a = np.argmax(a, axis=1)
        top_b = np.argmax(b, axis=1)
        # B's k best classes: argpartition then a check of A's top-1 among them
        kth = np.argpartition(-b, self.k - 1, axis=1)[:, : self.k] if self.k < self.classes else None
        in_topk = np.ones(len(a), dtype=bool) if kth is None else (kth == top_a[:, None]).any(axis=1)
        disagree = top_a != top_b
        self.count += len(a)
        self.top1_agree += int(np.count_nonzero(~disagree))
        self.topk_agree += int(np.count_nonzero(in_topk))
        keys = top_a
        if labels is not None:
            ra, rb = top_a == labels, top_b == labels
            self.labeled += len(a)
            self.correct_a += int(np.count_nonzero(ra))
            self.correct_b += int(np.count_nonzero(rb))
            self.a_only += int(np.count_nonzero(ra & ~rb))
            self.b_only += int(np.count_nonzero(~ra & rb))
            keys = labels
        np.add.at(self.by_class, np.clip(keys[disagree], 0, self.classes - 1).astype(np.int64), 1)
        return top_a, top_b, disagree

    def merge(self, other: "OutputStats") -> None:
        for k in ("count", "top1_agree", "topk_agree", "labeled", "correct_a", "correct_b", "a_only", "b_only"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.by_class = self.by_class + other.by_class

    def empty_copy(self) -> "OutputStats":
        return OutputStats(self.name, self.classes, self.k)

    def summary(self) -> dict[str, Any]:
        n = self.count
        out: dict[str, Any] = {
            "name": self.name, "classes": self.classes, "k": self.k, "samples": n,
            "top1_agreement": self.top1_agree / n if n else None,
            "topk_agreement": self.topk_agree / n if n else None,
            "disagreements": n - self.top1_agree,
            "disagreements_by_class": {str(c): int(v) for c, v in enumerate(self.by_class) if v},
            "by": "label" if self.labeled else "a_top1",
            "accuracy": None,
        }
        if self.labeled:
            m = self.labeled
            low, high = paired_difference_interval(self.a_only, self.b_only, m)
            out["accuracy"] = {
                "samples": m,
                "a": self.correct_a / m, "b": self.correct_b / m,
                "difference": (self.correct_b - self.correct_a) / m,
                "interval95": [low, high],
                "a_right_b_wrong": self.a_only, "a_wrong_b_right": self.b_only,
                "mcnemar_p": mcnemar_exact(self.a_only, self.b_only),
            }
        return out

    def state(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("name", "classes", "k", "count", "top1_agree", "topk_agree", "labeled",
                                              "correct_a", "correct_b", "a_only", "b_only")}
        out["by_class"] = [int(c) for c in self.by_class]
        return out

    @classmethod
    def from_state(cls, s: dict[str, Any]) -> "OutputStats":
        plain = {k: v for k, v in s.items() if k != "by_class"}
        return cls(**plain, by_class=np.asarray(s["by_class"], dtype=np.int64))


def mcnemar_exact(b: int, c: int) -> float:
    """The exact (binomial) two-sided McNemar p-value for ``b`` and ``c`` discordant pairs:
    2·P(X ≤ min(b, c)) for X ~ Binomial(b + c, ½), capped at 1; 1 when there are none.

    >>> round(mcnemar_exact(1, 9), 6)   # 2·(1 + 10) / 2**10
    0.021484
    """
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2 ** n)


def paired_difference_interval(a_only: int, b_only: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The 95% Wald interval of acc(B) − acc(A) for paired answers on ``n`` samples, from
    the discordant counts (A right only, B right only): d ± z·√((b+c − (c−b)²/n)) / n."""
    if n == 0:
        return (math.nan, math.nan)
    d = (b_only - a_only) / n
    var = max(a_only + b_only - (b_only - a_only) ** 2 / n, 0.0) / n ** 2
    half = z * math.sqrt(var)
    return (d - half, d + half)


@dataclass
class Sample:
    """One kept sample: its index in the data, what the models made of it, and its inputs
    (in model A's layout) so it can be diffed layer by layer later."""

    index: int
    error: float
    top1_a: int | None = None
    top1_b: int | None = None
    label: int | None = None
    inputs: Any = None  # list of arrays, or a dict by input name, one sample each (batch of 1)

    @property
    def disagrees(self) -> bool:
        return self.top1_a is not None and self.top1_a != self.top1_b


@dataclass
class WorstKeeper:
    """The ``n`` samples with the largest output error (ties: the lower index) and the first
    ``max_disagreements`` samples whose top-1 classes differ, by index."""

    n: int = 8
    max_disagreements: int = 64
    worst: list[Sample] = field(default_factory=list)
    disagreements: list[Sample] = field(default_factory=list)

    def offer(self, samples: list[Sample]) -> None:
        self.worst = sorted(self.worst + samples, key=_worst_key)[: self.n]
        picked = [s for s in samples if s.disagrees]
        self.disagreements = sorted(self.disagreements + picked, key=lambda s: s.index)[: self.max_disagreements]

    def would_keep(self, errors: np.ndarray) -> np.ndarray:
        """Which of a batch's samples could enter the worst list (to copy only those inputs)."""
        if len(self.worst) < self.n:
            return np.ones(len(errors), dtype=bool)
        floor = self.worst[-1].error
        return np.where(np.isnan(errors), True, errors >= floor)

    def merge(self, other: "WorstKeeper") -> None:
        self.worst = sorted(self.worst + other.worst, key=_worst_key)[: self.n]
        self.disagreements = sorted(self.disagreements + other.disagreements, key=lambda s: s.index)[
            : self.max_disagreements]


def _worst_key(s: Sample) -> tuple[float, int]:
    e = s.error
    return (-(math.inf if math.isnan(e) else e), s.index)


@dataclass
class Stats:
    """Everything a run has counted: one :class:`LayerStats` per compared pair (model A's
    order), one :class:`OutputStats` per output of classes, the kept samples."""

    layers: list[LayerStats]
    outputs: list[OutputStats]
    keeper: WorstKeeper
    samples: int = 0
    batches: int = 0

    def empty_copy(self) -> "Stats":
        return Stats([x.empty_copy() for x in self.layers], [o.empty_copy() for o in self.outputs],
                     WorstKeeper(self.keeper.n, self.keeper.max_disagreements))

    def merge(self, other: "Stats") -> "Stats":
        if [x.a_name for x in self.layers] != [x.a_name for x in other.layers]:
            raise ValueError("cannot merge statistics of different layer sets")
        for x, y in zip(self.layers, other.layers):
            x.merge(y)
        for o, p in zip(self.outputs, other.outputs):
            o.merge(p)
        self.keeper.merge(other.keeper)
        self.samples += other.samples
        self.batches += other.batches
        return self

    def state(self) -> dict[str, Any]:
        """Everything but the kept samples' inputs, as JSON-able data (a checkpoint)."""
        return {
            "samples": self.samples, "batches": self.batches,
            "layers": [x.state() for x in self.layers], "outputs": [o.state() for o in self.outputs],
            "keeper": {"n": self.keeper.n, "max_disagreements": self.keeper.max_disagreements,
                       "worst": [_sample_state(s) for s in self.keeper.worst],
                       "disagreements": [_sample_state(s) for s in self.keeper.disagreements]},
        }

    @classmethod
    def from_state(cls, s: dict[str, Any], inputs: dict[int, Any] | None = None) -> "Stats":
        inputs = inputs or {}
        k = s["keeper"]

        def sample(d: dict[str, Any]) -> Sample:
            return Sample(index=d["index"], error=float(d["error"]), top1_a=d["top1_a"], top1_b=d["top1_b"],
                          label=d["label"], inputs=inputs.get(d["index"]))

        keeper = WorstKeeper(k["n"], k["max_disagreements"], [sample(d) for d in k["worst"]],
                             [sample(d) for d in k["disagreements"]])
        return cls([LayerStats.from_state(x) for x in s["layers"]], [OutputStats.from_state(o) for o in s["outputs"]],
                   keeper, s["samples"], s["batches"])


def _sample_state(s: Sample) -> dict[str, Any]:
    return {"index": s.index, "error": s.error if math.isfinite(s.error) else str(s.error), "top1_a": s.top1_a,
            "top1_b": s.top1_b, "label": s.label}
