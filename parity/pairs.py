"""Pairs declared in configuration, for ``pytest --parity``.

```toml
[tool.parity.pairs.mnist]                  # in pyproject.toml, or [pairs.mnist] in parity.toml
a = "models/convnet.pt2"                   # a path, or "package.module:factory"
b = "models/convnet.keras"
inputs = { shape = [8, 1, 28, 28], seed = 0 }   # or "data/batch.npy", or "package.module:function"
data = "data/val.npz"                      # optional: a whole dataset instead (parity.evaluate); with
labels = "data/val_labels.npy"             #   labels (unless in the .npz), min_agreement = 0.999,
max_accuracy_drop = 0.005                  #   layers = "outputs", batch_size = 64
mapping = "models/mapping.toml"            # optional: a file or an inline table
rtol = 1e-4                                # optional, with atol
atol = 1e-6
tolerances = { "layer4.*" = [1e-2, 1e-4] } # optional per-layer overrides
trust = true                               # optional: let these model files run code (TorchScript, pickles)
```

Paths are relative to the file that declares them, and so are ``package.module`` specs
that are not importable otherwise (the file's directory, then the current one, is searched
for ``package/`` or ``module.py``).  A malformed table raises
:class:`PairConfigError` naming the file, the pair and the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import PairConfigError
from .loading import MODEL_TABLE_KEYS
from .reference import REFERENCES

__all__ = ["PairSpec", "PairConfigError", "find_pair_config", "load_pairs"]

_KEYS = {"a", "b", "inputs", "mapping", "rtol", "atol", "tolerances", "seed", "min_argmax_agreement", "input_map",
         "trust", "reference", *("data", "labels", "min_agreement", "max_accuracy_drop", "layers", "batch_size")}


@dataclass(frozen=True)
class PairSpec:
    name: str
    a: Any
    b: Any
    source: Path
    inputs: Any = None
    mapping: Any = None
    rtol: float | None = None
    atol: float | None = None
    tolerances: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    min_argmax_agreement: float | None = None
    #: A's input name = B's, where the names differ (see ``parity.diff(input_map=...)``)
    input_map: Mapping[str, str] | None = None
    #: let both model files run code (TorchScript, pickles, Keras custom objects; see parity.trust)
    trust: bool = False
    #: what judges each layer: "dtype" (the tolerance table) or "float64" (see parity.reference)
    reference: str | None = None
    #: a dataset (path) to run with parity.evaluate instead of one batch, and its options
    data: Any = None
    evaluate_options: Mapping[str, Any] = field(default_factory=dict)

    def run(self, *, rtol: float | None = None, atol: float | None = None, seed: int | None = None,
            max_memory: int | str | None = None, reference: str | None = None):
        """Load both models and the inputs, and compare them (options given here win)."""
        from .api import diff_with
        from .loading import load_inputs, load_mapping, load_model, require_files
        from .pipeline import DiffOptions

        base = self.source.parent
        use_rtol, use_atol = (rtol, atol) if rtol is not None or atol is not None else (self.rtol, self.atol)
        # the cheap parts first: a missing file fails before a model (and its framework) loads
        mapping = load_mapping(self.mapping, base)
        require_files(self.a, base)
        require_files(self.b, base)
        inputs = load_inputs(self.inputs, base)
        options = DiffOptions.build(
            where=f"pair {self.name!r}", mapping=mapping, rtol=use_rtol, atol=use_atol,
            tolerances=self.tolerances or None, min_argmax_agreement=self.min_argmax_agreement,
            seed=self.seed if seed is None else seed, max_memory=max_memory, input_map=self.input_map,
            reference=reference or self.reference,
        )
        if self.data is not None:
            from .evaluation import evaluate

            opts = dict(self.evaluate_options)
            if "labels" in opts:
                opts["labels"] = str(base / opts["labels"])
            return evaluate(self.a, self.b, str(base / self.data), mapping=mapping, tolerances=options.tolerances,
                            input_map=self.input_map, trust=self.trust, base_dir=base, **opts)
        a, b = load_model(self.a, base, trust=self.trust), load_model(self.b, base, trust=self.trust)
        return diff_with(a, b, inputs, options)


def find_pair_config(root: str | Path) -> Path | None:
    """``parity.toml`` in ``root``, else ``pyproject.toml`` if it has ``[tool.parity]``."""
    root = Path(root)
    own = root / "parity.toml"
    if own.is_file():
        return own
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError:
            return None  # not ours to judge; pytest reads it too
        if "parity" in data.get("tool", {}):
            return pyproject
    return None


def load_pairs(path: str | Path) -> list[PairSpec]:
    """The pairs declared in ``path`` (``pyproject.toml`` or ``parity.toml``), in file order."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise PairConfigError(f"{path}: not valid TOML: {exc}") from exc
    table_name = "pairs" if path.name == "parity.toml" else "tool.parity.pairs"
    section = data.get("pairs", {}) if path.name == "parity.toml" else data.get("tool", {}).get("parity", {}).get("pairs", {})
    if not isinstance(section, dict):
        raise PairConfigError(f"{path}: [{table_name}] must be a table of pairs, e.g. [{table_name}.mnist].")
    pairs = []
    for name, table in section.items():
        where = f"{path}: [{table_name}.{name}]"
        if not isinstance(table, dict):
            raise PairConfigError(f"{where} must be a table with at least 'a' and 'b'.")
        unknown = sorted(set(table) - _KEYS)
        if unknown:
            raise PairConfigError(
                f"{where} has unknown key {unknown[0]!r}; known keys: {', '.join(sorted(_KEYS))}."
            )
        for key in ("a", "b"):
            if key not in table:
                raise PairConfigError(f"{where} is missing key {key!r} (a path or 'package.module:factory').")
            value = table[key]
            if isinstance(value, dict):
                if "path" not in value or set(value) - (MODEL_TABLE_KEYS - {"keras"}):
                    raise PairConfigError(
                        f"{where} key {key!r} as a table needs 'path' and may have 'factory', 'trust', "
                        f"'safe_mode', 'weights_only', 'signature'; got keys {sorted(value)}."
                    )
                if "trust" in value and not isinstance(value["trust"], bool):
                    raise PairConfigError(f"{where} key {key!r}: 'trust' must be true or false, got {value['trust']!r}.")
            elif not isinstance(value, str):
                raise PairConfigError(
                    f"{where} key {key!r} must be a path, 'package.module:factory' or a table "
                    f"{{ path = ..., factory = ... }}, got {value!r}."
                )
        if ("rtol" in table) != ("atol" in table):
            given = "rtol" if "rtol" in table else "atol"
            missing = "atol" if given == "rtol" else "rtol"
            raise PairConfigError(
                f"{where} gives key {given!r} without {missing!r}; give both, or the default {missing} "
                "would silently still apply."
            )
        if "trust" in table and not isinstance(table["trust"], bool):
            raise PairConfigError(f"{where} key 'trust' must be true or false, got {table['trust']!r}.")
        for key in ("rtol", "atol", "min_argmax_agreement"):
            if key in table and not isinstance(table[key], (int, float)):
                raise PairConfigError(f"{where} key {key!r} must be a number, got {table[key]!r}.")
        if "reference" in table and table["reference"] not in REFERENCES:
            raise PairConfigError(
                f"{where} key 'reference' must be \"dtype\" (the tolerance table) or \"float64\" (a float64 twin "
                f"judges each layer), got {table['reference']!r}."
            )
        inputs = table.get("inputs")
        if inputs is not None and not isinstance(inputs, (str, dict)):
            raise PairConfigError(
                f"{where} key 'inputs' must be a path, 'package.module:function' or a table "
                f"{{ shape = [...], seed = 0 }}, got {inputs!r}."
            )
        if isinstance(inputs, dict) and "shape" not in inputs:
            raise PairConfigError(f"{where} key 'inputs' table needs 'shape', e.g. {{ shape = [8, 1, 28, 28], seed = 0 }}.")
        mapping = table.get("mapping")
        if mapping is not None and not isinstance(mapping, (str, dict)):
            raise PairConfigError(f"{where} key 'mapping' must be a file path or an inline table, got {mapping!r}.")
        input_map = table.get("input_map")
        if input_map is not None and not (
            isinstance(input_map, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in input_map.items())
        ):
            raise PairConfigError(
                f"{where} key 'input_map' must be an inline table of A input name = B input name, e.g. "
                f'{{ input_ids = "token_ids" }}, got {input_map!r}.'
            )
        for key in ("data", "labels", "layers"):
            if key in table and not isinstance(table[key], str):
                raise PairConfigError(f"{where} key {key!r} must be a string (a path; layers: all, outputs or globs), "
                                      f"got {table[key]!r}.")
        for key in ("min_agreement", "max_accuracy_drop"):
            if key in table and not (isinstance(table[key], (int, float)) and 0 <= table[key] <= 1):
                raise PairConfigError(f"{where} key {key!r} must be a fraction in [0, 1], got {table[key]!r}.")
        if "batch_size" in table and not (isinstance(table["batch_size"], int) and table["batch_size"] > 0):
            raise PairConfigError(f"{where} key 'batch_size' must be a positive integer, got {table['batch_size']!r}.")
        extra = sorted(k for k in ("labels", "min_agreement", "max_accuracy_drop", "layers", "batch_size") if k in table)
        if extra and "data" not in table:
            raise PairConfigError(f"{where} gives {', '.join(extra)} without 'data'; they apply to a dataset run "
                                  "(data = \"val.npz\").")
        if "data" in table and "reference" in table:
            raise PairConfigError(f"{where} gives 'reference' with 'data'; a dataset run judges each layer by the "
                                  "tolerance table (drop 'reference', or compare one batch with 'inputs').")
        if "data" in table and "inputs" in table:
            raise PairConfigError(f"{where} gives both 'inputs' (one batch) and 'data' (a dataset); give one.")
        tolerances = table.get("tolerances", {})
        if not isinstance(tolerances, dict):
            raise PairConfigError(f"{where} key 'tolerances' must be a table of layer name/glob = [rtol, atol].")
        pairs.append(
            PairSpec(
                name=str(name),
                a=table["a"],
                b=table["b"],
                source=path,
                inputs=inputs,
                mapping=mapping,
                rtol=table.get("rtol"),
                atol=table.get("atol"),
                tolerances=tolerances,
                seed=int(table.get("seed", 0)),
                min_argmax_agreement=table.get("min_argmax_agreement"),
                input_map=input_map,
                trust=bool(table.get("trust", False)),
                reference=table.get("reference"),
                data=table.get("data"),
                evaluate_options={k: table[k] for k in extra},
            )
        )
    return pairs
