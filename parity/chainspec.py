"""What :func:`parity.chain` is handed, read once: the stages' names, values given per stage
and the per-layer tolerance overrides.

A value per stage (``mappings=``, ``precision=``) is a list aligned with the stages or a dict
by stage name or index; :func:`per_stage` turns either into one entry per stage and refuses
a name that is not a stage or a list of the wrong length with an :class:`~parity.errors.InputError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import InputError, ToleranceError
from .tolerance import Tolerances

__all__ = ["name_stages", "per_stage", "precision_hints", "tolerance_overrides"]


def name_stages(specs: Sequence[Any], names: Sequence[str] | None, backends: Sequence[Any]) -> list[str]:
    """The stages' names: ``names`` (one per stage, unique), else each stage's own
    (:attr:`parity.chain.Stage.name`), its file name, or its framework and model name;
    a repeated name gets ``#2``, ``#3``…"""
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(specs):
            raise InputError(f"names has {len(names)} name(s) for {len(specs)} stages; give one per stage.")
        if len(set(names)) != len(names):
            raise InputError(f"stage names must be unique; got {', '.join(names)}.")
        return names
    out: list[str] = []
    for spec, backend in zip(specs, backends):
        if spec.name:
            base = spec.name
        elif isinstance(spec.model, (str, Path)):
            base = Path(str(spec.model)).name or str(spec.model)
        else:
            info = backend.info()
            base = f"{info.framework}:{info.name}"
        name, k = base, 2
        while name in out:
            name, k = f"{base}#{k}", k + 1
        out.append(name)
    return out


def per_stage(value: Any, names: list[str], what: str) -> list[Any]:
    """``value`` (``None``, a list aligned with the stages, or a dict by stage name or index) as
    one entry per stage; ``what`` names the argument in the message of a refusal."""
    if value is None:
        return [None] * len(names)
    if isinstance(value, Mapping):
        out = [None] * len(names)
        for key, v in value.items():
            if isinstance(key, int) and 0 <= key < len(names):
                out[key] = v
            elif key in names:
                out[names.index(key)] = v
            else:
                raise InputError(f"{what} names stage {key!r}, which is not in the chain ({', '.join(names)}).")
        return out
    value = list(value)
    if len(value) != len(names):
        raise InputError(f"{what} has {len(value)} entries for {len(names)} stages; give one per stage (None for none).")
    return value


def precision_hints(precision: Any, names: list[str]) -> list[str | None]:
    """The ``precision=`` hint of each stage (``None``: detect it)."""
    if isinstance(precision, str):
        raise InputError("precision= is per stage: a list aligned with the stages, or a dict by stage name; "
                         f"got the single value {precision!r}.")
    return per_stage(precision, names, "precision")


def tolerance_overrides(tolerances: Any, min_argmax: Any) -> tuple[dict, Any]:
    """The per-layer overrides of ``tolerances=`` (a :class:`~parity.Tolerances` or a dict of
    layer name/glob → (rtol, atol)) and the argmax agreement to require."""
    if tolerances is None:
        return {}, min_argmax
    if isinstance(tolerances, Tolerances):
        return dict(tolerances.overrides), min_argmax if min_argmax is not None else tolerances.min_argmax_agreement
    if isinstance(tolerances, Mapping):
        return dict(tolerances), min_argmax
    raise ToleranceError(f"tolerances must map layer names or globs to (rtol, atol), got {type(tolerances).__name__}.")
