"""Reports as versioned JSON, and back.

The schema is ``{"schema": "parity.report", "version": 1, ...}``.  Output is
deterministic: keys in declared order, no timestamps, floats as Python's shortest
round-trip repr, and non-finite floats as the strings ``"inf"``, ``"-inf"``,
``"nan"`` so the file is strict JSON.  Identical runs give identical bytes.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import math
import re
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

from ..errors import ReportFormatError
from ..files import write_text
from ..records import SCHEMA_VERSION, Report

__all__ = ["encode", "dumps", "report_to_dict", "report_to_json", "report_from_dict", "load_report", "SCHEMA_NAME"]

SCHEMA_NAME = "parity.report"
_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def encode(obj: Any) -> Any:
    """``obj`` (records, dicts, sequences, NumPy scalars) as plain JSON-ready data: records as
    dicts in field order, tuples as lists, non-finite floats as ``"inf"``/``"-inf"``/``"nan"``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    if isinstance(obj, float) or type(obj).__module__ == "numpy":
        if hasattr(obj, "item"):
            obj = obj.item()
        if isinstance(obj, float):
            if math.isnan(obj):
                return "nan"
            if math.isinf(obj):
                return "inf" if obj > 0 else "-inf"
        return obj
    return obj


def report_to_dict(report: Report) -> dict:
    """The report as plain JSON-ready data, with the schema name and version first."""
    body = encode(report)
    body.pop("schema_version", None)
    return {"schema": SCHEMA_NAME, "version": SCHEMA_VERSION, **body}


def dumps(data: Any) -> str:
    """Plain data (from :func:`encode`) as parity's JSON text: indented, strict, one final newline."""
    # no sort_keys: record fields keep their declared order and evidence the order its detector gave;
    # both are deterministic, so identical runs still give identical bytes
    return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def report_to_json(report: Report, path: str | Path | None = None) -> str:
    """The report as JSON text; also written to ``path`` (parents created) when given."""
    text = dumps(report_to_dict(report))
    if path is not None:
        write_text(path, text)
    return text


#: bounds of what a report file may hold: more is not a report parity wrote (names of a few
#: hundred characters, tens of thousands of layers, 64×64 heat maps), and is refused before
#: anything renders it
MAX_DEPTH = 32
MAX_STRING = 100_000
MAX_ITEMS = 1_000_000
MAX_BYTES = 1 << 30
#: JSON's safe integers: a count, shape or index beyond them was not measured
MAX_INTEGER = 2**53

#: fields whose values are counts, sizes or indices (integers ≥ 0)
_COUNTS = frozenset({
    "Metrics.numel", "Metrics.mismatched", "Metrics.nan_a", "Metrics.nan_b", "Metrics.inf_a", "Metrics.inf_b",
    "Metrics.nonfinite_mismatch", "Metrics.max_abs_index", "ModelInfo.param_count", "ErrorMap.rows", "ErrorMap.cols",
    "Histogram.counts_a", "Histogram.counts_b", "Histogram.outside_a", "Histogram.outside_b", "LayerDiff.index",
    "LayerDiff.shape", "LayerDiff.b_shape", "UnmatchedLayer.shape", "InputSpec.shape", "InputsSummary.shapes_a",
    "InputsSummary.shapes_b", "ShapeConflict.a_shape", "ShapeConflict.b_shape",
})
#: fields that must be finite numbers (the others may be "inf"/"nan": an error can be infinite)
_FINITE = frozenset({"LayerDiff.rtol", "LayerDiff.atol", "Report.rtol", "Report.atol", "LayerDiff.confidence",
                     "Metrics.argmax_agreement", "Histogram.edges"})
#: fields between 0 and 1
_SHARES = frozenset({"LayerDiff.confidence", "Metrics.argmax_agreement"})
#: fields that are tolerances (≥ 0)
_TOLERANCES = frozenset({"LayerDiff.rtol", "LayerDiff.atol", "Report.rtol", "Report.atol", "LayerDiff.noise",
                         "LayerDiff.ref_err", "Reference.factor", "Reference.floor", "Suggestion.rtol",
                         "Suggestion.atol", "Suggestion.factor"})


