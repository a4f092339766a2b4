"""Make PyPI's torchvision importable beside this machine's CPU torch.

PyPI's torchvision is built against a CUDA torch, and beside torch==2.13.0+cpu its compiled ops
do not load: ``import torchvision`` then dies in its meta registrations (``operator
torchvision::nms does not exist``).  onnx2torch and timm import torchvision unconditionally and
transformers does whenever it is installed.  Declaring the two op schemas it looks up lets its
pure-Python part import; its ops (nms, roi_align) stay unusable, and nothing here needs them.
"""

from __future__ import annotations

import importlib.util

_SCHEMAS = None  # the torch.library.Library holding the declarations (kept alive)


def make_importable() -> None:
    """Declare ``torchvision::nms`` / ``qnms`` unless torchvision's own ops loaded (idempotent)."""
    global _SCHEMAS
    if _SCHEMAS is not None:
        return
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("torchvision") is None:
        return
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 - present when torchvision's own ops loaded
        return
    except (AttributeError, RuntimeError):
        pass
    _SCHEMAS = torch.library.Library("torchvision", "DEF")
    _SCHEMAS.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _SCHEMAS.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
