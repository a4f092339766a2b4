"""PyTorch ``nn.Module`` capture through forward hooks.

Every leaf module (and, on request, every container) gets a forward hook that
records its outputs as NumPy views of the tensors' own memory — no copy.  A
recorded tensor that a later in-place op (``ReLU(inplace=True)``, ``x += y``,
``torch.relu_``) is about to overwrite is copied just before that op runs; a
version check at the end of the forward catches any write that slipped past
(an in-place op inside C++), and the forward is then rerun copying every output.
With ``granularity="ops"`` the functional calls
made in a module's own ``forward`` (``x + y``, ``F.relu``, ``x.view(...)``,
``torch.cat``) are recorded too, through a ``TorchFunctionMode``, named by the
module path, the op and its index there: ``layer1.0:add#0``, ``:reshape#0``
(the model's own forward).  Calls inside leaf modules are not repeated: the
module's tap is their result.  The model runs once under ``torch.no_grad()``
in ``eval()``; the modes the user had are restored afterwards, and a model
handed in while training is said so in its :class:`ModelInfo`.

One model object may be captured from several threads at once (``parity.diff``
calls sharing model A): a hook registered by one capture records only the
forward run by the thread that registered it (hooks fire for every thread's
forward), and the switch to ``eval()`` is shared — the first capture to start
saves the modes, the last to finish restores them — so no thread runs the model
in training mode halfway through another's forward.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import threading
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import CaptureError, ParityError
from ..layout import channels_first, channels_last
from ..records import InputSpec, ModelInfo, Tap, Trace
from .base import Backend, Inputs, append_tap, flatten_outputs, numpy_dtype_name
from .rnn import torch_rnn_taps
from .twins import cast_floating, check_kind, random_statistics
from .torchlayout import FLATTEN_OPS, REORDER_OPS, as_numpy, default_layout, module_layout

#: Python-level calls that write into their first argument
_INPLACE_DUNDERS = frozenset(
    {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__", "__iand__",
     "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__imatmul__", "__setitem__"}
)
_INPLACE_ARG: dict[Any, int | None] = {}  # function → position of its ``inplace`` parameter


def _written_tensors(func: Any, args: tuple, kwargs: dict | None) -> tuple:
    """The tensors ``func(*args, **kwargs)`` is about to write into (empty for a pure call)."""
    out = kwargs.get("out") if kwargs else None
    if out is not None:
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)
    if not args:
        return ()
    name = getattr(func, "__name__", "") or ""
    if name in _INPLACE_DUNDERS or (name.endswith("_") and not name.endswith("__")):
        return (args[0],)
    if kwargs and kwargs.get("inplace") is True:
        return (args[0],)
    try:
        pos = _INPLACE_ARG[func]
    except (KeyError, TypeError):
        code = getattr(func, "__code__", None)
        names = code.co_varnames[: code.co_argcount] if code is not None else ()
        pos = names.index("inplace") if "inplace" in names else None
        try:
            _INPLACE_ARG[func] = pos
        except TypeError:  # unhashable callables
            pass
    if pos is not None and len(args) > pos and args[pos] is True:
        return (args[0],)
    return ()


def _storage_key(t: Any) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, AttributeError):  # tensors without storage
        return None


class _Keeper:
    """Recorded tensors held by reference; each copied only when something is about to write into it.

    ``watch`` notes a tap whose value is a view of a live tensor, with the tensor's
    version counter; ``before_write`` copies the taps on a tensor's storage before an
    in-place op changes it; ``spoiled`` lists the taps whose tensor changed all the same
    (a write the in-place detection did not see) — their recorded values are wrong."""

    def __init__(self, taps: list[Tap], copy_all: bool = False) -> None:
        self.taps = taps
        self.copy_all = copy_all
        self.pending: dict[int, list[tuple[Any, int, int]]] = {}
        self.bad: list[int] = []

    def watch(self, t: Any, index: int) -> None:
        key = _storage_key(t)
        try:
            version = t._version
        except RuntimeError:  # inference tensors keep no version counter
            key = None
        if self.copy_all or key is None:
            self._copy(index)
        else:
            self.pending.setdefault(key, []).append((t, version, index))

    def before_write(self, tensors: tuple) -> None:
        for t in tensors:
            if not self.pending or not _is_tensor(t):
                continue
            for held, version, index in self.pending.pop(_storage_key(t), ()):
                if held._version != version:
                    self.bad.append(index)
                else:
                    self._copy(index)

    def spoiled(self) -> list[int]:
        changed = [i for entries in self.pending.values() for t, v, i in entries if t._version != v]
        return sorted(self.bad + changed)

    def _copy(self, index: int) -> None:
        tap = self.taps[index]
        self.taps[index] = dataclasses.replace(tap, value=np.array(tap.value, copy=True))


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


def _plain(value: Any) -> bool:
    """Whether a constructor argument read back from a module is plain data (JSON)."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return True
    return isinstance(value, (tuple, list)) and all(isinstance(v, (bool, int, float, str)) for v in value)


