"""Diagnoses that rerun the models: preprocessing built into one model only, and a model
that is not deterministic at inference."""

from __future__ import annotations

import numpy as np
import pytest

import parity

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

from parity._zoo import ConvNet, randomize_bn, to_keras  # noqa: E402

X = np.random.default_rng(0).uniform(0, 255, (2, 1, 28, 28)).astype("float32")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_bn(ConvNet().eval(), seed=1)


def test_a_rescaling_in_one_model_is_input_preprocessing(model):
    twin = to_keras(model)
    image = keras.Input((28, 28, 1))
    scaled = keras.Model(image, twin(keras.layers.Rescaling(1 / 255.0, name="rescale")(image)))
    report = parity.diff(model, scaled, X)
    assert report.first_divergence.a_name == "layer1.0"
    assert [d.code for d in report.diagnoses] == ["input_preprocessing"]  # not a BatchNorm epsilon
    diag = report.layer("layer1.0").diagnoses[0]
    assert diag.evidence["scale"] == pytest.approx(1 / 255, rel=1e-4) and abs(diag.evidence["offset"]) < 1e-6
    assert "B sees 0.003922·x + " in diag.message


def test_bgr_input_in_one_model_is_a_channel_swap():
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()

    class Bgr(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = conv

        def forward(self, x):
            return self.body(x.flip(1))

    report = parity.diff(conv, Bgr(), np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype("float32"))
    diag = next(d for d in report.diagnoses if d.code == "input_preprocessing")
    assert diag.layer == "0" and "3 channels in reverse order (RGB↔BGR)" in diag.message


def test_dropout_left_on_is_nondeterminism(model):
    class Noisy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer1, self.fc = model.layer1, model.fc

        def forward(self, x):
            y = torch.nn.functional.dropout(self.layer1(x), 0.1, training=True)
            return self.fc(y.flatten(1))

    report = parity.diff(model, Noisy(), X / 255)
    diag = next(d for d in report.diagnoses if d.code == "nondeterminism")
    assert diag.layer == "fc" and diag.evidence["model_b"] == 1.0
    assert diag.evidence["relative_change_between_runs"] > 0.1


def test_a_correct_pair_gets_no_diagnosis(model):
    report = parity.diff(model, to_keras(model), X / 255)
    assert report.ok and report.diagnoses == ()
