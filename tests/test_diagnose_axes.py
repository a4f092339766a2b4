"""Ops applied along another axis or in another element order than A's: a softmax whose axis
was not remapped with the layout (``axis_remap``), a depth-to-space in the other channel order
(``depth_to_space_mode``), outputs handed back in another order (``io_order``).  Each bug is made
by editing a real ONNX export of a small torch model; the export itself is the faithful pair, and
must give none of these diagnoses."""

from __future__ import annotations

import io

import numpy as np
import pytest

import parity

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _export(model, x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.from_numpy(x),), buf, opset_version=17, dynamo=False)
    return buf.getvalue()


def _edited(data: bytes, op_type: str, **values) -> "onnx.ModelProto":
    """The export with attributes of its one ``op_type`` node set: an int, bytes or a list of ints."""
    model = onnx.load_from_string(data)
    (node,) = [n for n in model.graph.node if n.op_type == op_type]
    for name, value in values.items():
        (attr,) = [a for a in node.attribute if a.name == name]
        if isinstance(value, int):
            attr.i = value
        elif isinstance(value, list):
            attr.ints[:] = value
        else:
            attr.s = value
    return model


def _codes(report, layer):
    return [g.code for g in report.layer(layer).diagnoses]


def _diag(report, layer, code):
    found = [g for g in report.layer(layer).diagnoses if g.code == code]
    assert found, f"{code} not on {layer}: {report.layer(layer).diagnoses}"
    return found[0]


