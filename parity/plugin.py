"""parity's pytest plugin: ``pytest --parity``.

Importing this module imports neither torch nor TensorFlow, and does nothing
unless its options are used.  Tests marked ``@pytest.mark.parity`` run only
with ``--parity``; otherwise they are skipped with a reason saying how to run
them.
"""

from __future__ import annotations

import pytest

from .options import add_tolerance_options


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("parity", "model parity checks")
    group.addoption(
        "--parity",
        action="store_true",
        default=False,
        help="run model-parity checks (tests marked @pytest.mark.parity)",
    )
    add_tolerance_options(group.addoption, prefix="parity-")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "parity: a model-parity check; runs only with `pytest --parity`"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--parity"):
        return
    skip = pytest.mark.skip(reason="parity check: run with `pytest --parity`")
    for item in items:
        if item.get_closest_marker("parity") is not None:
            item.add_marker(skip)
