"""The one pipeline: its options record, and the float32 noise floor (no framework needed)."""

from __future__ import annotations

import numpy as np
import pytest

import parity
from parity.errors import OptionError, ToleranceError
from parity.pipeline import NOISE_FLOOR_FACTOR, DiffOptions

from .helpers import Chain, ChainBackend

X = np.random.default_rng(0).standard_normal((64, 32)).astype("float32")
BIG = 1e5  # float32 spacing at 1e5 is 2**-7: adding and removing it rounds x to 1/128


def _pair(scale: float = 1.0, twin: bool = True):
    """A's layer adds and removes a large offset, an ill-conditioned float32 computation whose
    result is x to about 2e-3; B's conversion does the same with a smaller offset (another
    rounding of the same quantity); the float64 twin computes x exactly."""
    f32, half = np.float32(BIG), np.float32(BIG * 0.6)  # float32 spacing 2**-7 and 2**-8 there
    a_layers = [("cancel", lambda x: (x + f32) - f32), ("out", lambda x: x * np.float32(2))]
    b_layers = [("cancel", lambda x: np.float32(scale) * ((x + half) - half)), ("out", lambda x: x * np.float32(2))]
    f64 = [("cancel", lambda x: (np.asarray(x, np.float64) + BIG) - BIG), ("out", lambda x: x * 2.0)]
    return (ChainBackend(Chain("A", a_layers, f64 if twin else None, features=32)),
            ChainBackend(Chain("B", b_layers, features=32)))


def _floor() -> float:
    x64 = X.astype(np.float64)
    a32 = ((X + np.float32(BIG)) - np.float32(BIG)).astype(np.float64)
    return float(np.linalg.norm(a32 - x64) / np.linalg.norm(x64))


def test_a_layer_float32_cannot_compute_better_is_judged_at_its_noise_floor():
    a, b = _pair()
    floor = _floor()
    assert 1e-3 < floor < 1e-2  # the layer itself: float32 gives it no better than this
    plain = parity.diff(a, b, X, rtol=1e-3, atol=1e-5)  # a tolerance the user gave is theirs
    d = plain.layer("cancel")
    assert not d.ok and d.rel_err > 1e-3
    report = parity.diff(a, b, X)
    assert report.ok
    d = report.layer("cancel")
    assert d.rtol == pytest.approx(NOISE_FLOOR_FACTOR * floor, rel=1e-6)
    assert d.rel_err < d.rtol
    (note,) = [n for n in report.notes if "noise floor" in n]
    assert note.startswith("3 layer(s) judged at their float32 noise floor: model A in float32 differs from its "
                           f"float64 twin by up to {floor:.1e} there")
    assert note.endswith("not a conversion bug: cancel, out, output")  # the layer, the one after it, the output


def test_the_noise_floor_does_not_hide_a_real_bug_nor_apply_without_a_twin():
    a, b = _pair(scale=1.05)  # a 5% error: far above 4 × the floor
    report = parity.diff(a, b, X)
    assert not report.ok and report.first_divergence.a_name == "cancel"
    a, b = _pair(twin=False)  # no float64 twin: the per-dtype default stands
    report = parity.diff(a, b, X)
    assert not report.ok and not any("noise floor" in n for n in report.notes)


def test_options_are_one_record_refused_before_any_run():
    options = DiffOptions.build(rtol=1e-4, atol=1e-6, granularity="ops", seed=3, max_memory="1MB")
    assert (options.tolerances.rtol, options.tolerances.atol, options.granularity, options.seed) == (1e-4, 1e-6, "ops", 3)
    assert options.max_memory == 10**6 and options.user_tolerance
    with pytest.raises(OptionError, match=r"parity.search\(\) got unexpected keyword argument\(s\) rtoll; it accepts mapping, rtol"):
        DiffOptions.build(where="parity.search", rtoll=1e-3)
    with pytest.raises(OptionError, match="granularity must be one of modules, ops, got 'layers'"):
        DiffOptions.build(granularity="layers")
    with pytest.raises(ToleranceError, match="only rtol=0.001 was given; give atol too"):
        DiffOptions.build(rtol=1e-3)
