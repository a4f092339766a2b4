"""parity's pytest plugin: ``pytest --parity``.

- Pairs declared in ``pyproject.toml`` (``[tool.parity.pairs.NAME]``) or
  ``parity.toml`` (``[pairs.NAME]``) become test items named after the pair.
- The ``parity`` fixture gives hand-written tests ``parity.check(a, b, inputs)``.
- Tests marked ``@pytest.mark.parity`` and the pair items run only with
  ``--parity``; otherwise they are skipped with a reason saying how to run them.
- Each pair writes a JSON (and HTML) report to ``--parity-report-dir``; a
  terminal summary lists every pair with its verdict and report path.

Importing this module imports neither torch nor TensorFlow; nothing happens
unless a parity item or the fixture runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .errors import PairDiverged
from .options import add_reference_option, add_tolerance_options, add_verbose_option

_SKIP_REASON = "parity check: run with `pytest --parity`"


@dataclass
class _Outcome:
    name: str
    ok: bool
    summary: str
    paths: list[str] = field(default_factory=list)


class ParitySession:
    """The plugin's state for one pytest run (kept in ``config.stash``)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.enabled = bool(config.getoption("parity"))
        self.rtol = config.getoption("parity_rtol")
        self.atol = config.getoption("parity_atol")
        self.seed = config.getoption("parity_seed")
        self.max_memory = config.getoption("parity_max_memory")
        self.reference = config.getoption("parity_reference")
        report_dir = Path(config.getoption("parity_report_dir"))
        self.report_dir = report_dir if report_dir.is_absolute() else Path(config.rootpath) / report_dir
        self.outcomes: list[_Outcome] = []

    def options(self) -> dict[str, Any]:
        if (self.rtol is None) != (self.atol is None):
            from .errors import ToleranceError

            raise ToleranceError("give both --parity-rtol and --parity-atol, or neither.")
        return {"rtol": self.rtol, "atol": self.atol, "max_memory": self.max_memory, "reference": self.reference}

    def save(self, name: str, report: Any) -> list[str]:
        """Write the report for ``name`` into the report directory; return the paths."""
        stem = re.sub(r"[^0-9A-Za-z._-]+", "_", name).strip("_") or "pair"
        paths = [self.report_dir / f"{stem}.json"]
        report.to_json(paths[0])
        to_html = getattr(report, "to_html", None)
        if to_html is not None:
            paths.append(self.report_dir / f"{stem}.html")
            to_html(paths[1])
        return [_relative(p, self.config.rootpath) for p in paths]

    def record(self, name: str, report: Any) -> list[str]:
        paths = self.save(name, report)
        self.outcomes.append(_Outcome(name, report.ok, report.summary(), paths))
        return paths


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