class TorchBackend(Backend):
    framework = "torch"
    #: the dtype floating-point inputs are cast to before a run (a float64 twin's: ``"float64"``)
    input_dtype: str | None = None
    suffixes = (".pt", ".pth", ".bin")
    #: what :meth:`load` reads, as a user is told it
    formats = ".pt/.pth (TorchScript, or a state_dict with factory=)"

    @classmethod
    def load(cls, path: Any, **options: Any) -> Any:
        """A TorchScript archive, or a ``state_dict`` loaded with ``torch.load(weights_only=True)``
        into ``factory()`` (options ``factory``, ``weights_only``)."""
        from pathlib import Path

        from .torchload import load_torch_file

        return load_torch_file(Path(path), **options)

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

    def compute_dtype(self) -> str | None:
        """float64 or float16 when every floating parameter and buffer is in it (float32, bfloat16
        and mixed models get None: inputs stay float32)."""
        cached = self.__dict__.get("_compute_dtype", False)
        if cached is not False:
            return cached
        dtypes = {t.dtype for t in (*self.model.parameters(), *self.model.buffers()) if t.is_floating_point()}
        names = {numpy_dtype_name(d) for d in dtypes}
        found = names.pop() if len(names) == 1 else None
        found = found if found in ("float64", "float16") else None
        self.__dict__["_compute_dtype"] = found
        return found

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
                layout = channels_first(rank)
                if _input_transposed_to_channels_first(self.model, module, rank):
                    # an ONNX graph from TF (tf2onnx) takes NHWC and transposes it itself
                    shape, layout = (None,) * (rank - 1) + (int(module.in_channels),), channels_last(rank)
                return (
                    InputSpec(
                        name=names[0],
                        shape=shape,
                        dtype=numpy_dtype_name(module.weight.dtype),
                        layout=layout,
                        source="inferred",
                    ),
                )
            if len(list(module.children())) == 0 and any(True for _ in module.parameters(recurse=False)):
                return None  # the first parametrised leaf is not a convolution
        return None

    # --- running it ------------------------------------------------------------------

    def capture(self, inputs: Inputs, *, containers: bool = False) -> Trace:
        inputs = cast_floating(inputs, self.input_dtype or self.compute_dtype())
        trace, spoiled = self._capture(inputs, containers, copy_all=False)
        if spoiled:  # a write no in-place check saw changed recorded tensors: run again, copying all
            trace, _ = self._capture(inputs, containers, copy_all=True)
        return trace

    def _capture(self, inputs: Inputs, containers: bool, copy_all: bool) -> tuple[Trace, list[int]]:
        """One forward pass recording every tap, and the taps whose values a write spoiled."""
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
        owners: dict[Any, str] = {}  # modules that compute with their own parameters before their children run
        for name, module in model.named_modules():
            if module is model or module in names:
                continue
            is_leaf = next(iter(module.children()), None) is None
            if is_leaf or containers:
                names[module] = name
            if not is_leaf and not containers and _computes_itself(module):
                owners[module] = name
        taps: list[Tap] = []
        mine = _Ours()
        constants = {_data_ptr(t) for t in (*model.parameters(), *model.buffers())} - {None, 0}
        keeper = _Keeper(taps, copy_all)
        calls: Counter[str] = Counter()
        layouts: dict[tuple, tuple[str | None, int]] = {}

        def record(tensor_name: str, t: Any, op: str, role: str, in_layout, in_rank, attrs) -> None:
            value, dtype, shared = as_numpy(t)
            tap_attrs = dict(attrs)
            forced = tap_attrs.pop("_layout", False)
            layout = module_layout(op, value.ndim, in_layout, in_rank) if role != "output" else None
            if forced is not False:  # op-level taps decide their layout themselves
                layout = forced
            perm = tap_attrs.get("perm")
            if perm is not None and in_layout and len(in_layout) == len(perm) == value.ndim:
                layout = "".join(in_layout[i] for i in perm)  # a Transpose module (onnx2torch)
            if role == "output":
                known = layouts.get(_tensor_key(t))
                layout = known[0] if known else default_layout(value.ndim)
            flattens = op == "Flatten" or tap_attrs.pop("_flattens", False)
            if flattens and in_layout and in_rank and in_rank > 2 and value.ndim == 2:
                layout = f"N({in_layout[1:]})"
                tap_attrs["flat_from"] = tuple(attrs.get("_in_shape", ()))[1:]
            tap_attrs.pop("_in_shape", None)
            layouts[_tensor_key(t)] = (layout, value.ndim)
            tap = append_tap(taps, tensor_name, op, value, layout, role=role, attrs=tap_attrs, dtype=dtype)
            if shared and tap.value is value:  # still the live tensor's memory (not spilled to disk)
                keeper.watch(t, len(taps) - 1)

        def hook(module: Any, args: tuple, output: Any) -> None:
            if not mine():
                return  # another thread's forward of the same model (or of a copy of it): not this capture's
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
            tensor_args = [a for a in args if _is_tensor(a)]
            if first is not None and output is first and not getattr(module, "inplace", False):
                # an identity at inference (nn.Identity, eval-mode Dropout, timm's DropPath): a
                # placeholder, accounted for without a counterpart
                attrs["passthrough"] = True
            if len(tensor_args) > 1 and any(_data_ptr(a) in constants for a in tensor_args):
                # x + bias, x * scale (onnx2torch's Add/Mul of an initializer): an affine step, not a merge
                attrs["constant_operand"] = True
            outputs = flatten_outputs(output, base, _is_tensor)
            outputs = torch_rnn_taps(module, base, outputs) or outputs  # LSTM/GRU: `name`, `name[h]`, `name[c]`
            for tensor_name, t in outputs:
                record(tensor_name, t, _module_op(module), role, in_layout, in_rank, attrs)

        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        spec = self.input_spec()
        is_input: dict[tuple, str | None] = {}
        for i, t in enumerate(tensors):
            layout = spec[i].layout if spec and i < len(spec) else default_layout(t.dim())
            is_input[_tensor_key(t)] = layout
        handles = [m.register_forward_hook(hook) for m in names]
        handles += self._owner_hooks(owners, record, layouts, calls, mine)
        if granularity == "ops":
            mode, op_handles = self._op_recorder(record, layouts, calls, keeper, mine)
            handles += op_handles
        else:
            mode = _write_guard(keeper)
        stuck: list[str] = []
        stuck_ids: set[int] = set()
        try:
            with _inference(model) as modes, mode:
                # a module whose train() is overridden stays in training mode under eval()
                stuck = [n for n, m in model.named_modules() if m.training]
                stuck_ids = {id(m) for m in model.modules() if m.training}
                out = self._call(model, inputs, tensors)
        except ParityError:
            raise  # parity's own (a spill directory that is full): already says what happened
        except Exception as exc:  # the user's model failed: say with what, and where
            shapes = ", ".join(str(tuple(a.shape)) for a in arrays)
            expected = ""
            if spec:
                expected = " The first layer suggests " + ", ".join(
                    f"{s.name}: {_fmt_shape(s.shape)} ({s.layout})" for s in spec
                ) + "."
            where = _raising_module(exc, model)
            raise CaptureError(
                f"running torch model {type(model).__name__} on inputs of shape {shapes} failed"
                f"{where}: {type(exc).__name__}: {exc}.{expected} Inputs are given in model A's layout "
                "and converted for model B; check their shape and layout."
            ) from exc
        finally:
            mine.done = True  # a deep copy made meanwhile (a twin) carries these hooks: they go quiet
            for h in handles:
                h.remove()
        outs = flatten_outputs(out, "output", _is_tensor)
        for tensor_name, t in outs:
            record(tensor_name, t, "output", "output", None, None, {})
        notes: tuple[str, ...] = ()
        if any(was for m, was in modes.items() if id(m) not in stuck_ids):
            notes = (
                f"torch model {type(model).__name__} was in training mode; parity ran it in eval() "
                "(BatchNorm running statistics, no dropout) and restored the mode afterwards.",
            )
        if stuck:
            notes += (
                f"{len(stuck)} module(s) of torch model {type(model).__name__} stay in training mode under eval() "
                f"({', '.join(repr(n or '(the model)') for n in stuck[:6])}{', …' if len(stuck) > 6 else ''}): "
                "their dropout or batch statistics were active in this run, so its values are not the "
                "model's inference.",
            )
        trace = self._trace(taps, arrays, notes)
        spoiled = keeper.spoiled()
        keeper.pending.clear()  # the taps hold what they need; the keeper must not keep tensors alive
        return trace, spoiled


    @staticmethod
    def _owner_hooks(owners: dict, record, layouts: dict, calls: Counter, mine: Any) -> list:
        """Taps for modules that compute with their own parameters in their own forward and only
        then hand the result to children (timm's ``BatchNormAct2d`` normalises itself, then runs
        its ``drop`` and ``act`` children).  Leaf hooks never see that result: it is the input of
        the first child called, so that is the module's tap, recorded before the child runs (an
        in-place activation would overwrite it).  A module whose first child takes the module's
        own input computes nothing of its own first, and gets no tap; one whose children never
        run is tapped by its output."""
        open_: list[list] = []  # [module, name, input keys, decided, first input] of the owners running now
        handles = []

        def tap(owner: Any, name: str, t: Any, in_first: Any) -> None:
            k = calls[name]
            calls[name] += 1
            base = name if k == 0 else f"{name}#{k}"
            in_layout = in_rank = None
            attrs = _module_attrs(owner)
            if in_first is not None:
                known = layouts.get(_tensor_key(in_first))
                in_rank = in_first.dim()
                in_layout = known[0] if known and known[1] == in_rank else None
                attrs["_in_shape"] = tuple(in_first.shape)
            attrs["own_compute"] = True  # the module's own step, before its children: not its output
            record(base, t, _torch_op(owner), "layer", in_layout, in_rank, attrs)

        def enter(mod, args):
            if not mine():
                return
            first = next((a for a in args if _is_tensor(a)), None)
            for entry in open_:  # a module running inside an owner that has not been decided yet
                if not entry[3] and mod is not entry[0]:
                    entry[3] = True
                    if first is not None and _is_tensor(first) and _tensor_key(first) not in entry[2]:
                        tap(entry[0], entry[1], first, entry[4])
            if mod in owners:
                keys = {_tensor_key(a) for a in args if _is_tensor(a)}
                open_.append([mod, owners[mod], keys, False, first])

        def leave(mod, args, out):
            if not mine():
                return
            if mod in owners and open_ and open_[-1][0] is mod:
                entry = open_.pop()
                if not entry[3] and _is_tensor(out):
                    tap(mod, entry[1], out, entry[4])

        if owners:
            watched = set()
            for owner in owners:
                for m in owner.modules():
                    if m not in watched:
                        watched.add(m)
                        handles.append(m.register_forward_pre_hook(enter))
                        if m in owners:
                            handles.append(m.register_forward_hook(leave, always_call=True))
        return handles

    def run(self, inputs: Inputs) -> Any:
        """One plain forward pass in inference mode (the modules' modes restored after);
        hooks the caller registered fire."""
        import torch

        inputs = cast_floating(inputs, self.input_dtype or self.compute_dtype())
        arrays = list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        with _inference(self.model):
            return self._call(self.model, inputs, tensors)

    @staticmethod
    def _call(model: Any, inputs: Inputs, tensors: list) -> Any:
        if isinstance(inputs, dict):
            return model(**dict(zip(inputs.keys(), tensors)))
        return model(*tensors)

    # --- one layer alone -------------------------------------------------------------

    def _module(self, name: str) -> Any | None:
        """The submodule whose tap is ``name``, or ``None`` when the tap is not one module's
        single call (a repeated call ``#k``, one output of several ``[i]``, an op ``:op``)."""
        if not name or "#" in name or "[" in name or ":" in name:
            return None
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            return None

    def can_call(self, name: str) -> bool:
        return self._module(name) is not None

    def layer_inputs(self, inputs: Inputs, names: Sequence[str]) -> dict[str, np.ndarray]:
        import torch

        found: dict[str, np.ndarray] = {}
        modules = {n: m for n in names if (m := self._module(n)) is not None}
        mine = _Ours()

        def hook_for(name: str):
            def pre(module, args):
                if not mine():
                    return
                if name not in found and len(args) == 1 and isinstance(args[0], torch.Tensor):
                    found[name] = args[0].detach().cpu().numpy().copy()

            return pre

        if not modules:
            return found
        handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in modules.items()]
        try:
            self.run(inputs)
        finally:
            mine.done = True
            for h in handles:
                h.remove()
        return found

    def call_layer(self, name: str, x: np.ndarray) -> np.ndarray:
        import torch

        module = self._module(name)
        if module is None:
            raise CaptureError(f"{name!r} is not one module of {type(self.model).__name__} that can be called alone.")
        with _inference(module):
            return module(torch.from_numpy(np.ascontiguousarray(x))).detach().cpu().numpy()

    def export_piece(self, name: str, out: Any, side: str, source: str | None) -> dict:
        """Write module ``name`` alone for a repro (:mod:`parity.repro`): a ``torch.nn`` layer as
        its class, its constructor's arguments read back from its attributes, and its weights
        (``{side}_weights.npz``) — rebuilt here first: refused unless those arguments make the
        layer again and its weights load into it."""
        import torch

        module = self._module(name)
        if module is None:
            raise NotImplementedError(f"{name!r} is not one module that can be cut out")
        cls = type(module)
        if getattr(torch.nn, cls.__name__, None) is not cls or any(True for _ in module.children()):
            raise NotImplementedError(
                f"{name!r} is a {cls.__module__}.{cls.__qualname__}, not a torch.nn layer: rebuild it from your "
                "code (its recorded input and output are in the bundle)"
            )
        kwargs: dict[str, Any] = {}
        for param in list(inspect.signature(cls.__init__).parameters.values())[1:]:
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or param.name in ("device", "dtype"):
                continue
            if param.name == "bias" and hasattr(module, "bias") and not isinstance(module.bias, bool):
                kwargs["bias"] = module.bias is not None
            elif hasattr(module, param.name) and _plain(getattr(module, param.name)):
                value = getattr(module, param.name)
                kwargs[param.name] = list(value) if isinstance(value, tuple) else value
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        try:
            rebuilt = cls(**kwargs)
            rebuilt.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - arguments that cannot be read back
            raise NotImplementedError(f"{name!r} ({cls.__name__}) could not be rebuilt from its attributes: {exc}") from exc
        np.savez(Path(out) / f"{side}_weights.npz", **{k: v.numpy() for k, v in state.items()})
        return {"kind": "torch", "class": cls.__name__, "kwargs": kwargs, "weights": f"{side}_weights.npz"}

    # --- twins -----------------------------------------------------------------------

    def twin(self, kind: str, *, seed: int = 0) -> "TorchBackend":
        import copy

        import torch

        check_kind(kind)
        model = copy.deepcopy(self.model)
        if kind == "float64":
            twin = type(self)(model.double(), **self.options)
            twin.input_dtype = "float64"
            return twin
        for m in model.modules():
            if hasattr(m, "reset_running_stats"):
                m.reset_running_stats()
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        model.eval()
        if kind == "randomized_stats":
            rng = np.random.default_rng(seed)
            with torch.no_grad():
                for m in model.modules():
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
                        mean, var = random_statistics(rng, m.num_features)
                        m.running_mean.copy_(torch.from_numpy(mean))
                        m.running_var.copy_(torch.from_numpy(var))
        return type(self)(model, **self.options)

    def _op_recorder(self, record, layouts: dict, calls: Counter, keeper: _Keeper, mine: Any) -> tuple[Any, list]:
        """A TorchFunctionMode recording the ops each non-leaf module's forward calls itself."""
        from torch.overrides import TorchFunctionMode

        stack: list[tuple[str, bool]] = []  # (module path, is leaf) of the modules running now
        handles = []
        for path, module in self.model.named_modules():
            is_leaf = next(iter(module.children()), None) is None and module is not self.model

            def push(mod, args, path=path, is_leaf=is_leaf):
                if mine():
                    stack.append((path, is_leaf))

            def pop(mod, args, out):
                if stack and mine():
                    stack.pop()

            handles.append(module.register_forward_pre_hook(push))
            handles.append(module.register_forward_hook(pop, always_call=True))

        class OpRecorder(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                if keeper.pending:
                    written = _written_tensors(func, args, kwargs)
                    if written:
                        keeper.before_write(written)
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
                    if t.dim() == in_rank and op not in REORDER_OPS:
                        if known is not None:
                            attrs["_layout"] = in_layout  # elementwise and friends keep their input's layout
                    elif op in FLATTEN_OPS and t.dim() == 2:
                        attrs["_flattens"] = True
                    elif op in REORDER_OPS:
                        attrs["_layout"] = None  # a permuted tensor's layout is not known
                    record(tensor_name, t, op, "layer", in_layout, in_rank, attrs)
                return out

        return OpRecorder(), handles

    # --- parameters (read in parity/capture/torch_params.py) -----------------------------

    def layer_params(self, name: str):
        """The parameters of submodule ``name`` as a :class:`~parity.records.LayerParams` in
        PyTorch's layout (see :mod:`parity.capture.torch_params`)."""
        from .torch_params import layer_params

        return layer_params(self.model, name)

    @property
    def reads_params(self) -> bool:
        return True


_WRITE_GUARD: Any = None


def _write_guard(keeper: _Keeper) -> Any:
    """A TorchFunctionMode that lets ``keeper`` copy recorded tensors an in-place call is about to
    overwrite (``F.relu(x, inplace=True)``, ``x += y``, ``torch.relu_(x)``, ``out=x``).

    The class is made once: a class made per capture would sit in a reference cycle holding the
    keeper, and with it every recorded tensor, until the garbage collector ran."""
    global _WRITE_GUARD
    if _WRITE_GUARD is None:
        from torch.overrides import TorchFunctionMode

        class WriteGuard(TorchFunctionMode):
            def __init__(self, keeper: _Keeper) -> None:
                super().__init__()
                self.keeper = keeper

            def __torch_function__(self, func, types, args=(), kwargs=None):
                keeper = self.keeper
                if keeper.pending:
                    written = _written_tensors(func, args, kwargs)
                    if written:
                        keeper.before_write(written)
                return func(*args, **(kwargs or {}))

        _WRITE_GUARD = WriteGuard
    return _WRITE_GUARD(keeper)


class _Ours:
    """Whether a hook fires for the capture that registered it: in the thread that registered
    it, while that capture runs (hooks fire for every thread's forward of a shared module, and
    ``copy.deepcopy`` of a model copies the hooks on it)."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.done = False

    def __call__(self) -> bool:
        return not self.done and threading.get_ident() == self.thread


#: the modules in eval() for a capture under way: id(module) → [captures running, the modes saved]
_IN_EVAL: dict[int, list] = {}
_IN_EVAL_LOCK = threading.Lock()


@contextmanager
def _inference(model: Any) -> Iterator[dict]:
    """``model`` in ``eval()`` under ``no_grad``; every module's own mode is restored afterwards.
    Yields the modes the modules had (a True among them: the model was handed in training).

    Shared between threads: the first capture of a model saves the modes and calls ``eval()``,
    the last one to finish restores them, and each is told the modes the user had."""
    import torch

    key = id(model)
    with _IN_EVAL_LOCK:
        entry = _IN_EVAL.get(key)
        if entry is None:
            entry = _IN_EVAL[key] = [0, {m: m.training for m in model.modules()}]
            model.eval()
        entry[0] += 1
    try:
        with torch.no_grad():
            yield entry[1]
    finally:
        with _IN_EVAL_LOCK:
            entry[0] -= 1
            if entry[0] == 0:
                del _IN_EVAL[key]
                for m, was_training in entry[1].items():
                    m.train(was_training)


def _raising_module(exc: BaseException, model: Any) -> str:
    """`` in layer 'features.exploder' (Exploder)``: the innermost submodule of ``model`` whose
    call the traceback passes through (read from the frames' ``self``, so the successful
    forward pays nothing for it); ``""`` when the model's own forward raised."""
    paths = {id(m): name for name, m in model.named_modules() if m is not model}
    found = None
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if owner is not None and id(owner) in paths:
            found = owner
        tb = tb.tb_next
    if found is None:
        return ""
    return f" in layer {paths[id(found)]!r} ({type(found).__name__})"


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
        "ceil_mode",
        "count_include_pad",
    ):
        if hasattr(module, key):
            val = getattr(module, key)
            if isinstance(val, (int, float, str, bool)) or (
                isinstance(val, tuple) and all(isinstance(v, (int, float)) for v in val)
            ):
                attrs[key] = val
    perm = getattr(module, "perm", None)  # onnx2torch's OnnxTranspose
    if isinstance(perm, (list, tuple)) and perm and all(isinstance(i, int) for i in perm):
        attrs["perm"] = tuple(perm)
    # BatchNorm statistics: the numbers a diagnosis of epsilon / statistics bugs needs
    for key in ("running_mean", "running_var"):
        val = getattr(module, key, None)
        if val is not None and hasattr(val, "detach"):
            attrs[key] = val.detach().cpu().double().numpy().copy()
    return attrs


