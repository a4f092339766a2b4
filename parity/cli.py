"""The ``parity`` command line.

``parity demo``                 train the seed ConvNet, convert it to Keras by hand, show the reports
``parity diff A B``             compare two models given as ``package.module:factory``
``parity show report.json``     render a saved report (``--html out.html`` too)
``parity compare-reports OLD NEW``  which layers got worse between two runs
``parity taps MODEL``           every tensor parity can record in a model, to write a mapping
``parity align A B --write map.toml``  the mapping parity proposes, to edit and reuse
``parity chain A B C ...``      a conversion chain: which stage broke which layer
``parity evaluate A B --data D``  both models over a whole dataset: agreement, accuracies, worst samples

Exit status: 0 the models agree (no regression), 1 they diverge (a layer got
worse), 2 bad usage or input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from .errors import InputError, InputShapeUnknown, ParityError
from .loading import StateDictWithoutFactory, load_mapping, load_model
from .options import (
    add_input_options,
    add_reference_option,
    add_tolerance_options,
    add_verbose_option,
    exit_on_parity_error,
    inputs_from_args,
    require_arg_files,
)

__all__ = ["main", "build_parser", "add_chain_command", "run_chain_command"]


#: every kind of model a command loads (parity.loading), for --help
_MODEL_FORMATS = (
    "package.module:factory (a live torch or Keras model), or a file: .keras/.h5 (Keras), .pt "
    "(TorchScript), .pt2 (ExportedProgram), .pth/.bin (state_dict, with --factory-a/-b), .onnx, "
    ".tflite, .pb/.pbtxt (frozen GraphDef), or a SavedModel directory"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parity",
        description="Do two models compute the same thing? Layer-by-layer parity between PyTorch and Keras.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train the seed MNIST ConvNet, convert it to Keras, compare")
    demo.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    demo.add_argument("--out", default=None,
                      help="where to write the JSON report (default reports/demo.json; with --chain reports/chain-demo.json)")
    demo.add_argument("--chain", action="store_true",
                      help="instead: a small CNN through torch → ONNX → onnx2tf SavedModel → fp32/fp16 TFLite with one "
                           "injected converter bug, and the chain's layer × stage matrix (needs onnx2tf)")
    demo.add_argument("--dataset", action="store_true",
                      help="instead: the trained ConvNet and its Keras twin over the held-out digits with parity evaluate "
                           "(both accuracies, agreement, McNemar, worst samples), then the same with the epsilon fixed")
    demo.add_argument("--width", type=int, default=None, help="terminal width for the report")

    d = sub.add_parser("diff", help="compare model A with model B")
    d.add_argument("a", help=f"model A: {_MODEL_FORMATS}")
    d.add_argument("b", help="model B: the same kinds as A")
    add_input_options(d)
    d.add_argument(
        "--map", "--mapping", dest="mapping", metavar="FILE",
        help=".toml/.json table of A layer name = B layer name (B names may be globs like '*/Relu6:0' or 're:…')",
    )
    d.add_argument(
        "--input-map", metavar="A=B,…",
        help="bind A's named inputs to B's where names differ, e.g. input_ids=token_ids,attention_mask=padding_mask",
    )
    d.add_argument("--factory-a", metavar="PKG.MOD:CLASS", help="builds model A when A is a state_dict file (.pth)")
    d.add_argument("--factory-b", metavar="PKG.MOD:CLASS", help="builds model B when B is a state_dict file (.pth)")
    d.add_argument("--json", dest="json_out", metavar="PATH", help="write the report as JSON here")
    d.add_argument("--html", dest="html_out", metavar="PATH", help="write the report as a self-contained HTML page here")
    d.add_argument("--repro", dest="repro_out", metavar="DIR",
                   help="when the models diverge, write a repro of the first divergence here: the layer's input, "
                        "both outputs, each layer alone and a repro.py that reruns them")
    d.add_argument(
        "--model-explorer", dest="explorer_out", metavar="PATH",
        help="write per-layer error as Model Explorer node data (overlaid on model B's graph) here",
    )
    add_tolerance_options(d.add_argument)
    add_reference_option(d.add_argument)

    rp = sub.add_parser("repro", help="rerun a saved report's comparison and write a repro bundle of one layer")
    rp.add_argument("report", help="a report written by parity diff (JSON)")
    rp.add_argument("--layer", metavar="NAME", help="model A's layer (default: the report's first divergence)")
    rp.add_argument("--out", required=True, metavar="DIR", help="where the bundle goes: the layer's input, both outputs, "
                    "each layer alone and a repro.py")
    rp.add_argument("--trust", action="store_true",
                    help="let the model files the report names run code (a report does not carry --trust)")

    show = sub.add_parser("show", help="render a saved JSON report")
    show.add_argument("report", help="a report written by parity (JSON)")
    show.add_argument("--html", dest="html_out", metavar="PATH", help="also write it as an HTML page here")

    taps = sub.add_parser("taps", help="list every tensor parity records in a model (names for a mapping)")
    taps.add_argument("model", help="package.module:factory, or a saved model file/directory")
    add_input_options(taps)
    taps.add_argument("--filter", metavar="GLOB", help="only names matching this glob (e.g. '*/Relu6:0'), or 're:REGEX'")
    taps.add_argument("--factory", metavar="PKG.MOD:CLASS", help="builds the model when it is a state_dict file")

    al = sub.add_parser("align", help="propose a layer mapping between two models (and write it as TOML)")
    al.add_argument("a", help="model A: package.module:factory, or a saved model file/directory")
    al.add_argument("b", help="model B")
    add_input_options(al)
    al.add_argument("--map", "--mapping", dest="mapping", metavar="FILE", help="a partial mapping to start from")
    al.add_argument("--write", metavar="FILE", help="write the proposed mapping here (.toml), to edit and pass as --map")
    al.add_argument("--seed", type=int, default=0, help="seed of the random input batch (default 0)")
    al.add_argument("--factory-a", metavar="PKG.MOD:CLASS", help="builds model A when A is a state_dict file")
    al.add_argument("--factory-b", metavar="PKG.MOD:CLASS", help="builds model B when B is a state_dict file")

    add_chain_command(sub)
    from .evaluation.cli import add_evaluate_command

    add_evaluate_command(sub)

    cmp = sub.add_parser("compare-reports", help="which layers got worse between two saved reports of a pair")
    cmp.add_argument("old", help="the earlier report (JSON)")
    cmp.add_argument("new", help="the later report (JSON)")
    cmp.add_argument(
        "--factor", type=float, default=2.0,
        help="a layer is worse when its error over the allowed error grew more than this (default 2)",
    )
    for command in sub.choices.values():
        add_verbose_option(command.add_argument)
    return parser


def _model(spec: str, factory: str | None, flag: str = "--factory", *, trust: bool = False):
    """The model ``spec`` names; a state_dict without ``flag`` is refused naming that flag."""
    try:
        return load_model({"path": spec, "factory": factory} if factory else spec, trust=trust)
    except StateDictWithoutFactory as exc:
        raise StateDictWithoutFactory(
            exc.path, exc.keys,
            how=f"{flag} package.module:Net (the model's class, or a function that returns the model)",
        ) from None


def _no_shape(exc: InputShapeUnknown, models: Sequence[str]) -> InputError:
    """What to do when no model declares its input shape, in the command line's terms."""
    if len(models) == 1:
        declared = exc.declared.get("A")
        said = f"{models[0]} declares {declared}" if declared else f"{models[0]} declares no input shape"
        return InputError(
            f"parity cannot make a random batch for one model whose input shape is not complete: {said}. "
            "Give the shape with --shape, e.g. --shape 1,3,224,224, or a batch with --inputs FILE.npy."
        )
    said = "; ".join(f"{side} ({models[0 if side == 'A' else 1]}) declares {shapes}"
                     for side, shapes in exc.declared.items()) or "neither model declares its input shape"
    return InputError(
        f"parity cannot make a random batch: no model declares a complete input shape ({said}). "
        "Give the shape in model A's layout with --shape, e.g. --shape 1,3,224,224, or a batch with --inputs FILE.npy."
    )


