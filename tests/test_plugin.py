"""The pytest plugin as a user meets it, driven through pytester in subprocesses."""

from __future__ import annotations

import importlib.util
import json
import textwrap

import pytest

pytest_plugins = ["pytester"]

# Availability is checked without importing: pytester restores sys.modules after each
# test, and importing torch's C extension a second time in one process crashes it.
needs_frameworks = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("keras") is None,
    reason="needs torch and keras",
)

PAIRS_MODULE = textwrap.dedent(
    """
    import torch
    from parity._zoo import ConvNet, randomize_bn, to_keras

    torch.manual_seed(0)
    _torch = randomize_bn(ConvNet().eval(), seed=1)

    def torch_model():
        return _torch

    def keras_good():
        return to_keras(_torch, bn_epsilon="match")

    def keras_buggy():
        return to_keras(_torch, bn_epsilon="keras-default")
    """
)

PYPROJECT = textwrap.dedent(
    """
    [tool.parity.pairs.good]
    a = "mypairs:torch_model"
    b = "mypairs:keras_good"
    inputs = { shape = [4, 1, 28, 28], seed = 0 }

    [tool.parity.pairs.buggy]
    a = "mypairs:torch_model"
    b = "mypairs:keras_buggy"
    inputs = { shape = [4, 1, 28, 28], seed = 0 }
    rtol = 1e-3
    atol = 1e-5
    """
)


@pytest.fixture
def project(pytester):
    pytester.makepyfile(mypairs=PAIRS_MODULE)
    pytester.makefile(".toml", pyproject=PYPROJECT)
    pytester.syspathinsert()
    return pytester


@pytest.mark.slow
@needs_frameworks
def test_pairs_become_items_that_pass_and_fail_with_the_report(project):
    result = project.runpytest_subprocess("--parity", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "collected 2 items",
            "*parity pair buggy: mypairs:torch_model ↔ mypairs:keras_buggy*",
            "*✗ DIVERGES at layer1.1 (BatchNorm2d ↔ BatchNormalization*",
            "*first divergence: layer1.1 (BatchNorm2d) in A*",
            "*likely cause — bn_epsilon*",
            "*= parity =*",
            "*✓ good: ✓ PARITY*",
            "*✗ buggy: ✗ DIVERGES at layer1.1*",
        ]
    )
    result.stdout.fnmatch_lines(["FAILED pyproject.toml::buggy - ✗ DIVERGES at layer1.1*"])
    saved = json.loads((project.path / "reports" / "buggy.json").read_text())
    assert saved["diagnoses"][0]["layer"] == "layer1.1"
    assert (project.path / "reports" / "good.json").exists()
    html = (project.path / "reports" / "buggy.html").read_text(encoding="utf-8")
    assert "<h1>✗ DIVERGES at layer1.1" in html
    result.stdout.fnmatch_lines(["    reports/buggy.json, reports/buggy.html"])


@pytest.mark.slow
@needs_frameworks
def test_a_pair_can_be_named_on_the_command_line_and_other_files_run_without_pairs(project):
    project.makepyfile(test_other="def test_other():\n    pass\n")
    named = project.runpytest_subprocess("--parity", "pyproject.toml::good", "-p", "no:cacheprovider")
    named.assert_outcomes(passed=1)
    named.stdout.fnmatch_lines(["*✓ good: ✓ PARITY*"])
    other = project.runpytest_subprocess("--parity", "test_other.py", "-p", "no:cacheprovider")
    other.assert_outcomes(passed=1)
    assert "good" not in other.stdout.str()


def test_without_the_option_pairs_and_marked_tests_are_skipped_without_importing_frameworks(project):
    project.makepyfile(
        test_plain="""
        import sys
        import pytest

        @pytest.mark.parity
        def test_marked():
            pass

        def test_frameworks_not_imported():
            assert "torch" not in sys.modules and "tensorflow" not in sys.modules
        """
    )
    result = project.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] test_plain.py:*: parity check: run with `pytest --parity`",
            "SKIPPED [[]2[]] pyproject.toml: parity check: run with `pytest --parity`",
        ]
    )
    assert not (project.path / "reports").exists()


