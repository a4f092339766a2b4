"""The float64 reference (``reference="float64"``, :mod:`parity.reference`) on bugs a loose rtol hides.

A BERT-style block (LayerNorm eps 1e-12 → Linear → exact GELU → Linear → residual → LayerNorm)
and its hand-converted Keras twin.  Two conversion bugs move their layers by less than
float32's rtol of 1e-3 and pass the dtype table: Keras' default LayerNormalization epsilon
1e-3 instead of 1e-12 (5e-4) and the tanh-approximated GELU instead of the exact one (2e-4).
Against a float64 twin of the torch model, whose float32 run is ~1e-7 from it, they are
thousands of times the noise floor and are flagged at their layers; the faithful twin is
within a few noise floors everywhere.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import parity
from parity.reference import NOISE_FACTOR, NOISE_FLOOR, min_factor
from parity.tolerance import one_tighter

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

D = 64


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(D, eps=1e-12)
        self.fc1 = torch.nn.Linear(D, 4 * D)
        self.act = torch.nn.GELU()
        self.fc2 = torch.nn.Linear(4 * D, D)
        self.ln2 = torch.nn.LayerNorm(D, eps=1e-12)

    def forward(self, x):
        h = self.ln1(x)
        return self.ln2(h + self.fc2(self.act(self.fc1(h))))


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(0)
    return Block().eval()


def keras_twin(m: Block, *, eps: float = 1e-12, approximate: bool = False):
    inp = keras.Input((16, D))
    ln1 = keras.layers.LayerNormalization(epsilon=eps, name="ln1")
    fc1 = keras.layers.Dense(4 * D, name="fc1")
    act = keras.layers.Activation(lambda t: keras.activations.gelu(t, approximate=approximate), name="act")
    fc2 = keras.layers.Dense(D, name="fc2")
    ln2 = keras.layers.LayerNormalization(epsilon=1e-12, name="ln2")
    h = ln1(inp)
    model = keras.Model(inp, ln2(keras.layers.Add(name="add")([h, fc2(act(fc1(h)))])))
    w = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    ln1.set_weights([w["ln1.weight"], w["ln1.bias"]])
    ln2.set_weights([w["ln2.weight"], w["ln2.bias"]])
    fc1.set_weights([w["fc1.weight"].T, w["fc1.bias"]])
    fc2.set_weights([w["fc2.weight"].T, w["fc2.bias"]])
    return model


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((4, 16, D)).astype("float32")


@pytest.fixture(scope="module")
def twins(block):
    return {"faithful": keras_twin(block), "eps": keras_twin(block, eps=1e-3),
            "gelu": keras_twin(block, approximate=True)}


@pytest.mark.parametrize(("bug", "layer", "code"), [("eps", "ln1", "norm_epsilon"),
                                                    ("gelu", "act", "activation_approximation")])
def test_a_bug_under_rtol_passes_the_dtype_table_and_is_flagged_against_float64(block, twins, x, bug, layer, code):
    table = parity.diff(block, twins[bug], x)
    assert table.ok and table.reference is None
    worst = max(table.layers, key=lambda d: d.rel_err)
    assert 1e-4 < worst.rel_err < 1e-3  # hidden: under float32's rtol 1e-3

    report = parity.diff(block, twins[bug], x, reference="float64")
    first = report.first_divergence
    assert first is not None and first.a_name == layer
    assert code in {g.code for g in first.diagnoses}
    # the layers before the bug are within a few noise floors; the bug's is thousands of them
    before = [d for d in report.layers if d.index < first.index]
    assert all(d.ok and d.noise_ratio < 3 for d in before)
    assert first.noise < 1e-6 and first.noise_ratio > 500
    assert first.rtol == pytest.approx(NOISE_FACTOR * first.noise + NOISE_FLOOR)
    assert report.reference.kind == "float64" and report.reference.side == "a"
    assert report.reference.judged == len(report.layers)
    assert any("float64 reference" in r and "noise floor" in r for r in first.reasons)
    text = str(report)
    assert "judged against a float64 twin of model A" in text and "× noise" in text
    assert report.summary().startswith(f"✗ DIVERGES at {layer} ")
    assert "from float64" in report.summary() and "its noise floor" in report.summary()


def test_the_faithful_twin_passes_with_margin(block, twins, x):
    report = parity.diff(block, twins["faithful"], x, reference="float64")
    assert report.ok
    # measured here: every layer within 1.1 noise floors of float64, its error under the floor
    assert max(d.noise_ratio for d in report.layers) < 3
    assert max(min_factor(d) for d in report.layers) == 0.0
    assert report.suggestion.factor == 0.0


def test_the_suggested_rtol_passes_and_the_next_tighter_fails(block, twins, x):
    report = parity.diff(block, twins["gelu"], x)
    s = report.suggestion
    assert s.rtol_layer == "act" and s.atol == 1e-5 and s.unfixable == ()
    worst = max(report.layers, key=lambda d: d.rel_err)
    assert worst.a_name == "act" and worst.rel_err - 1e-5 * np.sqrt(worst.metrics.numel) / worst.metrics.norm_a <= s.rtol
    assert parity.diff(block, twins["gelu"], x, rtol=s.rtol, atol=s.atol).ok
    tighter = parity.diff(block, twins["gelu"], x, rtol=one_tighter(s.rtol), atol=s.atol)
    assert not tighter.ok and tighter.first_divergence.a_name == "act"
    assert f"rtol = {s.rtol:.2g}, atol = 1e-05 (set by act)" in str(report)


def test_the_suggested_noise_factor_is_the_bug_layers(block, twins, x):
    report = parity.diff(block, twins["eps"], x, reference="float64")
    s = report.suggestion
    ln1 = next(d for d in report.layers if d.a_name == "ln1")
    assert s.factor_layer == "ln1" and s.factor >= min_factor(ln1) and s.factor == pytest.approx(min_factor(ln1), rel=0.06)
    assert f"passes at a noise factor of {s.factor:,.0f} or more (set by ln1); parity allows {NOISE_FACTOR:g}" in str(report)


def test_a_float64_report_round_trips_through_json(block, twins, x, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    from parity.report.jsonio import load_report
    from parity.report.schema import build_schema

    report = parity.diff(block, twins["eps"], x, reference="float64")
    path = tmp_path / "r.json"
    report.to_json(path)
    data = json.loads(path.read_text())
    jsonschema.validate(data, build_schema())
    assert data["reference"] == {"kind": "float64", "side": "a", "factor": NOISE_FACTOR, "floor": NOISE_FLOOR,
                                 "judged": 6, "note": None}
    back = load_report(path)
    assert back.first_divergence.a_name == "ln1" and back.reference == report.reference
    assert back.layers[0].noise == report.layers[0].noise and back.suggestion == report.suggestion
    html = report.to_html(tmp_path / "r.html")
    assert "float32 noise floor" in html  # the chart's band
    assert "f64 5.4e-04" in html and "noise</span>" in html  # the table: the error against float64, × noise


def test_b_is_the_reference_when_a_has_no_float64_twin(block, twins, x, tmp_path):
    onnx = pytest.importorskip("onnx")  # noqa: F841
    pytest.importorskip("onnxruntime")
    path = tmp_path / "block.onnx"
    torch.onnx.export(block, (torch.from_numpy(x),), str(path), dynamo=False, input_names=["x"])
    report = parity.diff(str(path), block, x, reference="float64")
    assert report.reference.kind == "float64" and report.reference.side == "b"
    assert report.ok and report.reference.judged >= 1


def test_without_any_float64_twin_the_table_judges_and_says_why(block, x, tmp_path):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "block.onnx"
    torch.onnx.export(block, (torch.from_numpy(x),), str(path), dynamo=False, input_names=["x"])
    report = parity.diff(str(path), str(path), x, reference="float64")
    assert report.ok and report.reference.kind == "dtype" and report.reference.judged == 0
    assert all(d.noise is None for d in report.layers)
    note = report.reference.note
    assert note.startswith("reference='float64' was asked for, but no float64 twin ran (model A (")
    assert "has no float64 twin" in note and note.endswith("every layer is judged by the per-dtype tolerance table")
    assert note in report.notes


def test_an_unknown_reference_is_refused(block, twins, x):
    from parity.errors import OptionError

    with pytest.raises(OptionError, match=r"reference must be one of dtype, float64, got 'float16'"):
        parity.diff(block, twins["faithful"], x, reference="float16")


def test_the_float64_twin_spills_past_max_memory_and_measures_the_same(block, twins, x):
    held = parity.diff(block, twins["eps"], x, reference="float64")
    spilled = parity.diff(block, twins["eps"], x, reference="float64", max_memory=1)
    assert [(d.a_name, d.noise, d.ref_err, d.ok) for d in spilled.layers] == \
        [(d.a_name, d.noise, d.ref_err, d.ok) for d in held.layers]
