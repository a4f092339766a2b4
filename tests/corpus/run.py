"""Run the corpus: every case's faithful pair and its bugs, each in a fresh subprocess.

    python -m tests.corpus.run [--source S] [--only GLOB] [--sample] [--faithful | --bugs] [--merge]
                               [--jobs 1] [--timeout 900] [--in-process]

A pair that crashes or hangs is a row (``crash: …`` / ``timeout``), never the end of the run.
Writes ``reports/corpus.md`` (the table, then a summary by route, the matched-% distribution, the
slowest pairs and the excluded pairs with their reasons), ``reports/corpus.html`` and
``reports/corpus.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median

from tests.corpus.cases import Bug, Case, Row

#: source → the module whose ``cases()`` lists its cases (and ``case(id)`` finds one)
SOURCES = {
    "timm": "tests.corpus.timm_onnx",
    "timm-litert": "tests.corpus.timm_litert",
    "timm-onnx2tf": "tests.corpus.timm_onnx2tf",
    "transformers": "tests.corpus.hf_cases",
    "keras-hub": "tests.corpus.kerashub_cases",
    "keras.applications": "tests.corpus.kerasapp_cases",
    "nobuco": "tests.corpus.nobuco_cases",
}

REPORTS = Path("reports")


def all_cases(sources=None, *, with_bugs: bool = True) -> list[Case]:
    out = []
    for source in sources or SOURCES:
        module = importlib.import_module(SOURCES[source])
        if hasattr(module, "cases"):
            out.extend(module.cases(with_bugs=with_bugs))
        else:  # a module that lists its cases (CASES): their bugs cost nothing to list
            out.extend(c if with_bugs else dataclasses.replace(c, bugs=()) for c in module.CASES)
    return out


def find_case(case_id: str) -> Case:
    source = case_id.split("/", 1)[0]
    module = importlib.import_module(SOURCES[source])
    if hasattr(module, "case"):
        return module.case(case_id)
    for c in module.cases() if hasattr(module, "cases") else module.CASES:
        if c.id == case_id:
            return c
    raise KeyError(case_id)


def _bug(case: Case, name: str | None) -> Bug | None:
    if name is None:
        return None
    for b in case.bugs:
        if b.name == name:
            return b
    raise KeyError(f"{case.id} has no bug {name!r}")


def _child(case_id: str, bug_name: str | None, out: str) -> None:
    """Judge one pair in this process and write its Row as JSON."""
    from tests.corpus.cases import judge

    case = find_case(case_id)
    row = judge(case, _bug(case, bug_name))
    Path(out).write_text(json.dumps(dataclasses.asdict(row)))


def _row_from(d: dict) -> Row:
    return Row.from_dict(d)


def measured_at() -> str:
    """``"<short commit>[+changes] <date>"``: what a row was measured with."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = "+changes" if git("status", "--porcelain", "--untracked-files=no", "parity", "tests") else ""
    return f"{commit}{dirty} {time.strftime('%Y-%m-%d')}"


def earlier_rows(reports: Path) -> list[Row]:
    """The rows of the last run written to ``reports`` (none if there is none)."""
    path = reports / "corpus.json"
    if not path.exists():
        return []
    return [Row.from_dict(d) for d in json.loads(path.read_text()).get("rows", [])]


def merged(old: list[Row], new: list[Row]) -> list[Row]:
    """``old`` with every pair that ``new`` judged again replaced by its new row."""
    redone = {(r.case, r.bug) for r in new}
    return [r for r in old if (r.case, r.bug) not in redone] + new


def run_one(case: Case, bug: Bug | None, timeout: float) -> Row:
    """Judge a pair in a fresh interpreter; a crash or a hang is a row of its own."""
    start = time.perf_counter()
    expected = "ok" if bug is None else bug.layer
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, "-m", "tests.corpus.run", "--child", case.id, "--out", str(out)]
        if bug is not None:
            cmd += ["--bug", bug.name]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
            if out.exists():
                return _row_from(json.loads(out.read_text()))
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            verdict = f"crash: exit {proc.returncode}: {' | '.join(tail)[:300]}"
        except subprocess.TimeoutExpired:
            verdict = f"crash: timeout after {timeout:.0f} s"
    return Row(case.id, case.source, case.model, case.route, bug and bug.name, 0, 0, 0, 0, float("nan"),
               verdict, expected, False, time.perf_counter() - start)


