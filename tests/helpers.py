"""Hand-made records for tests of the pure-NumPy stages."""

from __future__ import annotations

import numpy as np

from parity.records import ModelInfo, Tap, Trace


def make_trace(specs, framework="torch", name="M"):
    """``specs``: (name, op, value, layout[, attrs]) tuples in execution order, then outputs."""
    taps = []
    for i, spec in enumerate(specs):
        tap_name, op, value, layout = spec[:4]
        attrs = spec[4] if len(spec) > 4 else {}
        value = np.asarray(value)
        taps.append(
            Tap(
                name=tap_name,
                op=op,
                index=i,
                shape=tuple(value.shape),
                dtype=str(value.dtype),
                layout=layout,
                value=value,
                role="output" if op == "output" else "layer",
                attrs=attrs,
            )
        )
    info = ModelInfo(framework=framework, framework_version="0", name=name, kind="test")
    return Trace(taps=tuple(taps), model=info)


def nchw_to_nhwc(x):
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))
