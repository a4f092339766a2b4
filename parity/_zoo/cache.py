"""Converted artifacts made once and reused: a directory per content hash, built atomically.

``parity demo --chain`` (through :func:`parity._zoo.onnx2tf_chain.convert_cached`) and the
tests' artifact cache (:mod:`tests.artifacts`, in ``~/.cache/parity/test-artifacts``) share this
layout, so a conversion the tests made serves the demo and the other way round.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable

__all__ = ["content_key", "cached_dir"]


def content_key(*parts: bytes | str | Path) -> str:
    """A hash of the parts (files are read by content, not by name)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            part = part.read_bytes()
        if isinstance(part, str):
            part = part.encode()
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:20]


def cached_dir(root: str | Path, kind: str, key: str, build: Callable[[Path], None]) -> Path:
    """The directory ``root/kind-key``, made by ``build(tmp_dir)`` the first time.

    ``build`` writes into an empty temporary directory that is moved into place only when
    it returns, so an interrupted conversion never leaves a half-made artifact behind."""
    root = Path(root)
    out = root / f"{kind}-{key}"
    if (out / ".complete").exists():
        return out
    tmp = root / f".{kind}-{key}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        (tmp / ".complete").touch()
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