class _Invalid(Exception):
    """A value that is not what the schema says: ``path`` (``$.layers[3].metrics.numel``) and
    what was expected there."""

    def __init__(self, path: str, expected: str, value: Any = None, *, show_value: bool = True,
                 bound: bool = False) -> None:
        super().__init__(path, expected)
        #: ``bound``: the value is of the right kind, out of bounds
        self.path, self.expected, self.bound = path, expected, bound
        self.got = _describe(value) if show_value else None

    def __str__(self) -> str:
        if self.expected.startswith(":"):  # a whole phrase: ": LayerDiff has no field 'evil' …"
            return f"at {self.path}{self.expected}"
        got = f", got {self.got}" if self.got is not None else ""
        return f"at {self.path} expected {self.expected}{got}"


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "…"
    if isinstance(value, str):
        return "a string " + (repr(value) if len(value) <= 40 else repr(value[:37]) + "…")
    if isinstance(value, list):
        return f"an array of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _decode(cls: type, data: Any, path: str = "$") -> Any:
    """Rebuild dataclass ``cls`` from :func:`encode` output at JSON path ``path``, checking every
    field against its type hint (what the published JSON Schema says, which is built from the same
    hints) and the bounds above; raises :class:`_Invalid` at the first field that is not."""
    if not isinstance(data, dict):
        raise _Invalid(path, f"an object ({cls.__name__})", data)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "schema_version"}
    for key in data:
        if key not in fields:
            raise _Invalid(f"{path}.{_key(key)}", f": {cls.__name__} has no such field (its fields: {', '.join(fields)})",
                           show_value=False)
    kwargs = {}
    for name, f in fields.items():
        where = f"{path}.{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _Invalid(where, f": missing ({cls.__name__} requires {name})", show_value=False)
            continue
        kwargs[name] = _value(hints[name], data[name], where, f"{cls.__name__}.{name}")
    record = cls(**kwargs)
    check = _CHECKS.get(cls.__name__)
    if check is not None:
        check(record, path)
    return record


def _histogram_fits(h: Any, path: str) -> None:
    if len(h.edges) < 2:
        raise _Invalid(f"{path}.edges", "at least 2 bin edges", list(h.edges))
    for side in ("counts_a", "counts_b"):
        counts = getattr(h, side)
        if len(counts) != len(h.edges) - 1:
            raise _Invalid(f"{path}.{side}", f"one count per bin ({len(h.edges) - 1})", list(counts))


def _error_map_fits(m: Any, path: str) -> None:
    from ..detail import MAX_MAP

    if not 1 <= len(m.values) <= MAX_MAP:
        raise _Invalid(f"{path}.values", f"1 to {MAX_MAP} rows", list(m.values))
    width = len(m.values[0])
    for i, row in enumerate(m.values):
        if len(row) != width or not 1 <= width <= MAX_MAP:
            raise _Invalid(f"{path}.values[{i}]", f"a row of {width if 1 <= width <= MAX_MAP else f'1 to {MAX_MAP}'} values",
                           list(row))


#: checks across the fields of one record, by record name
_CHECKS = {"Histogram": _histogram_fits, "ErrorMap": _error_map_fits}


def _value(hint: Any, value: Any, path: str, key: str) -> Any:
    """``value`` read as type ``hint`` (``key``: the record field it belongs to, for bounds)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        failures = []
        for option in options:
            try:
                return _value(option, value, path, key)
            except _Invalid as exc:
                failures.append(exc)
        deepest = max(failures, key=lambda e: len(e.path))
        if deepest.path != path or deepest.bound:
            raise deepest  # the value was of the right kind, but it, or something inside it, is out of bounds
        said = [f.expected for f in failures] + (["null"] if type(None) in args else [])
        raise _Invalid(path, " or ".join(said), value)
    if hint is type(None):
        if value is not None:
            raise _Invalid(path, "null", value)
        return None
    if hint is bool:
        if not isinstance(value, bool):
            raise _Invalid(path, "true or false", value)
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON Schema's integer: 1e3 is 1000
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(path, "an integer" + (" ≥ 0" if key in _COUNTS else ""), value)
        if key in _COUNTS and value < 0:
            raise _Invalid(path, "an integer ≥ 0", value, bound=True)
        if abs(value) > MAX_INTEGER:
            raise _Invalid(path, f"an integer of at most 2**53 ({MAX_INTEGER:,})", value, bound=True)
        return value
    if hint is float:
        if isinstance(value, str) and value in _NONFINITE and key not in _FINITE:
            return _NONFINITE[value]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            what = "a finite number" if key in _FINITE else 'a number (or "inf", "-inf", "nan")'
            raise _Invalid(path, what, value)
        number = float(value)
        if key in _FINITE and not math.isfinite(number):
            raise _Invalid(path, "a finite number", value, bound=True)
        if key in _SHARES and not 0.0 <= number <= 1.0:
            raise _Invalid(path, "a number from 0 to 1", value, bound=True)
        if key in _TOLERANCES and number < 0:
            raise _Invalid(path, "a number ≥ 0", value, bound=True)
        return number
    if hint is str:
        if not isinstance(value, str):
            raise _Invalid(path, "a string", value)
        if len(value) > MAX_STRING:
            too_long = _Invalid(path, f"a string of at most {MAX_STRING:,} characters", show_value=False, bound=True)
            too_long.got = f"{len(value):,}"
            raise too_long
        return value
    if dataclasses.is_dataclass(hint):
        return _decode(hint, value, path)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, list):
            raise _Invalid(path, "an array", value)
        if len(value) > MAX_ITEMS:
            raise _Invalid(path, f"an array of at most {MAX_ITEMS:,} items", value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_value(args[0], v, f"{path}[{i}]", key) for i, v in enumerate(value))
        if len(value) != len(args):
            raise _Invalid(path, f"an array of {len(args)}", value)
        return tuple(_value(a, v, f"{path}[{i}]", key) for i, (a, v) in enumerate(zip(args, value)))
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise _Invalid(path, "an object", value)
        if len(value) > MAX_ITEMS:
            raise _Invalid(path, f"an object of at most {MAX_ITEMS:,} entries", value)
        inner = args[1] if args else Any
        return {k: _value(inner, v, f"{path}.{_key(k)}", key) for k, v in value.items()}
    if hint is Any:
        return value
    raise TypeError(f"no JSON reading for {hint!r}")  # pragma: no cover - a record field of a new type


def _key(key: str) -> str:
    """An object's key as a step of a JSON path in a message (a long one cut)."""
    return key if len(key) <= 40 else key[:37] + "…"


