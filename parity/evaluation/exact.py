"""Float64 sums that merge exactly: the same values give the same bits in any grouping.

A float sum depends on the order of its additions, so two shards merged as ``(s0 + s1) + s2``
and ``s0 + (s1 + s2)`` could differ in the last bit — and a dataset run on Ray would not give
the bytes the local engine gives.  :class:`ExactSum` keeps the sum as one Python integer in
units of 2**-1126 (below the smallest float64 subnormal times 2**-53, so every float64 is an
integer there): additions are exact, hence associative and commutative, and :attr:`value` is
the float64 nearest the exact sum.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["ExactSum"]

#: every finite float64 is m·2**e with |m| < 2**53 and e ≥ -1074 - 52: an integer in these units
_OFFSET = 1126
#: values summed in one int64 block before joining the big integer: 2**53 · 512 < 2**63
_BLOCK = 512


class ExactSum:
    """An exact sum of finite float64 values."""

    __slots__ = ("units",)

    def __init__(self, units: int = 0) -> None:
        self.units = int(units)

    def add(self, values: np.ndarray) -> None:
        """Add every value of ``values`` (finite float64; callers drop NaN and Inf first)."""
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if not v.size:
            return
        if not np.isfinite(v).all():
            raise ValueError("ExactSum adds finite values only; count NaN and Inf apart")
        mant, exp = np.frexp(v)  # v = mant · 2**exp, 0.5 ≤ |mant| < 1
        m = np.ldexp(mant, 53).astype(np.int64)  # exact: 53-bit integers
        e = exp.astype(np.int64) - 53 + _OFFSET  # ≥ 0 for every finite float64
        for shift in np.unique(e):
            picked = m[e == shift]
            total = 0
            for i in range(0, picked.size, _BLOCK):
                total += int(picked[i:i + _BLOCK].sum())
            self.units += total << int(shift)

    def merge(self, other: "ExactSum") -> None:
        self.units += other.units

    @property
    def value(self) -> float:
        """The float64 nearest the exact sum (Python's int division rounds correctly)."""
        try:
            return self.units / (1 << _OFFSET)
        except OverflowError:  # finite terms whose exact sum passes float64's range
            return math.inf if self.units > 0 else -math.inf

    def state(self) -> str:
        """The exact sum as text, for a checkpoint (a JSON number would round it)."""
        return str(self.units)

    @classmethod
    def from_state(cls, text: str) -> "ExactSum":
        return cls(int(text))
