"""Write README.md's "Converters tested" table from a corpus run.

    python -m tests.corpus.readme [reports/corpus.json] [--readme README.md]

The table sits between ``<!-- corpus-table:begin -->`` and ``<!-- corpus-table:end -->``; it is
replaced whole, one row per (source, converter route), from the rows the run recorded (build the
run up with ``python -m tests.corpus.run --merge``).  Nothing in it is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import median

from tests.corpus.cases import Row

BEGIN, END = "<!-- corpus-table:begin -->", "<!-- corpus-table:end -->"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


def table(rows: list[Row]) -> str:
    """The markdown table (and the line under it) for ``rows``."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.source, r.route), []).append(r)
    lines = [
        "| source | converter route | models | faithful ok | bugs found at their layer | compared + accounted "
        "(median, min) | crashed | measured at |",
        "|---|---|---|---|---|---|---|---|",
    ]
    total = dict(pairs=0, faithful=0, ok=0, bugs=0, found=0, excluded=0)
    for (source, route), group in sorted(groups.items()):
        run = [r for r in group if r.excluded is None]
        faithful = [r for r in run if r.bug is None]
        bugs = [r for r in run if r.bug is not None]
        shares = [r.matched_share for r in faithful if r.layers]
        crashed = sum(1 for r in run if r.verdict.startswith("crash"))
        false = [r.model for r in faithful if not r.passed and not r.verdict.startswith("crash")]
        ok = sum(r.passed for r in faithful)
        found = sum(r.passed for r in bugs)
        stamps = sorted({r.measured.split(" ")[0] for r in group if r.measured}) or ["—"]
        models = len({r.model for r in group})
        faithful_cell = f"{ok}/{len(faithful)}" + (f" (**false divergence: {', '.join(false)}**)" if false else "")
        share_cell = f"{_pct(median(shares))}, {_pct(min(shares))}" if shares else "—"
        lines.append(
            f"| {source} | {route} | {models} | {faithful_cell} | {found}/{len(bugs)} | {share_cell} | {crashed} | "
            f"{', '.join(stamps[:3])}{' …' if len(stamps) > 3 else ''} |"
        )
        total["pairs"] += len(run)
        total["faithful"] += len(faithful)
        total["ok"] += ok
        total["bugs"] += len(bugs)
        total["found"] += found
        total["excluded"] += len(group) - len(run)
    pairs = len({(r.case) for r in rows if r.excluded is None})
    lines += [
        "",
        f"{pairs} (model, route) pairs; {total['ok']} of {total['faithful']} faithful pairs ok, "
        f"{total['found']} of {total['bugs']} injected bugs found at their layer, {total['excluded']} excluded "
        "(see `reports/corpus.md`).",
    ]
    return "\n".join(lines)


def rewrite(readme: Path, rows: list[Row]) -> bool:
    """Replace the table in ``readme``; False when it is already up to date."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} has no {BEGIN} … {END} block to write the table into.")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{table(rows)}\n{END}{tail}"
    if new == text:
        return False
    readme.write_text(new)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.corpus.readme", description=__doc__.split("\n")[0])
    p.add_argument("corpus", nargs="?", default="reports/corpus.json", help="a corpus run's JSON")
    p.add_argument("--readme", default="README.md")
    args = p.parse_args(argv)
    path = Path(args.corpus)
    if not path.exists():
        print(f"{path} does not exist: run `make corpus` (or python -m tests.corpus.run) first.", file=sys.stderr)
        return 2
    rows = [Row.from_dict(d) for d in json.loads(path.read_text())["rows"]]
    changed = rewrite(Path(args.readme), rows)
    print(f"{args.readme}: {'table rewritten' if changed else 'already up to date'} from {len(rows)} rows of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
