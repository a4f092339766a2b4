"""Reports as versioned JSON, and back.

The schema is ``{"schema": "parity.report", "version": 1, ...}``.  Output is
deterministic: keys in declared order, no timestamps, floats as Python's shortest
round-trip repr, and non-finite floats as the strings ``"inf"``, ``"-inf"``,
``"nan"`` so the file is strict JSON.  Identical runs give identical bytes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, get_type_hints

from ..errors import ReportFormatError
from ..files import write_text
from ..records import REPORT_RECORDS, SCHEMA_VERSION, Report

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


def _decode(cls: type, data: Any) -> Any:
    """Rebuild dataclass ``cls`` from :func:`encode` output, turning lists back into tuples."""
    hints = get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        kwargs[f.name] = _value(hints[f.name], data[f.name])
    return cls(**kwargs)


_RECORDS = {c.__name__: c for c in REPORT_RECORDS if c is not Report}


def _value(hint: Any, value: Any) -> Any:
    text = str(hint)
    if isinstance(value, str) and value in _NONFINITE and "float" in text:
        return _NONFINITE[value]
    if isinstance(value, dict):
        for name, cls in _RECORDS.items():
            if name in text:
                return _decode(cls, value)
        return {k: (_NONFINITE.get(v, v) if isinstance(v, str) and "float" in text else v) for k, v in value.items()}
    if isinstance(value, list):
        inner = next((cls for name, cls in _RECORDS.items() if name in text), None)
        if inner is not None:
            return tuple(_decode(inner, v) for v in value)
        return tuple(_value(Any, v) if not isinstance(v, list) else tuple(v) for v in value)
    return value


def report_from_dict(data: dict) -> Report:
    """A :class:`Report` from :func:`report_to_dict` output; refuses other schemas and newer versions."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA_NAME:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ReportFormatError(
            f"not a parity report: schema is {found!r}, expected {SCHEMA_NAME!r}. "
            "Give a file written by report.to_json() or `parity diff --json`."
        )
    version = data.get("version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ReportFormatError(
            f"this report has schema version {version!r}; this parity reads versions up to "
            f"{SCHEMA_VERSION}. Upgrade parity to read it."
        )
    body = {k: v for k, v in data.items() if k not in ("schema", "version")}
    report = _decode(Report, body)
    return dataclasses.replace(report, schema_version=version)


def load_report(path: str | Path) -> Report:
    """Read a report saved with ``report.to_json(path)``."""
    path = Path(path)
    if not path.exists():
        raise ReportFormatError(f"report file {str(path)!r} does not exist.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportFormatError(f"report file {str(path)!r} is not valid JSON: {exc}") from exc
    return report_from_dict(data)
