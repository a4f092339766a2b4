"""Names are data: how text that comes from a model or a report is shown.

A layer, tensor, input or op name, a file name, a diagnosis that quotes one — all come from
files parity did not write and may hold an escape sequence that erases the verdict line
(``"\\x1b[2K\\r✔ models match"``), a bidi override that reorders what follows it
(U+202E, Trojan Source), or an invisible character that makes two names look alike.
:func:`shown` makes every such character visible as its Python escape (``\\x1b``,
``\\u202e``), so what the reader sees is what the file holds.  The terminal, the HTML page
(which also isolates names in ``<bdi>``), the plugin's messages and the CLI's errors show
names through it; JSON keeps the exact name.

>>> shown("conv\\x1b[2K\\u202e1")
'conv\\\\x1b[2K\\\\u202e1'
>>> shown("features.0/Conv2D:0")
'features.0/Conv2D:0'
"""

from __future__ import annotations

import dataclasses
import unicodedata
from typing import Any, TypeVar

__all__ = ["shown", "shown_lines", "displayed", "HIDDEN_CATEGORIES"]

#: Unicode categories made visible: controls (C0, C1, DEL, tab, newline), format characters (bidi
#: embeddings/overrides/isolates and marks, zero-width space/joiners, BOM, soft hyphen, tags),
#: surrogates, unassigned code points, and line/paragraph separators
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"})

T = TypeVar("T")


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def shown(name: str) -> str:
    """``name`` with every control, format, separator or unassigned character written as its
    escape (``\\x1b``, ``\\u202e``, ``\\U000e0041``); everything else as is.

    A backslash is left alone, so ``shown`` of its own result changes nothing (renderers may
    apply it twice) — the exact name is in the JSON."""
    if name.isascii() and name.isprintable():
        return name
    if not any(unicodedata.category(ch) in HIDDEN_CATEGORIES for ch in name):
        return name  # the same object: displayed() copies only what changes
    return "".join(_escape(ch) if unicodedata.category(ch) in HIDDEN_CATEGORIES else ch for ch in name)


def shown_lines(text: str) -> str:
    """:func:`shown` of each line of ``text``, its newlines kept: for messages of several lines."""
    return "\n".join(shown(line) for line in text.split("\n"))


def displayed(record: T) -> T:
    """A copy of ``record`` (a report, or any tree of frozen dataclasses, tuples, lists and dicts)
    with :func:`shown` applied to every string in it, keys included: what a renderer renders.

    Records without a hidden character are returned as they are (same objects), so rendering a
    clean report copies nothing."""
    return _displayed(record)


def _displayed(value: Any) -> Any:
    if isinstance(value, str):
        return shown(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for f in dataclasses.fields(value):
            if not f.init:
                continue
            old = getattr(value, f.name)
            new = _displayed(old)
            if new is not old:
                changes[f.name] = new
        return dataclasses.replace(value, **changes) if changes else value
    if isinstance(value, (tuple, list)):
        items = [_displayed(v) for v in value]
        if all(n is o for n, o in zip(items, value)):
            return value
        return type(value)(items)
    if isinstance(value, dict) or (hasattr(value, "items") and hasattr(value, "keys")):
        pairs = [(_displayed(k), _displayed(v)) for k, v in value.items()]
        if all(nk is k and nv is v for (nk, nv), (k, v) in zip(pairs, value.items())):
            return value
        return dict(pairs)
    return value
