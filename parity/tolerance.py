"""Tolerances (temporary minimal version)."""
from __future__ import annotations
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from .errors import ToleranceError

DEFAULT_TOLERANCES = {"float64": (1e-7, 1e-10), "float32": (1e-3, 1e-5), "float16": (1e-2, 1e-3), "bfloat16": (5e-2, 1e-2)}
_ORDER = ["bfloat16", "float16", "float32", "float64"]


@dataclass(frozen=True)
class Tolerances:
    rtol: float | None = None
    atol: float | None = None
    overrides: tuple = ()
    min_argmax_agreement: float | None = None

    @classmethod
    def build(cls, rtol=None, atol=None, overrides=None, min_argmax_agreement=None):
        if (rtol is None) != (atol is None):
            raise ToleranceError(f"only {'rtol' if atol is None else 'atol'} was given; give both rtol and atol")
        ov = tuple((k, tuple(v) if not isinstance(v, dict) else (v["rtol"], v["atol"])) for k, v in (overrides or {}).items())
        return cls(rtol, atol, ov, min_argmax_agreement)

    def for_layer(self, a_name, dtype_a, dtype_b):
        for k, v in self.overrides:
            if k == a_name:
                return v
        for k, v in self.overrides:
            if fnmatchcase(a_name, k):
                return v
        if self.rtol is not None:
            return self.rtol, self.atol
        ranks = [(_ORDER.index(d) if d in _ORDER else 2) for d in (dtype_a, dtype_b)]
        return DEFAULT_TOLERANCES[_ORDER[min(ranks)]]
