"""Layers whose shapes differ between the two models: reported, named, and never a pass.

A PyTorch max pool with ``ceil_mode=True`` converted to Keras' ``padding="valid"`` pool keeps
one more row and column (8×8 against 7×7 on a 16×16 input): nothing after it can be compared,
and a report that compared only the layers before it used to say ✓ PARITY."""

from __future__ import annotations

import json

import numpy as np
import pytest

import parity

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")


def _pair(ceil_mode: bool, size: int):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                            torch.nn.MaxPool2d(3, 2, ceil_mode=ceil_mode), torch.nn.Conv2d(8, 8, 3, padding=1)).eval()
    inp = keras.Input((size, size, 3))
    c1, c2 = keras.layers.Conv2D(8, 3, padding="same", name="0"), keras.layers.Conv2D(8, 3, padding="same", name="3")
    k = keras.Model(inp, c2(keras.layers.MaxPooling2D(3, 2, padding="valid", name="2")(keras.layers.ReLU(name="1")(c1(inp)))))
    c1.set_weights([m[0].weight.detach().numpy().transpose(2, 3, 1, 0), m[0].bias.detach().numpy()])
    c2.set_weights([m[3].weight.detach().numpy().transpose(2, 3, 1, 0), m[3].bias.detach().numpy()])
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype("float32")
    return m, k, x


def test_a_ceil_mode_pool_against_a_valid_one_is_named_and_fails(tmp_path):
    m, k, x = _pair(ceil_mode=True, size=16)
    report = parity.diff(m, k, x)
    assert not report.ok and report.first_divergence is None
    first = report.conflicts[0]
    assert (first.a_name, first.code, first.a_shape, first.b_shape) == ("2", "pool_ceil_mode", (2, 8, 8, 8), (2, 8, 7, 7))
    assert "A's pooling rounds its output size up (ceil_mode=True" in first.message
    assert [c.a_name for c in report.conflicts] == ["2", "3", "output"] and report.conflicts[-1].output
    assert report.summary() == ("✗ SHAPES DIFFER at 2 (MaxPool2d ↔ MaxPooling2D 2): A 2×8×8×8, B 2×8×7×7 "
                                "(pool_ceil_mode) — the model outputs differ in shape; 2 of 2 compared layers match")
    assert {u.name for u in report.unmatched if u.reason == "shape"} == {"2", "3", "output"}
    path = tmp_path / "r.json"
    report.to_json(path)
    from parity.report.jsonio import load_report

    back = load_report(path)
    assert back.conflicts == report.conflicts and not back.ok
    assert json.loads(path.read_text())["conflicts"][0]["code"] == "pool_ceil_mode"
    assert "Shapes differ" in report.to_html(tmp_path / "r.html")


def test_where_the_last_window_is_whole_ceil_mode_changes_nothing_and_the_pair_passes():
    m, k, x = _pair(ceil_mode=True, size=17)  # (17 − 3) / 2 is whole: both give 8×8
    report = parity.diff(m, k, x)
    assert report.ok and report.conflicts == ()


def _cat_pair(axis: int):
    """torch.cat(dim=1) (channels of NCHW) of two convs and a Keras twin joining along NHWC's ``axis``
    (-1: the channels, faithful)."""

    class Cat(torch.nn.Module):
        def forward(self, x, y):
            return torch.cat([x, y], dim=1)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.left, self.right, self.cat = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(3, 8, 3, padding=1), Cat()

        def forward(self, x):
            return self.cat(self.left(x), self.right(x))

    torch.manual_seed(0)
    m = Net().eval()
    inp = keras.Input((16, 16, 3))
    left, right = keras.layers.Conv2D(8, 3, padding="same", name="left"), keras.layers.Conv2D(8, 3, padding="same", name="right")
    k = keras.Model(inp, keras.layers.Concatenate(axis=axis, name="cat")([left(inp), right(inp)]))
    for layer, conv in ((left, m.left), (right, m.right)):
        layer.set_weights([conv.weight.detach().numpy().transpose(2, 3, 1, 0), conv.bias.detach().numpy()])
    return m, k, np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype("float32")


def test_a_concatenation_along_the_remapped_axis_has_no_conflict():
    m, k, x = _cat_pair(axis=-1)
    report = parity.diff(m, k, x)
    assert report.ok and not report.conflicts and not report.diagnoses


def test_a_concatenation_along_an_axis_not_remapped_is_named():
    """Concatenate(axis=1) on NHWC: B joins over the height, 8 channels × 32 rows against 16 channels
    × 16 rows."""
    m, k, x = _cat_pair(axis=1)
    report = parity.diff(m, k, x)
    assert not report.ok
    first = report.conflicts[0]
    assert (first.a_name, first.code, first.a_shape, first.b_shape) == ("cat", "axis_remap", (2, 16, 16, 16), (2, 8, 32, 16))
    assert "A joins along axis 1 (size 16 = 2 × 8), B along axis 2 (size 32 = 2 × 16)" in first.message
    assert [c.a_name for c in report.conflicts] == ["cat", "output"] and report.conflicts[1].output


def _pick_pair(axis: int):
    """torch ``x.index_select(1, idx)`` (4 of the 8 channels of NCHW) and a Keras twin whose gather
    takes the same indices along NHWC's ``axis`` (-1: the channels, faithful)."""

    class Pick(torch.nn.Module):
        def forward(self, x):
            return x.index_select(1, torch.tensor([5, 0, 3, 2]))

    class Gather(keras.layers.Layer):
        def call(self, x):
            return keras.ops.take(x, keras.ops.convert_to_tensor([5, 0, 3, 2]), axis=axis)

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), Pick()).eval()
    inp = keras.Input((6, 6, 3))
    conv = keras.layers.Conv2D(8, 3, padding="same", name="0")
    k = keras.Model(inp, Gather(name="1")(conv(inp)))
    conv.set_weights([m[0].weight.detach().numpy().transpose(2, 3, 1, 0), m[0].bias.detach().numpy()])
    return m, k, np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype("float32")


def test_a_gather_along_the_remapped_axis_has_no_conflict():
    m, k, x = _pick_pair(axis=-1)
    report = parity.diff(m, k, x)
    assert report.ok and not report.conflicts and not report.diagnoses


def test_a_gather_along_an_axis_not_remapped_is_named():
    """``x.index_select(1, idx)`` converted to ``take(x, idx, axis=1)`` on NHWC: B picks 4 of the 6 rows
    and keeps all 8 channels — 2×4×6×6 against 2×8×4×6 in A's layout."""
    m, k, x = _pick_pair(axis=1)
    report = parity.diff(m, k, x)
    assert not report.ok
    first = report.conflicts[0]
    assert (first.a_name, first.code, first.a_shape, first.b_shape) == ("1", "axis_remap", (2, 4, 6, 6), (2, 8, 4, 6))
    assert "A picks 4 along axis 1 (B keeps all 8 there), B picks 4 along axis 2 (A keeps all 6 there)" in first.message
