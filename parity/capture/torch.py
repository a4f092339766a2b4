"""PyTorch ``nn.Module`` capture through forward hooks.

Every leaf module (and, on request, every container) gets a forward hook that
copies its outputs to NumPy.  The model runs once under ``torch.no_grad()``
in ``eval()``; the modes the user had are restored afterwards, and a model
handed in while training is said so in its :class:`ModelInfo`.
"""

from __future__ import annotations

import inspect
import sys
from collections import Counter
from typing import Any

import numpy as np

from ..errors import CaptureError
from ..layout import channels_first, channels_last
from ..records import InputSpec, ModelInfo, Tap, Trace
from .base import Backend, Inputs, digest_inputs, flatten_outputs, numpy_dtype_name

# Modules whose tensors are channel-first by definition.
_CHANNEL_FIRST_PREFIXES = (
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
_LAST_AXIS = {"Linear", "LazyLinear", "Bilinear", "LayerNorm", "RMSNorm", "Embedding", "EmbeddingBag"}


def _module_layout(op: str, rank: int, in_layout: str | None, in_rank: int | None) -> str | None:
    if op.startswith(_CHANNEL_FIRST_PREFIXES):
        return channels_first(rank)
    if op in _LAST_AXIS:
        return channels_last(rank)
    if in_layout is not None and in_rank == rank:
        return in_layout  # elementwise: ReLU, Dropout, Identity, Hardswish, ...
    return _default_layout(rank)


def _default_layout(rank: int) -> str | None:
    # torch's convention for images and volumes; a 3-D tensor may be NCL or NLC
    return {2: "NC", 4: "NCHW", 5: "NCDHW"}.get(rank)


def _to_numpy(t: Any) -> tuple[np.ndarray, str]:
    import torch

    t = t.detach()
    dtype = numpy_dtype_name(t.dtype)
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16: keep the name, widen the value
        t = t.float()
    if t.is_complex() or t.device.type != "cpu":
        t = t.cpu()
    # a copy: a later in-place op (ReLU(inplace=True)) must not change what was recorded
    return t.numpy().copy(), dtype


def _is_tensor(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.Tensor)


def _tensor_key(t: Any) -> tuple:
    try:
        return (t.data_ptr(), tuple(t.shape), tuple(t.stride()))
    except RuntimeError:  # tensors without storage
        return (id(t),)


class TorchBackend(Backend):
    framework = "torch"

    @classmethod
    def accepts(cls, obj: Any) -> bool:
        torch = sys.modules.get("torch")
        return torch is not None and isinstance(obj, torch.nn.Module)

    # --- what the model is -----------------------------------------------------------

    def info(self) -> ModelInfo:
        import torch

        model = self.model
        params = sum(p.numel() for p in model.parameters())
        kind = "nn.Module"
        if type(model).__module__.startswith("torch.fx"):
            kind = "fx.GraphModule"
        return ModelInfo(
            framework="torch",
            framework_version=torch.__version__,
            name=type(model).__name__,
            kind=kind,
            param_count=int(params),
            input_spec=self.input_spec(),
            was_training=any(m.training for m in model.modules()),
        )

    def _input_names(self) -> list[str]:
        try:
            sig = inspect.signature(self.model.forward)
        except (TypeError, ValueError):
            return []
        return [
            p.name
            for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]

    def input_spec(self) -> tuple[InputSpec, ...] | None:
        """Inferred from the first convolution: torch modules declare no input shape.

        Only a model whose first registered module is a convolution gets a
        spec (batch and spatial sizes unknown, the channel count known); that
        is enough to tell NCHW from NHWC input.
        """
        import torch.nn as nn

        names = self._input_names()
        if len(names) != 1:
            return None
        for module in self.model.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                rank = module.weight.dim()  # (out, in/groups, *kernel): same rank as the input
                shape = (None, int(module.in_channels)) + (None,) * (rank - 2)
                return (
                    InputSpec(
                        name=names[0],
                        shape=shape,
                        dtype=numpy_dtype_name(module.weight.dtype),
                        layout=channels_first(rank),
                        source="inferred",
                    ),
                )
            if len(list(module.children())) == 0 and any(True for _ in module.parameters(recurse=False)):
                return None  # the first parametrised leaf is not a convolution
        return None

    # --- running it ------------------------------------------------------------------

    def capture(self, inputs: Inputs, *, containers: bool = False) -> Trace:
        import torch

        model = self.model
        if isinstance(inputs, dict):
            arrays = list(inputs.values())
        else:
            arrays = list(inputs)
        names: dict[Any, str] = {}
        for name, module in model.named_modules():
            if module is model or module in names:
                continue
            is_leaf = next(iter(module.children()), None) is None
            if is_leaf or containers:
                names[module] = name
        taps: list[Tap] = []
        calls: Counter[str] = Counter()
        layouts: dict[tuple, tuple[str | None, int]] = {}

        def record(tensor_name: str, t: Any, op: str, role: str, in_layout, in_rank, attrs) -> None:
            value, dtype = _to_numpy(t)
            layout = _module_layout(op, value.ndim, in_layout, in_rank) if role != "output" else None
            if role == "output":
                known = layouts.get(_tensor_key(t))
                layout = known[0] if known else _default_layout(value.ndim)
            tap_attrs = dict(attrs)
            if op == "Flatten" and in_layout and in_rank and in_rank > 2 and value.ndim == 2:
                layout = f"N({in_layout[1:]})"
                tap_attrs["flat_from"] = tuple(attrs.get("_in_shape", ()))[1:]
            tap_attrs.pop("_in_shape", None)
            layouts[_tensor_key(t)] = (layout, value.ndim)
            taps.append(
                Tap(
                    name=tensor_name,
                    op=op,
                    index=len(taps),
                    shape=tuple(value.shape),
                    dtype=dtype,
                    layout=layout,
                    value=value,
                    role=role,
                    attrs=tap_attrs,
                )
            )

        def hook(module: Any, args: tuple, output: Any) -> None:
            name = names[module]
            k = calls[name]
            calls[name] += 1
            base = name if k == 0 else f"{name}#{k}"
            first = next((a for a in args if _is_tensor(a)), None)
            in_layout, in_rank, in_shape = None, None, ()
            if first is not None:
                known = layouts.get(_tensor_key(first))
                in_rank = first.dim()
                in_shape = tuple(first.shape)
                in_layout = known[0] if known and known[1] == in_rank else None
                if in_layout is None and is_input.get(_tensor_key(first)):
                    in_layout = is_input[_tensor_key(first)]
            role = "container" if next(iter(module.children()), None) is not None else "layer"
            attrs = _module_attrs(module)
            attrs["_in_shape"] = in_shape
            for tensor_name, t in flatten_outputs(output, base, _is_tensor):
                record(tensor_name, t, type(module).__name__, role, in_layout, in_rank, attrs)

        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        spec = self.input_spec()
        is_input: dict[tuple, str | None] = {}
        for i, t in enumerate(tensors):
            layout = spec[i].layout if spec and i < len(spec) else _default_layout(t.dim())
            is_input[_tensor_key(t)] = layout
        modes = {m: m.training for m in model.modules()}
        handles = [m.register_forward_hook(hook) for m in names]
        try:
            model.eval()
            with torch.no_grad():
                if isinstance(inputs, dict):
                    out = model(**dict(zip(inputs.keys(), tensors)))
                else:
                    out = model(*tensors)
        except Exception as exc:  # the user's model failed: say with what
            shapes = ", ".join(str(tuple(a.shape)) for a in arrays)
            expected = ""
            if spec:
                expected = " The first layer suggests " + ", ".join(
                    f"{s.name}: {_fmt_shape(s.shape)} ({s.layout})" for s in spec
                ) + "."
            raise CaptureError(
                f"running torch model {type(model).__name__} on inputs of shape {shapes} failed: "
                f"{type(exc).__name__}: {exc}.{expected} Inputs are given in model A's layout "
                "and converted for model B; check their shape and layout."
            ) from exc
        finally:
            for h in handles:
                h.remove()
            for m, mode in modes.items():
                m.train(mode)
        outs = flatten_outputs(out, "output", _is_tensor)
        for tensor_name, t in outs:
            record(tensor_name, t, "output", "output", None, None, {})
        notes: tuple[str, ...] = ()
        if any(modes.values()):
            notes = (
                f"torch model {type(model).__name__} was in training mode; parity ran it in eval() "
                "(BatchNorm running statistics, no dropout) and restored the mode afterwards.",
            )
        return Trace(
            taps=tuple(taps),
            model=self.info(),  # after the modes were restored: says whether it was training
            input_shapes=tuple(tuple(a.shape) for a in arrays),
            inputs_digest=digest_inputs(arrays),
            notes=notes,
        )


def _fmt_shape(shape: tuple) -> str:
    return "(" + ", ".join("N" if i == 0 and s is None else ("?" if s is None else str(s)) for i, s in enumerate(shape)) + ")"


def _module_attrs(module: Any) -> dict[str, Any]:
    """Plain-Python attributes of a module that later stages may want as evidence."""
    attrs: dict[str, Any] = {"module_class": f"{type(module).__module__}.{type(module).__qualname__}"}
    for key in (
        "eps",
        "momentum",
        "stride",
        "padding",
        "dilation",
        "groups",
        "kernel_size",
        "in_channels",
        "out_channels",
        "in_features",
        "out_features",
        "start_dim",
        "end_dim",
        "negative_slope",
        "min_val",
        "max_val",
        "approximate",
        "inplace",
    ):
        if hasattr(module, key):
            val = getattr(module, key)
            if isinstance(val, (int, float, str, bool)) or (
                isinstance(val, tuple) and all(isinstance(v, (int, float)) for v in val)
            ):
                attrs[key] = val
    # BatchNorm statistics: the numbers a diagnosis of epsilon / statistics bugs needs
    for key in ("running_mean", "running_var"):
        val = getattr(module, key, None)
        if val is not None and hasattr(val, "detach"):
            attrs[key] = val.detach().cpu().double().numpy().copy()
    return attrs
