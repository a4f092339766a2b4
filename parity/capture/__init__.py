"""Backends that run a model once and record its intermediate tensors.

:func:`backend_for` picks the backend for a live object.  Only frameworks
already imported by the caller are considered, so ``import parity`` and this
module never import torch or TensorFlow.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from ..errors import ModelError
from .base import Backend

__all__ = ["Backend", "backend_for"]

# (module that must already be imported — or one of several —, backend module, backend class)
_BACKENDS = (
    # saved programs first: a ScriptModule is an nn.Module too, but runs no hooks
    ("torch", "parity.capture.torchgraph", "TorchScriptBackend"),
    ("torch", "parity.capture.torchgraph", "ExportedProgramBackend"),
    ("torch", "parity.capture.torch", "TorchBackend"),
    ("onnx", "parity.capture.onnx", "OnnxBackend"),
    ("tensorflow", "parity.capture.tfgraph", "TFGraphBackend"),
    # always considered: it imports neither TensorFlow nor LiteRT to check for a TFLiteModel or
    # flatbuffer bytes, which no other backend takes
    ("builtins", "parity.capture.tflite", "TFLiteBackend"),
    (("keras", "tf_keras"), "parity.capture.keras", "KerasBackend"),  # Keras 3, and Keras 2 either way
)


def backend_for(model: Any, **options: Any) -> Backend:
    """The backend that runs ``model``; a :class:`ModelError` for anything else."""
    if isinstance(model, Backend):
        return model
    for frameworks, module_name, class_name in _BACKENDS:
        if not any(f in sys.modules for f in ((frameworks,) if isinstance(frameworks, str) else frameworks)):
            continue
        cls = getattr(importlib.import_module(module_name), class_name)
        if cls.accepts(model):
            return cls(model, **options)
    kind = f"{type(model).__module__}.{type(model).__qualname__}"
    raise ModelError(
        f"parity cannot run an object of type {kind}: expected a torch.nn.Module or a "
        "keras.Model (Keras 3 or tf_keras; Sequential, functional or subclassed), a saved TorchScript/ExportedProgram, an "
        "onnx.ModelProto, a TF graph (parity.load('frozen.pb') or a SavedModel directory) or a TFLite flatbuffer (parity.load('model.tflite')). Pass the model object itself, "
        "not its outputs or weights."
    )
