"""Model pairs built in code: the seed's ConvNet, a MobileNet-v1 block, a ResNet basic block,
their hand conversions to Keras (with knobs for the classic bugs), offline training data, and
helpers that run the real converters (torch → ONNX → onnx2tf; Keras → tf2onnx → onnx2torch).

Private: used by ``parity demo``, the tests and the benchmarks, not part of parity's API (the
leading underscore says so; ``parity demo`` is its only user inside the package).  Importing
this package imports no framework; each name loads its module (and torch / Keras) on first use.

>>> from parity._zoo import ConvNet, to_keras          # doctest: +SKIP
>>> keras_model = to_keras(ConvNet().eval(), bn_epsilon="keras-default")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ConvNet": "torch_models",
    "MobileNetBlock": "torch_models",
    "BasicBlock": "torch_models",
    "randomize_bn": "torch_models",
    "DeepResNet": "torch_models",
    "calibrate_bn": "torch_models",
    "to_keras": "keras_twins",
    "to_keras_convnet_sequential": "keras_twins",
    "load_digits_28": "digits",
    "train_convnet": "digits",
    "MobileNetV1": "mobilenet_v1",
    "port_keras_mobilenet": "mobilenet_v1",
    "resnet50_pair": "resnet50",
    # real converters (they must be installed; see README, "Converters tested")
    "tiny_mobilenet": "onnx2tf_chain",
    "export_onnx": "onnx2tf_chain",
    "convert_onnx2tf": "onnx2tf_chain",
    "small_keras_mobilenet": "tf2torch",
    "keras_to_onnx": "tf2torch",
    "onnx_to_torch": "tf2torch",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
