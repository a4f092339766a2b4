"""PyTorch ``nn.Module`` capture through forward hooks.

Every leaf module (and, on request, every container) gets a forward hook that
copies its outputs to NumPy.  With ``granularity="ops"`` the functional calls
made in a module's own ``forward`` (``x + y``, ``F.relu``, ``x.view(...)``,
``torch.cat``) are recorded too, through a ``TorchFunctionMode``, named by the
module path, the op and its index there: ``layer1.0:add#0``, ``:reshape#0``
(the model's own forward).  Calls inside leaf modules are not repeated: the
module's tap is their result.  The model runs once under ``torch.no_grad()``
in ``eval()``; the modes the user had are restored afterwards, and a model
handed in while training is said so in its :class:`ModelInfo`.
"""

from __future__ import annotations

import inspect
import sys
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from ..errors import CaptureError
from ..layout import channels_first, channels_last
from ..records import InputSpec, ModelInfo, Tap, Trace
from .base import Backend, Inputs, append_tap, digest_inputs, flatten_outputs, numpy_dtype_name

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


#: calls that return no activation worth recording, or only reshuffle bookkeeping
_SKIP_OPS = frozenset(
    {
        "get", "set", "dim", "size", "numel", "item", "tolist", "len", "bool", "index", "int", "float_",
        "format", "repr", "hash", "is_floating_point", "is_contiguous", "data_ptr", "stride", "element_size",
        "detach", "contiguous", "clone", "requires_grad_", "setitem", "type", "is_complex", "get_device",
        "numpy", "cpu", "cuda", "to", "dim_order", "storage_offset", "untyped_storage", "has_names",
        "is_nonzero", "nelement", "ndimension", "new_empty", "new_zeros", "new_ones", "new_full",
        "new_tensor", "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
        "align_to", "refine_names", "rename", "is_sparse", "is_quantized", "is_meta", "device",
    }
)
_OP_ALIASES = {"radd": "add", "iadd": "add_", "rmul": "mul", "imul": "mul_", "rsub": "sub", "isub": "sub_",
               "truediv": "div", "rtruediv": "div", "itruediv": "div_", "rmatmul": "matmul", "getitem": "getitem"}
#: ops that reorder axes: their output layout is not their input's
_REORDER_OPS = frozenset({"permute", "transpose", "movedim", "swapaxes", "swapdims", "t", "mT", "T", "pixel_shuffle"})
_FLATTEN_OPS = frozenset({"flatten", "view", "reshape"})


def _op_name(func: Any) -> str | None:
    name = getattr(func, "__name__", None)
    if not name:
        return None
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
    name = _OP_ALIASES.get(name, name)
    return None if name in _SKIP_OPS or name.startswith("_") else name


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
        granularity = self.options.get("granularity", "modules")
        if granularity not in ("modules", "ops"):
            raise CaptureError(f"granularity must be 'modules' or 'ops', got {granularity!r}.")
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
            tap_attrs = dict(attrs)
            forced = tap_attrs.pop("_layout", False)
            layout = _module_layout(op, value.ndim, in_layout, in_rank) if role != "output" else None
            if forced is not False:  # op-level taps decide their layout themselves
                layout = forced
            if role == "output":
                known = layouts.get(_tensor_key(t))
                layout = known[0] if known else _default_layout(value.ndim)
            flattens = op == "Flatten" or tap_attrs.pop("_flattens", False)
            if flattens and in_layout and in_rank and in_rank > 2 and value.ndim == 2:
                layout = f"N({in_layout[1:]})"
                tap_attrs["flat_from"] = tuple(attrs.get("_in_shape", ()))[1:]
            tap_attrs.pop("_in_shape", None)
            layouts[_tensor_key(t)] = (layout, value.ndim)
            append_tap(taps, tensor_name, op, value, layout, role=role, attrs=tap_attrs, dtype=dtype)

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
        handles = [m.register_forward_hook(hook) for m in names]
        mode = None
        if granularity == "ops":
            mode, op_handles = self._op_recorder(record, layouts, calls)
            handles += op_handles
        try:
            with _inference(model) as modes:
                if mode is not None:
                    with mode:
                        out = self._call(model, inputs, tensors)
                else:
                    out = self._call(model, inputs, tensors)
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


    def run(self, inputs: Inputs) -> Any:
        """One plain forward pass in inference mode (the modules' modes restored after);
        hooks the caller registered fire."""
        import torch

        arrays = list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        with _inference(self.model):
            return self._call(self.model, inputs, tensors)

    @staticmethod
    def _call(model: Any, inputs: Inputs, tensors: list) -> Any:
        if isinstance(inputs, dict):
            return model(**dict(zip(inputs.keys(), tensors)))
        return model(*tensors)

    def _op_recorder(self, record, layouts: dict, calls: Counter) -> tuple[Any, list]:
        """A TorchFunctionMode recording the ops each non-leaf module's forward calls itself."""
        from torch.overrides import TorchFunctionMode

        stack: list[tuple[str, bool]] = []  # (module path, is leaf) of the modules running now
        handles = []
        for path, module in self.model.named_modules():
            is_leaf = next(iter(module.children()), None) is None and module is not self.model

            def push(mod, args, path=path, is_leaf=is_leaf):
                stack.append((path, is_leaf))

            def pop(mod, args, out):
                if stack:
                    stack.pop()

            handles.append(module.register_forward_pre_hook(push))
            handles.append(module.register_forward_hook(pop, always_call=True))

        class OpRecorder(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if not stack or stack[-1][1]:
                    return out  # outside the model, or inside a leaf module: its hook records it
                op = _op_name(func)
                if op is None:
                    return out
                first = next((a for a in args if _is_tensor(a)), None)
                if first is None and args and isinstance(args[0], (list, tuple)):  # torch.cat([...])
                    first = next((a for a in args[0] if _is_tensor(a)), None)
                in_layout = in_rank = known = None
                in_shape: tuple = ()
                if first is not None:
                    known = layouts.get(_tensor_key(first))
                    in_rank, in_shape = first.dim(), tuple(first.shape)
                    in_layout = known[0] if known and known[1] == in_rank else None
                key = f"{stack[-1][0]}:{op}"
                k = calls[key]
                calls[key] += 1
                for tensor_name, t in flatten_outputs(out, f"{key}#{k}", _is_tensor):
                    attrs = {"_in_shape": in_shape, "op_call": getattr(func, "__qualname__", op)}
                    if t.dim() == in_rank and op not in _REORDER_OPS:
                        if known is not None:
                            attrs["_layout"] = in_layout  # elementwise and friends keep their input's layout
                    elif op in _FLATTEN_OPS and t.dim() == 2:
                        attrs["_flattens"] = True
                    elif op in _REORDER_OPS:
                        attrs["_layout"] = None  # a permuted tensor's layout is not known
                    record(tensor_name, t, op, "layer", in_layout, in_rank, attrs)
                return out

        return OpRecorder(), handles


@contextmanager
def _inference(model: Any) -> Iterator[dict]:
    """``model`` in ``eval()`` under ``no_grad``; every module's own mode is restored afterwards.
    Yields the modes the modules had (a True among them: the model was handed in training)."""
    import torch

    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            yield modes
    finally:
        for m, was_training in modes.items():
            m.train(was_training)


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
