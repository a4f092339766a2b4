"""Own error measured for an ONNX model B: the piece of B's graph between the tensor whose A
counterpart is a layer's recorded input and the layer's tensor, run alone on that input.  It
must give what replaying a torch twin of B gives, tell the guilty layer from the ones that
inherit its error, and find a second bug born later."""

from __future__ import annotations

import io

import numpy as np
import pytest

import parity

from .helpers import scaled_copy

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _chain():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1),
    ).eval()


def _export(model, x) -> "onnx.ModelProto":
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.from_numpy(x),), buf, opset_version=17, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((2, 3, 10, 10)).astype("float32")


def test_an_onnx_layers_own_error_is_the_replay_of_its_torch_twin(x):
    a = _chain()
    b_torch = scaled_copy(a, {"2": 1.5})
    on_torch = parity.diff(a, b_torch, x)
    on_onnx = parity.diff(a, _export(b_torch, x), x)
    assert on_onnx.first_divergence.a_name == on_torch.first_divergence.a_name == "2"
    for name in ("2", "3", "4"):
        t, o = on_torch.layer(name), on_onnx.layer(name)
        assert o.own_method == t.own_method == "replay", name
        assert o.own_err == pytest.approx(t.own_err, rel=1e-4, abs=1e-6), name
    assert on_onnx.layer("2").own_err > 0.1  # its own: a kernel ×1.5
    assert on_onnx.layer("3").own_ok and on_onnx.layer("4").own_ok  # they only inherit conv 2's error


def test_the_layers_after_the_bug_inherit_and_a_second_bug_is_born_here(x):
    a = _chain()
    b = _export(scaled_copy(a, {"0": 1.5, "6": 0.5}), x)
    report = parity.diff(a, b, x)
    assert report.first_divergence.a_name == "0"
    assert [d.a_name for d in report.born_here] == ["0", "6"]
    for name in ("1", "2", "3", "4", "5"):
        d = report.layer(name)
        assert not d.ok and d.own_method == "replay" and d.own_ok, name


def test_a_piece_that_needs_another_input_is_not_replayed(x):
    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.act = torch.nn.ReLU()
            self.branch = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.out = torch.nn.Conv2d(8, 4, 1)

        def forward(self, x):
            y = self.act(self.stem(x))
            return self.out(y + self.branch(y))  # a sum: no pair is out's input

    torch.manual_seed(0)
    a = Residual().eval()
    b = _export(scaled_copy(a, {"stem": 1.5}), x)
    report = parity.diff(a, b, x)
    assert report.first_divergence.a_name == "stem"
    assert report.layer("stem").own_method == "replay"  # its input is the graph input: the piece starts there
    assert report.layer("branch").own_method == "replay" and report.layer("branch").own_ok  # fed act's output
    assert report.layer("out").own_method == "growth"
