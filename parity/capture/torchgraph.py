"""Saved PyTorch programs: TorchScript (``torch.jit.save``, ``.pt``) and
ExportedProgram (``torch.export.save``, ``.pt2``).

Neither runs forward hooks, but both keep, for every op of their graph, the
module it came from: TorchScript's inlined graph through each node's module
hierarchy (``layer1(Sequential).0(BasicBlock).conv1(Conv2d)``), an
ExportedProgram through ``nn_module_stack``.  Each backend runs its graph once
with every op's output exposed and groups the ops by module, so the taps are
named and typed as the live model's would be (``layer1.0.conv1``,
``Conv2d``): a saved program compares with its source model, or with its
conversion, exactly like the live module.  With ``granularity="ops"`` the ops
of non-leaf modules (residual adds, reshapes) become taps too
(``layer1.0:add#0``), as for live modules.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CaptureError
from ..records import InputSpec, ModelInfo, Tap, Trace
from .base import Backend, Inputs, append_tap, flatten_outputs, numpy_dtype_name
from .torchlayout import FLATTEN_OPS, REORDER_OPS, default_layout, module_layout, to_numpy

__all__ = ["TorchScriptBackend", "ExportedProgramBackend"]

_HIERARCHY = re.compile(r"([^.()]+)\(([^()]*)\)")


@dataclass
class _Event:
    """One op of the graph: where it ran and what it made."""

    path: str  # module path ("" for the model's own forward)
    module_type: str  # short class name of that module
    op: str  # aten op name, e.g. "add", "convolution"
    out: Any  # the output tensor
    out_key: Any
    in_keys: tuple = ()
    attrs: dict = field(default_factory=dict)


def _is_tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _build_taps(events: list[_Event], granularity: str, input_layouts: dict) -> list[Tap]:
    """Group consecutive ops of one leaf module into that module's tap; ops of other
    modules become ``path:op#k`` taps with ``granularity="ops"``."""
    paths = {e.path for e in events}
    leaves = {p for p in paths if p and not any(q.startswith(p + ".") for q in paths)}
    layouts: dict[Any, tuple[str | None, int]] = dict(input_layouts)
    calls: Counter[str] = Counter()
    taps: list[Tap] = []

    def known(keys: tuple) -> tuple[str | None, int | None, bool]:
        for key in keys:
            if key in layouts:
                return layouts[key][0], layouts[key][1], True
        return None, None, False

    def add(name: str, op: str, tensor: Any, layout: str | None, attrs: dict) -> None:
        value, dtype = to_numpy(tensor)
        append_tap(taps, name, op, value, layout, attrs=attrs, dtype=dtype)

    i = 0
    while i < len(events):
        event = events[i]
        if event.path in leaves:
            j = i
            while j + 1 < len(events) and events[j + 1].path == event.path:
                j += 1
            group = events[i : j + 1]
            last = group[-1]
            in_layout, in_rank, _ = known(group[0].in_keys)
            rank = last.out.dim()
            layout = module_layout(event.module_type, rank, in_layout, in_rank)
            attrs = {k: v for e in group for k, v in e.attrs.items()}
            if event.module_type == "Flatten" and in_layout and in_rank and in_rank > 2 and rank == 2:
                layout = f"N({in_layout[1:]})"
                attrs["flat_from"] = tuple(attrs.pop("_in_shape", ()))[1:]
            attrs.pop("_in_shape", None)
            for e in group:
                layouts[e.out_key] = (layout, e.out.dim())
            k = calls[event.path]
            calls[event.path] += 1
            add(event.path if k == 0 else f"{event.path}#{k}", event.module_type, last.out, layout, attrs)
            i = j + 1
            continue
        in_layout, in_rank, seen = known(event.in_keys)
        rank = event.out.dim()
        attrs = dict(event.attrs)
        in_shape = attrs.pop("_in_shape", ())
        if event.op in REORDER_OPS:
            layout = None
        elif rank == in_rank and seen:
            layout = in_layout
        elif event.op in FLATTEN_OPS and in_layout and in_rank and in_rank > 2 and rank == 2:
            layout = f"N({in_layout[1:]})"
            attrs["flat_from"] = tuple(in_shape)[1:]
        else:
            layout = default_layout(rank)
        layouts[event.out_key] = (layout, rank)
        if granularity == "ops":
            key = f"{event.path}:{event.op}"
            k = calls[key]
            calls[key] += 1
            add(f"{key}#{k}", event.op, event.out, layout, attrs)
        i += 1
    return taps


def _layouts_of(events: list[_Event], taps: list[Tap]) -> dict[int, str | None]:
    """Layout by tensor identity, for the model outputs (the last op of a module is its output)."""
    by_name = {t.name: t.layout for t in taps}
    return {id(e.out): by_name[e.path] for e in events if e.path in by_name}


def _arrays(inputs: Inputs) -> tuple[list[np.ndarray], list[str] | None]:
    if isinstance(inputs, dict):
        return list(inputs.values()), list(inputs.keys())
    return list(inputs), None


