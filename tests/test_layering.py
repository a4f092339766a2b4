"""parity's layering, read from its source: no import circle among its modules, the shells (CLI,
demo) above the library, the frameworks behind the capture backends, the records below the
renderers, and no module taking another's private ``_name``s.

Every ``import`` counts — at module level and inside functions alike (a function-level import
is still an arrow between two modules; it only moves when the cycle bites) — except those under
``if TYPE_CHECKING:``, which never run.  ``importlib.import_module("parity.x")`` with a literal
name counts too.  Whether importing the library loads a framework is also checked for real,
in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "parity"

#: the frameworks a library module may import only when first used
FRAMEWORKS = ("torch", "tensorflow", "keras", "tf_keras", "onnx", "onnxruntime")
#: the shells over the library: what the library never imports
SHELLS = ("parity.cli", "parity.demo", "parity.__main__")
#: modules whose job is a framework, so they may import it at import time: the capture
#: backends, and the private demo/test models (``parity._zoo``, imported by the demo and tests only)
FRAMEWORK_MODULES = ("parity.capture.", "parity._zoo.")
CAPTURE_DOORS = ("parity.capture", "parity.capture.base")  # the registry and the interface stay light

#: What main still holds, each owned by a helper who is removing it (issue 13): the integrator
#: empties this.  Circles are listed by the arrow that closes them ("importer -> imported");
#: an entry that no longer matches anything fails the test, so the set only shrinks.
STILL_ON_MAIN: set[str] = set()


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    where: str  # the path shown in messages, from the package's parent
    #: (imported module, line, at import time) for every import of a parity module
    imports: list[tuple[str, int, bool]] = field(default_factory=list)
    #: (top-level package, line) of each non-parity import run at import time
    external_at_import: list[tuple[str, int]] = field(default_factory=list)
    #: (source module, name, line) of each ``from X import _name``
    private: list[tuple[str, str, int]] = field(default_factory=list)


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, at_import: bool = True):
    """Every import statement under ``node`` with whether it runs at import time (not inside a
    function); ``if TYPE_CHECKING:`` bodies are skipped."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for orelse in child.orelse:
                yield from _walk_one(orelse, at_import)
            continue
        yield from _walk_one(child, at_import)


def _walk_one(node: ast.AST, at_import: bool):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node, at_import
    elif (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
        and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
    ):
        yield node, at_import
    inner = at_import and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
    yield from _walk(node, inner)


def read_modules(root: Path = ROOT) -> dict[str, Module]:
    """Every module of the package at ``root`` with the imports its source makes."""
    modules = {
        module_name(p, root): Module(module_name(p, root), p, p.name == "__init__.py", str(p.relative_to(root.parent)))
        for p in sorted(root.rglob("*.py"))
    }
    for mod in modules.values():
        tree = ast.parse(mod.path.read_text(encoding="utf-8"), str(mod.path))
        package = mod.name if mod.is_package else mod.name.rpartition(".")[0]
        for node, at_import in _walk(tree):
            if isinstance(node, ast.Call):
                targets = [node.args[0].value]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.module == "__future__":
                    continue
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = []
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        mod.private.append((source, a.name, node.lineno))
                    # ``from pkg import sub`` imports the submodule; ``from mod import name`` the module
                    targets.append(f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source)
            for target in targets:
                if target.split(".")[0] == root.name:
                    mod.imports.append((target, node.lineno, at_import))
                elif at_import:
                    mod.external_at_import.append((target.split(".")[0], node.lineno))
    return modules


