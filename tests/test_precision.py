"""parity.precision: which precision a stage computes in and the tolerance it is judged with."""

from __future__ import annotations

import numpy as np
import pytest

from parity.errors import ToleranceError
from parity.precision import PRECISION_TOLERANCES, normalize_precision, recorded_precision, stage_tolerances
from parity.tolerance import DEFAULT_TOLERANCES
from tests.helpers import make_trace


@pytest.mark.parametrize(("given", "expected"), [
    ("fp16", "float16"), ("Half", "float16"), ("bf16", "bfloat16"), ("float-32", "float32"), ("double", "float64"),
    ("quantised", "int8"), ("uint8", "int8"), ("INT_8", "int8"),
])
def test_hints_are_read_in_the_usual_spellings(given, expected):
    assert normalize_precision(given, "s") == expected


def test_an_unknown_precision_names_the_stage_and_what_it_takes():
    with pytest.raises(ToleranceError, match=r"stage 'tfl': precision 'int4' is not one of float32, float64, "
                                             r"float16, bfloat16, int8; give one of those"):
        normalize_precision("int4", "tfl")


def test_recorded_dtypes_decide_when_the_model_says_nothing():
    def trace(*dtypes):
        return make_trace([(f"t{i}", "op", np.zeros(2, dtype=d), None) for i, d in enumerate(dtypes)])

    assert recorded_precision(trace("float32", "float16")) == ("float16", "detected: float16 tensors recorded")
    assert recorded_precision(trace("float32", "int64")) == ("float32", "default")


def test_a_precision_stage_is_judged_with_its_tolerance_loosened_never_tightened():
    tol, rtol, atol = stage_tolerances("float16", None, None, {}, None)
    assert (rtol, atol) == PRECISION_TOLERANCES["float16"] == DEFAULT_TOLERANCES["float16"]
    assert (tol.rtol, tol.atol) == (rtol, atol)
    _, rtol, atol = stage_tolerances("int8", 1e-6, 1e-8, {}, None)  # tighter than int8's: int8's stays
    assert (rtol, atol) == PRECISION_TOLERANCES["int8"] == (5e-2, 1e-2)
    _, rtol, atol = stage_tolerances("float16", 0.1, 1e-8, {}, None)  # looser rtol wins, atol stays
    assert (rtol, atol) == (0.1, 1e-3)
    tol, rtol, atol = stage_tolerances("float32", None, None, {"fc": (1e-2, 1e-3)}, 0.9)
    assert (rtol, atol) == (None, None) and dict(tol.overrides) == {"fc": (1e-2, 1e-3)} and tol.min_argmax_agreement == 0.9
