"""Keeping TensorFlow's start-up logging out of the terminal of parity's own programs.

Importing TensorFlow prints C++ log lines to stderr — "All log messages before
absl::InitializeLog() is called are written to STDERR", "Could not find cuda
drivers", the CPU-feature notice — some of them before ``TF_CPP_MIN_LOG_LEVEL``
is read, so that variable alone cannot silence them.  The ``parity`` command,
its demo and ``pytest --parity`` call :func:`quiet_tensorflow` before
TensorFlow is imported (unless ``--verbose``): it sets ``TF_CPP_MIN_LOG_LEVEL=3``
where the user set nothing, and filters those lines out of what the import of
``tensorflow`` writes to stderr; every other line is passed on.

Used as a library, parity calls none of this: the user's environment and
stderr are theirs.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from typing import Any, Iterator, Sequence

__all__ = ["quiet_tensorflow", "is_tensorflow_log"]

# glog/absl's prefix: severity, MMDD, time, thread id, file:line]
_LOG_LINE = re.compile(
    r"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w./+-]+:\d+\]"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)"
)


def is_tensorflow_log(line: str) -> bool:
    """Whether ``line`` is one of TensorFlow's (or absl's) C++ log lines."""
    return bool(_LOG_LINE.match(line))


def quiet_tensorflow() -> None:
    """Set ``TF_CPP_MIN_LOG_LEVEL=3`` unless the user set it, and filter TensorFlow's C++ log
    lines out of stderr while ``tensorflow`` is imported.  Call it before TensorFlow is imported
    (afterwards there is nothing left to filter); calling it again does nothing more."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietImport) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietImport())


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as the other finders would, with a loader that filters stderr."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: Any = None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: the module is imported, or its import failed
        spec = importlib.util.find_spec(name)  # the other finders' answer
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _FilteredLoader(spec.loader)
        return spec


class _FilteredLoader(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        with _stderr_without_tensorflow_logs():
            try:
                self.loader.exec_module(module)
            finally:
                module.__loader__ = self.loader
                if module.__spec__ is not None:
                    module.__spec__.loader = self.loader


@contextlib.contextmanager
def _stderr_without_tensorflow_logs() -> Iterator[None]:
    """File descriptor 2 goes to a temporary file for the duration; on the way out its lines,
    less TensorFlow's log lines, are written to the real stderr."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):  # no usable fd 2 (e.g. a closed or replaced stream)
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode("utf-8", errors="replace")
            kept = "".join(line for line in text.splitlines(keepends=True) if not is_tensorflow_log(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()
