"""``parity evaluate A B --data PATH``: the subcommand, added to ``parity``'s parser by
:func:`add_evaluate_command` and run by :func:`run_evaluate_command`.

Exit status: 0 the models agree over the data (and the thresholds hold), 1 they do not,
2 bad usage or input, 130 interrupted (the partial statistics are still printed and written).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ParityError

__all__ = ["add_evaluate_command", "run_evaluate_command"]


def add_evaluate_command(subparsers: Any) -> Any:
    from ..options import add_tolerance_options

    p = subparsers.add_parser(
        "evaluate",
        help="compare model A with model B over a whole dataset: agreement, accuracies, McNemar, worst samples",
        description="Runs both models over every batch of --data (inputs in model A's layout) and reports top-1/top-k "
        "agreement, both accuracies against the labels with a 95%% interval and an exact McNemar test, per-layer "
        "error distributions, the first layer over tolerance over the data and the worst samples. Exit status: 0 the "
        "models agree, 1 they do not, 2 bad usage or input, 130 interrupted.",
    )
    p.add_argument("a", help="model A: package.module:factory or a saved model file/directory")
    p.add_argument("b", help="model B: the same kinds as A")
    p.add_argument("--data", required=True, metavar="PATH",
                   help=".npy or uncompressed .npz (a member 'labels' holds labels) or a directory of them, "
                        "memory-mapped; in model A's layout")
    p.add_argument("--labels", metavar="PATH", help=".npy of one integer class per sample (when --data has none)")
    p.add_argument("--layers", default="all", metavar="all|outputs|GLOB,…",
                   help="which layers to compare on every batch: all (default), outputs (fastest) or name globs")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local (default) or ray: shards on Ray actors (RAY_ADDRESS for a cluster, else a local one)")
    p.add_argument("--workers", type=int, default=2, help="Ray workers (default 2)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per batch (default 32)")
    p.add_argument("--top-k", type=int, default=5, help="k of the top-k agreement (default 5)")
    p.add_argument("--worst", type=int, default=8, help="how many worst samples to keep (default 8)")
    p.add_argument("--min-agreement", type=float, default=None, metavar="FRACTION",
                   help="fail (exit 1) below this top-1 agreement, e.g. 0.999")
    p.add_argument("--max-accuracy-drop", type=float, default=None, metavar="FRACTION",
                   help="fail (exit 1) when B's accuracy is more than this below A's, e.g. 0.005")
    p.add_argument("--checkpoint", metavar="PATH", help="write the merged statistics here every --checkpoint-every batches")
    p.add_argument("--checkpoint-every", type=int, default=20, metavar="N", help="batches between checkpoints (default 20)")
    p.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint written by --checkpoint")
    p.add_argument("--diff-worst", type=int, nargs="?", const=1, default=0, metavar="N",
                   help="then diff the models layer by layer on the N worst samples (default 1), with diagnoses")
    p.add_argument("--map", "--mapping", dest="mapping", metavar="FILE", help="a layer mapping file, as for parity diff")
    p.add_argument("--input-map", metavar="A=B,…", help="bind A's named inputs to B's where names differ")
    p.add_argument("--trust", action="store_true", help="let the model files run code (see parity diff --help)")
    p.add_argument("--json", dest="json_out", metavar="PATH",
                   help="write the evaluation as JSON here (the kept samples as .npy in <stem>-samples/ beside it)")
    p.add_argument("--html", dest="html_out", metavar="PATH", help="write the evaluation as an HTML page here")
    add_tolerance_options(p.add_argument)
    return p


def run_evaluate_command(args: Any, console: Any) -> int:
    from rich.text import Text

    from ..inputs import parse_input_map
    from ..loading import load_mapping
    from ..options import exit_on_parity_error, require_arg_files
    from ..report.text import shown
    from .run import evaluate

    try:
        require_arg_files(args, args.a, args.b)
        if not Path(args.data).exists():
            from ..errors import DataError

            raise DataError(f"--data {args.data!r} does not exist; give a .npy/.npz file or a directory of them.")
        result = evaluate(
            args.a, args.b, args.data, labels=args.labels, layers=args.layers, engine=args.engine,
            batch_size=args.batch_size, mapping=load_mapping(args.mapping), rtol=args.rtol, atol=args.atol,
            input_map=parse_input_map(args.input_map), top_k=args.top_k, worst=args.worst,
            min_agreement=args.min_agreement, max_accuracy_drop=args.max_accuracy_drop, checkpoint=args.checkpoint,
            checkpoint_every=args.checkpoint_every, resume=args.resume, workers=args.workers, trust=args.trust,
        )
        console.print(result)
        for attr, method, what in (("json_out", "to_json", "JSON evaluation"), ("html_out", "to_html", "HTML evaluation")):
            path = getattr(args, attr, None)
            if path:
                getattr(result, method)(path)
                console.print(Text(f"{what} written to {shown(str(path))}"))
        for s in result.worst[: args.diff_worst]:
            console.rule(f"parity diff on sample {s.index} (output error {s.error:.3g})")
            console.print(s.diff())
        if result.partial:
            return 130
        return 0 if result.ok else 1
    except ParityError as exc:
        return exit_on_parity_error(exc)
