"""Options shared by the CLI's subcommands and the pytest plugin, defined once.

Both call :func:`add_tolerance_options` with their own ``add`` function and
prefix (``""`` for ``parity diff --rtol``, ``"parity-"`` for
``pytest --parity-rtol``), so the two can never drift apart.  Every subcommand
that runs models takes the input options (:func:`add_input_options`, read back by
:func:`inputs_from_args`), refuses missing files before any framework loads
(:func:`require_arg_files`) and turns a :class:`~parity.errors.ParityError` into one
line on stderr and exit status 2 (:func:`exit_on_parity_error`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .errors import InputError, ParityError
from .reference import REFERENCES

__all__ = [
    "add_tolerance_options",
    "add_reference_option",
    "add_verbose_option",
    "add_input_options",
    "inputs_from_args",
    "require_arg_files",
    "exit_on_parity_error",
]


def add_tolerance_options(add: Callable[..., Any], prefix: str = "") -> None:
    add(
        f"--{prefix}rtol",
        type=float,
        default=None,
        metavar="RTOL",
        help="norm-relative tolerance ‖b−a‖/‖a‖ for every layer (give --%satol too; default: per dtype, "
        "float32 1e-3)" % prefix,
    )
    add(
        f"--{prefix}atol",
        type=float,
        default=None,
        metavar="ATOL",
        help="absolute (RMS) tolerance for every layer (give --%srtol too; default: per dtype, "
        "float32 1e-5)" % prefix,
    )
    add(
        f"--{prefix}seed",
        type=int,
        default=0,
        metavar="SEED",
        help="seed of the random inputs made when none are given (default 0)",
    )
    add(
        f"--{prefix}max-memory",
        default=None,
        metavar="SIZE",
        help="activations held in memory before a finished model's are spilled to memory-mapped files "
        "(e.g. 2GB, 512MiB; default: a quarter of RAM); the report is the same",
    )


def add_reference_option(add: Callable[..., Any], prefix: str = "") -> None:
    add(
        f"--{prefix}reference",
        choices=REFERENCES,
        default=None,
        help="what judges each layer: 'dtype', the per-dtype tolerance table (default), or 'float64': a "
        "float64 twin of the live model runs too, and a float32 layer fails when its error against float64 is "
        "over k × the float32 model's own distance from float64 there (its noise floor)",
    )


def add_verbose_option(add: Callable[..., Any], prefix: str = "") -> None:
    add(
        f"--{prefix}verbose",
        action="store_true",
        default=False,
        help="let TensorFlow's C++ and absl start-up logging through to stderr (hidden by default)",
    )


def add_input_options(parser: Any) -> None:
    """``--inputs FILE``, ``--shape N,C,H,W``, ``--ops`` and ``--trust`` on an argparse (sub)parser:
    every subcommand that loads models takes them."""
    parser.add_argument("--inputs", metavar="FILE",
                        help=".npy/.npz inputs in model A's layout (default: a seeded random batch)")
    parser.add_argument(
        "--shape", metavar="N,C,H,W",
        help="shape of a seeded random input batch (e.g. 1,3,224,224) when the model declares none",
    )
    parser.add_argument("--ops", action="store_true", help="record PyTorch functional calls too (x + y, F.relu, view)")
    parser.add_argument(
        "--trust", action="store_true",
        help="let the model files run code: TorchScript, pickled .pth/.pt2 payloads, TensorFlow ops outside "
        "parity's pure-math allow-list, Keras custom objects and Lambda layers (refused by default)",
    )


def inputs_from_args(args: Any) -> object:
    """The inputs ``--inputs`` or ``--shape`` (with ``--seed``) name; ``None`` for neither."""
    from .loading import load_inputs

    if args.inputs and args.shape:
        raise InputError("give --inputs or --shape, not both.")
    if args.shape:
        try:
            shape = [int(s) for s in args.shape.replace("x", ",").split(",") if s.strip()]
        except ValueError:
            raise InputError(f"--shape must be sizes separated by commas, like 1,3,224,224; got {args.shape!r}.") from None
        return load_inputs({"shape": shape, "seed": getattr(args, "seed", 0) or 0})
    return load_inputs(args.inputs)


def require_arg_files(args: Any, *specs: str) -> None:
    """Refuse a missing inputs, mapping or model file before any model (and its framework) loads."""
    from .loading import looks_like_spec, require_files

    inputs = getattr(args, "inputs", None)
    if inputs and not Path(inputs).exists() and not looks_like_spec(inputs):
        raise InputError(f"inputs file {inputs!r} does not exist; give a .npy or .npz file.")
    mapping = getattr(args, "mapping", None)
    if mapping and not Path(mapping).exists():
        raise InputError(f"mapping file {mapping!r} does not exist.")
    for spec in specs:
        require_files(spec)


def exit_on_parity_error(exc: ParityError) -> int:
    """Print ``exc`` as one line on stderr (greppable, copyable) and return exit status 2."""
    from rich.console import Console

    errors = Console(stderr=True, soft_wrap=True)
    errors.print(f"[bold red]parity:[/] {type(exc).__name__}: ", end="")
    from .report.text import shown_lines

    errors.print(shown_lines(str(exc)), markup=False, highlight=False)
    return 2
