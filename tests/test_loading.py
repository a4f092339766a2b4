"""Loading models, inputs and mappings from what a user writes in a config table or on the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from parity import ParityError, UntrustedModel
from parity.capture import loader_for
from parity.loading import load, load_inputs, load_mapping, load_model, looks_like_spec
from parity.pairs import PairConfigError, load_pairs


def test_a_seeded_inputs_table_is_reproducible_and_scaled():
    first = load_inputs({"shape": [2, 3], "seed": 7, "scale": 2.0})
    again = load_inputs({"shape": [2, 3], "seed": 7, "scale": 2.0})
    other = load_inputs({"shape": [2, 3], "seed": 8})
    assert first.shape == (2, 3) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other * 2.0)
    pair = load_inputs({"shape": [[1, 4], [1, 2]], "seed": 0})
    assert [x.shape for x in pair] == [(1, 4), (1, 2)]


def test_inputs_from_npy_and_npz_files_relative_to_the_config(tmp_path):
    batch = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "batch.npy", batch)
    np.savez(tmp_path / "named.npz", x=batch, y=batch + 1)
    np.testing.assert_array_equal(load_inputs("batch.npy", base_dir=tmp_path), batch)
    named = load_inputs("named.npz", base_dir=tmp_path)
    assert sorted(named) == ["x", "y"]


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ({"seed": 0}, "needs 'shape'"),
        ({"shape": [2], "sede": 1}, "got keys ['sede', 'shape']"),
        ({"shape": 3}, "must be a list of sizes, got 3"),
        ("missing.npy", "does not exist; give a .npy or .npz file"),
    ],
)
def test_bad_inputs_say_what_was_expected(tmp_path, spec, fragment):
    with pytest.raises(ParityError, match=None) as info:
        load_inputs(spec, base_dir=tmp_path)
    assert fragment in str(info.value)


def test_a_mapping_comes_from_an_inline_table_a_toml_or_a_json_file(tmp_path):
    (tmp_path / "map.toml").write_text('[mapping]\n"features.0" = "conv2d"\n')
    (tmp_path / "map.json").write_text(json.dumps({"fc": "dense"}))
    assert load_mapping({"a": "b"}) == {"a": "b"}
    assert load_mapping("map.toml", base_dir=tmp_path) == {"features.0": "conv2d"}
    assert load_mapping("map.json", base_dir=tmp_path) == {"fc": "dense"}
    with pytest.raises(ParityError, match="flat table of A layer name = B layer name"):
        load_mapping({"a": 1})
    (tmp_path / "map.yaml").write_text('mapping:\n  "features.1": "import/*/conv1_relu*/Relu6:0"\n')
    assert load_mapping("map.yaml", base_dir=tmp_path) == {"features.1": "import/*/conv1_relu*/Relu6:0"}
    (tmp_path / "bad.yaml").write_text("a: [b\n")
    with pytest.raises(ParityError, match="cannot be read as YAML"):
        load_mapping("bad.yaml", base_dir=tmp_path)
    with pytest.raises(ParityError, match="must be .json, .toml or .yaml"):
        (tmp_path / "map.txt").write_text("a: b")
        load_mapping("map.txt", base_dir=tmp_path)


def test_model_specs_name_the_missing_module_or_attribute():
    with pytest.raises(ParityError, match="cannot import 'no_such_module_xyz'"):
        load_model("no_such_module_xyz:Net")
    with pytest.raises(ParityError, match="'parity._zoo' has no attribute 'NoNet'"):
        load_model("parity._zoo:NoNet")


def test_a_missing_or_unsupported_model_file_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(ParityError, match="does not exist. Give a path to a saved model or 'package.module:factory'"):
        load(tmp_path / "nope.keras")
    (tmp_path / "model.xyz").write_bytes(b"\0")
    with pytest.raises(ParityError, match=r"parity loads .keras/.h5 \(Keras\), .pt2 \(torch.export\)"):
        load(tmp_path / "model.xyz")


def test_the_unsupported_file_message_lists_every_format_the_backends_read(tmp_path):
    (tmp_path / "model.xyz").write_bytes(b"\0")
    with pytest.raises(ParityError) as info:
        load(tmp_path / "model.xyz")
    assert (
        "parity loads .keras/.h5 (Keras), .pt2 (torch.export), .pt/.pth (TorchScript, or a state_dict with "
        "factory=), .onnx, .tflite, .pb (frozen GraphDef), a SavedModel directory by path."
    ) in str(info.value)


def test_each_suffix_is_read_by_the_backend_that_declares_it(tmp_path):
    (tmp_path / "saved").mkdir()
    found = {}
    for name in ("m.keras", "m.H5", "m.pt", "m.pth", "m.bin", "m.pt2", "m.onnx", "m.tflite", "m.pb", "m.pbtxt", "saved", "m.npy"):
        loader = loader_for(tmp_path / name)
        found[name] = loader.__name__ if loader is not None else None
    assert found == {
        "m.keras": "KerasBackend", "m.H5": "KerasBackend", "m.pt": "TorchBackend", "m.pth": "TorchBackend",
        "m.bin": "TorchBackend", "m.pt2": "ExportedProgramBackend", "m.onnx": "OnnxBackend",
        "m.tflite": "TFLiteBackend", "m.pb": "TFGraphBackend", "m.pbtxt": "TFGraphBackend", "saved": "TFGraphBackend",
        "m.npy": None,
    }


def test_a_directory_without_saved_model_pb_is_refused(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(ParityError, match="is a directory without saved_model.pb: parity loads a directory only as a "
                                          "TensorFlow SavedModel"):
        load(tmp_path / "weights")


def test_a_path_with_a_colon_after_a_model_suffix_is_a_path_not_a_spec():
    assert looks_like_spec("pkg.models:Net")
    assert not looks_like_spec("net.pbtxt:v2") and not looks_like_spec("net.onnx:v2")
    assert not looks_like_spec("models/net:Net")


def test_a_file_torch_cannot_read_is_refused(tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ParityError, match="is not a file torch.load can read"):
        load(tmp_path / "weights.bin")


@pytest.mark.slow
def test_a_keras_file_loads_in_safe_mode_and_a_lambda_needs_an_opt_in(tmp_path):
    keras = pytest.importorskip("keras")
    inputs = keras.Input((3,))
    plain = keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs))
    plain.save(tmp_path / "plain.keras")
    loaded = load_model(str(tmp_path / "plain.keras"))
    x = np.ones((1, 3), np.float32)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(plain(x)), rtol=1e-6)
    import parity

    report = parity.diff(tmp_path / "plain.keras", plain, x)
    assert report.ok and report.layer("dense").metrics.max_abs == 0.0

    doubled = keras.layers.Lambda(lambda t: t * 2, name="double")(inputs)
    risky = keras.Model(inputs, doubled)
    risky.save(tmp_path / "risky.keras")
    with pytest.raises(UntrustedModel, match=r"a Lambda layer 'double' .* opt in with trust=True"):
        load(tmp_path / "risky.keras")
    assert load(tmp_path / "risky.keras", trust=True).get_layer("double") is not None
    assert load(tmp_path / "risky.keras", safe_mode=False).get_layer("double") is not None  # the old opt-in


def test_pair_tables_in_a_parity_toml(tmp_path):
    config = tmp_path / "parity.toml"
    config.write_text(
        '[pairs.first]\na = "m:a"\nb = "m:b"\ninputs = "batch.npy"\nmapping = { fc = "dense" }\n'
        '[pairs.second]\na = "m:a"\nb = "m:c"\nrtol = 1e-4\natol = 1e-6\ntolerances = { "fc" = [1e-2, 1e-4] }\n'
    )
    first, second = load_pairs(config)
    assert (first.name, first.inputs, first.mapping) == ("first", "batch.npy", {"fc": "dense"})
    assert (second.rtol, second.atol, second.tolerances) == (1e-4, 1e-6, {"fc": [1e-2, 1e-4]})
    config.write_text("[pairs.x\n")
    with pytest.raises(PairConfigError, match="parity.toml: not valid TOML"):
        load_pairs(config)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module ``usermodels_<n>.py`` in a directory that is not on sys.path; sys.path and
    sys.modules are restored afterwards."""
    import sys

    monkeypatch.setattr(sys, "path", list(sys.path))
    name = f"usermodels_{tmp_path.name[-12:].replace('-', '_')}"
    home = tmp_path / "project"
    home.mkdir()
    (home / f"{name}.py").write_text("def torch_model():\n    return 'built'\n\nmodel_table = {}\n")
    yield name, home
    sys.modules.pop(name, None)


