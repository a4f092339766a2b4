"""The ``parity`` command line.

``parity demo``                 train the seed ConvNet, convert it to Keras by hand, show the reports
``parity diff A B``             compare two models given as ``package.module:factory``
``parity show report.json``     render a saved report

Exit status: 0 the models agree, 1 they diverge, 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from .errors import InputError, ModelError, ParityError
from .options import add_tolerance_options


def _load_object(spec: str) -> Any:
    """``package.module:attr`` → the attribute, called if it is a factory (a class or function)."""
    if ":" not in spec:
        raise ModelError(
            f"cannot load model {spec!r}: give it as 'package.module:factory' (a class or a function "
            "returning a model). Model files (.pt, .onnx, .keras, SavedModel) come with parity.load."
        )
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"cannot import {module_name!r} for model {spec!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"{module_name!r} has no attribute {attr!r} (model {spec!r}).")
        obj = getattr(obj, part)
    return obj() if callable(obj) and not _is_model(obj) else obj


def _is_model(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    keras = sys.modules.get("keras")
    return bool(
        (torch is not None and isinstance(obj, torch.nn.Module))
        or (keras is not None and isinstance(obj, keras.Model))
    )


def _load_inputs(path: str | None) -> Any:
    if path is None:
        return None
    import numpy as np

    p = Path(path)
    if not p.exists():
        raise InputError(f"inputs file {path!r} does not exist; give a .npy or .npz file.")
    if p.suffix == ".npy":
        return np.load(p, allow_pickle=False)
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    raise InputError(f"inputs file {path!r} is not .npy or .npz.")


def _load_mapping(path: str | None) -> dict[str, str] | None:
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise InputError(f"mapping file {path!r} does not exist.")
    if p.suffix == ".json":
        data = json.loads(p.read_text())
    elif p.suffix == ".toml":
        import tomllib

        data = tomllib.loads(p.read_text())
        data = data.get("mapping", data)
    else:
        raise InputError(f"mapping file {path!r} must be .json or .toml (a table of A name = B name).")
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise InputError(f"mapping file {path!r} must hold a flat table of A layer name = B layer name.")
    return data


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
    d.add_argument("a", help="model A as package.module:factory")
    d.add_argument("b", help="model B as package.module:factory")
    d.add_argument("--inputs", help=".npy/.npz inputs in model A's layout (default: random from the input spec)")
    d.add_argument("--mapping", help=".toml/.json table of A layer name = B layer name")
    d.add_argument("--json", dest="json_out", help="write the report as JSON here")
    add_tolerance_options(d.add_argument)

    show = sub.add_parser("show", help="render a saved JSON report")
    show.add_argument("report", help="a report written by parity (JSON)")
    return parser


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
                _load_object(args.a),
                _load_object(args.b),
                _load_inputs(args.inputs),
                mapping=_load_mapping(args.mapping),
                rtol=args.rtol,
                atol=args.atol,
                seed=args.seed,
            )
            console.print(report)
            if args.json_out:
                report.to_json(args.json_out)
                console.print(f"report written to {args.json_out}")
            return 0 if report.ok else 1
        if args.command == "show":
            from .report.jsonio import load_report

            if not Path(args.report).exists():
                raise InputError(f"report {args.report!r} does not exist.")
            report = load_report(args.report)
            console.print(report)
            return 0 if report.ok else 1
    except ParityError as exc:
        console.print(f"[bold red]parity:[/] {type(exc).__name__}: ", end="")
        console.print(str(exc), markup=False, highlight=False)
        return 2
    return 2  # pragma: no cover - argparse requires a command


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
