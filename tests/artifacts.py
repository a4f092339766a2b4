"""The test-artifact cache: converted models made once per content and reused across runs.

A conversion is keyed by a content hash of everything that determines it (the source
model's bytes, the converter's version, its options), so a second ``make test`` does not pay
for onnx2tf again, and a changed input never reuses a stale artifact.  The cache lives in
``$PARITY_TEST_CACHE`` or ``~/.cache/parity/test-artifacts``, a directory ``kind-key`` per
artifact, built atomically by :func:`parity._zoo.cache.cached_dir` — the layout
``parity demo --chain`` uses too, so a conversion the tests made serves the demo and the
other way round.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from parity._zoo import cache

__all__ = ["CACHE", "cached_dir", "content_key"]

CACHE = Path(os.environ.get("PARITY_TEST_CACHE", Path.home() / ".cache" / "parity" / "test-artifacts"))

#: a hash of the parts (files read by content, not by name)
content_key = cache.content_key


def cached_dir(kind: str, key: str, build: Callable[[Path], None]) -> Path:
    """The directory ``CACHE/kind-key``, made by ``build(tmp_dir)`` the first time."""
    return cache.cached_dir(CACHE, kind, key, build)
