"""The `parity` command as a user runs it: a process started in the user's own directory,
with nothing on PYTHONPATH but parity itself — factories found there, missing files refused
before any framework is imported, TensorFlow's start-up logging kept off stderr."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import parity
from parity.quiet import is_tensorflow_log

# parity itself, as an installed package would be; never the user's directory
PARITY_ROOT = Path(parity.__file__).resolve().parent.parent

# Started like the `parity` console script: sys.path[0] is the script's own directory, not the
# working directory (`python -m` and `python -c` would put the working directory first).
LAUNCHER = textwrap.dedent(
    """
    import sys
    from parity.cli import main

    code = main(sys.argv[1:])
    frameworks = [m for m in ("torch", "tensorflow", "keras", "onnx", "onnxruntime") if m in sys.modules]
    print("frameworks imported:", ",".join(frameworks) or "none")
    sys.exit(code)
    """
)

TORCH_MODELS = textwrap.dedent(
    """
    import torch

    def torch_model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).eval()

    def twin():
        return torch_model()
    """
)

KERAS_MODELS = textwrap.dedent(
    """
    import keras

    def keras_model():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(3, activation="relu", name="hidden")(inputs)
        return keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden))
    """
)

needs = {m: pytest.mark.skipif(importlib.util.find_spec(m) is None, reason=f"needs {m}") for m in ("torch", "keras")}


def run_parity(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    launcher = cwd.parent / f"{cwd.name}-bin" / "parity_launcher.py"
    launcher.parent.mkdir(exist_ok=True)
    launcher.write_text(LAUNCHER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP_") and k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(PARITY_ROOT)
    return subprocess.run(
        [sys.executable, str(launcher), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture
def user_dir(tmp_path):
    home = tmp_path / "project"
    home.mkdir()
    (home / "mymodels.py").write_text(TORCH_MODELS)
    return home


@pytest.mark.slow
@needs["torch"]
def test_a_factory_in_the_working_directory_is_found_without_pythonpath(user_dir):
    done = run_parity(user_dir, "diff", "mymodels:torch_model", "mymodels:twin", "--shape", "2,4")
    assert done.returncode == 0, done.stderr
    assert "✓ PARITY" in done.stdout


def test_a_module_that_is_nowhere_says_where_parity_looked_and_what_was_meant(user_dir):
    done = run_parity(user_dir, "diff", "mymodel:torch_model", "mymodels:twin", "--shape", "2,4")
    assert done.returncode == 2
    assert (
        f"cannot import 'mymodel' for model 'mymodel:torch_model': No module named 'mymodel'. "
        f"parity looked on sys.path and in {str(user_dir.resolve())!r}. Did you mean: mymodels."
    ) in done.stderr
    assert "add that directory to PYTHONPATH" in done.stderr
    assert "frameworks imported: none" in done.stdout


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--inputs", "batch.npy"], "inputs file 'batch.npy' does not exist; give a .npy or .npz file."),
        (["--map", "mapping.toml"], "mapping file 'mapping.toml' does not exist."),
    ],
)
def test_a_missing_inputs_or_mapping_file_fails_before_any_framework_is_imported(user_dir, extra, message):
    # mymodels imports torch: had parity loaded the models first, torch would be in sys.modules
    done = run_parity(user_dir, "diff", "mymodels:torch_model", "mymodels:twin", *extra)
    assert done.returncode == 2
    assert f"parity: InputError: {message}" in done.stderr
    assert "frameworks imported: none" in done.stdout


def test_a_missing_model_file_fails_before_the_other_model_is_loaded(user_dir):
    done = run_parity(user_dir, "diff", "mymodels:torch_model", "converted.onnx")
    assert done.returncode == 2
    assert "parity: ModelError: model file 'converted.onnx' does not exist." in done.stderr
    assert "frameworks imported: none" in done.stdout


@pytest.mark.slow
@needs["keras"]
def test_a_keras_diff_keeps_tensorflow_logging_off_stderr(tmp_path):
    home = tmp_path / "project"
    home.mkdir()
    (home / "mykeras.py").write_text(KERAS_MODELS)
    done = run_parity(home, "diff", "mykeras:keras_model", "mykeras:keras_model")
    assert done.returncode == 0, done.stderr
    assert "✓ PARITY" in done.stdout
    logged = [line for line in done.stderr.splitlines() if is_tensorflow_log(line) or "absl" in line or "cuda" in line]
    assert logged == []


@pytest.mark.parametrize(
    "line",
    [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796173217.221359   16059 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.",
        "E0000 00:00:1796172714.792763   13378 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
        "I0000 00:00:1796172650.768269   13378 cpu_feature_guard.cc:227] This TensorFlow binary is optimized",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.",
    ],
)
def test_tensorflow_log_lines_are_recognised(line):
    assert is_tensorflow_log(line)


@pytest.mark.parametrize("line", ["parity: InputError: mapping file 'm.toml' does not exist.", "Traceback (most recent call last):",
                                  "UserWarning: Do not pass an `input_shape`"])
def test_other_stderr_lines_are_kept(line):
    assert not is_tensorflow_log(line)


def test_the_library_leaves_the_environment_alone():
    code = (
        "import os, sys, parity, parity.cli, parity.plugin\n"
        "parity.cli.build_parser()\n"
        "print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), [type(f).__name__ for f in sys.meta_path if 'Quiet' in type(f).__name__])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP_")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "None []", done.stderr
