"""Reruns of a model that failed, said in the report.

Beyond the two captures, parity runs the models again for its diagnoses: A's layer inputs for
replay, a float64 twin for the noise floor, a second capture for the determinism check.  A
model that fails only then (a stateful forward, a one-shot iterator, a time-out) still gets
its comparison, which needs none of them; what the failed rerun would have told is missing,
and the report says which rerun failed and why (:func:`rerun_failed`, collected by
:func:`collecting` around one comparison).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

__all__ = ["collecting", "rerun_failed"]

_NOTES: ContextVar[list[str] | None] = ContextVar("parity_failed_reruns", default=None)


@contextmanager
def collecting() -> Iterator[list[str]]:
    """The notes of the reruns that fail inside this block, in order, each said once."""
    notes: list[str] = []
    token = _NOTES.set(notes)
    try:
        yield notes
    finally:
        _NOTES.reset(token)


def rerun_failed(model: str, purpose: str, exc: BaseException, consequence: str) -> None:
    """Note that rerunning ``model`` ("model A") for ``purpose`` raised ``exc``, and what the
    report lacks because of it."""
    notes = _NOTES.get()
    if notes is None:
        return
    cause: BaseException = exc
    while cause.__cause__ is not None and type(cause).__module__.startswith("parity"):
        cause = cause.__cause__  # "running torch model … failed: RuntimeError: …": say the RuntimeError
    text = str(cause).strip().splitlines()[0][:300] if str(cause).strip() else ""
    note = (
        f"rerunning {model} {purpose} failed ({type(cause).__name__}{': ' + text if text else ''}); "
        f"{consequence}. The first run succeeded and its comparison stands (a model that fails only "
        "when called again may keep state between calls)."
    )
    if note not in notes:
        notes.append(note)
