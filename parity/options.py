"""Options shared by the CLI and the pytest plugin, defined once.

Both call :func:`add_tolerance_options` with their own ``add`` function and
prefix (``""`` for ``parity diff --rtol``, ``"parity-"`` for
``pytest --parity-rtol``), so the two can never drift apart.
"""

from __future__ import annotations

from typing import Any, Callable


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


def add_verbose_option(add: Callable[..., Any], prefix: str = "") -> None:
    add(
        f"--{prefix}verbose",
        action="store_true",
        default=False,
        help="let TensorFlow's C++ and absl start-up logging through to stderr (hidden by default)",
    )
