"""The pytest plugin as a user meets it: `--parity` runs parity checks, otherwise they skip."""

from __future__ import annotations

pytest_plugins = ["pytester"]


def test_parity_marked_tests_skip_without_the_option_and_run_with_it(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parity
        def test_pair():
            pass

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*parity check: run with `pytest --parity`*"])
    result = pytester.runpytest_subprocess("--parity")
    result.assert_outcomes(passed=2)


def test_tolerance_options_are_registered(pytester):
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines(["*--parity-rtol=RTOL*", "*--parity-atol=ATOL*"])
