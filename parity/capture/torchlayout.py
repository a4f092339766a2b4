"""PyTorch's conventions shared by the live-module backend (:mod:`.torch`) and the saved-program
backends (:mod:`.torchgraph`): which layout a module's tensors are in, which ops reorder or
flatten axes, and a tensor as NumPy.  Imports torch only inside the functions that take a tensor."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..layout import channels_first, channels_last
from .base import numpy_dtype_name

__all__ = ["CHANNEL_FIRST_PREFIXES", "LAST_AXIS", "REORDER_OPS", "FLATTEN_OPS", "module_layout", "default_layout",
           "to_numpy", "as_numpy"]

# Modules whose tensors are channel-first by definition.
CHANNEL_FIRST_PREFIXES = (
    "Conv",
    "ConvTranspose",
    "LazyConv",
    "BatchNorm",
    "SyncBatchNorm",
    "InstanceNorm",
    "GroupNorm",
    "LocalResponseNorm",
    "MaxPool",
    "AvgPool",
    "AdaptiveAvgPool",
    "AdaptiveMaxPool",
    "LPPool",
    "FractionalMaxPool",
    "MaxUnpool",
    "Upsample",
    "UpsamplingNearest",
    "UpsamplingBilinear",
    "PixelShuffle",
    "PixelUnshuffle",
    "ZeroPad",
    "ConstantPad",
    "ReflectionPad",
    "ReplicationPad",
    "CircularPad",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
)
# Modules that work on the last axis: features last.
LAST_AXIS = {"Linear", "LazyLinear", "Bilinear", "LayerNorm", "RMSNorm", "Embedding", "EmbeddingBag",
             "LSTM", "GRU", "RNN"}  # recurrent outputs are recorded batch-first: (N, T, H), (N, H)


def module_layout(op: str, rank: int, in_layout: str | None, in_rank: int | None) -> str | None:
    if op == "Conv1D" or op.endswith(("RMSNorm", "LayerNorm")):
        # transformers' Conv1D is GPT-2's Linear (weight (in, out)), not torch's Conv1d; its
        # LlamaRMSNorm, T5LayerNorm, ... normalise the last axis
        return channels_last(rank)
    if op.startswith(CHANNEL_FIRST_PREFIXES):
        return channels_first(rank)
    if op in LAST_AXIS:
        return channels_last(rank)
    if in_layout is not None and in_rank == rank:
        return in_layout  # elementwise: ReLU, Dropout, Identity, Hardswish, ...
    return default_layout(rank)


def default_layout(rank: int) -> str | None:
    # torch's convention for images and volumes; a 3-D tensor may be NCL or NLC
    return {2: "NC", 4: "NCHW", 5: "NCDHW"}.get(rank)


def to_numpy(t: Any) -> tuple[np.ndarray, str]:
    """A copy of ``t`` as NumPy, and the dtype name the framework gives it."""
    value, dtype, shared = as_numpy(t)
    return (value.copy() if shared else value), dtype


def as_numpy(t: Any) -> tuple[np.ndarray, str, bool]:
    """``t`` as NumPy, its dtype name, and whether the array shares ``t``'s memory (a view)."""
    import torch

    t = t.detach()
    dtype = numpy_dtype_name(t.dtype)
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16: keep the name, widen the value
        return t.float().numpy(), dtype, False
    if t.is_complex() or t.device.type != "cpu" or t.is_conj() or t.is_neg():
        return t.resolve_conj().resolve_neg().cpu().numpy().copy(), dtype, False
    view = t.numpy()
    view.flags.writeable = False  # the model's own memory (maybe a parameter's): never written through a tap
    return view, dtype, True


#: ops that reorder axes: their output layout is not their input's
REORDER_OPS = frozenset({"permute", "transpose", "movedim", "swapaxes", "swapdims", "t", "mT", "T", "pixel_shuffle"})
FLATTEN_OPS = frozenset({"flatten", "view", "reshape"})
