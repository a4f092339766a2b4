"""Shared set-up for the tests that run real converters.

Converted artifacts are cached between runs on the same machine, keyed by a
content hash of everything that determines them (:mod:`tests.artifacts`: in
``$PARITY_TEST_CACHE`` or ``~/.cache/parity/test-artifacts``).

A converter that is not installed skips its tests with the install line — except
under ``make test`` / CI (``PARITY_REQUIRE_CONVERTERS=1``), where a missing
converter is a failure: CI must prove the integration, not skip it.
"""

from __future__ import annotations

import importlib
import os

import pytest

from tests.artifacts import CACHE, cached_dir, content_key  # noqa: F401  (the tests take them from here)
from tests.corpus._torchvision import make_importable as make_torchvision_importable


# timm, onnx2torch and transformers import torchvision: make it importable beside the CPU torch
make_torchvision_importable()

def require(module: str, install: str):
    """Import ``module`` or skip (fail under PARITY_REQUIRE_CONVERTERS=1) saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        message = f"{module} is not installed ({exc}); install it with: {install} (or run `make install`)"
        if os.environ.get("PARITY_REQUIRE_CONVERTERS") == "1":
            pytest.fail(message)
        pytest.skip(message, allow_module_level=True)  # called at module level and in tests alike


def match_rate(report) -> float:
    """The share of model A's layers compared with a tensor of B (``Report.coverage``)."""
    compared, total = report.coverage
    return compared / total if total else 0.0