def _between_convs(op, seed: int):
    """Conv(3→8) → ``op`` → Conv(8→4, 1×1) on a 2×3×8×8 input, C = H = W = 8 (an axis cannot be told
    by the shape): the model, the input and its ONNX export."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), op, torch.nn.Conv2d(8, 4, 1)).eval()
    x = np.random.default_rng(seed).standard_normal((2, 3, 8, 8)).astype("float32")
    return model, x, _export(model, x)


@pytest.fixture(scope="module")
def softmax_pair():
    """Conv → Softmax over the channels → Conv."""
    return _between_convs(torch.nn.Softmax(dim=1), seed=0)


def test_a_softmax_over_another_axis_of_equal_size_is_axis_remap(softmax_pair):
    model, x, data = softmax_pair
    report = parity.diff(model, _edited(data, "Softmax", axis=2), x)  # over H, where A normalises C
    assert report.first_divergence.a_name == "1"
    diag = _diag(report, "1", "axis_remap")
    ev = diag.evidence
    assert (ev["axis_a"], ev["axis_b_in_a_layout"], ev["equal_sizes"]) == (1, 2, 1)
    assert ev["rel_err_b_vs_other_axis"] < 1e-5 < 0.1 < ev["rel_err_as_compared"]
    assert "axis 1 (C)" in diag.message and "axis 2 (H)" in diag.message


def test_the_faithful_softmax_export_gives_no_axis_diagnosis(softmax_pair):
    model, x, data = softmax_pair
    report = parity.diff(model, onnx.load_from_string(data), x)
    assert report.ok and not report.diagnoses


@pytest.fixture(scope="module")
def pixel_shuffle_pair():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.PixelShuffle(2),
                                torch.nn.Conv2d(4, 4, 3, padding=1)).eval()
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype("float32")
    return model, x, _export(model, x)


def test_depth_to_space_in_the_other_channel_order_is_depth_to_space_mode(pixel_shuffle_pair):
    model, x, data = pixel_shuffle_pair
    report = parity.diff(model, _edited(data, "DepthToSpace", mode=b"DCR"), x)
    assert report.first_divergence.a_name == "1"
    diag = _diag(report, "1", "depth_to_space_mode")
    ev = diag.evidence
    assert (ev["block_size"], ev["a_is_crd"]) == (2, 1)
    assert ev["rel_err_b_vs_other_order"] < 1e-5 < 0.1 < ev["rel_err_as_compared"]
    assert "mode='CRD'" in diag.message
    assert _codes(report, "1") == ["depth_to_space_mode"]


def test_the_faithful_pixel_shuffle_export_gives_no_diagnosis(pixel_shuffle_pair):
    model, x, data = pixel_shuffle_pair
    report = parity.diff(model, onnx.load_from_string(data), x)
    assert report.ok and not report.diagnoses


class _TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head_a = torch.nn.Conv2d(8, 4, 1)
        self.head_b = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.body(x))
        return self.head_a(y), self.head_b(y)


@pytest.fixture(scope="module")
def two_heads():
    torch.manual_seed(0)
    model = _TwoHeads().eval()
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype("float32")
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.from_numpy(x),), buf, opset_version=17, dynamo=False,
                      output_names=["boxes", "scores"])
    return model, x, buf.getvalue()


def test_outputs_handed_back_in_another_order_are_io_order(two_heads):
    model, x, data = two_heads
    swapped = onnx.load_from_string(data)
    first, second = (onnx.ValueInfoProto(), onnx.ValueInfoProto())
    first.CopyFrom(swapped.graph.output[0])
    second.CopyFrom(swapped.graph.output[1])
    del swapped.graph.output[:]
    swapped.graph.output.extend([second, first])  # what a signature sorted by name does
    report = parity.diff(model, swapped, x)
    assert not report.ok
    assert all(d.ok for d in report.layers if d.role != "output")  # the layers inside agree
    outputs = [d for d in report.layers if d.role == "output"]
    assert [d.ok for d in outputs] == [False, False]
    diag = _diag(report, outputs[0].a_name, "io_order")
    assert diag.evidence["rel_err_vs_other_output"] < 1e-5 < 0.1 < diag.evidence["rel_err_as_compared"]
    assert "B's output 'output[1]' (boxes)" in diag.message  # head_a's output, exported as 'boxes'
    assert "io_order" in _codes(report, outputs[1].a_name)


def test_outputs_in_the_same_order_give_no_io_order(two_heads):
    model, x, data = two_heads
    report = parity.diff(model, onnx.load_from_string(data), x)
    assert report.ok and not report.diagnoses


# --- resize_mode -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upsample_pair():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Upsample(scale_factor=2, mode="bilinear"),
                                torch.nn.Conv2d(4, 4, 1)).eval()
    x = np.random.default_rng(3).standard_normal((2, 3, 6, 6)).astype("float32")
    return model, x, _export(model, x)


@pytest.mark.parametrize("mode", [b"align_corners", b"asymmetric"])
def test_a_bilinear_resize_under_another_coordinate_convention_is_resize_mode(upsample_pair, mode):
    model, x, data = upsample_pair
    report = parity.diff(model, _edited(data, "Resize", coordinate_transformation_mode=mode), x)
    assert report.first_divergence.a_name == "1"
    diag = _diag(report, "1", "resize_mode")
    ev = diag.evidence
    assert ev["rel_err_b_vs_other_convention"] < 1e-5 < 1e-2 < ev["rel_err_as_compared"]
    assert ev["nearest"] == 0
    assert "half_pixel (torch align_corners=False" in diag.message  # A's
    assert f"{mode.decode()} (" in diag.message.split("reproduces A")[1]  # B's


def test_the_faithful_resize_export_gives_no_diagnosis(upsample_pair):
    model, x, data = upsample_pair
    report = parity.diff(model, onnx.load_from_string(data), x)
    assert report.ok and not report.diagnoses


def test_a_nearest_resize_rounding_otherwise_is_resize_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Upsample(size=(9, 9), mode="nearest")).eval()
    x = np.random.default_rng(4).standard_normal((2, 3, 6, 6)).astype("float32")
    data = _export(model, x)
    assert parity.diff(model, onnx.load_from_string(data), x).ok  # torch: asymmetric, floor
    bug = _edited(data, "Resize", coordinate_transformation_mode=b"half_pixel", nearest_mode=b"round_prefer_ceil")
    report = parity.diff(model, bug, x)
    diag = _diag(report, "1", "resize_mode")
    assert diag.evidence["nearest"] == 1
    assert "asymmetric with floor rounding reproduces A" in diag.message
    assert "half_pixel with round_prefer_ceil rounding reproduces B" in diag.message


class _TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.mix = torch.nn.Conv2d(3, 4, 1)

    def forward(self, image, guide):
        return self.conv(image) - self.mix(guide)


class _Swapped(torch.nn.Module):
    """The same model with its two inputs taken in the other order (a signature sorted by name)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, guide, image):
        return self.net(image, guide)


