"""A large-negative attention mask in a half-precision model B: -1e9 is -inf in float16, a row
masked everywhere turns into NaN in B's softmax, and the cause is named there (``mask_overflow``);
the same model with a mask inside half range agrees within float16 rounding."""

from __future__ import annotations

import numpy as np
import pytest

import parity

torch = pytest.importorskip("torch")


class Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.out = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
        self.sm = torch.nn.Softmax(dim=-1)

    def forward(self, x, mask):
        scores = self.q(x) @ self.k(x).transpose(1, 2) / 8**0.5
        return self.out(self.sm(scores + mask) @ x)


class Half(Attention):
    """The same attention computed in float16 between float32 inputs and outputs (as an fp16
    conversion with float I/O does)."""

    def forward(self, x, mask):
        return super().forward(x.half(), mask.half()).float()


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    a = Attention().eval()
    b = Half().half()
    b.load_state_dict(a.state_dict())  # copied into float16 parameters
    x = np.random.default_rng(0).standard_normal((2, 4, 8)).astype("float32")
    return a, b.eval(), x


def _mask(value: float) -> np.ndarray:
    mask = np.zeros((2, 4, 4), "float32")
    mask[:, :, 2:] = value
    mask[1, 3, :] = value  # one query attends to nothing
    return mask


def test_a_minus_1e9_mask_in_half_precision_is_mask_overflow(pair):
    a, b, x = pair
    report = parity.diff(a, b, [x, _mask(-1e9)])
    assert report.first_divergence.a_name == "sm"
    (diag,) = [g for g in report.diagnoses if g.code == "mask_overflow"]
    assert diag.layer == "sm"
    ev = diag.evidence
    assert ev["rows_all_nan_in_b"] == 1 and ev["nonfinite_in_b"] == 4
    assert ev["largest_magnitude"] == pytest.approx(1e9, rel=1e-3)
    assert "torch.finfo(torch.float16).min" in diag.message


def test_a_mask_within_half_range_gives_no_overflow(pair):
    a, b, x = pair
    report = parity.diff(a, b, [x, _mask(-1e4)])
    assert not [g for g in report.diagnoses if g.code == "mask_overflow"]
    assert report.layer("sm").metrics.nan_b == 0
