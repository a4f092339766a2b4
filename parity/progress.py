"""A progress bar for long comparisons — only where a person watches.

Shown on an interactive terminal (stderr), never when output is piped, in CI
logs or under pytest; transient, so it leaves nothing behind in the terminal.
It appears only once a step has taken more than a second.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Iterator

__all__ = ["steps", "shows_progress"]

_DELAY = 1.0


class _Steps:
    def __init__(self, total: int, title: str) -> None:
        self.total, self.title = total, title
        self.start = time.perf_counter()
        self.progress = None
        self.task = None
        self.done = 0

    def advance(self, label: str) -> None:
        """Mark the previous step done and say what runs now."""
        self.done += 1
        if self.progress is None and time.perf_counter() - self.start > _DELAY:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn(f"[bold]{self.title}[/]"), BarColumn(), TextColumn("{task.description}"),
                TimeElapsedColumn(), console=Console(stderr=True), transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task(label, total=self.total, completed=self.done)
        elif self.progress is not None:
            self.progress.update(self.task, description=label, completed=self.done)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


class _Silent:
    def advance(self, label: str) -> None:
        pass

    def close(self) -> None:
        pass


def _wanted() -> bool:
    if "PYTEST_CURRENT_TEST" in os.environ or os.environ.get("CI"):
        return False
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def shows_progress() -> bool:
    """Whether a progress bar shows here: an interactive terminal, not CI, a pipe or pytest."""
    return _wanted()


@contextmanager
def steps(total: int, title: str = "parity") -> Iterator[_Steps | _Silent]:
    bar: _Steps | _Silent = _Steps(total, title) if _wanted() else _Silent()
    try:
        yield bar
    finally:
        bar.close()
