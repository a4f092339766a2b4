"""The backend is the only door: a backend written in a few lines of NumPy takes part in
``parity.diff`` — capture, alignment, and the own error by replay — with no framework and
no change anywhere else in parity."""

from __future__ import annotations

import numpy as np

import parity
from .helpers import Chain, ChainBackend


W = np.random.default_rng(0).standard_normal((3, 6, 6)).astype("float32")
X = np.random.default_rng(1).standard_normal((4, 6)).astype("float32")


def _model(name: str, scale_second: float = 1.0) -> ChainBackend:
    layers = [("fc1", lambda x: x @ W[0]), ("fc2", lambda x: scale_second * (x @ W[1])), ("fc3", lambda x: x @ W[2])]
    return ChainBackend(Chain(name, layers))


def test_a_backend_of_its_own_takes_part_in_diff_and_replay_finds_the_guilty_layer():
    report = parity.diff(_model("A"), _model("B", scale_second=1.1), X)
    assert not report.ok
    assert [d.a_name for d in report.layers] == ["fc1", "fc2", "fc3", "output"]
    first = report.first_divergence
    assert first.a_name == "fc2" and first.own_method == "replay"
    assert abs(first.own_err - 0.1) < 1e-5  # B's fc2 alone, on A's recorded input: 10% off
    fc3 = report.layer("fc3")
    # fc3 is over tolerance too, but replayed on A's input it is right: it only inherits the error
    assert not fc3.ok and fc3.own_method == "replay" and fc3.own_err < 1e-6
    # the door's defaults: no parameters, no twins — so no weight parity and no noise floor
    assert report.params == () and not any("noise floor" in n for n in report.notes)


def test_the_faithful_pair_passes():
    assert parity.diff(_model("A"), _model("B"), X).ok
