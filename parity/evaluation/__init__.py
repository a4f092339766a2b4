"""Dataset-level parity: two models over a whole validation set (:func:`parity.evaluate`).

- :mod:`.data` — whatever the user hands in, read as batches (memory-mapped files, iterables,
  DataLoaders, tf.data, Ray Datasets);
- :mod:`.stats` — statistics that merge exactly (float64 sums kept as exact integers, maxima
  with their sample, log-binned histograms, agreement and McNemar counts);
- :mod:`.engine` — the plan made on the first batch, and one batch counted;
- :mod:`.run` — :func:`evaluate`: the local loop, progress, Ctrl-C, checkpoints;
- :mod:`.ray_engine` — the same batches counted by Ray actors, a dead worker's shard retried;
- :mod:`.result` / :mod:`.report` — the :class:`Evaluation`, its JSON, terminal and HTML views.

Importing this package imports neither torch, TensorFlow nor Ray.
"""

from __future__ import annotations

from .result import Evaluation, WorstSample, load_evaluation
from .run import evaluate

__all__ = ["evaluate", "Evaluation", "WorstSample", "load_evaluation"]