def _print_taps(trace, pattern: str | None, console) -> int:
    import fnmatch
    import re

    from rich.table import Table
    from rich.text import Text

    from .report.text import shown

    taps = list(trace.taps)
    if pattern and pattern.startswith("import/"):
        pattern = pattern[len("import/"):]  # TF's import scope, as mappings accept it
    if pattern:
        if pattern.startswith("re:"):
            rx = re.compile(pattern[3:])
            taps = [t for t in taps if rx.search(t.name)]
        else:
            taps = [t for t in taps if fnmatch.fnmatchcase(t.name, pattern)]
    info = trace.model
    # names are data: every one shown() (escapes visible), and given to rich as Text, never markup
    heading = shown(f"{info.name} · {info.framework} {info.framework_version} · {info.kind} · "
                    f"{len(taps)} of {len(trace.taps)} tensors{f' matching {pattern!r}' if pattern else ''}")
    if not console.is_terminal:  # piped: one tab-separated line per tensor, names never wrapped
        print(heading)
        for t in taps:
            print("\t".join(shown(s) for s in _tap_row(t)))
        if pattern and not taps:
            raise InputError(f"no tensor name matches {pattern!r}; run without --filter to see them all.")
        return 0
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("#", "name", "op", "shape", "dtype", "layout"):
        table.add_column(col, no_wrap=col != "name", overflow="fold")
    for t in taps:
        table.add_row(*(Text(shown(s)) for s in _tap_row(t)))
    console.print(Text(heading))
    console.print(table)
    if pattern and not taps:
        raise InputError(f"no tensor name matches {pattern!r}; run without --filter to see them all.")
    return 0


