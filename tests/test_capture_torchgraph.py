"""Saved PyTorch programs — TorchScript and ExportedProgram files — captured with the
live model's names and compared like it; state_dict files loaded through a factory."""

from __future__ import annotations

import numpy as np
import pytest

import parity
from parity.loading import load, load_model

torch = pytest.importorskip("torch")

from parity._zoo import BasicBlock, ConvNet, DeepResNet, randomize_bn  # noqa: E402

X = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype("float32")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_bn(DeepResNet(2).eval(), seed=1)


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    x = torch.from_numpy(X)
    torch.jit.save(torch.jit.trace(model, x), root / "traced.pt")
    torch.jit.save(torch.jit.script(model), root / "scripted.pt")
    torch.export.save(torch.export.export(model, (x,)), root / "exported.pt2")
    torch.save(model.state_dict(), root / "weights.pth")
    torch.save(ConvNet().state_dict(), root / "convnet.pth")
    return root


@pytest.mark.parametrize("name, kind", [("traced.pt", "TorchScript"), ("scripted.pt", "TorchScript"), ("exported.pt2", "ExportedProgram")])
def test_a_saved_program_has_the_live_models_taps_and_matches_it(model, saved, name, kind):
    program = load(saved / name)
    live = parity.capture(model, X)
    trace = parity.capture(program, X)
    assert trace.model.kind == kind
    assert [(t.name, t.op, t.layout) for t in trace] == [(t.name, t.op, t.layout) for t in live]
    report = parity.diff(model, saved / name, X)
    assert report.ok and report.coverage == (17, 17)
    assert max(d.rel_err for d in report.layers) < 1e-6


@pytest.mark.parametrize("name", ["traced.pt", "exported.pt2"])
def test_op_level_taps_of_a_saved_program_name_the_residual_add(model, saved, name):
    trace = parity.capture(load(saved / name), X, granularity="ops")
    add = trace["blocks.0:add#0"]
    assert add.op == "add" and add.layout == "NCHW"
    live = parity.capture(model, X, granularity="ops")
    np.testing.assert_allclose(add.value, live["blocks.0:add#0"].value, rtol=1e-6, atol=1e-6)


def test_a_saved_program_vs_keras_finds_the_batchnorm_epsilon(model, saved):
    pytest.importorskip("keras")
    from parity._zoo import to_keras

    report = parity.diff(saved / "exported.pt2", to_keras(model, bn_epsilon="keras-default"), X)
    assert report.first_divergence.a_name == "stem_bn"
    assert report.diagnoses[0].code == "bn_epsilon" and report.diagnoses[0].layer == "stem_bn"
    assert report.diagnoses[0].evidence["eps_a_declared"] == pytest.approx(1e-5)


def test_a_state_dict_needs_the_factory_that_builds_the_model(model, saved):
    with pytest.raises(parity.ParityError, match=r"is a state_dict \(\d+ tensors: stem.weight, .*factory='package.module:Net'"):
        load(saved / "weights.pth")
    rebuilt = load(saved / "weights.pth", factory=lambda: DeepResNet(2))
    assert parity.diff(model, rebuilt, X).ok
    table = load_model({"path": "convnet.pth", "factory": "parity._zoo:ConvNet"}, base_dir=saved)
    assert isinstance(table, ConvNet) and not table.training
    with pytest.raises(parity.ParityError, match=r"does not fit BasicBlock: missing conv1.weight.*unexpected stem.weight"):
        load(saved / "weights.pth", factory=lambda: BasicBlock(16))


def test_a_pickle_with_code_is_refused_unless_trusted(saved):
    path = saved / "pickled.pt"
    torch.save({"model": BasicBlock(2), "epoch": 3}, path)
    with pytest.raises(parity.UntrustedModel, match=r"weights_only=True\) refuses them .* opt in with trust=True"):
        load(path)
    assert isinstance(load(path, trust=True), torch.nn.Module)
    assert isinstance(load(path, weights_only=False), torch.nn.Module)  # the old opt-in
    with pytest.raises(parity.ParityError, match="is not a torch.export program"):
        (saved / "broken.pt2").write_bytes(b"not a zip")
        load(saved / "broken.pt2")