def _check_granularity(options: dict) -> str:
    granularity = options.get("granularity", "modules")
    if granularity not in ("modules", "ops"):
        raise CaptureError(f"granularity must be 'modules' or 'ops', got {granularity!r}.")
    return granularity


def _append_output_taps(taps: list[Tap], out: Any, layouts_by_id: dict) -> None:
    for name, t in flatten_outputs(out, "output", _is_tensor):
        value, dtype = to_numpy(t)
        layout = layouts_by_id.get(id(t), default_layout(value.ndim))
        append_tap(taps, name, "output", value, layout, role="output", dtype=dtype)


def _fail(kind: str, name: str, arrays: list[np.ndarray], exc: Exception) -> CaptureError:
    shapes = ", ".join(str(tuple(a.shape)) for a in arrays)
    return CaptureError(
        f"running {kind} {name} on inputs of shape {shapes} failed: {type(exc).__name__}: {exc}. "
        "A saved program runs only on inputs like the ones it was traced or exported with (rank, dtype, "
        "and for some programs the exact shape); check the inputs' shape and layout."
    )


# --- TorchScript -------------------------------------------------------------------------


class TorchScriptBackend(Backend):
    """A ``torch.jit.ScriptModule`` (traced or scripted), e.g. from ``torch.jit.load``."""

    framework = "torch"

    @classmethod
    def accepts(cls, obj: Any) -> bool:
        torch = sys.modules.get("torch")
        return torch is not None and isinstance(obj, torch.jit.ScriptModule)

    def info(self) -> ModelInfo:
        import torch

        params = sum(p.numel() for p in self.model.parameters())
        return ModelInfo(
            framework="torch", framework_version=torch.__version__,
            name=getattr(self.model, "original_name", type(self.model).__name__),
            kind="TorchScript", param_count=int(params), input_spec=self.input_spec(),
        )

    def input_spec(self) -> tuple[InputSpec, ...] | None:
        inputs = list(self.model.graph.inputs())[1:]  # the first is the module itself
        specs = []
        for value in inputs:
            t = value.type()
            if t.kind() != "TensorType":
                return None
            sizes = t.sizes() if hasattr(t, "sizes") else None
            rank = len(sizes) if sizes is not None else None
            shape = tuple(None for _ in range(rank)) if rank else ()
            dtype = t.dtype() if hasattr(t, "dtype") else None
            specs.append(
                InputSpec(name=value.debugName().split(".")[0], shape=shape,
                          dtype=numpy_dtype_name(dtype) if dtype is not None else "float32",
                          layout=default_layout(rank) if rank else None, source="TorchScript graph")
            )
        return tuple(specs) if specs and all(s.shape for s in specs) else None

    def capture(self, inputs: Inputs, *, containers: bool = False) -> Trace:
        import torch

        granularity = _check_granularity(self.options)
        arrays, names = _arrays(inputs)
        model = self.model
        graph = model.inlined_graph  # a fresh, inlined copy: editing it leaves the model alone
        chosen: list[tuple[Any, Any]] = []  # (node, value)
        extra: list[Any] = []  # running_var tensors BatchNorm diagnoses want
        bn_eps: dict[int, float] = {}
        for node in graph.nodes():
            if not node.kind().startswith("aten::"):
                continue
            for value in node.outputs():
                if value.type().kind() == "TensorType":
                    chosen.append((node, value))
            if node.kind() == "aten::batch_norm":
                ins = list(node.inputs())
                extra.append(ins[4])
                eps_node = ins[7].node()
                if eps_node.kind() == "prim::Constant":
                    bn_eps[len(extra) - 1] = float(eps_node.f("value"))
        original = list(graph.outputs())[0]
        values = [original] + [v for _, v in chosen] + extra
        tuple_node = graph.create("prim::TupleConstruct", values, 1)
        tuple_node.output().setType(torch._C.TupleType([v.type() for v in values]))
        graph.appendNode(tuple_node)
        graph.eraseOutput(0)
        graph.registerOutput(tuple_node.output())
        function = torch._C._create_function_from_graph("parity_capture", graph)
        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        try:
            with torch.no_grad():
                result = function(model._c, *tensors)
        except Exception as exc:
            raise _fail("TorchScript module", self.info().name, arrays, exc) from exc
        out, produced, running = result[0], result[1 : 1 + len(chosen)], result[1 + len(chosen) :]
        events = []
        bn_seen = 0
        input_keys = {v.debugName(): i for i, v in enumerate(list(graph.inputs())[1:])}
        for (node, value), tensor in zip(chosen, produced):
            # scripted modules add SELF (a method of the same module) and UNKNOWN_INSTANCE
            # (a function it called) below the module that ran the op
            hierarchy = [
                (n, t) for n, t in _HIERARCHY.findall(node.getModuleHierarchy() or "")
                if n not in ("SELF", "UNKNOWN_INSTANCE")
            ]
            path = ".".join(n for n, _ in hierarchy)
            module_type = hierarchy[-1][1] if hierarchy else type(model).__name__
            ins = [v for v in node.inputs() if v.type().kind() == "TensorType"]
            attrs: dict[str, Any] = {"_in_shape": ()}
            if node.kind() == "aten::batch_norm":
                attrs["running_var"] = running[bn_seen].detach().double().numpy().copy()
                if bn_seen in bn_eps:
                    attrs["eps"] = bn_eps[bn_seen]
                bn_seen += 1
            events.append(
                _Event(path=path, module_type=module_type, op=node.kind().split("::")[1].lstrip("_"),
                       out=tensor, out_key=value.debugName(), in_keys=tuple(v.debugName() for v in ins),
                       attrs=attrs)
            )
        spec = self.input_spec()
        input_layouts = {}
        for name, position in input_keys.items():
            if position < len(tensors):
                layout = spec[position].layout if spec and position < len(spec) else default_layout(tensors[position].dim())
                input_layouts[name] = (layout, tensors[position].dim())
        taps = _build_taps(events, granularity, input_layouts)
        _append_output_taps(taps, out, _layouts_of(events, taps))
        return self._trace(taps, arrays)