def _tap_row(t) -> list[str]:
    """One tensor of ``parity taps``: index, name, op, shape, dtype, layout (as the model says them)."""
    return [str(t.index), t.name, t.op, "×".join(map(str, t.shape)) or "scalar", t.dtype, t.layout or "–"]


def _align_command(args, console) -> int:
    from rich.table import Table
    from rich.text import Text

    from .report.text import shown

    from .align import align
    from .api import capture_pair

    require_arg_files(args, args.a, args.b)
    inputs, mapping = inputs_from_args(args), load_mapping(args.mapping)
    try:
        trace_a, trace_b = capture_pair(
            _model(args.a, args.factory_a, "--factory-a", trust=args.trust),
            _model(args.b, args.factory_b, "--factory-b", trust=args.trust), inputs,
            granularity="ops" if args.ops else "modules", seed=args.seed,
        )
    except InputShapeUnknown as exc:
        raise _no_shape(exc, [args.a, args.b]) from None
    alignment = align(trace_a, trace_b, mapping)
    matches = [m for m in alignment.matches if m.a.role != "output"]
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("A layer", "B tensor", "how", "transform", "cosine"):
        table.add_column(col, overflow="fold")
    lines = [
        "# parity: proposed layer mapping (A name = B name); edit and pass with --map",
        f"# A: {trace_a.model.name} ({trace_a.model.framework}), B: {trace_b.model.name} ({trace_b.model.framework})",
        "[mapping]",
    ]
    for m in matches:
        cos = _cosine(m)
        table.add_row(Text(shown(m.a.name)), Text(shown(m.b.name)), m.how,
                      m.transform.label + (" ?" if m.transform.ambiguous else ""), f"{cos:.6f}")
        lines.append(f"{json.dumps(m.a.name)} = {json.dumps(m.b.name)}  # {m.how}, {m.transform.label}, cosine {cos:.6f}")
    unmatched = [u for u in alignment.unmatched_a]
    for u in unmatched:
        lines.append(f"# {json.dumps(u.tap.name)} = ?  # {u.reason}: {u.tap.op} {tuple(u.tap.shape)}")
    total = len(matches) + len(unmatched)
    console.print(table)
    console.print(
        f"matched {len(matches)} of {total} layers of A"
        + (f" ({100 * len(matches) / total:.0f}%)" if total else "")
        + "; " + ", ".join(f"{n} by {how}" for how, n in sorted(_count(m.how for m in matches).items())),
        highlight=False,
    )
    if args.write:
        from .files import write_text

        path = write_text(args.write, "\n".join(lines) + "\n")
        console.print(Text(f"mapping written to {shown(str(path))}"))
    return 0


