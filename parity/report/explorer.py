"""Per-node data for Google's AI Edge Model Explorer.

Model Explorer (``pip install ai-edge-model-explorer``) draws a model's graph
and can colour its nodes from a "node data" JSON file.  This writes one such
file from a report: every compared layer's relative error, keyed by that
side's layer name, coloured by its own verdict (green well within tolerance,
yellow within, red over), plus value thresholds for the legend.  View it with::

    model-explorer model_b.tflite --node_data_paths=reports/pair.node_data.json

or, in Python, ``config.add_node_data_from_path(path)`` before
``model_explorer.visualize_from_config(config)``.  Node ids must match the
graph's: layer names match a Keras/TF graph's op-name prefixes and a torch
``ExportedProgram``'s module paths; where your graph names nodes otherwise,
pass ``graph_id`` and rename keys with ``rename``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..files import write_text
from ..records import Report

__all__ = ["to_model_explorer", "node_data"]

GREEN, YELLOW, RED = "#a5d6a7", "#fff59d", "#ef9a9a"


def _colour(d) -> str:
    if not d.ok:
        return RED
    return GREEN if d.tolerance_ratio < 0.1 else YELLOW


def node_data(
    report: Report, *, side: str = "b", graph_id: str = "main", rename: Callable[[str], str] | None = None
) -> dict:
    """The node-data document for model ``side``'s graph (``"a"`` or ``"b"``)."""
    if side not in ("a", "b"):
        from ..errors import ParityError

        raise ParityError(f"side must be 'a' or 'b' (whose graph the data is overlaid on), got {side!r}.")
    results = {}
    for d in report.layers:
        name = d.a_name if side == "a" else d.b_name
        key = rename(name) if rename else name
        value = d.rel_err if d.rel_err == d.rel_err and d.rel_err != float("inf") else 1e30
        results[key] = {"value": value, "bgColor": _colour(d)}
    rtols = sorted({d.rtol for d in report.layers}) or [1e-3]
    rtol = rtols[0]
    thresholds = [
        {"value": rtol / 10, "bgColor": GREEN},
        {"value": rtol, "bgColor": YELLOW},
        {"value": 1e30, "bgColor": RED},
    ]
    return {graph_id: {"results": results, "thresholds": thresholds}}


def to_model_explorer(
    report: Report, path: str | Path, *, side: str = "b", graph_id: str = "main",
    rename: Callable[[str], str] | None = None,
) -> dict:
    """Write :func:`node_data` to ``path`` and return it."""
    data = node_data(report, side=side, graph_id=graph_id, rename=rename)
    write_text(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return data