# --- ExportedProgram --------------------------------------------------------------------


class ExportedProgramBackend(Backend):
    """A ``torch.export.ExportedProgram``, e.g. from ``torch.export.load``."""

    framework = "torch"
    suffixes = (".pt2",)
    #: what :meth:`load` reads, as a user is told it
    formats = ".pt2 (torch.export)"

    @classmethod
    def load(cls, path: Any, **options: Any) -> Any:
        from pathlib import Path

        from .torchload import load_exported_program

        return load_exported_program(Path(path))

    @classmethod
    def accepts(cls, obj: Any) -> bool:
        torch = sys.modules.get("torch")
        return torch is not None and isinstance(obj, torch.export.ExportedProgram)

    def info(self) -> ModelInfo:
        import torch

        program = self.model
        params = sum(int(np.prod(t.shape)) for t in program.state_dict.values())
        stacks = [n.meta.get("nn_module_stack") for n in program.graph.nodes if n.meta.get("nn_module_stack")]
        root = next(iter(stacks[0].values()))[1].rsplit(".", 1)[-1] if stacks else "ExportedProgram"
        return ModelInfo(
            framework="torch", framework_version=torch.__version__, name=root, kind="ExportedProgram",
            param_count=params, input_spec=self.input_spec(),
        )

    def input_spec(self) -> tuple[InputSpec, ...] | None:
        specs = []
        for node in self.model.graph.nodes:
            if node.op != "placeholder" or node.name not in self._user_inputs():
                continue
            meta = node.meta.get("val")
            if meta is None or not hasattr(meta, "shape"):
                return None
            shape = tuple(int(s) if isinstance(s, int) or str(s).isdigit() else None for s in meta.shape)
            specs.append(
                InputSpec(name=node.name, shape=shape, dtype=numpy_dtype_name(meta.dtype),
                          layout=default_layout(len(shape)), source="ExportedProgram")
            )
        return tuple(specs) or None

    def _user_inputs(self) -> list[str]:
        from torch.export.graph_signature import InputKind

        return [s.arg.name for s in self.model.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]

    def capture(self, inputs: Inputs, *, containers: bool = False) -> Trace:
        import torch
        import torch.fx

        granularity = _check_granularity(self.options)
        arrays, _ = _arrays(inputs)
        module = self.model.module()
        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        events: list[_Event] = []
        placeholders: list[str] = []

        class Recorder(torch.fx.Interpreter):
            def run_node(self, node):
                result = super().run_node(node)
                if node.op == "placeholder":
                    placeholders.append(node.name)
                stack = node.meta.get("nn_module_stack")
                if node.op != "call_function" or not stack or not _is_tensor(result):
                    return result
                path, qualname = list(stack.values())[-1]
                target = getattr(node.target, "__name__", str(node.target))
                op = target.split(".")[0].lstrip("_")
                attrs: dict[str, Any] = {"_in_shape": ()}
                first = next((a for a in node.all_input_nodes), None)
                if first is not None and _is_tensor(self.env.get(first)):
                    attrs["_in_shape"] = tuple(self.env[first].shape)
                if op == "batch_norm" and len(node.args) > 7:
                    var = self.env.get(node.args[4]) if isinstance(node.args[4], torch.fx.Node) else None
                    if _is_tensor(var):
                        attrs["running_var"] = var.detach().double().numpy().copy()
                    attrs["eps"] = float(node.args[7])
                events.append(
                    _Event(path=path, module_type=qualname.rsplit(".", 1)[-1], op=op, out=result,
                           out_key=node.name, in_keys=tuple(n.name for n in node.all_input_nodes), attrs=attrs)
                )
                return result

        try:
            with torch.no_grad():
                out = Recorder(module).run(*tensors)
        except Exception as exc:
            raise _fail("ExportedProgram", self.info().name, arrays, exc) from exc
        user = [p for p in placeholders if p in self._user_inputs()] or placeholders
        input_layouts = {name: (default_layout(t.dim()), t.dim()) for name, t in zip(user, tensors)}
        taps = _build_taps(events, granularity, input_layouts)
        if isinstance(out, (list, tuple)) and len(out) == 1:
            out = out[0]
        _append_output_taps(taps, out, _layouts_of(events, taps))
        return self._trace(taps, arrays)
