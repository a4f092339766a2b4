"""Repository-level pytest set-up.

TensorFlow logs a great deal at import; tests quiet it here rather than the
library quieting a user's environment.  The parity plugin is registered by its
``pytest11`` entry point once installed; listing it here makes the repository's
own suite work from a plain checkout as well.

The suite's tiers (markers in pyproject.toml) are assigned here by file, so a test
added to one of these files joins its tier: ``make check`` runs what is neither
``slow`` nor ``converters`` nor ``browser`` nor ``ray``; ``make test`` runs everything.
Single slow tests elsewhere carry ``@pytest.mark.slow`` themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

pytest_plugins = ["parity.plugin"]

TESTS = Path(__file__).resolve().parent / "tests"

# Files whose tests need TensorFlow/Keras (or build ResNet-50s, run the demo, convert
# chains): TF's import and Keras model building alone cost several seconds per file on two
# cores, and most of these files run for a minute or more.
SLOW_FILES = {
    "test_api.py", "test_capture_keras.py", "test_capture_tfgraph.py", "test_capture_tflite.py",
    "test_capture_torchgraph.py", "test_chain.py", "test_cli.py", "test_demo.py", "test_diagnose_runs.py",
    "test_diagnose_stats.py", "test_diagnose_values.py", "test_diff_pairs.py", "test_drift.py", "test_evaluate.py",
    "test_formats.py", "test_inputs.py", "test_mobilenet_pb.py", "test_properties_deep.py", "test_replay.py",
    "test_conflicts.py", "test_reference.py", "test_repro.py", "test_resnet50.py", "test_rnn.py",
    "test_search.py", "test_streaming.py", "test_tf_keras.py", "test_weights.py",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        marker = _file_marker(Path(str(item.path)).resolve())
        if marker is not None:
            item.add_marker(getattr(pytest.mark, marker))


# Files that start a local Ray cluster (once per session; slow to start on two cores).
RAY_FILES = {"test_evaluate_ray.py"}


def _file_marker(path: Path) -> str | None:
    for tier in ("integration", "corpus"):  # real converters, real architectures
        if TESTS / tier in path.parents or path == TESTS / tier:
            return "converters"
    if path.parent == TESTS and path.name == "test_browser.py":
        return "browser"
    if path.parent == TESTS and path.name in RAY_FILES:
        return "ray"
    if path.parent == TESTS and path.name in SLOW_FILES:
        return "slow"
    return None


def pytest_ignore_collect(collection_path, config):
    """Under a ``-m`` expression that deselects a whole file's tier (``make check``), the file
    is not even imported: importing the slow files would import torch and TensorFlow, which
    costs more than the fast tier's tests themselves."""
    marker = _file_marker(Path(str(collection_path)).resolve())
    expr = config.getoption("markexpr", "")
    if marker is None or not expr:
        return None
    try:
        from _pytest.mark.expression import Expression
    except ImportError:  # pytest moved it: collect, and let -m deselect as usual
        return None
    try:
        selected = Expression.compile(expr).evaluate(_Marks(marker))
    except Exception:  # a malformed expression: pytest reports it itself
        return None
    return True if not selected else None


class _Marks:
    """The matcher pytest's mark expressions take (called with a name, and with keyword
    arguments by newer pytest versions)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self, name: str, **kwargs) -> bool:
        return name == self.marker and not kwargs
