"""The one family of errors parity raises.

Every error is a :class:`ParityError`; each subclass also derives from the
matching builtin, so ``except ValueError`` keeps working for callers that do
not know parity.  Messages say what was expected, what came, and what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

__all__ = [
    "ParityError",
    "InputError",
    "InputShapeUnknown",
    "DataError",
    "LabelsError",
    "ModelError",
    "MappingError",
    "ToleranceError",
    "CaptureError",
    "SpillError",
    "AlignmentError",
    "ReportFormatError",
    "OutputError",
    "OptionError",
    "StageNotFound",
    "PairConfigError",
    "ParityMismatch",
    "PairDiverged",
    "ConversionError",
    "ConverterNotInstalled",
    "StateDictWithoutFactory",
    "UntrustedModel",
    "ModelNotShippable",
    "closest",
]


def closest(name: str, names, *, label: str = "Closest", cutoff: float = 0.6) -> str:
    """``" Closest: a, b."`` — the names nearest ``name`` for a not-found message, or ``""``."""
    from difflib import get_close_matches

    close = get_close_matches(name, list(names), n=5, cutoff=cutoff)
    return f" {label}: {', '.join(close)}." if close else ""


class ParityError(Exception):
    """Base class of every error raised by parity."""


class InputError(ParityError, ValueError):
    """The inputs given for a comparison are unusable (shape, dtype, NaN...)."""


class InputShapeUnknown(InputError):
    """No inputs were given, and no model declares a complete input shape to make a random
    batch from.  ``declared`` maps each model (``"A"``, ``"B"``) to what it does declare."""

    def __init__(self, message: str, declared: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.declared = dict(declared or {})


class DataError(InputError):
    """A dataset handed to :func:`parity.evaluate` cannot be read as batches of samples (a missing
    file, an unknown kind of data, inputs of different lengths, a batch that fails A's inputs)."""


class LabelsError(DataError):
    """The labels of a dataset do not fit it: not integer class ids, not one per sample, or
    given twice (in the batches and as ``labels=``)."""


class ModelError(ParityError, TypeError):
    """An object handed in as a model is not one parity can run."""


class UntrustedModel(ModelError):
    """A model file would run code (TorchScript, a pickle, a graph op that writes files, a Keras
    custom object) and was not trusted.  ``path`` is the file, ``found`` what it would run; the
    message says how to opt in (``trust=True``, ``--trust``, ``trust = true``)."""

    def __init__(self, message: str, *, path: Any = None, found: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.path, self.found = path, list(found)


class ModelNotShippable(ModelError):
    """A live model was given to an engine whose workers load the models themselves (Ray): they
    need a path or a ``"package.module:factory"`` spec instead."""


class MappingError(ParityError, LookupError):
    """A layer mapping names a layer the model does not have."""

    def __str__(self) -> str:  # LookupError would quote the message like a key
        return str(self.args[0]) if self.args else ""


class ToleranceError(ParityError, ValueError):
    """A tolerance was given in a form parity refuses (e.g. rtol without atol)."""


class CaptureError(ParityError, RuntimeError):
    """Running a model to record its intermediate tensors failed."""


class SpillError(ParityError, OSError):
    """Captured values could not be written to the spill directory (disk full, read-only)."""


class AlignmentError(ParityError, ValueError):
    """Two traces cannot be aligned at all (nothing comparable)."""


class ReportFormatError(ParityError, ValueError):
    """A saved report cannot be read: not JSON, another schema, a newer version, or a field
    that is not what the schema says (the message names it by its JSON path)."""


class OutputError(ParityError, OSError):
    """A report (or mapping) file cannot be written; ``path`` is the file, ``cause`` the
    :class:`OSError` that stopped it."""

    def __init__(self, path: Any, cause: OSError) -> None:
        self.path, self.cause = path, cause
        if isinstance(cause, (FileExistsError, NotADirectoryError)):  # a file where a directory goes
            why = f"{str(cause.filename or Path(path).parent)!r} is not a directory"
        else:
            why = cause.strerror or type(cause).__name__
            if cause.filename and str(cause.filename) != str(path):
                why += f" ({cause.filename})"
        super().__init__(f"cannot write {str(path)!r}: {why}. Give a path in a directory you can write to.")

    def __str__(self) -> str:  # OSError would format its own "[Errno …]" text
        return str(self.args[0])


class OptionError(ParityError, TypeError):
    """A function was given a keyword argument it does not take (the message lists those it
    does), or an option's value is not one it accepts."""


class StageNotFound(ParityError, KeyError):
    """A chain was asked for a stage (by name or index) it does not have."""

    def __str__(self) -> str:  # KeyError would quote the message like a key
        return str(self.args[0]) if self.args else ""


class PairConfigError(ParityError, ValueError):
    """A ``[tool.parity.pairs.*]`` table (pyproject.toml, parity.toml) that cannot be used; the
    message names the file, the pair and the key."""


class ParityMismatch(ParityError, AssertionError):
    """Raised by :func:`parity.assert_parity` when two models diverge.

    ``report`` holds the full :class:`parity.Report`.
    """

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report


class PairDiverged(ParityMismatch):
    """A pair declared for the pytest plugin diverged; ``report`` is its :class:`parity.Report`
    and ``paths`` the report files written for it."""

    def __init__(self, report: object, paths: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__(report.summary(), report)  # type: ignore[attr-defined]
        self.paths = list(paths)


class ConversionError(ParityError, RuntimeError):
    """A converter (onnx2tf, tf2onnx, onnx2torch, …) failed, or wrote none of the files it should
    have.  ``command`` is what ran, ``returncode`` its exit status (``None``: in-process, or it
    timed out), ``log_tail`` the last lines of its log."""

    def __init__(self, message: str, *, command=(), returncode: int | None = None, log_tail: str = "") -> None:
        super().__init__(message)
        self.command = tuple(command)
        self.returncode = returncode
        self.log_tail = log_tail


class ConverterNotInstalled(ParityError, ImportError):
    """A converter (or a module it needs) is not installed; the message gives the install line."""


class StateDictWithoutFactory(ModelError):
    """A ``.pth`` holds a state_dict and no factory was given to build the model it fits.
    ``path`` and ``keys`` let a caller (the CLI) say how to give one in its own terms."""

    def __init__(self, path: Any, keys: Sequence[str], how: str | None = None) -> None:
        self.path, self.keys = path, list(keys)
        shown = ", ".join(self.keys[:4]) + (", …" if len(self.keys) > 4 else "")
        how = how or (
            "parity.load(path, factory='package.module:Net'), "
            "or in a pair table a = { path = \"...\", factory = \"package.module:Net\" }"
        )
        super().__init__(
            f"{str(path)!r} is a state_dict ({len(self.keys)} tensors: {shown}): weights without the model's code. "
            f"Give the class that builds the model: {how}."
        )