def test_inputs_taken_in_another_order_are_io_order(tmp_path):
    torch.manual_seed(0)
    a = _TwoInputs().eval()
    rng = np.random.default_rng(5)
    x, g = (rng.standard_normal((2, 3, 8, 8)).astype("float32") for _ in range(2))
    buf = io.BytesIO()
    torch.onnx.export(_Swapped(a).eval(), (torch.from_numpy(g), torch.from_numpy(x)), buf, opset_version=17,
                      dynamo=False, input_names=["in_0", "in_1"])
    report = parity.diff(a, onnx.load_from_string(buf.getvalue()), [x, g])
    assert not report.ok
    (diag,) = [d for d in report.diagnoses if d.code == "io_order"]
    assert diag.evidence["rel_err_outputs_reordered"] < 1e-5
    assert "0 → 1, 1 → 0" in diag.message
    faithful = io.BytesIO()
    torch.onnx.export(a, (torch.from_numpy(x), torch.from_numpy(g)), faithful, opset_version=17, dynamo=False)
    assert parity.diff(a, onnx.load_from_string(faithful.getvalue()), [x, g]).ok


class _GlobalMean(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def test_a_global_mean_over_other_axes_of_equal_size_is_axis_remap():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), _GlobalMean(), torch.nn.Linear(8, 4)).eval()
    x = np.random.default_rng(6).standard_normal((2, 3, 8, 8)).astype("float32")  # C = H = W = 8
    data = _export(model, x)
    assert parity.diff(model, onnx.load_from_string(data), x).ok
    bug = _edited(data, "ReduceMean", axes=[1, 3])  # the channels and W, where A averages H and W
    report = parity.diff(model, bug, x)
    assert report.first_divergence.a_name == "1"
    diag = _diag(report, "1", "axis_remap")
    ev = diag.evidence
    assert (ev["axis_a_0"], ev["axis_a_1"], ev["axis_b_0"], ev["axis_b_1"]) == (2, 3, 1, 3)
    assert ev["rel_err_b_vs_other_axes"] < 1e-5


class _Pick(torch.nn.Module):
    """A channel reorder: ``index_select`` along the channels (an ONNX ``Gather``)."""

    def __init__(self, idx):
        super().__init__()
        self.register_buffer("idx", torch.tensor(idx))

    def forward(self, x):
        return x.index_select(1, self.idx)


@pytest.fixture(scope="module")
def pick_pair():
    """Conv → a channel permutation (an ONNX Gather) → Conv."""
    return _between_convs(_Pick([3, 1, 7, 0, 5, 2, 6, 4]), seed=7)


def test_a_gather_along_another_axis_of_equal_size_is_axis_remap(pick_pair):
    model, x, data = pick_pair
    report = parity.diff(model, _edited(data, "Gather", axis=2), x)  # picks rows, where A picks channels
    assert report.first_divergence.a_name == "1"
    diag = _diag(report, "1", "axis_remap")
    ev = diag.evidence
    assert (ev["axis_a"], ev["axis_b_in_a_layout"], ev["n_indices"], ev["equal_sizes"]) == (1, 2, 8, 1)
    assert ev["rel_err_a_vs_recomputed"] < 1e-6 and ev["rel_err_b_vs_other_axis"] < 1e-6 < 0.1 < ev["rel_err_as_compared"]
    assert "indexed [3, 1, 7, 0, 5, 2, 6, 4] along axis 1 (C)" in diag.message
    assert "along axis 2 (H) (in A's layout) reproduce B" in diag.message
    assert _codes(report, "1") == ["axis_remap"]


def test_the_faithful_gather_export_gives_no_diagnosis(pick_pair):
    model, x, data = pick_pair
    report = parity.diff(model, onnx.load_from_string(data), x)
    assert report.ok and not report.diagnoses
