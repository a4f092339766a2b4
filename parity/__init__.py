"""parity — do two models compute the same thing?

Compare a PyTorch model with its TensorFlow/Keras conversion layer by layer,
and learn which layer first goes wrong, by how much, and why.

>>> import parity
>>> report = parity.diff(torch_model, keras_model, x)   # doctest: +SKIP
>>> report.ok, report.first_divergence.a_name          # doctest: +SKIP
(False, 'layer1.1')

Importing parity imports neither torch nor TensorFlow: a backend imports its
framework when a model of that framework is handed in.

``parity.chain`` and ``parity.search`` are functions (importing this package binds them
over the submodules of the same name); the submodules stay importable as
``from parity.chain import ChainCell`` and ``from parity.search import InputRecipe``.
"""

from __future__ import annotations

from .api import assert_parity, capture, diff, diff_traces, diff_with
from .chain import ChainReport, Stage, chain
from .drift_run import DriftResult, drift
from .errors import (
    AlignmentError,
    CaptureError,
    DataError,
    LabelsError,
    ModelNotShippable,
    InputError,
    MappingError,
    ModelError,
    ParityError,
    ParityMismatch,
    ReportFormatError,
    ToleranceError,
    UntrustedModel,
)
from .search import SearchResult, search
from .evaluation import Evaluation, WorstSample, evaluate, load_evaluation
from .records import (
    Diagnosis,
    InputSpec,
    LayerDiff,
    Metrics,
    ModelInfo,
    Report,
    Tap,
    Trace,
)
from .pipeline import DiffOptions
from .tolerance import DEFAULT_TOLERANCES, Tolerances
from . import report  # noqa: F401  (installs Report's renderers: records.py does not import report/)

from .version import __version__

__all__ = [
    "diff",
    "diff_traces",
    "diff_with",
    "DiffOptions",
    "assert_parity",
    "capture",
    "load_report",
    "load",
    "drift",
    "DriftResult",
    "search",
    "evaluate",
    "Evaluation",
    "WorstSample",
    "load_evaluation",
    "chain",
    "ChainReport",
    "Stage",
    "SearchResult",
    "Report",
    "LayerDiff",
    "Metrics",
    "Diagnosis",
    "Tap",
    "Trace",
    "ModelInfo",
    "InputSpec",
    "Tolerances",
    "DEFAULT_TOLERANCES",
    "ParityError",
    "ParityMismatch",
    "InputError",
    "DataError",
    "LabelsError",
    "ModelNotShippable",
    "ModelError",
    "MappingError",
    "ToleranceError",
    "CaptureError",
    "AlignmentError",
    "ReportFormatError",
    "UntrustedModel",
    "__version__",
]


def load(path, *, trust=False, **options):
    """A model saved at ``path``; a file that would run code is refused unless ``trust=True``
    (:mod:`parity.trust`).  See :func:`parity.loading.load`."""
    from .loading import load as _load

    return _load(path, trust=trust, **options)


def load_report(path):
    """A report saved with ``report.to_json(path)``, without the models."""
    from .report.jsonio import load_report as _load

    return _load(path)

