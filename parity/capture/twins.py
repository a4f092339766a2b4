"""What the twins of a live model share across frameworks (see :meth:`Backend.twin`): the kinds,
the random normalisation statistics a ``"randomized_stats"`` twin gets, and the float64 twin's
cast of float32 inputs."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..errors import ModelError
from .base import Inputs

__all__ = ["TWIN_KINDS", "check_kind", "random_statistics", "cast_floating"]

#: the twins a layer-by-layer backend makes
TWIN_KINDS = ("fresh", "randomized_stats", "float64")


def check_kind(kind: str) -> None:
    """Raise a :class:`ModelError` for a twin kind no backend makes."""
    if kind not in TWIN_KINDS:
        raise ModelError(f"a twin is one of {', '.join(map(repr, TWIN_KINDS))}, not {kind!r}.")


def random_statistics(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A normalisation layer's random ``(mean, variance)`` for ``n`` channels: mean ~ N(0, 0.5),
    variance in [0.005, 0.05] — not the defaults (0, 1), so they cannot mask an epsilon or
    statistics bug."""
    return rng.normal(0, 0.5, n).astype("float32"), rng.uniform(0.005, 0.05, n).astype("float32")


def cast_floating(inputs: Inputs, dtype: str | None) -> Inputs:
    """``inputs`` with every floating-point array cast to ``dtype`` (integer ids stay as they
    are); ``inputs`` itself when ``dtype`` is ``None``."""
    if dtype is None:
        return inputs

    def cast(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a)
        return a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a

    if isinstance(inputs, Mapping):
        return {k: cast(v) for k, v in inputs.items()}
    return [cast(a) for a in inputs]