def _cosine(match) -> float:
    import numpy as np

    a = np.asarray(match.a.value, dtype=np.float64).reshape(-1)
    b = np.asarray(match.transform.apply(match.b.value), dtype=np.float64).reshape(-1)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na and nb else float(na == nb)


def _count(items) -> dict:
    from collections import Counter

    return dict(Counter(items))


def add_chain_command(subparsers: Any) -> Any:
    """``parity chain A B C …``: add the subcommand to ``parity``'s subparsers."""
    p = subparsers.add_parser(
        "chain",
        help="compare a model with each of its conversions (A → B → C …), layer by layer, in one run",
        description="Stage 0 is the reference; every later stage is compared with it. Exit status: "
        "0 every stage agrees, 1 a stage diverges, 2 bad usage or input.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="the stages in order: package.module:factory, or saved models (.pt2, .pt, .onnx, "
                        ".tflite, .keras, .pb, SavedModel directories)")
    p.add_argument("--names", metavar="N0,N1,…", help="names of the stages, comma-separated, one per model")
    p.add_argument("--precision", action="append", default=[], metavar="STAGE=DTYPE",
                   help="a stage's precision (name or index = float16/int8/float32…), when detection "
                        "cannot see it; repeatable")
    add_input_options(p)
    p.add_argument("--json", dest="json_out", metavar="PATH", help="write the chain report as JSON here")
    p.add_argument("--html", dest="html_out", metavar="PATH", help="write the chain report as an HTML page here")
    add_tolerance_options(p.add_argument)
    return p


def run_chain_command(args: Any, console: Any = None) -> int:
    """Run ``parity chain`` for parsed ``args``: 0 all stages agree, 1 a stage diverges, 2 usage
    or load errors (a :class:`ParityError`, whose message goes to stderr)."""
    from rich.console import Console

    from .chain import chain

    console = console if console is not None else Console()
    try:
        models = list(args.models)
        require_arg_files(args, *models)  # a missing file fails before any stage loads
        if len(models) < 2:
            raise InputError(f"parity chain needs at least two models (a model and a conversion); got {len(models)}.")
        names = None
        if getattr(args, "names", None):
            names = [n.strip() for n in args.names.split(",")]
            if len(names) != len(models):
                raise InputError(f"--names gives {len(names)} name(s) for {len(models)} models; give one per model.")
        hints: dict[Any, str] = {}
        for item in getattr(args, "precision", None) or ():
            stage, sep, dtype = item.partition("=")
            if not sep or not stage.strip() or not dtype.strip():
                raise InputError(f"--precision takes STAGE=DTYPE (e.g. --precision 4=float16); got {item!r}.")
            key: Any = int(stage) if stage.strip().isdigit() else stage.strip()
            hints[key] = dtype.strip()
        report = chain(
            models, inputs_from_args(args), names=names, rtol=args.rtol, atol=args.atol, precision=hints or None,
            seed=getattr(args, "seed", 0) or 0, granularity="ops" if getattr(args, "ops", False) else "modules",
            trust=bool(getattr(args, "trust", False)),
        )
        console.print(report)
        for attr, method, what in (("json_out", "to_json", "JSON chain report"), ("html_out", "to_html", "HTML chain report")):
            path = getattr(args, attr, None)
            if path:
                getattr(report, method)(path)
                console.print(_written_line(what, path))
        return 0 if report.ok else 1
    except ParityError as exc:
        return exit_on_parity_error(exc)


def _write_outputs(report, args, console) -> None:
    for attr, method, what in (
        ("json_out", "to_json", "JSON report"),
        ("html_out", "to_html", "HTML report"),
        ("explorer_out", "to_model_explorer", "Model Explorer node data"),
    ):
        path = getattr(args, attr, None)
        if path:
            getattr(report, method)(path)
            console.print(_written_line(what, path))
    repro = getattr(args, "repro_out", None)
    if repro and report.first_divergence is not None:
        from rich.text import Text

        from .report.text import shown

        report.save_repro(repro)
        console.print(Text(f"repro of {shown(report.first_divergence.a_name)} written to {shown(str(repro))} "
                           f"(run: python {shown(str(repro))}/repro.py)"))


def _diff_options(args: Any, where: str) -> Any:
    """The :class:`~parity.pipeline.DiffOptions` of ``parity diff``'s parsed ``args`` (the mapping
    file is read by :func:`_run_diff`)."""
    from .inputs import parse_input_map
    from .pipeline import DiffOptions

    return DiffOptions.build(
        where=where, rtol=args.rtol, atol=args.atol, seed=args.seed,
        granularity="ops" if args.ops else "modules", max_memory=args.max_memory,
        input_map=parse_input_map(args.input_map), reference=args.reference,
    )


def _run_diff(args: Any, options: Any) -> Any:
    """``parity diff``'s comparison of ``args`` (parsed) under ``options``; the report records the
    arguments that rerun it (:attr:`~parity.records.Report.command`)."""
    from .api import diff_with

    require_arg_files(args, args.a, args.b)
    options = dataclasses.replace(options, mapping=load_mapping(args.mapping))
    inputs = inputs_from_args(args)
    try:
        report = diff_with(
            _model(args.a, args.factory_a, "--factory-a", trust=args.trust),
            _model(args.b, args.factory_b, "--factory-b", trust=args.trust),
            inputs,
            options,
        )
    except InputShapeUnknown as exc:
        raise _no_shape(exc, [args.a, args.b]) from None
    kept = report.__dict__.get("_repro_sources")
    report = dataclasses.replace(report, command=rerun_arguments(args))
    if kept is not None:  # what save_repro needs is off the record: carried by hand
        object.__setattr__(report, "_repro_sources", kept)
    return report


def rerun_arguments(args: Any) -> tuple[str, ...]:
    """The ``parity diff`` arguments that rerun ``args``' comparison: files as absolute paths
    (specs as given), the options that change the comparison, never ``--trust`` (a report is a
    file anyone may hand you: what runs code is the reader's decision, ``parity repro --trust``)."""

    def where(value: str) -> str:
        return str(Path(value).resolve()) if Path(value).exists() else value

    out = [where(args.a), where(args.b)]
    for flag, value in (("--factory-a", args.factory_a), ("--factory-b", args.factory_b),
                        ("--inputs", args.inputs and where(args.inputs)), ("--shape", args.shape),
                        ("--map", args.mapping and where(args.mapping)), ("--input-map", args.input_map),
                        ("--reference", args.reference), ("--max-memory", args.max_memory)):
        if value:
            out += [flag, str(value)]
    if args.rtol is not None:
        out += ["--rtol", repr(args.rtol), "--atol", repr(args.atol)]
    if args.seed:
        out += ["--seed", str(args.seed)]
    if args.ops:
        out.append("--ops")
    return tuple(out)


def _repro(args: Any, parser: Any, console: Any) -> int:
    """``parity repro REPORT``: rerun the comparison a saved report records and write the repro
    bundle of its first divergence (or ``--layer``)."""
    from rich.text import Text

    from .errors import MappingError, ReportFormatError
    from .report.jsonio import load_report
    from .report.text import shown

    if not Path(args.report).exists():
        raise InputError(f"report {args.report!r} does not exist.")
    saved = load_report(args.report)
    if not saved.command:
        raise ReportFormatError(
            f"report {args.report!r} records no command to rerun: it was made from live models in Python (or by a "
            "parity older than this one). Rerun parity.diff(a, b, x) there and call report.save_repro(DIR, layer=...).")
    layer = args.layer or (saved.first_divergence.a_name if saved.first_divergence else None)
    if layer is None:
        raise MappingError(f"report {args.report!r} has no divergence to reproduce; name a layer with --layer.")
    saved.layer(layer)  # an unknown layer is refused here, with the closest names, before any model loads
    try:
        again = parser.parse_args(["diff", *saved.command, *(["--trust"] if args.trust else [])])
    except SystemExit:
        raise ReportFormatError(f"report {args.report!r} records a command this parity cannot parse: "
                                f"{' '.join(saved.command)!r}.") from None
    options = dataclasses.replace(_diff_options(again, "parity repro"), repro_layers=(layer,))
    report = _run_diff(again, options)
    if saved.inputs.digest and report.inputs.digest != saved.inputs.digest:
        raise InputError(
            f"the inputs of this rerun differ from the report's (digest {report.inputs.digest} now, "
            f"{saved.inputs.digest} in {args.report!r}): the inputs file changed since; restore it, or rerun parity diff.")
    report.save_repro(args.out, layer)
    console.print(Text(f"repro of {shown(layer)} written to {shown(str(args.out))} "
                       f"(run: python {shown(str(args.out))}/repro.py)"))
    return 0


def _written_line(what: str, path: str):
    from rich.text import Text

    from .report.text import shown

    return Text(f"{what} written to {shown(str(path))}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        from .quiet import quiet_tensorflow

        quiet_tensorflow()  # parity's own program: TensorFlow's start-up chatter stays out of the verdict
    from rich.console import Console

    console = Console()
    try:
        if args.command == "demo":
            from .demo import run_chain_demo, run_demo

            shown = console if args.width is None else Console(width=args.width)
            if args.chain:
                return run_chain_demo(out=args.out or "reports/chain-demo.json", console=shown)
            if args.dataset:
                from .evaluation.demo import run_dataset_demo

                return run_dataset_demo(epochs=args.epochs, out=args.out or "reports/dataset-demo.json", console=shown)
            return run_demo(epochs=args.epochs, out=args.out or "reports/demo.json", console=shown)
        if args.command == "diff":
            # a malformed size, --input-map or tolerance is refused before any model loads
            options = _diff_options(args, "parity diff")
            report = _run_diff(args, options)
            console.print(report)
            _write_outputs(report, args, console)
            return 0 if report.ok else 1
        if args.command == "repro":
            return _repro(args, parser, console)
        if args.command == "show":
            from .report.jsonio import load_report

            if not Path(args.report).exists():
                raise InputError(f"report {args.report!r} does not exist.")
            from .evaluation.result import is_evaluation, load_evaluation

            if is_evaluation(args.report):  # a dataset run (parity evaluate --json)
                result = load_evaluation(args.report)
                console.print(result)
                if args.html_out:
                    result.to_html(args.html_out)
                    console.print(_written_line("HTML evaluation", args.html_out))
                return 0 if result.ok else 1
            report = load_report(args.report)
            console.print(report)
            _write_outputs(report, args, console)
            return 0 if report.ok else 1
        if args.command == "align":
            return _align_command(args, console)
        if args.command == "taps":
            from .api import capture

            require_arg_files(args, args.model)
            inputs = inputs_from_args(args)
            try:
                trace = capture(_model(args.model, args.factory, trust=args.trust), inputs, granularity="ops" if args.ops else "modules")
            except InputShapeUnknown as exc:
                raise _no_shape(exc, [args.model]) from None
            return _print_taps(trace, args.filter, console)
        if args.command == "chain":
            return run_chain_command(args, console)
        if args.command == "evaluate":
            from .evaluation.cli import run_evaluate_command

            return run_evaluate_command(args, console)
        if args.command == "compare-reports":
            from .report.jsonio import load_report
            from .report.regress import compare_reports

            comparison = compare_reports(load_report(args.old), load_report(args.new), factor=args.factor)
            console.print(comparison)
            return 1 if comparison.regressed else 0
    except ParityError as exc:
        return exit_on_parity_error(exc)
    return 2  # pragma: no cover - argparse requires a command


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
