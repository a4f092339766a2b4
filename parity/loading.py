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

from .errors import InputError, ModelError, StateDictWithoutFactory, closest

__all__ = ["load_model", "load_inputs", "load_mapping", "load", "looks_like_spec", "require_files", "StateDictWithoutFactory"]


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
    from .capture import is_model

    return is_model(obj)


def looks_like_spec(text: str, base_dir: str | Path | None = None) -> bool:
    """Whether ``text`` is ``"package.module:attr"`` rather than a path to a saved model (whose
    part before a colon ends with a suffix some backend loads).  A file or directory of that name
    (under ``base_dir``, or the current directory) is a path: ``net:v2.onnx`` is never imported."""
    from .capture import load_suffixes

    if ":" in text and _under(text, base_dir).exists():
        return False
    module, sep, attr = text.partition(":")
    return bool(sep) and bool(attr) and "/" not in module and "\\" not in module and not module.endswith(
        load_suffixes()
    )




#: the keys a model table ``{path = ..., ...}`` may have
MODEL_TABLE_KEYS = frozenset({"path", "factory", "trust", "safe_mode", "weights_only", "signature", "inputs", "outputs", "keras"})


def load_model(spec: Any, base_dir: str | Path | None = None, *, trust: bool = False) -> Any:
    """A live model from ``"package.module:factory"``, a path, a table
    ``{path = "net.pth", factory = "pkg.mod:Net"}``, or a model object (returned as is).
    ``trust=True`` lets a model file run code (see :mod:`parity.trust`); a table's own ``trust``
    key does so for its file."""
    if isinstance(spec, Mapping) and "path" in spec:
        unknown = set(spec) - MODEL_TABLE_KEYS
        if unknown:
            raise ModelError(
                f"a model table needs 'path' (and optionally 'factory', 'trust', 'safe_mode', 'weights_only', "
                f"'signature'); got keys {sorted(spec)}."
            )
        options = {k: v for k, v in spec.items() if k != "path"}
        options["trust"] = bool(options.get("trust", False)) or trust
        path = _under(spec["path"], base_dir)
        if isinstance(options.get("factory"), str):
            _require_file(path)  # before the factory's module (and its framework) is imported
            options["factory"] = _resolve(options["factory"], "factory", _dirs(base_dir))
        return load(path, **options)
    if not isinstance(spec, (str, Path)):
        return spec
    text = str(spec)
    if looks_like_spec(text, base_dir):
        obj = _resolve(text, "model", _dirs(base_dir))
        return obj() if callable(obj) and not _is_model(obj) else obj
    return load(_under(text, base_dir), trust=trust)


def require_files(spec: Any, base_dir: str | Path | None = None) -> None:
    """Raise the :class:`ModelError` :func:`load_model` would for a model file that does not
    exist, without loading anything: a typo then costs no framework import."""
    if isinstance(spec, Mapping) and "path" in spec:
        spec = spec["path"]
    if isinstance(spec, (str, Path)) and not looks_like_spec(str(spec), base_dir):
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


def load(path: str | Path, *, trust: bool = False, **options: Any) -> Any:
    """A model saved at ``path``, read by the backend that takes its suffix
    (:func:`parity.capture.loader_for`):

    - ``.keras``/``.h5``: Keras, loaded with ``safe_mode=True`` (``safe_mode=False`` to opt in to code);
      an H5 file of Keras 2 that Keras 3 cannot rebuild (``TFOpLambda`` layers) with ``tf_keras``;
    - a SavedModel directory: its TensorFlow graph, or with ``keras=True`` the live ``tf_keras``
      model that Keras 2's ``model.save(dir)`` wrote;
    - ``.pb``/``.pbtxt``: a frozen GraphDef;
    - ``.pt2``: a ``torch.export`` ExportedProgram, captured with its module names;
    - ``.pt``/``.pth``/``.bin``: a TorchScript archive, or a ``state_dict`` loaded with
      ``torch.load(weights_only=True)`` into ``factory()`` (``"package.module:Class"`` or a callable);
    - ``.onnx``, ``.tflite``.

    A file that would run code (TorchScript calling file I/O, a pickle, a graph op outside the
    pure-math allow-list, a Keras custom object or Lambda) raises :class:`UntrustedModel` unless
    ``trust=True`` (see :mod:`parity.trust`).  Anything else raises a :class:`ModelError` that says
    what is supported.

    >>> parity.load("model.pt2")                     # doctest: +SKIP
    >>> parity.load("scripted.pt", trust=True)       # doctest: +SKIP"""
    from .capture import load_formats, loader_for

    path = Path(path)
    _require_file(path)
    loader = loader_for(path)
    if loader is None:
        raise ModelError(
            f"cannot load {str(path)!r}: parity loads {load_formats()} by path. Give the model as "
            "'package.module:factory' instead, or pass the live model object."
        )
    from .trust import check, loader_options

    check(path, trust=trust, **options)  # before anything in the file is read by its framework
    options = loader_options(path, {**options, "trust": trust})
    if isinstance(options.get("factory"), str):
        options["factory"] = _resolve(options["factory"], "factory")
    return loader.load(path, **options)


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
    if looks_like_spec(text, base_dir):
        obj = _resolve(text, "inputs", _dirs(base_dir))
        return obj() if callable(obj) else obj
    path = Path(text)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    if not path.exists():
        raise InputError(f"inputs file {str(path)!r} does not exist; give a .npy or .npz file.")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise InputError(f"inputs file {str(path)!r} cannot be read: {exc}") from exc
        raise InputError(
            f"inputs file {str(path)!r} holds pickled Python objects (an object array), not numbers; "
            "parity never unpickles inputs (a pickle can run code). Save plain numeric arrays: "
            "np.save(path, np.asarray(x, dtype=np.float32))."
        ) from exc
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
