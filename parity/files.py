"""Writing parity's output files.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> write_text(d / "reports" / "a.txt", "ok").read_text(encoding="utf-8")
'ok'
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_text"]


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` as UTF-8, creating its parent directories; returns the path.

    A path that cannot be written (a read-only directory, a file where a directory should be,
    a full disk) is an :class:`~parity.errors.OutputError` naming the path and the cause."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        from .errors import OutputError

        raise OutputError(path, exc) from exc
    return path
