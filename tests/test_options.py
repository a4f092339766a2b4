"""parity.options: the option helpers every subcommand shares, read back from parsed arguments."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from parity.errors import InputError, ModelError
from parity.options import add_input_options, exit_on_parity_error, inputs_from_args, require_arg_files


def _args(*argv):
    parser = argparse.ArgumentParser()
    add_input_options(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mapping")
    return parser.parse_args(list(argv))


def test_shape_makes_a_seeded_batch_and_inputs_read_a_file(tmp_path):
    a = inputs_from_args(_args("--shape", "2x3,4", "--seed", "1"))
    b = inputs_from_args(_args("--shape", "2,3,4", "--seed", "1"))
    assert a.shape == (2, 3, 4) and np.array_equal(a, b)
    assert not np.array_equal(a, inputs_from_args(_args("--shape", "2,3,4", "--seed", "2")))
    np.save(tmp_path / "x.npy", np.arange(6, dtype="float32"))
    assert np.array_equal(inputs_from_args(_args("--inputs", str(tmp_path / "x.npy"))), np.arange(6))
    assert inputs_from_args(_args()) is None
    with pytest.raises(InputError, match="give --inputs or --shape, not both"):
        inputs_from_args(_args("--inputs", "x.npy", "--shape", "1,2"))


def test_missing_files_are_refused_before_anything_loads(tmp_path):
    with pytest.raises(InputError, match="inputs file 'gone.npy' does not exist"):
        require_arg_files(_args("--inputs", "gone.npy"))
    with pytest.raises(InputError, match="mapping file 'map.toml' does not exist"):
        require_arg_files(_args("--mapping", "map.toml"))
    with pytest.raises(ModelError, match="model file 'm.onnx' does not exist"):
        require_arg_files(_args(), "pkg.mod:net", "m.onnx")
    require_arg_files(_args("--inputs", "pkg.data:batch"), "pkg.mod:net")  # specs are not files


def test_a_parity_error_is_one_line_on_stderr_and_exit_2(capsys):
    assert exit_on_parity_error(InputError("the batch has NaN at [0, 3]; give finite inputs.")) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "parity: InputError: the batch has NaN at [0, 3]; give finite inputs.\n"
