"""What the twins of a live model share across frameworks: the kinds, the random statistics,
the float64 twin's cast of the inputs.  No framework needed."""

from __future__ import annotations

import numpy as np
import pytest

from parity.capture.twins import cast_floating, check_kind, random_statistics
from parity.errors import ModelError


def test_random_statistics_are_seeded_and_far_from_the_defaults():
    mean, var = random_statistics(np.random.default_rng(0), 64)
    again, _ = random_statistics(np.random.default_rng(0), 64)
    assert mean.dtype == var.dtype == np.float32 and mean.shape == var.shape == (64,)
    np.testing.assert_array_equal(mean, again)
    assert ((var >= 0.005) & (var <= 0.05)).all()  # far from the initial variance 1
    assert 0.3 < float(np.std(mean)) < 0.7  # N(0, 0.5), not the initial mean 0


def test_cast_floating_casts_floats_and_keeps_integer_ids():
    x, ids = np.ones((2, 3), "float32"), np.arange(4)
    as_list = cast_floating([x, ids], "float64")
    assert [a.dtype for a in as_list] == [np.float64, ids.dtype]
    as_dict = cast_floating({"x": x, "ids": ids}, "float64")
    assert as_dict["x"].dtype == np.float64 and as_dict["ids"] is ids
    same = [x]
    assert cast_floating(same, None) is same


def test_an_unknown_kind_says_which_there_are():
    check_kind("float64")
    with pytest.raises(ModelError, match="a twin is one of 'fresh', 'randomized_stats', 'float64', not 'half'"):
        check_kind("half")