def test_a_repository_without_parity_config_is_unaffected(pytester):
    pytester.makepyfile(
        """
        import sys

        def test_plain():
            assert "torch" not in sys.modules and "keras" not in sys.modules
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "= parity =" not in result.stdout.str()
    assert not (pytester.path / "reports").exists()


@pytest.mark.parametrize(
    "table, fragment",
    [
        ('a = "m:f"\n', "missing key 'b'"),
        ('a = "m:f"\nb = "m:g"\nrtoll = 1\n', "unknown key 'rtoll'"),
        ('a = "m:f"\nb = "m:g"\nrtol = 1e-3\n', "gives key 'rtol' without 'atol'"),
        ('a = "m:f"\nb = "m:g"\ninputs = 3\n', "key 'inputs' must be"),
        ('a = "m:f"\nb = "m:g"\nreference = "fp16"\n', "key 'reference' must be \"dtype\" *or \"float64\""),
    ],
)
def test_a_malformed_pair_table_fails_collection_naming_the_key_and_file(pytester, table, fragment):
    pytester.makefile(".toml", pyproject="[tool.parity.pairs.broken]\n" + table)
    result = pytester.runpytest_subprocess("--parity", "-p", "no:cacheprovider")
    assert result.ret != 0
    result.stderr.fnmatch_lines([f"*pyproject.toml: [[]tool.parity.pairs.broken[]]*{fragment}*"])


@pytest.mark.slow
@needs_frameworks
def test_the_parity_fixture_fails_a_hand_written_test_with_the_report(project):
    project.makepyfile(
        test_fixture="""
        import numpy as np
        import mypairs

        def test_good(parity):
            report = parity.check(mypairs.torch_model(), mypairs.keras_good(), np.ones((2, 1, 28, 28), "float32"))
            assert report.ok

        def test_buggy(parity):
            parity.check(mypairs.torch_model(), mypairs.keras_buggy(), np.ones((2, 1, 28, 28), "float32"))
        """
    )
    result = project.runpytest_subprocess("test_fixture.py", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_buggy*", "*✗ DIVERGES at layer1.1*", "*reports: reports/test_fixture.py_test_buggy.json*"])


def test_tolerance_options_are_shared_with_the_cli(pytester):
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*--parity-rtol=RTOL*", "*--parity-atol=ATOL*", "*--parity-seed=SEED*", "*--parity-verbose*",
                                 "*--parity-report-dir=DIR*"])
    result.stdout.fnmatch_lines(["*--parity-reference={dtype,float64}*"])


@pytest.mark.slow
@needs_frameworks
def test_a_pair_judged_against_float64_by_its_key_or_the_option(project):
    project.makefile(".toml", pyproject=PYPROJECT.replace(
        '[tool.parity.pairs.buggy]', '[tool.parity.pairs.good64]\na = "mypairs:torch_model"\nb = "mypairs:keras_good"\n'
        'inputs = { shape = [4, 1, 28, 28], seed = 0 }\nreference = "float64"\n\n[tool.parity.pairs.buggy]'))
    result = project.runpytest_subprocess("--parity", "-p", "no:cacheprovider", "pyproject.toml::good64",
                                          "pyproject.toml::good")
    result.assert_outcomes(passed=2)
    saved = json.loads((project.path / "reports" / "good64.json").read_text())
    assert saved["reference"]["kind"] == "float64" and saved["reference"]["side"] == "a"
    assert all(d["noise"] is not None for d in saved["layers"])
    assert json.loads((project.path / "reports" / "good.json").read_text())["reference"] is None
    result = project.runpytest_subprocess("--parity", "-p", "no:cacheprovider", "--parity-reference", "float64",
                                          "pyproject.toml::good")
    result.assert_outcomes(passed=1)
    assert json.loads((project.path / "reports" / "good.json").read_text())["reference"]["kind"] == "float64"


TORCH_PAIR = textwrap.dedent(
    """
    import torch

    def torch_model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2)).eval()
    """
)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
def test_a_pair_factory_beside_the_config_is_found_without_pythonpath(tmp_path):
    """`pytest --parity` started like the console script (pytester's subprocess would put the
    directory on PYTHONPATH, and `python -m pytest` on sys.path): the pair's module is found in
    the config file's directory."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import parity

    home = tmp_path / "project"
    home.mkdir()
    (home / "mymodels.py").write_text(TORCH_PAIR)
    (home / "pyproject.toml").write_text(
        '[tool.parity.pairs.twin]\na = "mymodels:torch_model"\nb = "mymodels:torch_model"\n'
        "inputs = { shape = [2, 4], seed = 0 }\n"
    )
    launcher = tmp_path / "bin" / "pytest_launcher.py"
    launcher.parent.mkdir()
    launcher.write_text("import sys\nimport pytest\n\nsys.exit(pytest.console_main())\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(Path(parity.__file__).resolve().parent.parent)  # parity itself, as installed
    done = subprocess.run(
        [sys.executable, str(launcher), "--parity", "-p", "no:cacheprovider"],
        cwd=home, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout and "✓ twin: ✓ PARITY" in done.stdout