def test_a_factory_module_in_the_working_directory_is_found(user_module, monkeypatch):
    name, home = user_module
    monkeypatch.chdir(home)
    assert load_model(f"{name}:torch_model") == "built"


def test_a_pair_factory_is_found_beside_the_config_file(user_module, tmp_path, monkeypatch):
    name, home = user_module
    (home / "parity.toml").write_text(f'[pairs.p]\na = "{name}:torch_model"\nb = "{name}:torch_model"\n')
    monkeypatch.chdir(tmp_path)  # not the config's directory
    (spec,) = load_pairs(home / "parity.toml")
    assert load_model(spec.a, spec.source.parent) == "built"


def test_a_factory_typo_gets_did_you_mean(user_module, monkeypatch):
    name, home = user_module
    monkeypatch.chdir(home)
    with pytest.raises(ParityError) as info:
        load_model(f"{name}:torch_modle")
    assert str(info.value) == (
        f"{name!r} has no attribute 'torch_modle' (model '{name}:torch_modle'). Did you mean: torch_model."
    )
    with pytest.raises(ParityError, match=rf"No module named '{name}x'. parity looked on sys.path and in "
                                          rf"'{home.resolve()}'. Did you mean: {name}. Run parity from the directory"):
        load_model(f"{name}x:torch_model")


def test_a_module_that_fails_to_import_is_not_reported_as_missing(tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "needs_missing_dep.py").write_text("import not_installed_anywhere_xyz\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ParityError, match="importing 'needs_missing_dep' from .* failed: No module named 'not_installed_anywhere_xyz'"):
        load_model("needs_missing_dep:f")
    sys.modules.pop("needs_missing_dep", None)