_SESSION = pytest.StashKey[ParitySession]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("parity", "model parity checks")
    group.addoption(
        "--parity",
        action="store_true",
        default=False,
        help="run model-parity checks: pairs declared in [tool.parity.pairs] and tests marked "
        "@pytest.mark.parity",
    )
    add_tolerance_options(group.addoption, prefix="parity-")
    add_reference_option(group.addoption, prefix="parity-")
    add_verbose_option(group.addoption, prefix="parity-")
    group.addoption(
        "--parity-report-dir",
        default="reports",
        metavar="DIR",
        help="where each pair's JSON and HTML report is written (default: reports/ under the rootdir)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """With ``--parity`` (a run of parity's own checks), TensorFlow's start-up logging is kept
    out of the terminal unless ``--parity-verbose``; before conftests, which may import it."""
    _quiet(early_config.known_args_namespace)


def _quiet(options: Any) -> None:
    if getattr(options, "parity", False) and not getattr(options, "parity_verbose", False):
        from .quiet import quiet_tensorflow

        quiet_tensorflow()


def pytest_configure(config: pytest.Config) -> None:
    _quiet(config.option)
    config.addinivalue_line("markers", "parity: a model-parity check; runs only with `pytest --parity`")
    config.stash[_SESSION] = ParitySession(config)


class ParityConfigFile(pytest.File):
    """The file that declares pairs; its items are the pairs."""

    def collect(self):
        from .pairs import PairConfigError, load_pairs

        try:
            specs = load_pairs(self.path)
        except PairConfigError as exc:
            raise pytest.UsageError(f"parity: {exc}") from exc
        from .report.text import shown

        for spec in specs:
            # the item's name is its node id, which pytest prints as is: shown, like every name
            yield ParityItem.from_parent(self, name=shown(spec.name), spec=spec)


class ParityItem(pytest.Item):
    """One declared pair, run as a test."""

    def __init__(self, *, spec: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.add_marker(pytest.mark.parity)

    def runtest(self) -> None:
        session = self.config.stash[_SESSION]
        report = self.spec.run(seed=session.seed if session.seed else None, **session.options())
        paths = session.record(self.name, report)
        if not report.ok:
            raise PairDiverged(report, paths)

    def repr_failure(self, excinfo, style=None):  # type: ignore[override]
        from .errors import ParityError

        if isinstance(excinfo.value, PairDiverged):
            from .report.console import render_failure_text

            width = self.config.get_terminal_writer().fullwidth
            report = excinfo.value.report
            own = getattr(report, "failure_text", None)  # a dataset run (parity.evaluate) renders itself
            text = own(width) if own is not None else render_failure_text(report, width=width)
            paths = excinfo.value.paths
            return text + ("\nreports: " + ", ".join(paths) if paths else "")
        if isinstance(excinfo.value, ParityError):
            from .report.text import shown_lines

            return f"{type(excinfo.value).__name__}: {shown_lines(str(excinfo.value))}"
        return super().repr_failure(excinfo)

    def reportinfo(self):
        from .report.text import shown

        return self.path, _table_line(self.path, self.spec.name), shown(f"parity pair {self.name}: {self.spec.a} ↔ {self.spec.b}")


def _table_line(path: Path, name: str) -> int:
    """0-based line of the pair's table header in its file (0 when it cannot be found)."""
    pattern = re.compile(r"^\s*\[\s*(tool\s*\.\s*parity\s*\.\s*)?pairs\s*\.\s*[\"']?" + re.escape(name) + r"[\"']?\s*\]")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return 0
    return next((i for i, line in enumerate(lines) if pattern.match(line)), 0)


def _config_path(config: pytest.Config) -> Path | None:
    from .pairs import find_pair_config

    cache = config.stash.get(_CONFIG_PATH, _UNSET)
    if cache is _UNSET:
        cache = find_pair_config(config.rootpath)
        cache = cache.resolve() if cache is not None else None
        config.stash[_CONFIG_PATH] = cache
    return cache


_UNSET: Any = object()
_CONFIG_PATH = pytest.StashKey[Any]()
_COLLECTED = pytest.StashKey[bool]()


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    """Collect the pair file when it is named on the command line (``pytest pyproject.toml::mnist``)."""
    path = _config_path(parent.config)
    if path is None or file_path.resolve() != path or parent.config.args_source != pytest.Config.ArgsSource.ARGS:
        return None
    if not any(Path(arg.split("::")[0]).resolve() == path for arg in parent.config.args):
        return None
    parent.config.stash[_COLLECTED] = True
    return ParityConfigFile.from_parent(parent, path=file_path)


def _wants_pairs(config: pytest.Config, path: Path) -> bool:
    """Pairs join a run that was not narrowed to other files, or was narrowed to a directory holding them."""
    if config.stash.get(_COLLECTED, False):
        return False  # collected already, as a named file
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        return True
    for arg in config.args:
        target = Path(arg.split("::")[0]).resolve()
        if target.is_dir() and (target == path.parent or target in path.parents):
            return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    path = _config_path(config)
    if path is not None and _wants_pairs(config, path):
        node = ParityConfigFile.from_parent(session, path=path)
        pairs = list(node.collect())
        # Tell the terminal (and other plugins) about them, as pytest's own collection would.
        config.hook.pytest_collectreport(report=pytest.CollectReport(node.nodeid, "passed", None, pairs))
        items.extend(pairs)
    if config.stash[_SESSION].enabled:
        return
    skip = pytest.mark.skip(reason=_SKIP_REASON)
    for item in items:
        if item.get_closest_marker("parity") is not None:
            item.add_marker(skip)


class ParityChecker:
    """What the ``parity`` fixture gives a test."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request
        self._session = request.config.stash[_SESSION]
        self.reports: list[Any] = []

    def check(self, a: Any, b: Any, inputs: Any = None, **options: Any):
        """Compare ``a`` and ``b`` like :func:`parity.diff` (``trust=True`` too); fail the test with
        the report unless they agree."""
        __tracebackhide__ = True
        from .api import diff_with
        from .pipeline import DiffOptions

        for key, value in self._session.options().items():
            options.setdefault(key, value)
        trust = bool(options.pop("trust", False))  # loading, not comparing: no DiffOptions field
        report = diff_with(a, b, inputs, DiffOptions.build(where="parity.check", **options), trust=trust)
        self.reports.append(report)
        name = self._request.node.nodeid + (f"-{len(self.reports)}" if len(self.reports) > 1 else "")
        paths = self._session.record(name, report)
        if not report.ok:
            from .report.console import render_failure_text

            width = self._request.config.get_terminal_writer().fullwidth
            pytest.fail(render_failure_text(report, width=width) + "\nreports: " + ", ".join(paths), pytrace=False)
        return report


@pytest.fixture
def parity(request: pytest.FixtureRequest) -> ParityChecker:
    """``parity.check(a, b, inputs, **options)`` fails the test with the report when the models diverge."""
    return ParityChecker(request)


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    session = config.stash.get(_SESSION, None)
    if not session or not session.outcomes:
        return
    from .report.text import shown

    terminalreporter.section("parity")
    for outcome in session.outcomes:
        mark = "✓" if outcome.ok else "✗"
        terminalreporter.write_line(f"{mark} {shown(outcome.name)}: {shown(outcome.summary)}")
        if outcome.paths:
            terminalreporter.write_line(f"    {shown(', '.join(outcome.paths))}")
