"""Tolerances: per-dtype defaults in one table, global and per-layer overrides.

A layer passes when ``rms(b−a) ≤ atol + rtol·rms(a)`` — ``allclose`` carried
over to norms.  ``rtol`` is therefore a norm-relative error (scale-free),
``atol`` an RMS error that keeps an all-zero tensor (a dead ReLU) comparable.

Why float32's rtol is 1e-3: correct float32 conversions measure 1e-8 … 1e-5
norm-relative error per layer, also at ResNet-50 depth (3e-6 measured through
51 convolutions); every known conversion bug with trained weights measures
≥ 1e-2 (BatchNorm epsilon 5e-2, flatten order, ReLU vs ReLU6, padding).  The
Keras-vs-torch BatchNorm epsilon with *untrained* statistics (var = 1)
measures 4.95e-4 — under the default, which is exactly why that bug hides
until the model is trained; parity's report still points at the jump.

The less precise of the two sides' dtypes picks the default (a float16 TFLite
model against a float32 torch model is judged as float16).  Giving only one
of ``rtol``/``atol`` is refused: the other would silently still apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Mapping

from .errors import ToleranceError

__all__ = ["DEFAULT_TOLERANCES", "Tolerances", "round_up", "suggest"]

#: (rtol, atol) per dtype; integers and booleans must match exactly
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-7, 1e-10),
    "float32": (1e-3, 1e-5),
    "float16": (1e-2, 1e-3),
    "bfloat16": (5e-2, 1e-2),
    "int": (0.0, 0.0),
    "bool": (0.0, 0.0),
}
# least precise first
_PRECISION = ("bool", "int", "bfloat16", "float16", "float32", "float64")


def _kind(dtype: str) -> str:
    dtype = dtype.lower()
    if dtype in DEFAULT_TOLERANCES:
        return dtype
    if dtype.startswith(("int", "uint")):
        return "int"
    if dtype.startswith("bool"):
        return "bool"
    return "float32"  # unknown names (e.g. "float8_e4m3") are judged as float32


def _check_pair(rtol: Any, atol: Any, where: str) -> tuple[float, float]:
    try:
        pair = (float(rtol), float(atol))
    except (TypeError, ValueError) as exc:
        raise ToleranceError(f"{where}: rtol and atol must be numbers, got {rtol!r} and {atol!r}.") from exc
    for name, value in zip(("rtol", "atol"), pair):
        if math.isnan(value) or value < 0:
            raise ToleranceError(f"{where}: {name} must be a non-negative number, got {value!r}.")
    return pair


@dataclass(frozen=True)
class Tolerances:
    """The tolerance of every layer: ``for_layer(name, dtype_a, dtype_b) -> (rtol, atol)``."""

    rtol: float | None = None
    atol: float | None = None
    #: (exact name or glob, (rtol, atol)) in the order given
    overrides: tuple[tuple[str, tuple[float, float]], ...] = ()
    min_argmax_agreement: float | None = None

    @classmethod
    def build(
        cls,
        rtol: float | None = None,
        atol: float | None = None,
        overrides: Mapping[str, Any] | None = None,
        min_argmax_agreement: float | None = None,
    ) -> "Tolerances":
        """Validate and build.

        >>> Tolerances.build(rtol=1e-4, atol=1e-6, overrides={"layer4.*": (1e-2, 1e-4)})  # doctest: +ELLIPSIS
        Tolerances(rtol=0.0001, atol=1e-06, overrides=(('layer4.*', (0.01, 0.0001)),), ...)
        """
        if (rtol is None) != (atol is None):
            given, missing = ("rtol", "atol") if atol is None else ("atol", "rtol")
            value = rtol if atol is None else atol
            raise ToleranceError(
                f"only {given}={value!r} was given; give {missing} too, or the default {missing} "
                f"would silently still apply. E.g. parity.diff(a, b, x, rtol=1e-4, atol=1e-6)."
            )
        if rtol is not None:
            rtol, atol = _check_pair(rtol, atol, "rtol/atol")
        pairs: list[tuple[str, tuple[float, float]]] = []
        for pattern, spec in (overrides or {}).items():
            where = f"tolerance override {pattern!r}"
            if isinstance(spec, Mapping):
                if set(spec) != {"rtol", "atol"}:
                    raise ToleranceError(
                        f"{where} must give both rtol and atol, got keys {sorted(spec)}; "
                        'e.g. {"rtol": 1e-2, "atol": 1e-4}.'
                    )
                pair = _check_pair(spec["rtol"], spec["atol"], where)
            elif isinstance(spec, (tuple, list)) and len(spec) == 2:
                pair = _check_pair(spec[0], spec[1], where)
            else:
                raise ToleranceError(
                    f"{where} must be a (rtol, atol) pair or a dict with both, got {spec!r}."
                )
            pairs.append((str(pattern), pair))
        if min_argmax_agreement is not None and not 0.0 <= float(min_argmax_agreement) <= 1.0:
            raise ToleranceError(
                f"min_argmax_agreement is a fraction of rows in [0, 1], got {min_argmax_agreement!r}."
            )
        return cls(rtol=rtol, atol=atol, overrides=tuple(pairs), min_argmax_agreement=min_argmax_agreement)

    def for_layer(self, a_name: str, dtype_a: str, dtype_b: str) -> tuple[float, float]:
        """Exact-name override, then the first matching glob, then the global pair, then the
        default of the less precise dtype."""
        pair = self.override_for(a_name)
        if pair is not None:
            return pair
        if self.rtol is not None and self.atol is not None:
            return self.rtol, self.atol
        kind = min((_kind(dtype_a), _kind(dtype_b)), key=_PRECISION.index)
        return DEFAULT_TOLERANCES[kind]

    def override_for(self, a_name: str) -> tuple[float, float] | None:
        """The per-layer override that applies to ``a_name`` (exact name, then glob), or None."""
        for pattern, pair in self.overrides:
            if pattern == a_name:
                return pair
        for pattern, pair in self.overrides:
            if fnmatchcase(a_name, pattern):
                return pair
        return None

    def describe(self) -> str:
        base = (
            f"rtol {self.rtol:g}, atol {self.atol:g} for every layer"
            if self.rtol is not None
            else "per-dtype defaults (float32: rtol 1e-3, atol 1e-5)"
        )
        if self.overrides:
            base += "; overrides: " + ", ".join(f"{p} → ({r:g}, {a:g})" for p, (r, a) in self.overrides)
        return base


def round_up(x: float, digits: int = 2) -> float:
    """``x`` rounded up to ``digits`` significant digits (``2.31e-4`` → ``2.4e-4``): the value
    passes what ``x`` passes, and one unit less in the last digit does not."""
    if not x > 0 or not math.isfinite(x):
        return x
    exp = math.floor(math.log10(x)) - (digits - 1)
    units = math.ceil(x / 10.0**exp)
    while units > 1 and float(f"{units - 1}e{exp}") >= x:  # the division rounded up one unit
        units -= 1
    while float(f"{units}e{exp}") < x:  # ... or down
        units += 1
    return float(f"{units}e{exp}")


def one_tighter(x: float, digits: int = 2) -> float:
    """The next value under ``x`` at ``digits`` significant digits (``2.4e-4`` → ``2.3e-4``)."""
    if not x > 0 or not math.isfinite(x):
        return x
    exp = math.floor(math.log10(x)) - (digits - 1)
    units = round(x / 10.0**exp)
    return float(f"{units - 1}e{exp}") if units > 10 ** (digits - 1) else float(f"{10**digits - 1}e{exp - 1}")


def suggest(layers: Any, tolerances: Tolerances) -> Any:
    """The tightest tolerance the pair's layers pass at (:class:`~parity.records.Suggestion`):
    a global rtol with the atol in force for the layers the dtype table judges (layers under a
    per-layer override keep it), the noise factor for those a float64 reference judges, and the
    flagged layers no tolerance makes pass.  None for a report without layers."""
    from .metrics import verdict
    from .records import Suggestion, min_rtol
    from .reference import min_factor

    layers = list(layers)
    if not layers:
        return None
    table = [d for d in layers if d.ref_err is None and tolerances.override_for(d.a_name) is None]
    referenced = [d for d in layers if d.ref_err is not None]
    atol = tolerances.atol if tolerances.atol is not None else max((d.atol for d in table), default=None)
    rtol = rtol_layer = factor = factor_layer = None
    if table and atol is not None:
        worst = max(table, key=lambda d: min_rtol(d.metrics, atol))
        rtol, rtol_layer = round_up(min_rtol(worst.metrics, atol)), worst.a_name
    if referenced:
        worst = max(referenced, key=min_factor)
        factor, factor_layer = round_up(min_factor(worst)), worst.a_name
    unfixable = tuple(
        d.a_name for d in layers
        if not verdict(d.metrics, math.inf, 0.0, min_argmax_agreement=tolerances.min_argmax_agreement)[0]
    )
    return Suggestion(rtol=rtol, atol=atol, rtol_layer=rtol_layer, factor=factor, factor_layer=factor_layer,
                      unfixable=unfixable)
