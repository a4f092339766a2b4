"""The ``parity`` command line.

``parity demo``                 train the seed ConvNet, convert it to Keras by hand, show the reports
``parity diff A B``             compare two models given as ``package.module:factory``
``parity show report.json``     render a saved report (``--html out.html`` too)
``parity compare-reports OLD NEW``  which layers got worse between two runs

Exit status: 0 the models agree (no regression), 1 they diverge (a layer got
worse), 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .errors import InputError, ParityError
from .loading import load_inputs, load_mapping, load_model
from .options import add_tolerance_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parity",
        description="Do two models compute the same thing? Layer-by-layer parity between PyTorch and Keras.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train the seed MNIST ConvNet, convert it to Keras, compare")
    demo.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    demo.add_argument("--out", default="reports/demo.json", help="where to write the JSON report")
    demo.add_argument("--width", type=int, default=None, help="terminal width for the report")

    d = sub.add_parser("diff", help="compare model A with model B")
    d.add_argument("a", help="model A: package.module:factory, or a .keras/.h5/.pt2 file")
    d.add_argument("b", help="model B: package.module:factory, or a .keras/.h5/.pt2 file")
    d.add_argument("--inputs", help=".npy/.npz inputs in model A's layout (default: random from the input spec)")
    d.add_argument("--mapping", help=".toml/.json table of A layer name = B layer name")
    d.add_argument("--json", dest="json_out", metavar="PATH", help="write the report as JSON here")
    d.add_argument("--html", dest="html_out", metavar="PATH", help="write the report as a self-contained HTML page here")
    d.add_argument(
        "--model-explorer", dest="explorer_out", metavar="PATH",
        help="write per-layer error as Model Explorer node data (overlaid on model B's graph) here",
    )
    add_tolerance_options(d.add_argument)

    show = sub.add_parser("show", help="render a saved JSON report")
    show.add_argument("report", help="a report written by parity (JSON)")
    show.add_argument("--html", dest="html_out", metavar="PATH", help="also write it as an HTML page here")

    cmp = sub.add_parser("compare-reports", help="which layers got worse between two saved reports of a pair")
    cmp.add_argument("old", help="the earlier report (JSON)")
    cmp.add_argument("new", help="the later report (JSON)")
    cmp.add_argument(
        "--factor", type=float, default=2.0,
        help="a layer is worse when its error over the allowed error grew more than this (default 2)",
    )
    return parser


def _write_outputs(report, args, console) -> None:
    for attr, method, what in (
        ("json_out", "to_json", "JSON report"),
        ("html_out", "to_html", "HTML report"),
        ("explorer_out", "to_model_explorer", "Model Explorer node data"),
    ):
        path = getattr(args, attr, None)
        if path:
            getattr(report, method)(path)
            console.print(f"{what} written to {path}", highlight=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from rich.console import Console

    console = Console()
    try:
        if args.command == "demo":
            import os

            # the demo is our own program: keep TensorFlow's start-up chatter out of its story
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            from .demo import run_demo

            return run_demo(epochs=args.epochs, out=args.out, console=console if args.width is None else Console(width=args.width))
        if args.command == "diff":
            from .api import diff

            report = diff(
                load_model(args.a),
                load_model(args.b),
                load_inputs(args.inputs),
                mapping=load_mapping(args.mapping),
                rtol=args.rtol,
                atol=args.atol,
                seed=args.seed,
            )
            console.print(report)
            _write_outputs(report, args, console)
            return 0 if report.ok else 1
        if args.command == "show":
            from .report.jsonio import load_report

            if not Path(args.report).exists():
                raise InputError(f"report {args.report!r} does not exist.")
            report = load_report(args.report)
            console.print(report)
            _write_outputs(report, args, console)
            return 0 if report.ok else 1
        if args.command == "compare-reports":
            from .report.jsonio import load_report
            from .report.regress import compare_reports

            comparison = compare_reports(load_report(args.old), load_report(args.new), factor=args.factor)
            console.print(comparison)
            return 1 if comparison.regressed else 0
    except ParityError as exc:
        console.print(f"[bold red]parity:[/] {type(exc).__name__}: ", end="")
        console.print(str(exc), markup=False, highlight=False)
        return 2
    return 2  # pragma: no cover - argparse requires a command


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