def judge_here(case: Case, bug: Bug | None) -> Row:
    """Judge a pair in this interpreter (``--in-process``)."""
    from tests.corpus.cases import judge

    return judge(case, bug)


def select(cases: list[Case], only: str | None, sample: bool) -> list[tuple[Case, Bug | None]]:
    out = []
    for c in cases:
        if sample and not c.sample:
            continue
        for bug in (None, *c.bugs):
            key = f"{c.id}/{bug.name if bug else 'faithful'}"
            if only and not (fnmatch.fnmatch(c.id, only) or fnmatch.fnmatch(key, only)):
                continue
            out.append((c, bug))
    return out


# ------------------------------------------------------------------------------------------ report


def _fmt_err(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1e}"


def _pct(r: Row) -> str:
    return f"{100 * r.matched_share:.0f}%" if r.layers else "—"


def summary(rows: list[Row]) -> dict:
    """The numbers the corpus is judged by."""
    run = [r for r in rows if r.excluded is None]
    faithful = [r for r in run if r.bug is None]
    bugs = [r for r in run if r.bug is not None]
    routes: dict[str, dict] = {}
    for r in run:
        s = routes.setdefault(r.route, dict(pairs=0, faithful=0, faithful_ok=0, bugs=0, bugs_found=0, shares=[]))
        s["pairs"] += 1
        if r.bug is None:
            s["faithful"] += 1
            s["faithful_ok"] += r.passed
            if r.layers:
                s["shares"].append(r.matched_share)
        else:
            s["bugs"] += 1
            s["bugs_found"] += r.passed
    for s in routes.values():
        shares = s.pop("shares")
        s["median_matched"] = median(shares) if shares else None
        s["min_matched"] = min(shares) if shares else None
    shares = [r.matched_share for r in faithful if r.layers]
    bins = [(0, 0.5), (0.5, 0.8), (0.8, 0.9), (0.9, 0.97), (0.97, 1.0), (1.0, 1.01)]
    dist = {f"{lo:.0%}–{hi:.0%}" if hi <= 1 else "100%": sum(lo <= x < hi for x in shares) for lo, hi in bins}
    compared = sum(r.compared for r in faithful)
    unsure = sum(r.unsure for r in faithful)
    return dict(
        pairs=len(run),
        excluded=len(rows) - len(run),
        faithful=len(faithful),
        false_divergences=sum(1 for r in faithful if not r.passed and not r.verdict.startswith("crash")),
        crashes=sum(1 for r in run if r.verdict.startswith("crash")),
        bugs=len(bugs),
        bugs_found=sum(r.passed for r in bugs),
        median_matched=median(shares) if shares else None,
        matched_distribution=dist,
        unsure_share=unsure / (compared + unsure) if compared + unsure else 0.0,
        routes=routes,
    )


def write_reports(rows: list[Row], out_dir: Path = REPORTS) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    s = summary(rows)
    rows = sorted(rows, key=lambda r: (r.source, r.model, r.route, r.bug or ""))
    (out_dir / "corpus.json").write_text(json.dumps(
        dict(summary=s, rows=[dataclasses.asdict(r) for r in rows]), indent=1, default=str) + "\n")
    (out_dir / "corpus.md").write_text(_markdown(rows, s))
    (out_dir / "corpus.html").write_text(_html(rows, s))
    return s


