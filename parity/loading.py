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
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import InputError, ModelError, closest

__all__ = ["load_model", "load_inputs", "load_mapping", "load", "require_files", "StateDictWithoutFactory"]


def _resolve(spec: str, what: str, search: Sequence[str | Path] = ()) -> Any:
    """The object ``"package.module:attr"`` names.  A module that is not importable from
    ``sys.path`` is looked for in ``search`` and then the current directory, as ``python -m``
    would find it; a directory that holds it is appended to ``sys.path`` (appended: it can
    shadow nothing that was importable before)."""
    module_name, _, attr = spec.partition(":")
    module = _import(module_name, spec, what, search)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            hint = closest(part, names, label="Did you mean", cutoff=0.5)
            raise ModelError(f"{module_name!r} has no attribute {attr!r} ({what} {spec!r}).{hint}")
        obj = getattr(obj, part)
    return obj


def _import(module_name: str, spec: str, what: str, search: Sequence[str | Path]) -> Any:
    top = module_name.split(".")[0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (exc.name == module_name or module_name.startswith(exc.name + ".")):
            raise ModelError(f"importing {module_name!r} for {what} {spec!r} failed: {exc}.") from exc
        missing: Exception = exc
    except ImportError as exc:
        raise ModelError(f"cannot import {module_name!r} for {what} {spec!r}: {exc}") from exc
    dirs = _search_dirs(search)
    for directory in dirs:
        if (directory / f"{top}.py").is_file() or (directory / top).is_dir():
            if str(directory) not in sys.path:
                sys.path.append(str(directory))
            importlib.invalidate_caches()
            try:
                return importlib.import_module(module_name)
            except ImportError as exc:
                raise ModelError(
                    f"importing {module_name!r} from {str(directory)!r} for {what} {spec!r} failed: {exc}."
                ) from exc
    nearby = sorted(
        {p.stem for d in dirs if d.is_dir() for p in d.glob("*.py")}
        | {p.name for d in dirs if d.is_dir() for p in d.iterdir() if (p / "__init__.py").is_file()}
    )
    hint = closest(top, nearby, label="Did you mean", cutoff=0.5)
    raise ModelError(
        f"cannot import {module_name!r} for {what} {spec!r}: {missing}. parity looked on sys.path and in "
        f"{', '.join(repr(str(d)) for d in dirs)}.{hint} Run parity from the directory that holds "
        f"{top}.py, or add that directory to PYTHONPATH (PYTHONPATH=/path/to/dir parity ...), "
        "or install your project (pip install -e .)."
    ) from missing


def _search_dirs(search: Sequence[str | Path]) -> list[Path]:
    dirs: list[Path] = []
    for d in (*search, Path.cwd()):
        resolved = Path(d).resolve()
        if resolved not in dirs:
            dirs.append(resolved)
    return dirs


def _is_model(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    keras = sys.modules.get("keras")
    onnx = sys.modules.get("onnx")
    tfgraph = sys.modules.get("parity.capture.tfgraph")
    tflite = sys.modules.get("parity.capture.tflite")
    return bool(
        (tfgraph is not None and isinstance(obj, tfgraph.TFGraph))
        or (tflite is not None and isinstance(obj, tflite.TFLiteModel))
        or (torch is not None and isinstance(obj, (torch.nn.Module, torch.export.ExportedProgram)))
        or (keras is not None and isinstance(obj, keras.layers.Layer))
        or ("tf_keras" in sys.modules and isinstance(obj, sys.modules["tf_keras"].layers.Layer))
        or (onnx is not None and isinstance(obj, onnx.ModelProto))
    )


def looks_like_spec(text: str) -> bool:
    """Whether ``text`` reads as ``"package.module:attr"`` rather than a path to a file."""
    module, sep, attr = text.partition(":")
    return bool(sep) and bool(attr) and "/" not in module and "\\" not in module and not module.endswith(
        (".pt", ".pt2", ".pth", ".bin", ".keras", ".h5", ".onnx", ".tflite", ".pb")
    )


def load_model(spec: Any, base_dir: str | Path | None = None) -> Any:
    """A live model from ``"package.module:factory"``, a path, a table
    ``{path = "net.pth", factory = "pkg.mod:Net"}``, or a model object (returned as is)."""
    if isinstance(spec, Mapping) and "path" in spec:
        unknown = set(spec) - {"path", "factory", "safe_mode", "weights_only", "signature", "inputs", "outputs", "keras"}
        if unknown:
            raise ModelError(
                f"a model table needs 'path' (and optionally 'factory', 'safe_mode', 'weights_only', "
                f"'signature'); got keys {sorted(spec)}."
            )
        options = {k: v for k, v in spec.items() if k != "path"}
        path = _under(spec["path"], base_dir)
        if isinstance(options.get("factory"), str):
            _require_file(path)  # before the factory's module (and its framework) is imported
            options["factory"] = _resolve(options["factory"], "factory", _dirs(base_dir))
        return load(path, **options)
    if not isinstance(spec, (str, Path)):
        return spec
    text = str(spec)
    if looks_like_spec(text):
        obj = _resolve(text, "model", _dirs(base_dir))
        return obj() if callable(obj) and not _is_model(obj) else obj
    return load(_under(text, base_dir))


def require_files(spec: Any, base_dir: str | Path | None = None) -> None:
    """Raise the :class:`ModelError` :func:`load_model` would for a model file that does not
    exist, without loading anything: a typo then costs no framework import."""
    if isinstance(spec, Mapping) and "path" in spec:
        spec = spec["path"]
    if isinstance(spec, (str, Path)) and not looks_like_spec(str(spec)):
        _require_file(_under(spec, base_dir))


def _require_file(path: Path) -> None:
    if not path.exists():
        raise ModelError(
            f"model file {str(path)!r} does not exist. Give a path to a saved model or "
            "'package.module:factory'."
        )


def _dirs(base_dir: str | Path | None) -> list[str | Path]:
    return [base_dir] if base_dir is not None else []


def _under(path: Any, base_dir: str | Path | None) -> Path:
    path = Path(str(path))
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    return path


_FORMATS = (
    ".keras/.h5 (Keras), .pt2 (torch.export), .pt/.pth (TorchScript, or a state_dict with factory=), "
    ".onnx, .tflite, .pb (frozen GraphDef), a SavedModel directory"
)


def load(path: str | Path, **options: Any) -> Any:
    """A model saved at ``path``, by what the path is:

    - ``.keras``/``.h5``: Keras, loaded with ``safe_mode=True`` (``safe_mode=False`` to opt in to code);
      an H5 file of Keras 2 that Keras 3 cannot rebuild (``TFOpLambda`` layers) with ``tf_keras``;
    - a SavedModel directory: its TensorFlow graph, or with ``keras=True`` the live ``tf_keras``
      model that Keras 2's ``model.save(dir)`` wrote;
    - ``.pt2``: a ``torch.export`` ExportedProgram, captured with its module names;
    - ``.pt``/``.pth``/``.bin``: a TorchScript archive, or a ``state_dict`` loaded with
      ``torch.load(weights_only=True)`` into ``factory()`` (``"package.module:Class"`` or a callable).

    Anything else raises a :class:`ModelError` that says what is supported."""
    path = Path(path)
    _require_file(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        if options.pop("keras", False):
            return _load_keras2_saved_model(path, **options)
        if (path / "saved_model.pb").exists():
            from .capture.tfgraph import TFGraph

            return TFGraph.from_saved_model(path, **options)  # signature=
        raise ModelError(
            f"{str(path)!r} is a directory without saved_model.pb: parity loads a directory only as a "
            "TensorFlow SavedModel. Give the model file itself."
        )
    if suffix in (".pb", ".pbtxt"):
        from .capture.tfgraph import TFGraph

        if path.name == "saved_model.pb":
            return TFGraph.from_saved_model(path.parent, **options)
        return TFGraph.from_frozen_pb(path, **options)  # inputs=, outputs=
    if suffix in (".keras", ".h5"):
        import keras

        safe = options.pop("safe_mode", True)
        try:
            return keras.saving.load_model(path, safe_mode=safe, **options)
        except ValueError as exc:
            if "safe_mode" in str(exc) or ("lambda" in str(exc).lower() and "TFOpLambda" not in str(exc)):
                raise ModelError(
                    f"{str(path)!r} holds code (a Lambda layer) that Keras refuses to load in safe mode. "
                    "If you trust the file, opt in with parity.load(path, safe_mode=False)."
                ) from exc
            if suffix != ".h5" or str(keras.__version__).startswith("2.") or not _saved_by_keras2(path):
                raise  # (where keras is Keras 2 itself, tf_keras would not do better)
            return _load_with_tf_keras(path, exc, safe, **options)
    if suffix == ".pt2":
        import torch

        try:
            return torch.export.load(str(path))
        except Exception as exc:
            raise ModelError(
                f"{str(path)!r} is not a torch.export program ({type(exc).__name__}: {exc}). "
                "Write one with torch.export.save(torch.export.export(model, args), path)."
            ) from exc
    if suffix in (".pt", ".pth", ".bin"):
        return _load_torch_file(path, **options)
    if suffix == ".onnx":
        from .capture.onnx import load_onnx

        return load_onnx(path)
    if suffix == ".tflite":
        from .capture.tflite import TFLiteModel

        return TFLiteModel.from_path(path)
    raise ModelError(
        f"cannot load {str(path)!r}: parity loads {_FORMATS} by path. Give the model as "
        "'package.module:factory' instead, or pass the live model object."
    )


def _saved_by_keras2(path: Path) -> bool:
    """Whether an HDF5 model file says it was written by Keras 2 (tf_keras, or keras ≤ 2.15)."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            version = f.attrs.get("keras_version", b"")
    except (ImportError, OSError):
        return False
    version = version.decode() if isinstance(version, bytes) else str(version)
    return version.startswith("2.")


def _load_keras2_saved_model(path: Path, **options: Any) -> Any:
    """A SavedModel written by Keras 2's ``model.save(dir)``, as the live tf_keras model (its
    layers, names and weights) rather than as a graph; Keras 3 cannot load these."""
    if not (path / "keras_metadata.pb").exists():
        raise ModelError(
            f"{str(path)!r} is not a SavedModel written by Keras 2's model.save (it has no keras_metadata.pb), "
            "so there is no Keras model to rebuild. Load it as a TensorFlow graph: parity.load(path) without keras=True."
        )
    try:
        import tf_keras
    except ImportError as exc:
        raise ModelError(
            f"{str(path)!r} is a Keras 2 SavedModel; loading it as a Keras model needs Keras 2: "
            "pip install tf-keras==<your tensorflow version>. Or load it as a graph: parity.load(path)."
        ) from exc
    return tf_keras.models.load_model(path, compile=False, **options)


def _load_with_tf_keras(path: Path, keras3_error: Exception, safe: bool, **options: Any) -> Any:
    """A Keras 2 H5 file that Keras 3 cannot rebuild (``TFOpLambda`` layers from
    ``tf.*`` calls, as nobuco writes them), loaded with Keras 2 itself: ``tf_keras``."""
    try:
        import tf_keras
    except ImportError:
        raise ModelError(
            f"{str(path)!r} was saved by Keras 2 and Keras 3 cannot load it ({type(keras3_error).__name__}: "
            f"{str(keras3_error).strip()[:300]}). Install Keras 2 for your TensorFlow, e.g. "
            "pip install tf-keras==<your tensorflow version>, and parity loads it with tf_keras."
        ) from keras3_error
    try:
        return tf_keras.models.load_model(path, compile=False, safe_mode=safe, **options)
    except ValueError as exc:
        if "safe_mode" in str(exc):
            raise ModelError(
                f"{str(path)!r} holds code (a Lambda layer) that Keras refuses to load in safe mode. "
                "If you trust the file, opt in with parity.load(path, safe_mode=False)."
            ) from exc
        raise ModelError(
            f"{str(path)!r} was saved by Keras 2 and neither Keras 3 ({str(keras3_error).strip()[:200]}) "
            f"nor tf_keras ({type(exc).__name__}: {str(exc).strip()[:300]}) can load it. Save the model "
            "again, or pass the live model object."
        ) from exc


class StateDictWithoutFactory(ModelError):
    """A ``.pth`` holds a state_dict and no factory was given to build the model it fits.
    ``path`` and ``keys`` let a caller (the CLI) say how to give one in its own terms."""

    def __init__(self, path: Path, keys: Sequence[str], how: str | None = None) -> None:
        self.path, self.keys = path, list(keys)
        shown = ", ".join(self.keys[:4]) + (", …" if len(self.keys) > 4 else "")
        how = how or (
            "parity.load(path, factory='package.module:Net'), "
            "or in a pair table a = { path = \"...\", factory = \"package.module:Net\" }"
        )
        super().__init__(
            f"{str(path)!r} is a state_dict ({len(self.keys)} tensors: {shown}): weights without the model's code. "
            f"Give the class that builds the model: {how}."
        )


def _is_torchscript(path: Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def _load_torch_file(path: Path, *, factory: Any = None, weights_only: bool = True) -> Any:
    import torch

    if _is_torchscript(path):
        return torch.jit.load(str(path), map_location="cpu")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=weights_only)
    except Exception as exc:
        if weights_only and ("safe_globals" in str(exc) or "Unsupported global" in str(exc)):
            raise ModelError(
                f"{str(path)!r} holds pickled Python objects, not only tensors, and "
                "torch.load(weights_only=True) refuses them (pickles can run code). If you trust the "
                "file, opt in with parity.load(path, weights_only=False) (or weights_only = false in "
                "the model table); better, save a state_dict and give factory=."
            ) from exc
        raise ModelError(f"{str(path)!r} is not a file torch.load can read: {type(exc).__name__}: {exc}") from exc
    if _is_model(state):
        return state  # a whole pickled module (weights_only=False)
    if isinstance(state, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in state and _is_model(state[key]):
                return state[key].eval()  # a checkpoint holding the module itself (weights_only=False)
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(hasattr(v, "shape") for v in state.values()):
        raise ModelError(f"{str(path)!r} holds a {type(state).__name__}, not a state_dict or a TorchScript module.")
    keys = list(state)
    if factory is None:
        raise StateDictWithoutFactory(path, keys)
    build = _resolve(factory, "factory") if isinstance(factory, str) else factory
    model = build() if callable(build) else build
    if not _is_model(model):
        raise ModelError(f"factory {factory!r} made a {type(model).__name__}, not a torch.nn.Module.")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ModelError(
            f"the state_dict in {str(path)!r} does not fit {type(model).__name__}: "
            + (f"missing {', '.join(missing[:6])}{', …' if len(missing) > 6 else ''}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected {', '.join(unexpected[:6])}{', …' if len(unexpected) > 6 else ''}" if unexpected else "")
            + ". Check the factory builds the same architecture (num_batches_tracked is ignored on purpose)."
        )
    return model.eval()


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
    if looks_like_spec(text):
        obj = _resolve(text, "inputs", _dirs(base_dir))
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
    """A layer mapping from an inline table or a ``.toml``/``.json``/``.yaml`` file of ``A name = B name``
    (a top-level ``mapping`` table is looked into)."""
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
        if path.suffix not in (".json", ".toml", ".yaml", ".yml"):
            raise InputError(f"{where} must be .json, .toml or .yaml (a table of A layer name = B layer name).")
        text = path.read_text(encoding="utf-8")
        import tomllib

        import yaml

        try:
            if path.suffix == ".json":
                data = json.loads(text)
            elif path.suffix == ".toml":
                data = tomllib.loads(text)
            else:
                data = yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:  # JSON and TOML errors are ValueErrors
            raise InputError(f"{where} cannot be read as {path.suffix[1:].upper()}: {exc}") from exc
        if isinstance(data, dict) and isinstance(data.get("mapping"), dict):
            data = data["mapping"]
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise InputError(f"{where} must be a flat table of A layer name = B layer name (strings).")
    return data