#: suffixes onnx2torch puts on its module classes for the variant it picked (opset, static shapes)
_ONNX2TORCH_SUFFIX = re.compile(r"(WithKnownInputShape|StaticAxes|DynamicAxes|Static|Dynamic|V\d+(V\d+)?|\d+)$")


def _module_op(module: Any) -> str:
    """The op a module's taps are named by: its class name, except for onnx2torch's own
    modules, which get the ONNX op they run (``OnnxBinaryMathOperation`` → ``Mul``/``Add``,
    ``OnnxPadStatic`` → ``Pad``, ``OnnxGlobalAveragePoolWithKnownInputShape`` →
    ``GlobalAveragePool``), so they align with the other side's layers."""
    cls = type(module)
    name = cls.__name__
    if not cls.__module__.startswith("onnx2torch.") or not name.startswith("Onnx"):
        return name
    fn = getattr(module, "math_op_function", None)
    if name == "OnnxBinaryMathOperation" and fn is not None:
        return getattr(fn, "__name__", "BinaryMath").lstrip("_").replace("onnx_", "").capitalize()
    return _ONNX2TORCH_SUFFIX.sub("", name[len("Onnx"):]) or name


def _computes_itself(module: Any) -> bool:
    """Whether a module with children holds parameters or buffers of its own (not its children's):
    it computes something in its own forward — timm's ``BatchNormAct2d`` is a BatchNorm whose
    children are only its dropout and activation."""
    return any(True for _ in module.parameters(recurse=False)) or any(
        b is not None for b in module._buffers.values()
    )


