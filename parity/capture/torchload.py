"""Reading PyTorch files: a TorchScript archive or a ``state_dict`` (``.pt``/``.pth``/``.bin``)
and a ``torch.export`` program (``.pt2``).  :class:`~parity.capture.torch.TorchBackend` and
:class:`~parity.capture.torchgraph.ExportedProgramBackend` load through these; torch is imported
when a file is read."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Mapping

from ..errors import ModelError, StateDictWithoutFactory, UntrustedModel

__all__ = ["is_torchscript", "load_torch_file", "load_exported_program"]


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding code), not a pickled ``state_dict``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def _unsupported(exc: Exception) -> str:
    """The global torch's restricted unpickler refused (``GLOBAL os.system``), as torch names it."""
    import re

    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    return f"it names the Python global {match.group(1)}" if match else "it names Python objects"


def load_exported_program(path: Path) -> Any:
    """The ``torch.export`` ExportedProgram saved at ``path``."""
    import torch

    try:
        return torch.export.load(str(path))
    except Exception as exc:
        raise ModelError(
            f"{str(path)!r} is not a torch.export program ({type(exc).__name__}: {exc}). "
            "Write one with torch.export.save(torch.export.export(model, args), path)."
        ) from exc


def load_torch_file(path: Path, *, factory: Any = None, weights_only: bool = True) -> Any:
    """A TorchScript module, a pickled module (``weights_only=False``), or the ``state_dict`` at
    ``path`` loaded into ``factory()`` (a class or callable; a string is resolved by the caller)."""
    import torch

    def is_module(obj: Any) -> bool:
        return isinstance(obj, (torch.nn.Module, torch.export.ExportedProgram))

    if is_torchscript(path):
        return torch.jit.load(str(path), map_location="cpu")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=weights_only)
    except Exception as exc:
        if weights_only and ("safe_globals" in str(exc) or "Unsupported global" in str(exc)):
            from ..trust import TRUST_HINT

            raise UntrustedModel(
                f"{str(path)!r} holds pickled Python objects, not only tensors, and "
                f"torch.load(weights_only=True) refuses them (a pickle can run any code: {_unsupported(exc)}). "
                f"{TRUST_HINT} Better, save a state_dict and give factory=.",
                path=path, found=[_unsupported(exc)],
            ) from exc
        raise ModelError(f"{str(path)!r} is not a file torch.load can read: {type(exc).__name__}: {exc}") from exc
    if is_module(state):
        return state  # a whole pickled module (weights_only=False)
    if isinstance(state, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in state and is_module(state[key]):
                return state[key].eval()  # a checkpoint holding the module itself (weights_only=False)
            if key in state and isinstance(state[key], Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(hasattr(v, "shape") for v in state.values()):
        raise ModelError(f"{str(path)!r} holds a {type(state).__name__}, not a state_dict or a TorchScript module.")
    keys = list(state)
    if factory is None:
        raise StateDictWithoutFactory(path, keys)
    model = factory() if callable(factory) else factory
    if not is_module(model):
        raise ModelError(f"factory {factory!r} made a {type(model).__name__}, not a torch.nn.Module.")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ModelError(
            f"the state_dict in {str(path)!r} does not fit {type(model).__name__}: "
            + (f"missing {', '.join(missing[:6])}{', …' if len(missing) > 6 else ''}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected {', '.join(unexpected[:6])}{', …' if len(unexpected) > 6 else ''}" if unexpected else "")
            + ". Check the factory builds the same architecture (num_batches_tracked is ignored on purpose)."
        )
    return model.eval()
