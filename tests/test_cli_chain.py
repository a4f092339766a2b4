"""`parity chain` on the command line: usage and file mistakes exit 2 with one line on stderr,
before any model (or framework) loads.  The runs themselves are in test_chain.py."""

from __future__ import annotations

import pytest

from parity.cli import build_parser, main


def _run(argv, capsys):
    code = main(["chain", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(("argv", "message"), [
    (["pkg.mod:net"], "InputError: parity chain needs at least two models (a model and a conversion); got 1."),
    (["pkg.mod:a", "pkg.mod:b", "--names", "a,b,c"],
     "InputError: --names gives 3 name(s) for 2 models; give one per model."),
    (["pkg.mod:a", "pkg.mod:b", "--precision", "oops"],
     "InputError: --precision takes STAGE=DTYPE (e.g. --precision 4=float16); got 'oops'."),
    (["pkg.mod:a", "pkg.mod:b", "--inputs", "nope.npy"],
     "InputError: inputs file 'nope.npy' does not exist; give a .npy or .npz file."),
    (["pkg.mod:a", "nope.tflite"], "ModelError: model file 'nope.tflite' does not exist."),
    (["pkg.mod:a", "pkg.mod:b", "--shape", "1,3,a"], "InputError: --shape must be sizes separated by commas"),
])
def test_usage_and_missing_files_exit_2_with_one_line_on_stderr(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(argv, capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"parity: {message}") and err.count("\n") == 1


def test_the_subcommand_takes_the_shared_input_and_tolerance_options():
    args = build_parser().parse_args(
        ["chain", "a.pt2", "b.tflite", "--shape", "1,3,8,8", "--ops", "--rtol", "1e-2", "--atol", "1e-3",
         "--precision", "1=fp16", "--json", "c.json", "--seed", "3"]
    )
    assert args.models == ["a.pt2", "b.tflite"] and args.shape == "1,3,8,8" and args.ops
    assert (args.rtol, args.atol, args.seed) == (1e-2, 1e-3, 3)
    assert args.precision == ["1=fp16"] and args.json_out == "c.json" and args.html_out is None