def _check_report(report: Report) -> None:
    """Bounds across fields: each layer's ``index`` within the layer list."""
    n = len(report.layers)
    for i, d in enumerate(report.layers):
        if not 0 <= d.index < n:
            raise _Invalid(f"$.layers[{i}].index", f"an index of the layer list (0 to {n - 1})", d.index)


def _nesting(text: str) -> None:
    """Refuse arrays and objects nested deeper than :data:`MAX_DEPTH` before parsing (the parser
    would recurse once per level: 200,000 levels are a RecursionError, not a report)."""
    depth = 0
    for match in _BRACKETS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise ReportFormatError(
                    f"nested more than {MAX_DEPTH} levels deep (at character {match.start():,}); "
                    f"a parity report nests at most {MAX_DEPTH}"
                )
        elif token in "]}":
            depth -= 1


_BRACKETS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (parity writes non-finite numbers as the strings \"inf\", \"-inf\", \"nan\")")


def report_from_dict(data: Any, *, source: str | None = None) -> Report:
    """A :class:`Report` from :func:`report_to_dict` output, checked field by field against the
    published JSON Schema and the bounds of a real report; anything else is a
    :class:`ReportFormatError` naming the field by its JSON path (``source``, the file, starts
    the message when given).  Other schemas and newer versions are refused."""
    where = f"report {source!r}" if source is not None else "the report"
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_NAME:
        found = data.get("schema") if isinstance(data, dict) else _describe(data)
        raise ReportFormatError(
            f"{where} is not a parity report: $.schema is {found!r}, expected {SCHEMA_NAME!r}. "
            "Give a file written by report.to_json() or `parity diff --json`."
        )
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ReportFormatError(f"{where} is not readable: at $.version expected an integer ≥ 1, got {_describe(version)}.")
    if version > SCHEMA_VERSION:
        raise ReportFormatError(
            f"{where} has schema version {version}; this parity reads versions up to "
            f"{SCHEMA_VERSION}. Upgrade parity to read it."
        )
    body = {k: v for k, v in data.items() if k not in ("schema", "version")}
    try:
        report = _decode(Report, body)
        _check_report(report)
    except _Invalid as exc:
        raise ReportFormatError(f"{where} is not a valid parity report: {exc}.") from None
    return dataclasses.replace(report, schema_version=version)


def load_report(path: str | Path) -> Report:
    """Read a report saved with ``report.to_json(path)``, validated (:func:`report_from_dict`):
    a file that is not one is a :class:`ReportFormatError` naming the field that is wrong."""
    path = Path(path)
    name = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise ReportFormatError(f"report {name!r} is {size:,} bytes; a parity report is at most {MAX_BYTES:,}.")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ReportFormatError(f"report file {name!r} does not exist.") from None
    except IsADirectoryError:
        raise ReportFormatError(f"report {name!r} is a directory, not a report file.") from None
    except OSError as exc:
        raise ReportFormatError(f"report {name!r} cannot be read: {exc.strerror or exc}.") from None
    if not raw.strip():
        raise ReportFormatError(f"report {name!r} is empty: not a parity report (write one with `parity diff --json`).")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReportFormatError(f"report {name!r} is not UTF-8 text (byte {exc.start:,}): not a parity report.") from None
    try:
        _nesting(text)
    except ReportFormatError as exc:
        raise ReportFormatError(f"report {name!r} is not a valid parity report: {exc}.") from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise ReportFormatError(f"report {name!r} is not valid JSON: {exc}.") from None
    return report_from_dict(data, source=name)
