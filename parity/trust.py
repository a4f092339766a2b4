"""Whether a model file would run code: the one place parity decides, before the file is loaded.

Some formats are programs, not data: a TorchScript archive holds code, a ``.pt2`` may hold pickles,
a TensorFlow graph may hold ops that write files or run Python, a Keras config names the modules
to import, a pickled ``.pth`` runs whatever it names.  :func:`check` reads such a file *without
loading it* and raises :class:`~parity.errors.UntrustedModel`, naming what the file would do, unless
it holds only computation (the allow-lists are in :mod:`parity.trust_ops`).  ``trust=True`` skips
the check and lets each loader run code too (``torch.load(weights_only=False)``, Keras
``safe_mode=False``).  ONNX and TFLite files are data run by their own interpreters; they are not
checked.
"""

from __future__ import annotations

import ast
import io
import json
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import ModelError, UntrustedModel
from .trust_ops import (
    KERAS_MODULES,
    TF_CHECKPOINT_OPS,
    TF_OPS,
    TF_SYMBOL_MODULES,
    TF_SYMBOLS,
    TORCH_CLASS_NAMESPACES,
    TORCH_DENIED_OPS,
    TORCH_NAMESPACES,
)

__all__ = ["check", "UntrustedModel", "loader_options", "TRUST_HINT"]

#: how to opt in, as every refusal says it
TRUST_HINT = (
    "If you trust the file, opt in with trust=True (parity.load(path, trust=True), parity.diff(..., "
    "trust=True)), --trust on the command line, or trust = true in the pair table."
)

_SHOWN = 4  # offending ops/objects named in a message


