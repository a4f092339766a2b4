"""Inputs parity refuses to compare on, and the dtype inputs are given in: an empty batch, a
declared shape too large to generate, a float64 model."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from parity.capture.base import Backend
from parity.errors import InputError
from parity.inputs import normalize_inputs, random_inputs
from parity.records import InputSpec, ModelInfo


class _Declares(Backend):
    """A model that only declares its input (an ONNX file's graph input, say)."""

    framework = "onnx"

    def __init__(self, shape, dtype="float32"):
        super().__init__(None)
        self.spec = (InputSpec(name="x", shape=shape, dtype=dtype, layout="NC"),)

    @classmethod
    def accepts(cls, obj):
        return False

    def info(self):
        return ModelInfo(framework="onnx", framework_version="0", name="declared", kind="test")

    def input_spec(self):
        return self.spec

    def capture(self, inputs, *, containers=False):
        raise AssertionError("not run")


def test_an_empty_batch_is_refused_saying_what_came_and_what_to_do():
    x = np.ones((4, 3), np.float32)
    with pytest.raises(InputError, match=r"^input 0 is empty \(shape \(0, 3\)\): a batch without samples compares "
                                         r"nothing, and every layer would pass\. Give at least one sample, e\.g\. x\[:1\]"):
        normalize_inputs(x[:0])
    with pytest.raises(InputError, match=r"input 'mask' is empty \(shape \(2, 0\)\)"):
        normalize_inputs({"ids": np.ones((2, 3), np.int64), "mask": np.ones((2, 0), np.int64)})


def test_a_declared_input_too_large_to_generate_is_asked_for_not_allocated():
    huge = _Declares((1, 10**12))  # an ONNX input of 1×1e12: 3.6 TiB of float32
    with pytest.raises(InputError) as err:
        random_inputs(huge, huge)
    assert str(err.value) == (
        "input 'x' is declared as (1, 1000000000000) (float32, 3,725.3 GiB): too large to generate a random "
        "batch for (parity generates at most 1 GiB per input). Pass inputs of the size you mean, e.g. "
        "parity.diff(a, b, x) or parity diff A B --inputs x.npy."
    )
    ok = _Declares((1, 1000))
    (x,) = random_inputs(ok, ok)
    assert x.shape == (1, 1000) and x.dtype == np.float32
    (x,) = random_inputs(_Declares((1, 4), "float64"), ok)  # a float64 model gets a float64 batch
    assert x.dtype == np.float64


def test_a_float64_torch_model_runs_in_float64_on_float32_or_float64_inputs():
    torch = pytest.importorskip("torch")
    import parity

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(36, 2))
    a = a.double().eval()
    b = copy.deepcopy(a)
    x64 = np.random.default_rng(0).standard_normal((2, 3, 5, 5))
    for given in (x64, x64.astype(np.float32)):  # both failed: "mat1 and mat2 must have the same dtype"
        report = parity.diff(a, b, given)
        assert report.ok and report.inputs.dtypes == ("float64",)
        assert {d.dtype for d in report.layers} == {"float64"} and {d.rtol for d in report.layers} == {1e-7}
    # a float64 model against its float32 conversion: A computes in float64, B in float32
    report = parity.diff(a, copy.deepcopy(a).float(), x64)
    assert {d.dtype for d in report.layers} == {"float64/float32"} and report.ok
    trace = parity.capture(a, x64.astype(np.float32))
    assert trace["0"].dtype == "float64"
    trace = parity.capture(a, x64)  # a float64 batch keeps its digits (it was rounded to float32)
    with torch.no_grad():
        np.testing.assert_array_equal(trace["0"].value, a[0](torch.from_numpy(x64)).numpy())
