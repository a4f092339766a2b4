"""`import parity` (and its pytest plugin) must not import torch or TensorFlow."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "tensorflow", "keras", "tf_keras", "onnx", "onnxruntime", "sklearn")


def _imported_after(statement: str) -> set[str]:
    code = (
        f"import sys\n{statement}\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_import_parity_is_light():
    assert _imported_after("import parity") == set()


def test_plugin_cli_and_zoo_modules_are_light():
    assert _imported_after("import parity.plugin, parity.cli, parity._zoo, parity.report.console") == set()


def test_capture_dispatch_only_considers_imported_frameworks():
    # asking which backend runs a plain object must not import a framework to find out
    statement = (
        "import parity\n"
        "from parity.capture import backend_for\n"
        "try:\n    backend_for(object())\nexcept parity.ModelError:\n    pass"
    )
    assert _imported_after(statement) == set()


def test_finding_the_loader_of_a_file_imports_no_framework():
    # every backend module is imported to read its suffixes; none imports its framework for that
    statement = (
        "from parity.capture import load_formats, loader_for\n"
        "assert loader_for('model.onnx').__name__ == 'OnnxBackend'\n"
        "load_formats()"
    )
    assert _imported_after(statement) == set()