def _torch_op(module: Any) -> str:
    """The op of a module's own computation: the first ``torch.nn`` class it derives from
    (``BatchNormAct2d`` → ``BatchNorm2d``), else its class name."""
    for cls in type(module).__mro__:
        if cls.__module__ == "torch.nn.modules.module":
            break  # nn.Module itself says nothing
        if cls.__module__.startswith("torch.nn.modules"):
            return cls.__name__
    return _module_op(module)


def _data_ptr(t: Any) -> int | None:
    try:
        return t.data_ptr()
    except RuntimeError:  # tensors without storage
        return None


def _input_transposed_to_channels_first(model: Any, conv: Any, rank: int) -> bool:
    """Whether an ``fx.GraphModule``'s single input reaches its first convolution ``conv``
    through a channels-last → channels-first permutation (what onnx2torch makes of a
    tf2onnx graph: ONNX keeps TF's NHWC input and transposes it before the first Conv)."""
    graph = getattr(model, "graph", None)
    if graph is None or not type(model).__module__.startswith("torch.fx"):
        return False
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        return False
    to_first = tuple([0, rank - 1] + list(range(1, rank - 1)))
    node, permuted = placeholders[0], False
    for _ in range(16):  # a few elementwise / pad / transpose steps at most
        if len(node.users) != 1:
            return False
        node = next(iter(node.users))
        if node.op != "call_module":
            return False
        module = model.get_submodule(node.target)
        if module is conv or any(m is conv for m in module.modules()):
            return permuted
        perm = getattr(module, "perm", None)
        if isinstance(perm, (list, tuple)):
            if tuple(perm) != to_first or permuted:
                return False
            permuted = True
    return False
