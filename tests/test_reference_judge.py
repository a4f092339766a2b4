"""The float64 reference's verdict on hand-made traces: it tightens the dtype table, never loosens it."""

from __future__ import annotations

import numpy as np

from parity.align import align
from parity.compare import compare
from parity.reference import NOISE_FACTOR, NOISE_FLOOR, TABLE_NOISE_FACTOR, judge
from parity.tolerance import Tolerances

from .helpers import make_trace


def _judged(noise: float, error: float):
    rng = np.random.default_rng(0)
    x64 = rng.standard_normal((4, 64))
    unit = rng.standard_normal((4, 64))
    unit *= np.linalg.norm(x64) / np.linalg.norm(unit)
    a32 = (x64 + noise * unit).astype(np.float32)  # A's float32 run, `noise` from float64
    b = (x64 + error * rng.standard_normal((4, 64)) * np.linalg.norm(x64) / 16).astype(np.float32)
    ta, tb = make_trace([("fc", "Linear", a32, "NC")]), make_trace([("fc", "Linear", b, "NC")])
    t64 = make_trace([("fc", "Linear", x64, "NC")])
    alignment = align(ta, tb)
    table = compare(alignment, Tolerances.build())
    layers, ref = judge(alignment, table, t64, "a", None)
    return layers[0], ref, table[0]


def test_an_error_within_k_noise_floors_passes():
    d, ref, _ = _judged(noise=1e-7, error=1e-6)
    assert d.ok and ref.judged == 1 and d.noise == np.float64(d.noise) and 0.5e-7 < d.noise < 2e-7
    assert d.rtol == NOISE_FACTOR * d.noise + NOISE_FLOOR


def test_an_error_far_over_the_noise_floor_fails_under_the_table():
    d, _, table = _judged(noise=1e-7, error=2e-4)
    assert not d.ok and table.ok  # the table passes it
    assert d.reasons[0].startswith("error against the float64 reference ") and "float32 noise floor" in d.reasons[0]


def test_where_rounding_is_large_the_table_still_binds():
    """noise 1e-4: 32× would allow 3.2e-3, but the table allows 1e-3 (4× noise 4e-4): a 2e-3 bug fails."""
    d, _, table = _judged(noise=1e-4, error=2e-3)
    assert not d.ok and not table.ok and d.ref_err < NOISE_FACTOR * d.noise  # k × noise alone would pass it
    assert d.rtol == max(table.allowed_rel, TABLE_NOISE_FACTOR * d.noise) == table.allowed_rel
    assert "exceeds the per-dtype tolerance" in d.reasons[0]
    assert "never allows more than the tolerance table" in d.reasons[0]
