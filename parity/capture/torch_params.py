"""A PyTorch module's parameters as a :class:`~parity.records.LayerParams` record.

What :meth:`parity.capture.torch.TorchBackend.layer_params` returns: the parameters and
buffers a module holds itself (not its children's), by role (``kernel``, ``bias``,
``gamma``, ``beta``, ``mean``, ``var``, ``embeddings``), as NumPy in the canonical layout —
PyTorch's own, so only transformers' ``Conv1D`` (GPT-2's projections, a dense layer whose
weight is stored ``(in, out)``) is transposed.  bfloat16 and float16 tensors are read as
float32 and keep their dtype's name.  ``num_batches_tracked`` (a training counter that
changes no output in eval mode) and lazy parameters not yet initialised are left out.

torch is imported only by the functions that read a live module.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..records import LayerParams, Param
from .rnn import TORCH_GATES, torch_rnn_params

__all__ = ["find_module", "layer_params", "module_params", "base_name"]

_ROLES = {
    "conv": {"weight": "kernel", "bias": "bias"},
    "depthwise": {"weight": "kernel", "bias": "bias"},
    "convtranspose": {"weight": "kernel", "bias": "bias"},
    "dense": {"weight": "kernel", "bias": "bias"},
    "batchnorm": {"weight": "gamma", "bias": "beta", "running_mean": "mean", "running_var": "var"},
    "norm": {"weight": "gamma", "bias": "beta", "running_mean": "mean", "running_var": "var"},
    "embedding": {"weight": "embeddings"},
}


def base_name(tap_name: str) -> str:
    """The layer a tap belongs to: ``layer1.0#1`` / ``lstm[0]`` → ``layer1.0`` / ``lstm`` (the
    suffixes capture gives a layer's repeated calls and output elements, in every backend)."""
    name = tap_name.split("#", 1)[0]
    return name.split("[", 1)[0]


def find_module(model: Any, name: str) -> Any:
    """The submodule of ``model`` a tap named ``name`` came from (tap suffixes ``#k`` and
    ``[i]`` dropped); :class:`~parity.errors.MappingError` with the closest names when there
    is none."""
    from ..errors import MappingError, closest

    base = base_name(name)
    try:
        return model.get_submodule(base)
    except AttributeError:
        close = closest(base, [n for n, _ in model.named_modules()])
        raise MappingError(f"torch model {type(model).__name__} has no submodule {base!r}.{close}") from None


def layer_params(model: Any, name: str) -> LayerParams:
    """The parameters of ``model``'s submodule ``name`` (a tap name)."""
    return module_params(find_module(model, name))


def module_params(module: Any) -> LayerParams:
    """The parameters a module holds itself, by role, in PyTorch's layout."""
    own: dict[str, Any] = dict(module.named_parameters(recurse=False))
    for n, buf in module.named_buffers(recurse=False):
        if buf is not None and n != "num_batches_tracked":  # a training counter: ignored on purpose
            own[n] = buf
    own = {n: t for n, t in own.items() if t is not None and not _is_uninitialized(t)}
    kind = _kind(module)
    read = {n: _array(t) for n, t in own.items()} if kind == "rnn" else {}
    rnn = torch_rnn_params(module, {n: value for n, (value, _) in read.items()}) if read else None
    if rnn is not None:
        dtype = next(iter(read.values()))[1]
        return LayerParams("torch", "rnn", type(module).__name__,
                           {role: Param(n, v, dtype, tuple(v.shape)) for role, (n, v) in rnn.items()},
                           {"gates": "".join(TORCH_GATES[type(module).__name__])})
    roles = _ROLES.get(kind, {})
    hf_conv1d = is_hf_conv1d(module)
    params: dict[str, Param] = {}
    for n, t in own.items():
        value, dtype = _array(t)
        raw = tuple(value.shape)
        if n == "weight" and hf_conv1d:
            value = value.T  # transformers' Conv1D keeps its weight as (in, out)
        params[roles.get(n, n)] = Param(n, value, dtype, raw)
    return LayerParams("torch", kind, type(module).__name__, params)


def _kind(module: Any) -> str:
    import torch.nn as nn

    cls = type(module).__name__
    conv = nn.modules.conv
    if isinstance(module, conv._ConvTransposeNd):
        return "convtranspose"
    if isinstance(module, conv._ConvNd):
        return "depthwise" if module.groups > 1 and module.groups == module.in_channels else "conv"
    if isinstance(module, nn.Linear) or is_hf_conv1d(module):
        return "dense"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batchnorm"
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)) or cls.endswith("RMSNorm"):
        return "norm"
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding"
    if isinstance(module, nn.RNNBase) and module.num_layers == 1 and not module.bidirectional:
        return "rnn"
    return "generic"


def is_hf_conv1d(module: Any) -> bool:
    """transformers' ``Conv1D`` (GPT-2's projections): a dense layer whose weight is ``(in, out)``."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None \
        and tuple(module.weight.shape)[-1:] == (module.nf,)


def _array(t: Any) -> tuple[np.ndarray, str]:
    import torch

    t = t.detach()
    dtype = str(t.dtype).replace("torch.", "")
    if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
        t = t.float()
    return t.cpu().numpy(), dtype


def _is_uninitialized(t: Any) -> bool:
    try:
        from torch.nn.parameter import is_lazy

        return bool(is_lazy(t))
    except ImportError:  # pragma: no cover
        return False
