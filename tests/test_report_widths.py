"""Real reports in narrow and wide terminals (80 columns is a CI log, a pipe, pytest): every
layer name whole, the verdict of every row, numbers uncut; and counts that add up."""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
import pytest
from rich.console import Console

import parity
from parity.report.console import fmt_float
from parity.report.regress import compare_reports

torch = pytest.importorskip("torch")
nn = torch.nn

WIDTHS = (80, 120)


def rendered(renderable, width: int) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width, color_system=None).print(renderable)
    return buf.getvalue()


class SiluNet(nn.Module):
    """Conv → BatchNorm → SiLU twice (ONNX writes SiLU as x·sigmoid(x)), a MobileNet block, a classifier."""

    def __init__(self) -> None:
        super().__init__()
        from parity._zoo.torch_models import MobileNetBlock

        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.SiLU(),
        )
        self.block = MobileNetBlock(16, 16, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(16, 10)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.block(self.features(x))), 1))


@pytest.fixture(scope="module")
def onnx_reports(tmp_path_factory):
    """torch → ONNX (long graph names): the faithful export, and one whose second conv weight is scaled."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import numpy_helper

    from parity._zoo import randomize_bn

    torch.manual_seed(0)
    model = randomize_bn(SiluNet()).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("widths") / "silu.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False)
    proto = onnx.load(str(path))
    conv = next(n for n in proto.graph.node if n.name == "/features/features.3/Conv")
    weight = next(t for t in proto.graph.initializer if t.name == conv.input[1])
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(1.2), weight.name))
    bad = path.with_name("silu_bad.onnx")
    onnx.save(proto, str(bad))
    return parity.diff(model, str(path), x.numpy()), parity.diff(model, str(bad), x.numpy())


@pytest.fixture(scope="module")
def keras_reports():
    """The seed's ConvNet by hand in Keras: faithful, and with Keras' BatchNorm epsilon."""
    pytest.importorskip("keras")
    from parity._zoo import ConvNet, randomize_bn, to_keras

    torch.manual_seed(0)
    model = randomize_bn(ConvNet().eval(), seed=1)
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype("float32")
    return parity.diff(model, to_keras(model), x), parity.diff(model, to_keras(model, bn_epsilon="keras-default"), x)


def row_of(text: str, d) -> list[str]:
    """The table row of layer ``d`` (its first line), found by its number and its whole A name."""
    pattern = re.compile(rf"^\s*{d.index + 1} {re.escape(d.a_name)}(\s|$)")
    return [line for line in text.splitlines() if pattern.match(line)]


@pytest.mark.parametrize("width", WIDTHS)
def test_diff_tables_keep_every_layer_name_verdict_and_number(width, onnx_reports, keras_reports):
    for report in (*onnx_reports, *keras_reports):
        text = rendered(report, width)
        assert max(len(line) for line in text.splitlines()) <= width
        for d in report.layers:
            (row,) = row_of(text, d)
            assert row.rstrip().endswith(("✓", "✗", "✗ ◀", "✗ NaN", "✗ NaN ◀")), row
            assert f" {fmt_float(d.rel_err)} " in row and f" {d.metrics.cosine:.4f} " in row
            # B's names (ONNX's are 34 characters long) fit an 80-column line too
            assert re.search(rf"(^|\s){re.escape(d.b_name)}(\s|$)", text, re.MULTILINE), d.b_name
            if width >= 120:
                assert f" {d.op} " in row  # op names whole; at 80 a long one wraps, never "Con…"
        assert "…" not in text.split("first divergence")[0]


def test_what_folds_first_is_said(onnx_reports, keras_reports):
    bad = onnx_reports[1]
    narrow = " ".join(rendered(bad, 80).split())
    assert "left out to fit 80 columns: shape, transform, max abs (a wider terminal shows them)" in narrow
    assert "A layer" in narrow and "B layer" in narrow  # B's name goes under A's
    wide = rendered(bad, 160)
    assert "left out" not in wide and "NHWC" not in wide and " transform " in wide
    keras_narrow = " ".join(rendered(keras_reports[1], 80).split())
    assert "left out to fit 80 columns: transform (a wider terminal shows them)" in keras_narrow


def test_own_error_marks_are_explained(onnx_reports):
    bad = onnx_reports[1]
    estimated = [d for d in bad.layers if d.own_method == "growth"]
    assert estimated and any(d.own_err == 0 for d in estimated) and any(d.own_err > 0 for d in estimated)
    text = " ".join(rendered(bad, 120).split())
    assert f"{fmt_float(estimated[0].own_err)}~" in text
    assert "~ estimated instead as the growth of the error over the layer before (this layer cannot be run alone)" in text
    assert "0~ no growth: the error is inherited" in text


@pytest.mark.parametrize("width", WIDTHS)
def test_compare_reports_keeps_the_layer_column(width, keras_reports, onnx_reports):
    for old, new in (keras_reports, onnx_reports):
        comparison = compare_reports(old, new)
        text = rendered(comparison, width)
        assert max(len(line) for line in text.splitlines()) <= width
        changed = [c for c in comparison.changes if c.status != "same"]
        assert changed
        for c in changed:
            (row,) = [line for line in text.splitlines() if line.startswith(c.a_name + " ")]
            assert row.rstrip().endswith(c.status) and f" {fmt_float(c.new_err)} " in row


def test_counts_add_up_and_name_pairs_that_agree_are_confident(onnx_reports, keras_reports):
    good = onnx_reports[0]
    text = " ".join(rendered(good, 120).split())
    assert good.summary().startswith("✓ PARITY: 10 layers and the model output match within tolerance")
    assert (
        "compared 10 of 14 layers of A (71%; the other 4 fused by the converter) "
        "(5 by scope, 5 by value; confidence ≥ 0.9 for 10 of 10), and the model output" in text
    )
    bad = keras_reports[1]
    assert bad.summary().endswith("— 3 of 4 layers over tolerance, and the model output")
    assert "compared 4 of 4 layers of A (100%) (4 by name; confidence ≥ 0.9 for 4 of 4), and the model output" in " ".join(
        rendered(bad, 120).split()
    )


def test_tensors_inside_one_layer_of_a_get_no_advice_to_map_them(onnx_reports):
    good = onnx_reports[0]
    sigmoids = [u for u in good.unmatched if u.op == "Sigmoid"]
    assert [u.reason for u in sigmoids] == ["inside", "inside"]
    (note,) = [n for n in good.notes if "inside" in n]
    assert "/features/features.2/Sigmoid_output_0 (Sigmoid, inside features.2 SiLU)" in note
    assert not any("Give a mapping" in n for n in good.notes)
    assert "NOT COMPARED" not in rendered(good, 120)
