"""An int8 output read without its scale and zero point (``quant_io``): B's output is A's,
quantized — integers in int8's range, an affine map of A up to rounding — and the fit gives back
the scale and zero point to dequantize with.  Dequantized, the same output passes."""

from __future__ import annotations

import re

import numpy as np
import pytest

import parity

torch = pytest.importorskip("torch")

SCALE, ZERO_POINT = 0.02, -5


class Quantized(torch.nn.Module):
    def __init__(self, net, dequantize: bool):
        super().__init__()
        self.body, self.dequantize = net, dequantize

    def forward(self, x):
        q = torch.clamp(torch.round(self.body(x) / SCALE) + ZERO_POINT, -128, 127)
        return (q - ZERO_POINT) * SCALE if self.dequantize else q


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10)).eval()


def test_an_int8_output_never_dequantized_is_quant_io(net):
    x = np.random.default_rng(0).standard_normal((8, 16)).astype("float32")
    report = parity.diff(net, Quantized(net, dequantize=False), x)
    out = [d for d in report.layers if d.role == "output"][0]
    assert not out.ok
    (diag,) = [g for g in report.diagnoses if g.code == "quant_io"]
    assert diag.evidence["scale"] == pytest.approx(SCALE, rel=0.02)
    assert diag.evidence["zero_point"] == ZERO_POINT
    assert diag.evidence["residual_rms_steps"] < 0.4
    assert re.search(r"B ≈ A / 0\.0[12]\d* − 5 .*\(q \+ 5\) × 0\.0[12]", diag.message), diag.message


def test_the_dequantized_output_gives_no_quant_io(net):
    x = np.random.default_rng(0).standard_normal((8, 16)).astype("float32")
    report = parity.diff(net, Quantized(net, dequantize=True), x, rtol=0.05, atol=1e-3)
    assert not [g for g in report.diagnoses if g.code == "quant_io"]
