"""Shared set-up for the tests that run real converters.

Converted artifacts are cached between runs on the same machine, keyed by a
content hash of everything that determines them (the source model's bytes, the
converter's version, its options), so a second ``make test`` does not pay for
onnx2tf again.  The cache lives in ``$PARITY_TEST_CACHE`` or
``~/.cache/parity/test-artifacts``.

A converter that is not installed skips its tests with the install line — except
under ``make test`` / CI (``PARITY_REQUIRE_CONVERTERS=1``), where a missing
converter is a failure: CI must prove the integration, not skip it.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable

import pytest

from parity.zoo.cache import cached_dir as _cached_dir
from parity.zoo.cache import content_key  # noqa: F401  (the tests take it from here)


def _torchvision_importable() -> None:
    """PyPI's torchvision is built against a CUDA torch, and beside this machine's
    torch==2.13.0+cpu its compiled ops do not load: ``import torchvision`` then dies in
    its meta registrations (``operator torchvision::nms does not exist``).  onnx2torch
    imports torchvision unconditionally and transformers does whenever it is installed.
    Declaring the two op schemas it looks up lets its pure-Python part import; its ops
    (nms, roi_align) stay unusable, and none of these tests need them."""
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("torchvision") is None:
        return
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 - present when torchvision's own ops loaded
        return
    except (AttributeError, RuntimeError):
        pass
    global _TORCHVISION_SCHEMAS
    _TORCHVISION_SCHEMAS = torch.library.Library("torchvision", "DEF")
    _TORCHVISION_SCHEMAS.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_SCHEMAS.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


_TORCHVISION_SCHEMAS = None
_torchvision_importable()

CACHE = Path(os.environ.get("PARITY_TEST_CACHE", Path.home() / ".cache" / "parity" / "test-artifacts"))


def require(module: str, install: str):
    """Import ``module`` or skip (fail under PARITY_REQUIRE_CONVERTERS=1) saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        message = f"{module} is not installed ({exc}); install it with: {install} (or run `make install`)"
        if os.environ.get("PARITY_REQUIRE_CONVERTERS") == "1":
            pytest.fail(message)
        pytest.skip(message, allow_module_level=True)  # called at module level and in tests alike


def cached_dir(kind: str, key: str, build: Callable[[Path], None]) -> Path:
    """The directory ``CACHE/kind-key``, made by ``build(tmp_dir)`` the first time (see
    :func:`parity.zoo.cache.cached_dir`)."""
    return _cached_dir(CACHE, kind, key, build)


def match_rate(report) -> float:
    """The share of model A's layers compared with a tensor of B (``Report.coverage``)."""
    compared, total = report.coverage
    return compared / total if total else 0.0