def loader_options(path: Path, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` for the loader of ``path`` with ``trust`` taken out and turned into the
    loader's own opt-in (``weights_only=False`` for torch, ``safe_mode=False`` for Keras); the old
    options keep working on their own."""
    options = dict(options)
    trust = bool(options.pop("trust", False))
    if trust:
        suffix = path.suffix.lower()
        if suffix in (".pt", ".pth", ".bin"):
            options.setdefault("weights_only", False)
        elif suffix in (".keras", ".h5"):
            options.setdefault("safe_mode", False)
    return options


def check(path: str | Path, *, trust: bool = False, **options: Any) -> None:
    """Raise :class:`UntrustedModel` if the model file at ``path`` would run code when loaded or
    run, unless ``trust``.  ``options`` are the loader's: ``weights_only=False`` and
    ``safe_mode=False`` are opt-ins of their own (to pickles, to Keras code)."""
    if trust:
        return
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        if (path / "saved_model.pb").exists() or (path / "saved_model.pbtxt").exists():
            _check_saved_model(path)
            if options.get("keras") and options.get("safe_mode", True):
                _check_keras2_metadata(path)
        return
    if suffix in (".pt", ".pth", ".bin") and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(_is_code(n) or n.endswith("constants.pkl") for n in archive.namelist()):
                _check_torchscript(path, archive)
        return  # a pickle: torch.load(weights_only=True) refuses what it would run
    if suffix == ".pt2":
        _check_pt2(path)
    elif suffix == ".keras" and options.get("safe_mode", True):
        _check_keras(path)
    elif suffix == ".h5" and options.get("safe_mode", True):
        _check_h5(path)
    elif suffix in (".pb", ".pbtxt"):
        if path.name == "saved_model.pb":
            _check_saved_model(path.parent)
        else:
            _check_graph_def(path)


def _refuse(path: Path, what: str, items: Iterable[str]) -> UntrustedModel:
    unique = list(dict.fromkeys(items))
    shown = ", ".join(unique[:_SHOWN]) + (f" and {len(unique) - _SHOWN} more" if len(unique) > _SHOWN else "")
    return UntrustedModel(
        f"{str(path)!r} {what}: {shown}. parity runs no code from a model file unless you trust it. {TRUST_HINT}",
        path=path,
        found=unique,
    )


# --- TorchScript --------------------------------------------------------------------------------


def _is_code(name: str) -> bool:
    parts = name.split("/")
    return "code" in parts[:-1] and name.endswith(".py")


def _check_torchscript(path: Path, archive: zipfile.ZipFile) -> None:
    """Every operator the archive's code calls, against ATen/prim minus :data:`TORCH_DENIED_OPS`.

    TorchScript resolves ``torch.X`` to ``aten::X``, ``ops.NS.X`` to ``NS::X``, ``getattr(m, "X")``
    like ``m.X``, a method call on a tensor to the ATen op of its name and ``__torch__.torch.classes``
    to C++ classes; a module bound to a variable could hide the namespace, and is refused."""
    found: list[str] = []
    for name in archive.namelist():
        if not _is_code(name):
            continue
        where = name.split("/code/", 1)[-1]
        try:
            tree = ast.parse(archive.read(name).decode("utf-8"), filename=name)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            found.append(f"code parity cannot read ({where})")
            continue
        found.extend(f"{item} ({where})" for item in _torchscript_calls(tree))
    if found:
        raise _refuse(path, "is TorchScript whose code reaches outside tensor arithmetic", found)


def _dotted(node: ast.AST) -> list[str] | None:
    """``["torch", "ops", "aten", "save"]`` for ``torch.ops.aten.save`` (``getattr(x, "a")`` read as
    ``x.a``), or None when the chain does not start at a name."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else [*inner, node.attr]
    if _literal_getattr(node):
        assert isinstance(node, ast.Call)
        inner = _dotted(node.args[0])
        return None if inner is None else [*inner, node.args[1].value]  # type: ignore[attr-defined]
    return None


def _literal_getattr(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
        and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
    )


def _torchscript_calls(tree: ast.AST) -> Iterator[str]:
    parents: dict[int, ast.AST] = {}
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            parents[id(child)] = parent

    def outermost(node: ast.AST) -> ast.AST:
        while True:
            parent = parents.get(id(node))
            if isinstance(parent, ast.Attribute) and parent.value is node:
                node = parent
            elif parent is not None and _literal_getattr(parent) and parent.args[0] is node:  # type: ignore[attr-defined]
                node = parent
            else:
                return node

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
            if not _literal_getattr(node):
                yield "getattr with a computed name"
        if isinstance(node, ast.Name) and node.id in TORCH_DENIED_OPS and isinstance(parents.get(id(node)), ast.Call):
            yield f"{node.id}() ({TORCH_DENIED_OPS[node.id]})"
        parent = parents.get(id(node))
        if isinstance(node, ast.Attribute) and node.attr in TORCH_DENIED_OPS and isinstance(parent, ast.Call) \
                and parent.func is node:
            chain = _dotted(outermost(node))
            if chain is None or chain[0] not in ("torch", "ops", "__torch__"):
                yield f".{node.attr}() ({TORCH_DENIED_OPS[node.attr]})"  # a method of the op's name
        if not (isinstance(node, ast.Name) and node.id in ("torch", "ops", "__torch__")):
            continue
        top = outermost(node)
        chain = _dotted(top)
        assert chain is not None
        classes = chain[1:] if chain[0] == "__torch__" else chain
        if classes[:2] == ["torch", "classes"]:
            if len(classes) < 4 or classes[2] not in TORCH_CLASS_NAMESPACES:
                yield f"the C++ class {'.'.join(classes)}"
            continue
        if chain[0] == "__torch__":
            if "classes" in chain[1:3]:  # a class named outside torch.classes still is one
                yield f"the C++ class {'.'.join(chain[1:])}"
            continue
        if chain[0] == "torch" and len(chain) > 1 and chain[1] != "ops":
            namespace, op = "aten", chain[1]
        else:
            rest = chain[2:] if chain[0] == "torch" else chain[1:]
            if len(rest) < 2:
                yield f"the operator namespace {'.'.join(chain)} as a value"
                continue
            namespace, op = rest[0], rest[1]
        if namespace not in TORCH_NAMESPACES:
            yield f"{namespace}::{op} (an operator outside ATen; parity cannot tell what it does)"
        elif op in TORCH_DENIED_OPS:
            yield f"{namespace}::{op} ({TORCH_DENIED_OPS[op]})"


# --- torch.export (.pt2) -------------------------------------------------------------------------

#: Python callables a torch.export graph may target besides torch.ops.aten/prim
_PT2_TARGETS = {
    "_operator": {"getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs",
                  "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert", "lshift", "rshift"},
    "math": {"sqrt", "ceil", "floor", "trunc", "exp", "log", "log2", "log10", "sin", "cos", "tan", "tanh",
             "pow", "fabs", "isnan", "isinf", "isfinite", "pi", "e", "inf", "nan"},
    "torch": {"sym_not", "sym_float", "sym_int", "sym_max", "sym_min", "sym_sqrt", "sym_ite", "sym_sum",
              "_sym_sqrt", "sym_fresh_size"},
}


#: higher-order ops that only run subgraphs of the program (control flow, grad/autocast modes)
_HIGHER_ORDER = {"cond", "while_loop", "map_impl", "scan", "wrap_with_set_grad_enabled", "wrap_with_autocast"}


def _check_pt2(path: Path) -> None:
    """A ``torch.export`` archive: every node's target, every payload's format (a pickled payload
    is unpickled with ``weights_only=False`` by ``torch.export.load``), and its guards (Python
    expressions that ``ExportedProgram.module()`` executes)."""
    if not zipfile.is_zipfile(path):
        return  # the loader says what it is
    found: list[str] = []
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        for name in names:
            parts = name.split("/")
            if len(parts) >= 3 and parts[-2] == "models" and name.endswith(".json"):
                try:
                    program = json.loads(archive.read(name))
                except ValueError:
                    found.append(f"a program parity cannot read ({name})")
                    continue
                found.extend(_pt2_targets(program))
                found.extend(_pt2_guards(program.get("guards_code") or []))
            elif name.endswith("_config.json") and "/data/" in name:
                found.extend(_pt2_payloads(archive, name))
            elif "/data/" in name and (name.endswith(".pt") and "/sample_inputs/" in name
                                       or name.split("/")[-2] in ("weights", "constants") and name.endswith(".pt")):
                if not _weights_only_loads(archive.read(name)):
                    found.append(f"the pickled payload {name.split('/data/', 1)[1]} (Python objects beyond tensors)")
    if found:
        raise _refuse(path, "is a torch.export program that would run code when loaded", found)


def _pt2_targets(program: Any) -> Iterator[str]:
    for node in _dicts_with(program, "target"):
        target = node["target"]
        if not isinstance(target, str) or "outputs" not in node and "inputs" not in node:
            continue
        parts = target.split(".")
        if target.startswith("torch.ops.") and len(parts) >= 4:
            namespace, op = parts[2], parts[3]
            if namespace == "higher_order" and op in _HIGHER_ORDER:
                continue  # their subgraphs are nodes of the program, checked like the rest
            if namespace not in TORCH_NAMESPACES:
                yield f"{namespace}::{op} (an operator outside ATen; parity cannot tell what it does)"
            elif op in TORCH_DENIED_OPS:
                yield f"{target} ({TORCH_DENIED_OPS[op]})"
        elif not (len(parts) == 2 and parts[1] in _PT2_TARGETS.get(parts[0], ())):
            yield f"the Python callable {target}"


def _dicts_with(obj: Any, key: str) -> Iterator[dict]:
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if key in item:
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


_GUARD_NAMES = {"L", "args", "math", "inf", "Min", "Max", "Mod", "PythonMod", "FloorDiv", "CeilDiv",
                "IntTrueDiv", "FloatTrueDiv", "ToFloat", "TruncToInt", "RoundToInt", "CeilToInt", "FloorToInt",
                "Abs", "Eq", "Ne", "Le", "Lt", "Ge", "Gt", "And", "Or", "Not", "True", "False", "None"}
_GUARD_METHODS = {"size", "stride", "storage_offset", "dim", "numel", "sqrt", "floor", "ceil", "trunc"}


def _pt2_guards(guards: Iterable[Any]) -> Iterator[str]:
    """Guards that are not arithmetic on the inputs' sizes (they are ``exec``'d as Python)."""
    for guard in guards:
        try:
            tree = ast.parse(str(guard), mode="eval")
        except SyntaxError:
            yield f"the guard {str(guard)[:60]!r} (not an expression)"
            continue
        for node in ast.walk(tree):
            bad = (
                isinstance(node, (ast.Lambda, ast.NamedExpr, ast.ListComp, ast.GeneratorExp, ast.DictComp,
                                  ast.SetComp, ast.Starred, ast.JoinedStr))
                or isinstance(node, ast.Name) and node.id not in _GUARD_NAMES
                or isinstance(node, ast.Attribute) and (node.attr not in _GUARD_METHODS or node.attr.startswith("_"))
            )
            if bad:
                yield f"the guard {str(guard)[:60]!r} (Python beyond size arithmetic)"
                break


def _pt2_payloads(archive: zipfile.ZipFile, name: str) -> Iterator[str]:
    try:
        config = json.loads(archive.read(name)).get("config", {})
    except (ValueError, AttributeError):
        yield f"a payload table parity cannot read ({name})"
        return
    folder = name.rsplit("/", 1)[0]
    for fqn, meta in (config.items() if isinstance(config, dict) else ()):
        file = str(meta.get("path_name", "")) if isinstance(meta, dict) else ""
        if file.startswith("custom_obj"):
            yield f"{fqn} (a TorchBind object, restored by its C++ code)"
        elif file.startswith("opaque_obj"):
            yield f"{fqn} (a pickled Python object)"
        elif isinstance(meta, dict) and meta.get("use_pickle"):
            member = f"{folder}/{file}"
            data = archive.read(member) if member in archive.namelist() else b""
            if not _weights_only_loads(data):
                yield f"{fqn} (a pickled payload holding Python objects beyond tensors)"


def _weights_only_loads(data: bytes) -> bool:
    """Whether ``torch.load(weights_only=True)`` — torch's restricted unpickler, which builds only
    tensors and containers — reads ``data``; ``torch.export.load`` falls back to a full unpickle
    where it does not."""
    import torch

    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any refusal means the payload is more than tensors
        return False
    return True


# --- TensorFlow graphs ---------------------------------------------------------------------------


def _check_graph_def(path: Path) -> None:
    """A frozen GraphDef: every node and every library function against :data:`TF_OPS`."""
    from .capture.tfnames import import_tf

    tf = import_tf()
    graph_def = tf.compat.v1.GraphDef()
    data = path.read_bytes()
    try:
        graph_def.ParseFromString(data)
    except Exception:  # noqa: BLE001 - text, or not a graph: tried below, then the loader says
        graph_def = tf.compat.v1.GraphDef()
        if path.suffix.lower() != ".pbtxt":
            return
        from google.protobuf import text_format

        try:
            text_format.Parse(data.decode("utf-8", errors="replace"), graph_def)
        except Exception:  # noqa: BLE001
            return
    functions = {f.signature.name: f for f in graph_def.library.function}
    found = list(_bad_ops(graph_def.node, functions, set(functions), TF_OPS))
    if found:
        raise _refuse(path, "is a TensorFlow graph holding ops outside parity's pure-math allow-list", found)


def _check_saved_model(path: Path) -> None:
    """A SavedModel: every op of every meta graph and of its function library against
    :data:`TF_OPS`, except the saver its ``saver_def`` names (checkpoint ops are allowed there:
    loading restores variables its own way and never runs it)."""
    from .capture.tfnames import import_tf

    import_tf()
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    pb = path / "saved_model.pb"
    try:
        if pb.exists():
            saved.ParseFromString(pb.read_bytes())
        else:
            from google.protobuf import text_format

            text_format.Parse((path / "saved_model.pbtxt").read_text(encoding="utf-8", errors="replace"), saved)
    except Exception:  # noqa: BLE001 - the loader says what is wrong with the file
        return
    found: list[str] = []
    for meta in saved.meta_graphs:
        graph = meta.graph_def
        functions = {f.signature.name: f for f in graph.library.function}
        by_name = {n.name: n for n in graph.node}
        saver = _ancestors(
            by_name, [meta.saver_def.save_tensor_name, meta.saver_def.restore_op_name] if meta.HasField("saver_def") else []
        )
        roots = [n for n in graph.node if n.name not in saver]
        strict_functions = _reachable(functions, [*_called(roots), *meta.object_graph_def.concrete_functions.keys()])
        found.extend(_bad_ops(roots, functions, strict_functions, TF_OPS))
        saver_functions = _reachable(functions, _called(by_name[n] for n in saver)) - strict_functions
        found.extend(_bad_ops([by_name[n] for n in saver], functions, saver_functions, TF_OPS | TF_CHECKPOINT_OPS))
        orphans = set(functions) - strict_functions - saver_functions
        found.extend(_bad_ops([], functions, orphans, TF_OPS))  # nothing calls them, yet: not an excuse
    if found:
        raise _refuse(path, "is a SavedModel holding ops outside parity's pure-math allow-list", found)


def _check_keras2_metadata(path: Path) -> None:
    meta = path / "keras_metadata.pb"
    if meta.exists() and b'"Lambda"' in meta.read_bytes():
        raise _refuse(path, "is a Keras 2 SavedModel whose layers hold Python code", ["a Lambda layer"])


def _node_name(tensor: str) -> str:
    return tensor.lstrip("^").split(":")[0]


def _ancestors(by_name: dict[str, Any], names: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    stack = [_node_name(n) for n in names if n]
    while stack:
        name = stack.pop()
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        stack.extend(_node_name(i) for i in by_name[name].input)
    return seen


def _function_refs(node: Any) -> Iterator[str]:
    """The library functions a node calls (``f``, ``then_branch``, ``body``, ``branches``, …, or
    its op type, which may name a function)."""
    yield node.op
    for value in node.attr.values():
        if value.HasField("func"):
            yield value.func.name
        for func in value.list.func:
            yield func.name


def _called(nodes: Iterable[Any]) -> list[str]:
    return [ref for node in nodes for ref in _function_refs(node)]


def _reachable(functions: dict[str, Any], roots: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        name = stack.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        stack.extend(_called(functions[name].node_def))
    return seen


def _bad_ops(nodes: Iterable[Any], functions: dict[str, Any], names: Iterable[str], allowed: frozenset[str]) -> Iterator[str]:
    for node in nodes:
        if node.op not in allowed and node.op not in functions:  # a node may call a function by its name
            yield f"{node.op} ({node.name})"
    for name in sorted(names):
        for node in functions[name].node_def:
            if node.op not in allowed and node.op not in functions:
                yield f"{node.op} ({node.name} in {name})"


# --- Keras ---------------------------------------------------------------------------------------


def _check_keras(path: Path) -> None:
    """A ``.keras`` archive's config: every object it names must come from Keras (a config's
    ``module`` is imported by Keras; a registered custom object, with no module, is the caller's
    own code) and no Lambda layer (its bytecode is in the file)."""
    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as archive:
        if "config.json" not in archive.namelist():
            return
        try:
            config = json.loads(archive.read("config.json"))
        except ValueError:
            return
    _check_keras_config(path, config)


def _check_h5(path: Path) -> None:
    try:
        import h5py

        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except (ImportError, OSError):
        return
    if raw is None:
        return
    try:
        config = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except ValueError:
        return
    _check_keras_config(path, config)


def _check_keras_config(path: Path, config: Any) -> None:
    found: list[str] = []
    for obj in _dicts_with(config, "class_name"):
        class_name = obj.get("class_name")
        module = obj.get("module")
        if class_name in ("Lambda", "__lambda__"):
            found.append(f"a Lambda layer {_layer_name(obj)}(Python bytecode)".replace("  ", " "))
        elif isinstance(module, str) and module.split(".")[0] not in KERAS_MODULES:
            found.append(f"{module}.{class_name} (Keras would import {module})")
        elif class_name in ("TFOpLambda", "SlicingOpLambda"):
            function = obj.get("config", {}).get("function") if isinstance(obj.get("config"), dict) else None
            if not _tf_symbol_allowed(function):
                found.append(f"tf.{function} in the TFOpLambda layer {_layer_name(obj)}(outside parity's allow-list)")
    if found:
        raise _refuse(path, "is a Keras model whose config names code outside Keras", found)


def _tf_symbol_allowed(name: Any) -> bool:
    """Whether the TF API function ``name`` (``math.add``, ``compat.v1.transpose``) is one an
    untrusted Keras 2 ``TFOpLambda`` may call: :data:`TF_SYMBOL_MODULES` and :data:`TF_SYMBOLS`."""
    if not isinstance(name, str):
        return False
    parts = name.split(".")
    if parts[:1] == ["compat"] and len(parts) > 2 and parts[1] in ("v1", "v2"):
        parts = parts[2:]
    if len(parts) == 1:
        return parts[0] in TF_SYMBOLS
    return parts[0] in TF_SYMBOL_MODULES and not any(p.startswith("_") and p != "__operators__" for p in parts)


def _layer_name(obj: dict) -> str:
    config = obj.get("config")
    name = config.get("name") if isinstance(config, dict) else None
    return f"{name!r} " if isinstance(name, str) else ""


def keras_load_error(path: Path, exc: Exception) -> ModelError:
    """A Keras ``TypeError``/``ValueError`` from deserialising ``path``'s config, as a ModelError
    (the innermost cause Keras reports, without the config it dumps)."""
    text = str(exc)
    inner = text.rsplit("Exception encountered:", 1)[-1].split("Full object config:")[0]
    first = " ".join(inner.split()).split(". ")[0].rstrip(".")[:300]
    return ModelError(
        f"Keras cannot rebuild the model in {str(path)!r}: {first}. "
        "A custom layer or function must be importable (import the module that registers it with "
        "@keras.saving.register_keras_serializable before loading)."
    )