def _markdown(rows: list[Row], s: dict) -> str:
    lines = ["# parity corpus", "",
             f"{s['pairs']} pairs run ({s['faithful']} faithful, {s['bugs']} with an injected bug), "
             f"{s['excluded']} excluded. False divergences: **{s['false_divergences']}**; crashes: {s['crashes']}; "
             f"bugs found at their layer: {s['bugs_found']}/{s['bugs']}; median matched "
             f"{_share(s['median_matched'])}; unsure pairings {s['unsure_share']:.1%} of the layers compared or unsure.",
             "",
             "| model | route | bug | layers | compared | accounted | unmatched | matched % | unsure | max rel err "
             "| verdict | expected | passed | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.excluded is not None:
            continue
        verdict = r.verdict.replace("|", "\\|")
        lines.append(f"| {r.model} | {r.route} | {r.bug or '—'} | {r.layers} | {r.compared} | {r.accounted} | "
                     f"{r.unmatched} | {_pct(r)} | {r.unsure} | {_fmt_err(r.max_rel_err)} | {verdict} | {r.expected} | "
                     f"{'✓' if r.passed else '✗'} | {r.seconds:.1f} |")
    lines += ["", "## By route", "", "| route | pairs | faithful ok | bugs found | median matched | min matched |",
              "|---|---|---|---|---|---|"]
    for route, v in sorted(s["routes"].items()):
        lines.append(f"| {route} | {v['pairs']} | {v['faithful_ok']}/{v['faithful']} | {v['bugs_found']}/{v['bugs']} | "
                     f"{_share(v['median_matched'])} | {_share(v['min_matched'])} |")
    lines += ["", "## Matched % of faithful pairs", "", "| matched | pairs |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in s["matched_distribution"].items()]
    lines += ["", "## Slowest pairs", "", "| pair | bug | seconds |", "|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r.seconds)[:10]:
        lines.append(f"| {r.case} | {r.bug or '—'} | {r.seconds:.1f} |")
    lines += ["", "## Excluded pairs", ""]
    excluded = [r for r in rows if r.excluded is not None]
    if not excluded:
        lines.append("None.")
    else:
        lines += ["| pair | bug | reason |", "|---|---|---|"]
        lines += [f"| {r.case} | {r.bug or '—'} | {r.excluded.replace('|', '/')} |" for r in excluded]
    unmatched = [r for r in rows if r.bug is None and r.unmatched_names]
    if unmatched:
        lines += ["", "## Layers of A left unmatched (faithful pairs)", ""]
        for r in unmatched:
            names = ", ".join(r.unmatched_names[:12]) + (" …" if len(r.unmatched_names) > 12 else "")
            lines.append(f"- {r.case}: {len(r.unmatched_names)} — {names}")
    return "\n".join(lines) + "\n"


def _share(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>parity corpus</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<style>
body{font:14px system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}
th{background:#f3f3f3}.fail{background:#fde2e2}.ok{background:#e6f4e6}.num{text-align:right}
</style></head><body>
<h1>parity corpus</h1>
<p>{{ s.pairs }} pairs run ({{ s.faithful }} faithful, {{ s.bugs }} with an injected bug), {{ s.excluded }} excluded.
False divergences: <b>{{ s.false_divergences }}</b>; crashes: {{ s.crashes }};
bugs found at their layer: {{ s.bugs_found }}/{{ s.bugs }}; median matched {{ share(s.median_matched) }};
unsure pairings {{ "%.1f%%" % (100 * s.unsure_share) }}.</p>
<h2>By route</h2>
<table><tr><th>route</th><th>pairs</th><th>faithful ok</th><th>bugs found</th><th>median matched</th><th>min matched</th></tr>
{% for route, v in s.routes.items() | sort %}<tr><td>{{ route }}</td><td class="num">{{ v.pairs }}</td>
<td class="num">{{ v.faithful_ok }}/{{ v.faithful }}</td><td class="num">{{ v.bugs_found }}/{{ v.bugs }}</td>
<td class="num">{{ share(v.median_matched) }}</td><td class="num">{{ share(v.min_matched) }}</td></tr>{% endfor %}
</table>
<h2>Pairs</h2>
<table><tr><th>model</th><th>route</th><th>bug</th><th>layers</th><th>compared</th><th>accounted</th><th>unmatched</th>
<th>matched</th><th>unsure</th><th>max rel err</th><th>verdict</th><th>expected</th><th>passed</th><th>s</th></tr>
{% for r in rows if r.excluded is none %}<tr class="{{ 'ok' if r.passed else 'fail' }}"><td>{{ r.model }}</td><td>{{ r.route }}</td>
<td>{{ r.bug or '—' }}</td><td class="num">{{ r.layers }}</td><td class="num">{{ r.compared }}</td>
<td class="num">{{ r.accounted }}</td><td class="num" title="{{ r.unmatched_names | join(', ') }}">{{ r.unmatched }}</td>
<td class="num">{{ pct(r) }}</td><td class="num">{{ r.unsure }}</td><td class="num">{{ err(r.max_rel_err) }}</td><td>{{ r.verdict }}</td>
<td>{{ r.expected }}</td><td>{{ '✓' if r.passed else '✗' }}</td><td class="num">{{ "%.1f" % r.seconds }}</td></tr>
{% endfor %}</table>
<h2>Excluded pairs</h2>
{% for r in rows if r.excluded is not none %}{% if loop.first %}<table><tr><th>pair</th><th>bug</th><th>reason</th></tr>{% endif %}
<tr><td>{{ r.case }}</td><td>{{ r.bug or '—' }}</td><td>{{ r.excluded }}</td></tr>{% if loop.last %}</table>{% endif %}
{% else %}<p>None.</p>{% endfor %}
</body></html>
"""


def _html(rows: list[Row], s: dict) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True)
    return env.from_string(_HTML).render(rows=rows, s=s, share=_share, pct=_pct, err=_fmt_err)


# --------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.corpus.run", description=__doc__.split("\n")[0])
    p.add_argument("--source", action="append", choices=sorted(SOURCES), help="only this source (repeatable)")
    p.add_argument("--only", help="only cases whose id (or id/bug) matches this glob")
    p.add_argument("--sample", action="store_true", help="only the deterministic subset the test suite runs")
    p.add_argument("--faithful", action="store_true", help="only the faithful pairs (no injected bugs)")
    p.add_argument("--bugs", action="store_true", help="only the pairs with an injected bug")
    p.add_argument("--jobs", type=int, default=1, help="pairs judged at once (default 1)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds one pair may take (default 900)")
    p.add_argument("--in-process", action="store_true",
                   help="judge every pair in this interpreter (no subprocess each: ~3x faster; a pair that "
                        "kills the interpreter ends the run, and --timeout does not apply)")
    p.add_argument("--combine", nargs="+", metavar="DIR", default=None,
                   help="judge nothing: write --reports from the rows of these earlier runs' directories "
                        "(a pair judged in several: the last directory's row), e.g. a faithful and a bug run "
                        "made side by side")
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--bug", default=None, help=argparse.SUPPRESS)
    p.add_argument("--reports", default=str(REPORTS), help="where corpus.{md,html,json} go (default reports/)")
    p.add_argument("--merge", action="store_true",
                   help="keep the rows of the last run in --reports that this run does not judge again "
                        "(build the whole corpus up source by source); each row says what it was measured at")
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, args.bug, args.out)
        return 0
    if args.combine:
        rows = []
        for directory in args.combine:
            found = earlier_rows(Path(directory))
            if not found:
                p.error(f"no corpus run in {directory} (expected {Path(directory) / 'corpus.json'})")
            rows = merged(rows, found)
        s = write_reports(rows, Path(args.reports))
        print(json.dumps({k: v for k, v in s.items() if k != "routes"}, indent=1))
        return 0
    if args.in_process and args.jobs > 1:
        p.error("--in-process judges one pair at a time (the pairs share this interpreter); drop --jobs")
    todo = select(all_cases(args.source, with_bugs=not args.faithful), args.only, args.sample)
    if args.faithful:
        todo = [(c, b) for c, b in todo if b is None]
    if args.bugs:
        todo = [(c, b) for c, b in todo if b is not None]
    print(f"{len(todo)} pairs", flush=True)
    rows: list[Row] = []
    stamp = measured_at()
    kept = earlier_rows(Path(args.reports)) if args.merge else []

    def one(item):
        case, bug = item
        judged = judge_here(case, bug) if args.in_process else run_one(case, bug, args.timeout)
        row = dataclasses.replace(judged, measured=stamp)
        mark = "ok " if row.passed else ("EXC" if row.excluded else "BAD")
        print(f"{mark} {case.id:45s} {bug.name if bug else 'faithful':20s} {_pct(row):>5s} "
              f"{row.seconds:6.1f}s  {row.verdict[:110]}", flush=True)
        return row

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for row in pool.map(one, todo):
            rows.append(row)
            write_reports(merged(kept, rows), Path(args.reports))  # a partial run still leaves its reports
    s = write_reports(merged(kept, rows), Path(args.reports))
    print(json.dumps({k: v for k, v in s.items() if k != "routes"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