def arrows(modules: dict[str, Module]) -> dict[str, set[str]]:
    return {m.name: {t for t, _, _ in m.imports if t in modules and t != m.name} for m in modules.values()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def violations(modules: dict[str, Module], allowed: set[str] = frozenset()) -> tuple[list[str], set[str]]:
    """What breaks the layering, one line each, and the entries of ``allowed`` that were used."""
    used: set[str] = set()
    out: list[str] = []

    def report(key: str, message: str) -> None:
        if key in allowed:
            used.add(key)
        elif message not in out:
            out.append(message)

    graph = arrows(modules)
    for key in allowed:  # an allowed arrow is taken out of the graph before circles are looked for
        importer, _, imported = key.partition(" -> ")
        if imported in graph.get(importer, ()):
            graph[importer].discard(imported)
            used.add(key)
    for component in circles(graph):
        inside = set(component)
        closing = sorted(f"{a} -> {b}" for a in component for b in graph[a] if b in inside)
        out.append(f"import circle among {', '.join(component)}: {'; '.join(closing)}")
    for mod in modules.values():
        where = mod.where
        library = mod.name not in SHELLS
        for target, line, at_import in mod.imports:
            if library and any(target == s or target.startswith(s + ".") for s in SHELLS):
                report(f"{mod.name} -> {target}", f"{where}:{line}: library module {mod.name} imports the shell {target}")
            if mod.name == "parity.records" and (target == "parity.report" or target.startswith("parity.report.")):
                report(f"{mod.name} -> {target}", f"{where}:{line}: records.py imports the renderer {target}")
        light = mod.name in CAPTURE_DOORS or not mod.name.startswith(FRAMEWORK_MODULES)
        for top, line in mod.external_at_import:
            if light and top in FRAMEWORKS:
                report(f"{mod.name} -> {top}", f"{where}:{line}: {mod.name} imports {top} at import time")
        for source, name, line in mod.private:
            report(f"{mod.name} -> {source}.{name}", f"{where}:{line}: {mod.name} imports the private {source}.{name}")
    return out, used


def test_the_package_keeps_its_layers():
    modules = read_modules()
    assert {"parity", "parity.records", "parity.report.console", "parity.capture.torch"} <= set(modules)
    found, used = violations(modules, STILL_ON_MAIN)
    assert found == [], "\n".join(found)
    assert STILL_ON_MAIN <= used, f"fixed on main, remove from STILL_ON_MAIN: {sorted(STILL_ON_MAIN - used)}"


def test_records_import_nothing_from_the_renderers():
    imports = {t for t, _, _ in read_modules()["parity.records"].imports}
    assert imports and not {t for t in imports if t.startswith("parity.report")}


def test_the_checker_finds_each_kind_of_break(tmp_path):
    # a package of its own with one of each break: the checker must name every one
    pkg = tmp_path / "parity"
    (pkg / "report").mkdir(parents=True)
    files = {
        "__init__.py": "from . import records\n",
        "records.py": "def to_html(r):\n    from .report.html import render\n    return render(r)\n",
        "report/__init__.py": "",
        "report/html.py": "from ..records import Report\nfrom .console import _fmt\n",
        "report/console.py": "_fmt = str\n",
        "cli.py": "import torch\n",
        "chain.py": "from .cli import main\n",
        "capture/__init__.py": "",
        "capture/torch.py": "import torch\n",
        "lazy.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .cli import main\n"
                   "def f():\n    import tensorflow\n",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    found, _ = violations(read_modules(pkg))
    assert sorted(found) == [
        "import circle among parity.records, parity.report.html: parity.records -> parity.report.html; "
        "parity.report.html -> parity.records",
        "parity/chain.py:1: library module parity.chain imports the shell parity.cli",
        "parity/cli.py:1: parity.cli imports torch at import time",
        "parity/records.py:2: records.py imports the renderer parity.report.html",
        "parity/report/html.py:2: parity.report.html imports the private parity.report.console._fmt",
    ]
    allowed = {"parity.records -> parity.report.html", "parity.report.html -> parity.report.console._fmt"}
    found, used = violations(read_modules(pkg), allowed)
    assert used == allowed and len(found) == 2


def test_importing_the_library_loads_no_framework():
    # every module but the capture backends and the demo's models, in a fresh interpreter
    names = sorted(n for n in read_modules() if n in CAPTURE_DOORS or not n.startswith(FRAMEWORK_MODULES))
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n    importlib.import_module(name)\n"
        f"print(' '.join(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT.parent)
    assert out.stdout.split() == []
