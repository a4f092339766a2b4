"""A layer's own error by isolated replay: the guilty layer is named even when propagated
error makes every later layer red."""

from __future__ import annotations

import io

import numpy as np
import pytest

import parity

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

from parity._zoo import DeepResNet, randomize_bn, to_keras  # noqa: E402

X = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype("float32")


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    model = randomize_bn(DeepResNet(4).eval(), seed=1)  # 13 convolutions, 40 layers
    twin = to_keras(model)
    layer = twin.get_layer("blocks_1_conv2")
    kernel, *rest = layer.get_weights()
    layer.set_weights([kernel * 1.02, *rest])  # the bug: one kernel 2% off
    return model, twin


def test_replay_names_the_guilty_layer_among_the_red_ones(pair):
    model, twin = pair
    report = parity.diff(model, twin, X)
    red = [d.a_name for d in report.layers if not d.ok]
    assert red[0] == "blocks.1.conv2" and len(red) == 18  # propagated: everything after is red
    guilty = report.first_divergence
    assert (guilty.a_name, guilty.own_method) == ("blocks.1.conv2", "replay")
    assert guilty.own_err == pytest.approx(0.02, rel=0.01)
    innocent = [d for d in report.layers if not d.ok and d.own_method == "replay" and d is not guilty]
    assert innocent and all(d.own_ok and d.own_err < 1e-5 for d in innocent)
    assert report.layer("blocks.3.conv1").rel_err > 1e-2 and report.layer("blocks.3.conv1").own_err < 1e-5


def test_the_report_shows_own_error(pair):
    from rich.console import Console

    model, twin = pair
    report = parity.diff(model, twin, X)
    buf = io.StringIO()
    Console(file=buf, width=160, color_system=None).print(report)
    text = buf.getvalue()
    assert "own err" in text
    assert "own error 2.0e-02 (B's layer fed A's recorded input of this layer): the error is born here" in text
    assert '<th data-sort="num" title="the layer' in report.to_html()


def test_without_models_the_own_error_is_the_growth_over_the_layer_before(pair):
    model, twin = pair
    x_b = np.transpose(X, (0, 2, 3, 1)).copy()
    report = parity.diff_traces(parity.capture(model, X), parity.capture(twin, x_b))
    d = report.layer("blocks.1.conv2")
    assert d.own_method == "growth" and d.own_err == pytest.approx(d.rel_err, rel=0.01)
    assert report.first_divergence.a_name == "blocks.1.conv2"
