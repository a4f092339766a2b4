"""The trust policy for PyTorch files and inputs: TorchScript whose code writes files, a ``.pt2``
whose payload or guards are Python, pickled inputs — each refused before it runs, with the
opt-in named, and run only with ``trust``; benign files load without it."""

from __future__ import annotations

import ast
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import parity
from parity.cli import main
from parity.errors import InputError, MappingError, ModelError, UntrustedModel
from parity.loading import load_inputs, load_model
from parity.trust import _torchscript_calls
from parity.trust_ops import TORCH_DENIED_OPS, TORCH_NAMESPACES

torch = pytest.importorskip("torch")


class SavesItsInput(torch.nn.Module):
    """Writes its input to ``target`` (``aten::save``) on every forward."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.fc = torch.nn.Linear(3, 3)

    def forward(self, x):
        torch.save(x, self.target)
        return self.fc(x)


class MapsAFile(torch.nn.Module):
    """Creates ``target`` and writes into it (``aten::from_file`` with ``shared=True``)."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target

    def forward(self, x):
        pages = torch.from_file(self.target, True, 4)
        pages.fill_(65.0)
        return x + pages.sum()


class Plain(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 3)

    def forward(self, x):
        return torch.relu(self.fc(x)).softmax(-1)


class WritesOnUnpickle:
    """A pickle that writes ``target`` when it is loaded."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({self.target!r}, 'w').write('pwned')",))


X = np.ones((1, 3), np.float32)


def _rewrite(src: Path, dst: Path, edit) -> None:
    """A copy of the zip ``src`` whose members ``edit(name, data)`` returns changed (None: dropped)."""
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(dst, "w") as out:
        for info in archive.infolist():
            data = edit(info.filename, archive.read(info.filename))
            if data is not None:
                out.writestr(info, data)


def _assert_cli_refuses(argv, capsys, *fragments: str) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err


# --- TorchScript ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module, op",
    [(SavesItsInput, "aten::save (writes a tensor to a file)"), (MapsAFile, "aten::from_file (maps a file")],
)
def test_torchscript_that_writes_a_file_is_refused_unless_trusted(tmp_path, capsys, module, op):
    target = tmp_path / "written"
    path = tmp_path / "evil.pt"
    torch.jit.script(module(str(target))).save(str(path))

    with pytest.raises(UntrustedModel, match="trust=True") as refused:
        parity.load(path)
    assert op in str(refused.value) and "--trust" in str(refused.value)
    with pytest.raises(UntrustedModel, match=op.split(" ")[0]):
        parity.diff(path, Plain(), X)
    _assert_cli_refuses(["taps", str(path), "--shape", "1,3"], capsys, op.split(" ")[0], "--trust")
    _assert_cli_refuses(["diff", str(path), str(path), "--shape", "1,3"], capsys, op.split(" ")[0])
    assert not target.exists()

    assert main(["taps", str(path), "--shape", "1,3", "--trust"]) == 0
    assert target.exists()  # what the refusal said the file would do, it does


def test_torchscript_reaching_an_op_through_getattr_is_refused(tmp_path):
    # TorchScript compiles getattr(torch, "save") to aten::save: a hand-written archive can hide the call
    target = tmp_path / "written"
    scripted = tmp_path / "plain_call.pt"
    torch.jit.script(SavesItsInput(str(target))).save(str(scripted))
    path = tmp_path / "hidden.pt"

    def hide(name, data):
        return data.replace(b"torch.save(", b'getattr(torch, "save")(') if name.endswith("code/__torch__.py") else data

    _rewrite(scripted, path, hide)
    with pytest.raises(UntrustedModel, match=r"aten::save"):
        parity.load(path)
    assert not target.exists()
    parity.load(path, trust=True)(torch.ones(1, 3))
    assert target.exists()


@pytest.mark.parametrize(
    "source, found",
    [
        ("def f(x):\n    return ops.myns.evil(x)\n", "myns::evil (an operator outside ATen"),
        ("def f(x):\n    t = torch\n    return t.relu(x)\n", "the operator namespace torch as a value"),
        ("def f(x):\n    return getattr(torch, name)(x)\n", "getattr with a computed name"),
        ("def f(x: __torch__.torch.classes.myns.Reader):\n    return x\n", "the C++ class torch.classes.myns.Reader"),
        ("def f(x):\n    print(x)\n    return x\n", "print() (prints to the terminal)"),
        ("def f(x):\n    return torch.ops.prim.rpc_sync(x)\n", "prim::rpc_sync (calls another process)"),
    ],
)
def test_torchscript_code_outside_the_allow_list_is_named(source, found):
    assert any(found in item for item in _torchscript_calls(ast.parse(source)))


def test_torchscript_arithmetic_and_submodules_pass():
    source = (
        "class M(Module):\n  fc : __torch__.torch.nn.modules.linear.Linear\n"
        "  def forward(self: __torch__.M, x: Tensor) -> Tensor:\n    fc = self.fc\n"
        "    y = torch.softmax(torch.relu((fc).forward(x, )), -1)\n"
        "    z = ops.aten.add(y, torch.ops.aten.mul(y, 2))\n    return z.view([-1])\n"
    )
    assert list(_torchscript_calls(ast.parse(source))) == []


def test_benign_torchscript_loads_without_trust(tmp_path):
    path = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.trace(Plain(), torch.ones(1, 3)), str(path))
    scripted = tmp_path / "scripted.pt"
    torch.jit.script(Plain()).save(str(scripted))
    for file in (path, scripted):
        assert isinstance(parity.load(file), torch.jit.ScriptModule)


def test_quantized_torchscript_loads_without_trust(tmp_path):
    # quantized::linear_dynamic and torch.classes.quantized packed weights are tensor arithmetic
    quantized = torch.ao.quantization.quantize_dynamic(Plain().eval(), {torch.nn.Linear}, dtype=torch.qint8)
    torch.jit.script(quantized).save(str(tmp_path / "quantized.pt"))
    assert isinstance(parity.load(tmp_path / "quantized.pt"), torch.jit.ScriptModule)


def test_the_denied_ops_cover_every_registered_op_taking_a_file_name():
    # a new torch release adding an ATen op that opens a file must not pass the allow-list unseen
    file_args = {"filename", "file", "path", "f", "fname", "filepath"}
    for schema in torch._C._jit_get_all_schemas():
        namespace, _, op = schema.name.partition("::")
        if namespace in TORCH_NAMESPACES and any(a.name in file_args and "str" in str(a.type) for a in schema.arguments):
            assert op in TORCH_DENIED_OPS, schema


# --- torch.export -------------------------------------------------------------------------------


@pytest.fixture
def exported(tmp_path) -> Path:
    path = tmp_path / "plain.pt2"
    torch.export.save(torch.export.export(Plain(), (torch.ones(1, 3),)), str(path))
    return path


def test_a_pt2_whose_weight_payload_is_a_pickle_is_refused_unless_trusted(exported, tmp_path, capsys):
    target = tmp_path / "written"
    payload = io.BytesIO()
    torch.save(WritesOnUnpickle(str(target)), payload)
    path = tmp_path / "evil.pt2"
    config_name = next(n for n in zipfile.ZipFile(exported).namelist() if n.endswith("model_weights_config.json"))
    config = json.loads(zipfile.ZipFile(exported).read(config_name))
    victim = config["config"]["fc.weight"]["path_name"]
    config["config"]["fc.weight"]["use_pickle"] = True

    def poison(name, data):
        if name == config_name:
            return json.dumps(config).encode()
        return payload.getvalue() if name.endswith(f"/weights/{victim}") else data

    _rewrite(exported, path, poison)
    with pytest.raises(UntrustedModel, match=r"fc.weight \(a pickled payload holding Python objects") as refused:
        parity.load(path)
    assert "trust=True" in str(refused.value)
    _assert_cli_refuses(["taps", str(path)], capsys, "fc.weight", "--trust")
    assert not target.exists()

    with pytest.raises(Exception):  # noqa: B017 - what the pickle returns is no tensor; the point is it ran
        parity.load(path, trust=True)
    assert target.read_text() == "pwned"


def test_a_pt2_with_python_in_its_guards_or_targets_is_refused(exported, tmp_path):
    program_name = next(n for n in zipfile.ZipFile(exported).namelist() if "/models/" in n and n.endswith(".json"))

    def edit_program(change):
        def edit(name, data):
            if name != program_name:
                return data
            program = json.loads(data)
            change(program)
            return json.dumps(program).encode()
        return edit

    guarded = tmp_path / "guarded.pt2"
    _rewrite(exported, guarded, edit_program(lambda p: p.__setitem__("guards_code", ["__import__('os').getcwd() == ''"])))
    with pytest.raises(UntrustedModel, match=r"the guard .*__import__.* \(Python beyond size arithmetic\)"):
        parity.load(guarded)

    def retarget(program):
        program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.os.system"

    called = tmp_path / "called.pt2"
    _rewrite(exported, called, edit_program(retarget))
    with pytest.raises(UntrustedModel, match=r"the Python callable torch.os.system"):
        parity.load(called)


def test_a_benign_pt2_loads_without_trust(exported):
    assert isinstance(parity.load(exported), torch.export.ExportedProgram)


# --- pickles in .pth, inputs --------------------------------------------------------------------


def test_a_pickled_pth_names_the_global_and_the_trust_opt_in(tmp_path, capsys):
    target = tmp_path / "written"
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(2), "x": WritesOnUnpickle(str(target))}, path)
    with pytest.raises(UntrustedModel, match=r"it names the Python global (builtins\.)?exec\). If you trust the file, opt in with trust=True"):
        parity.load(path)
    _assert_cli_refuses(["taps", str(path)], capsys, "exec", "--trust")
    assert not target.exists()
    with pytest.raises(ModelError):  # a dict holding None where the tensor was: no state_dict, but the pickle ran
        parity.load(path, trust=True)
    assert target.exists()


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_pickled_inputs_are_an_input_error_and_never_unpickled(tmp_path, capsys, suffix):
    target = tmp_path / "written"
    path = tmp_path / f"batch{suffix}"
    hostile = np.array([WritesOnUnpickle(str(target))], dtype=object)
    if suffix == ".npy":
        np.save(path, hostile, allow_pickle=True)
    else:
        np.savez(path, x=hostile)
    with pytest.raises(InputError, match=r"holds pickled Python objects .*parity never unpickles inputs"):
        load_inputs(str(path))
    assert main(["taps", "parity._zoo:ConvNet", "--inputs", str(path)]) == 2
    err = capsys.readouterr().err
    assert "pickled Python objects" in err and "Traceback" not in err
    assert not target.exists()


# --- names with a colon, mapping files ---------------------------------------------------------


def test_files_with_a_colon_in_their_names_are_files(exported, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net:v2.pt2").write_bytes(exported.read_bytes())
    np.save(tmp_path / "x:1.npy", X)
    assert isinstance(load_model("net:v2.pt2"), torch.export.ExportedProgram)
    np.testing.assert_array_equal(load_inputs("x:1.npy"), X)
    assert main(["taps", "net:v2.pt2", "--inputs", "x:1.npy"]) == 0
    with pytest.raises(ModelError, match="cannot import 'nope'"):
        load_model("nope:v2.pt2")  # no such file: still read as package.module:attr


def test_diff_takes_a_mapping_file_like_the_cli(tmp_path):
    model = Plain()
    good = tmp_path / "mapping.toml"
    good.write_text('[mapping]\n"fc" = "fc"\n', encoding="utf-8")
    assert parity.diff(model, model, X, mapping=good).ok
    assert parity.diff(model, model, X, mapping=str(good)).ok
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"nope": "fc"}), encoding="utf-8")
    with pytest.raises(MappingError, match="nope"):
        parity.diff(model, model, X, mapping=str(bad))
    with pytest.raises(InputError, match="does not exist"):
        parity.diff(model, model, X, mapping=str(tmp_path / "missing.toml"))


# --- pair tables -------------------------------------------------------------------------------


def test_a_pair_table_opts_in_with_trust(tmp_path):
    from parity.pairs import load_pairs

    target = tmp_path / "written"
    scripted = torch.jit.script(SavesItsInput(str(target)))
    scripted.save(str(tmp_path / "evil.pt"))
    scripted.save(str(tmp_path / "evil_b.pt"))
    config = tmp_path / "parity.toml"
    config.write_text(
        '[pairs.refused]\na = "evil.pt"\nb = "evil_b.pt"\ninputs = { shape = [1, 3] }\n'
        '[pairs.trusted]\na = "evil.pt"\nb = "evil_b.pt"\ninputs = { shape = [1, 3] }\ntrust = true\n'
        '[pairs.one_side]\na = { path = "evil.pt", trust = true }\nb = "evil_b.pt"\ninputs = { shape = [1, 3] }\n',
        encoding="utf-8",
    )
    refused, trusted, one_side = load_pairs(config)
    with pytest.raises(UntrustedModel, match="aten::save"):
        refused.run()
    with pytest.raises(UntrustedModel, match="evil_b.pt"):
        one_side.run()  # A's table trusts A only
    assert not target.exists()
    assert trusted.run().ok
    assert target.exists()


@pytest.mark.slow
def test_the_parity_fixture_takes_trust(tmp_path):
    import os
    import subprocess
    import sys

    target = tmp_path / "written"
    home = tmp_path / "project"
    home.mkdir()
    torch.jit.script(SavesItsInput(str(target))).save(str(home / "evil.pt"))
    (home / "test_model.py").write_text(
        "import numpy as np\nimport pytest\nfrom parity import UntrustedModel\n\n"
        "X = np.ones((1, 3), np.float32)\n\n"
        "def test_refused(parity):\n"
        "    with pytest.raises(UntrustedModel, match='aten::save'):\n"
        "        parity.check('evil.pt', 'evil.pt', X)\n\n"
        "def test_trusted(parity):\n"
        "    parity.check('evil.pt', 'evil.pt', X, trust=True)\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(Path(parity.__file__).resolve().parent.parent)  # this parity, not an installed one
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "parity.plugin", "test_model.py"],
        cwd=home, env=env, capture_output=True, text=True, timeout=600,
    )
    assert "2 passed" in done.stdout, done.stdout + done.stderr
    assert target.exists()
