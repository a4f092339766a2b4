"""Backends that run a model once and record its intermediate tensors.

:func:`backend_for` picks the backend for a live object.  Only frameworks
already imported by the caller are considered, so ``import parity`` and this
module never import torch or TensorFlow.  :func:`loader_for` picks the backend
class that reads a saved file by its suffix (:attr:`Backend.suffixes`); importing
a backend module imports no framework, reading the file does.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .base import Backend

__all__ = ["Backend", "backend_for", "is_model", "loaders", "loader_for", "load_suffixes", "load_formats"]

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


def _candidates(model: Any):
    for frameworks, module_name, class_name in _BACKENDS:
        if not any(f in sys.modules for f in ((frameworks,) if isinstance(frameworks, str) else frameworks)):
            continue
        yield getattr(importlib.import_module(module_name), class_name)


def is_model(obj: Any) -> bool:
    """Whether some backend runs ``obj`` (a live model, not a class or factory that makes one)."""
    return isinstance(obj, Backend) or any(cls.accepts(obj) for cls in _candidates(obj))


def backend_for(model: Any, **options: Any) -> Backend:
    """The backend that runs ``model``; a :class:`ModelError` for anything else."""
    if isinstance(model, Backend):
        return model
    for cls in _candidates(model):
        if cls.accepts(model):
            return cls(model, **options)
    kind = f"{type(model).__module__}.{type(model).__qualname__}"
    raise ModelError(
        f"parity cannot run an object of type {kind}: expected a torch.nn.Module or a "
        "keras.Model (Keras 3 or tf_keras; Sequential, functional or subclassed), a saved TorchScript/ExportedProgram, an "
        "onnx.ModelProto, a TF graph (parity.load('frozen.pb') or a SavedModel directory) or a TFLite flatbuffer (parity.load('model.tflite')). Pass the model object itself, "
        "not its outputs or weights."
    )


# the backends that read files (backend module, backend class), in the order a user is told the formats
_LOADERS = (
    ("parity.capture.keras", "KerasBackend"),
    ("parity.capture.torchgraph", "ExportedProgramBackend"),
    ("parity.capture.torch", "TorchBackend"),
    ("parity.capture.onnx", "OnnxBackend"),
    ("parity.capture.tflite", "TFLiteBackend"),
    ("parity.capture.tfgraph", "TFGraphBackend"),
)

#: the suffix a directory is taken by (``Backend.suffixes`` of a backend that reads directories)
DIRECTORY = "/"


def loaders() -> list[type[Backend]]:
    """The backend classes that read saved models (their modules imported; no framework)."""
    return [getattr(importlib.import_module(module_name), class_name) for module_name, class_name in _LOADERS]


def loader_for(path: str | Path) -> type[Backend] | None:
    """The backend class whose :meth:`Backend.load` reads ``path`` (by its suffix, or
    :data:`DIRECTORY` for a directory), or ``None``."""
    path = Path(path)
    key = DIRECTORY if path.is_dir() else path.suffix.lower()
    return next((cls for cls in loaders() if key in cls.suffixes), None)


def load_suffixes() -> tuple[str, ...]:
    """Every file suffix some backend reads (directories aside)."""
    return tuple(s for cls in loaders() for s in cls.suffixes if s != DIRECTORY)


def load_formats() -> str:
    """What parity reads by path, as a user is told it: ``.keras/.h5 (Keras), .pt2 (torch.export), …``."""
    return ", ".join(getattr(cls, "formats", "/".join(cls.suffixes)) for cls in loaders())
