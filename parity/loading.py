"""Turning what a user writes (in a CLI argument or a config table) into models and inputs.

A model is ``"package.module:factory"`` (a class or function returning the
model, or the model object itself) or a path to a saved model.  Inputs are a
``.npy``/``.npz`` path, ``"package.module:function"``, or a table
``{shape = [...], seed = 0, dtype = "float32"}`` for a seeded random batch.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import InputError, ModelError

__all__ = ["load_model", "load_inputs", "load_mapping", "load"]


def _resolve(spec: str, what: str) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"cannot import {module_name!r} for {what} {spec!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"{module_name!r} has no attribute {attr!r} ({what} {spec!r}).")
        obj = getattr(obj, part)
    return obj


def _is_model(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    keras = sys.modules.get("keras")
    return bool(
        (torch is not None and isinstance(obj, torch.nn.Module))
        or (keras is not None and isinstance(obj, keras.layers.Layer))
    )


def _looks_like_spec(text: str) -> bool:
    module, sep, attr = text.partition(":")
    return bool(sep) and bool(attr) and "/" not in module and "\\" not in module and not module.endswith(
        (".pt", ".pt2", ".keras", ".h5", ".onnx", ".tflite", ".pb")
    )


def load_model(spec: Any, base_dir: str | Path | None = None) -> Any:
    """A live model from ``"package.module:factory"``, a path, or a model object (returned as is)."""
    if not isinstance(spec, (str, Path)):
        return spec
    text = str(spec)
    if _looks_like_spec(text):
        obj = _resolve(text, "model")
        return obj() if callable(obj) and not _is_model(obj) else obj
    path = Path(text)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    return load(path)


def load(path: str | Path, **options: Any) -> Any:
    """A model saved at ``path``: a Keras ``.keras``/``.h5`` file (loaded with
    ``safe_mode=True``) or a ``torch.export`` program ``.pt2`` (unflattened, so
    the original module names survive).  Other formats raise a :class:`ModelError`
    that says what is supported."""
    path = Path(path)
    if not path.exists():
        raise ModelError(
            f"model file {str(path)!r} does not exist. Give a path to a saved model or "
            "'package.module:factory'."
        )
    suffix = path.suffix.lower()
    if suffix in (".keras", ".h5"):
        import keras

        safe = options.pop("safe_mode", True)
        try:
            return keras.saving.load_model(path, safe_mode=safe, **options)
        except ValueError as exc:
            if "safe_mode" in str(exc) or "lambda" in str(exc).lower():
                raise ModelError(
                    f"{str(path)!r} holds code (a Lambda layer) that Keras refuses to load in safe mode. "
                    "If you trust the file, opt in with parity.load(path, safe_mode=False)."
                ) from exc
            raise
    if suffix == ".pt2":
        import torch

        program = torch.export.load(str(path))
        return torch.export.unflatten(program)
    raise ModelError(
        f"cannot load {str(path)!r}: parity loads .keras/.h5 and .pt2 files by path today "
        "(TorchScript, ONNX, TFLite, SavedModel and frozen graphs are on the way). Give the model "
        "as 'package.module:factory' instead."
    )


def load_inputs(spec: Any, base_dir: str | Path | None = None) -> Any:
    """Inputs from a path, a ``module:function`` spec, a ``{shape, seed, dtype}`` table, or as given."""
    if spec is None or isinstance(spec, np.ndarray):
        return spec
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"shape", "seed", "dtype", "scale"}
        if "shape" not in spec or unknown:
            raise InputError(
                f"an inputs table needs 'shape' (and optionally 'seed', 'dtype', 'scale'); got keys {sorted(spec)}."
            )
        rng = np.random.default_rng(int(spec.get("seed", 0)))
        shapes = spec["shape"]
        if not isinstance(shapes, (list, tuple)) or not shapes:
            raise InputError(f"inputs shape must be a list of sizes, got {shapes!r}.")
        scale = float(spec.get("scale", 1.0))
        dtype = str(spec.get("dtype", "float32"))
        if isinstance(shapes[0], (list, tuple)):  # several inputs
            return [(rng.standard_normal(tuple(s)) * scale).astype(dtype) for s in shapes]
        return (rng.standard_normal(tuple(shapes)) * scale).astype(dtype)
    text = str(spec)
    if _looks_like_spec(text):
        obj = _resolve(text, "inputs")
        return obj() if callable(obj) else obj
    path = Path(text)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    if not path.exists():
        raise InputError(f"inputs file {str(path)!r} does not exist; give a .npy or .npz file.")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    raise InputError(f"inputs file {str(path)!r} is not .npy or .npz.")


def load_mapping(spec: Any, base_dir: str | Path | None = None) -> dict[str, str] | None:
    """A layer mapping from an inline table or a ``.toml``/``.json`` file of ``A name = B name``."""
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        data: Any = dict(spec)
        where = "inline mapping"
    else:
        path = Path(str(spec))
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        where = f"mapping file {str(path)!r}"
        if not path.exists():
            raise InputError(f"{where} does not exist.")
        if path.suffix == ".json":
            data = json.loads(path.read_text())
        elif path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(path.read_text())
            data = data.get("mapping", data)
        else:
            raise InputError(f"{where} must be .json or .toml (a table of A layer name = B layer name).")
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise InputError(f"{where} must be a flat table of A layer name = B layer name (strings).")
    return data
