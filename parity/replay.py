"""A layer's own error, by isolated replay.

Errors propagate: once layer 3 is wrong every later layer is wrong too.  To
tell the guilty layer from the ones that only inherit its error, each flagged
layer of model B is called on its own with model A's recorded *input* of the
matching layer (brought into B's layout), and its output is compared with A's
output.  That is the layer's own error.

Replay needs both sides to be callable layer by layer — their backends say so
(:meth:`Backend.can_call`): live PyTorch modules and Keras layers.  A graph format whose graph
can be cut (ONNX: :meth:`Backend.call_from`) runs the piece between the B tensor whose A
counterpart is the layer's recorded input and the layer's tensor.  Where it is impossible
(TFLite, layers with several inputs, inputs whose layout cannot be converted) the own error is estimated
from the error growth instead — this layer's error minus the error of the
layer before it — and ``own_method`` says which was used.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .capture.base import Backend
from .metrics import compute_metrics, relative_error
from .records import Alignment, LayerDiff, Match
from .reruns import rerun_failed

__all__ = ["own_errors", "recorded_inputs", "InputRecorder", "to_b_layout", "REPLAYED_LAYERS"]

#: how many flagged layers (from the first on) get their own error
REPLAYED_LAYERS = 16


def _callable(backend: Backend | None, name: str) -> bool:
    return backend is not None and backend.can_call(name)


def recorded_inputs(backend: Backend | None, inputs: Any, names: list[str]) -> dict[str, np.ndarray]:
    """Run the model once more, keeping the first tensor input of each named layer that its
    backend can call alone (none for a graph format, or without a backend)."""
    names = [n for n in names if _callable(backend, n)]
    return backend.layer_inputs(inputs, names) if names else {}


class InputRecorder:
    """Model A's recorded layer inputs for one comparison, each layer's recorded once: replay and
    the detectors ask for overlapping layers, and every ask would otherwise rerun the model."""

    def __init__(self, backend: Backend | None, inputs: Any) -> None:
        self.backend, self.inputs = backend, inputs
        self._seen: dict[str, np.ndarray | None] = {}
        #: by A's layer name: B's layer fed A's recorded input of it, in A's layout (what
        #: :func:`own_errors` computed): the detectors judge a layer whose input is already wrong
        #: by this, where the error is the layer's own
        self.replayed: dict[str, np.ndarray] = {}
        #: by A's layer name: the tensor of a graph B its piece starts at, and the input fed there
        self.sources: dict[str, tuple[str, np.ndarray]] = {}

    def get(self, names: list[str]) -> dict[str, np.ndarray]:
        """The first tensor input of each named layer the backend can call alone (one run of the
        model for the names not recorded yet)."""
        missing = [n for n in names if n not in self._seen]
        if missing:
            try:
                found = recorded_inputs(self.backend, self.inputs, missing)
            except Exception as exc:  # noqa: BLE001 - the comparison stands without them; the report says so
                rerun_failed("model A", "to record its layers' inputs", exc,
                             "no layer's own error was measured by replay (growth was used) and the detectors went without them")
                found = {}
            self._seen.update({n: found.get(n) for n in missing})
        return {n: v for n in names if (v := self._seen[n]) is not None}


def to_b_layout(x: np.ndarray, match: Match, previous: Match | None) -> np.ndarray | None:
    """A's input of this layer in B's layout, when the pair's transform says how; else None."""
    t = match.transform
    if t.kind == "permute" and t.perm is not None and x.ndim == len(t.perm):
        # t.apply maps B's layout to A's by np.transpose(b, perm): invert it
        return np.ascontiguousarray(np.transpose(x, np.argsort(t.perm)))
    if t.kind == "identity" and x.ndim == len(match.a.shape):
        if x.ndim == 2 and previous is not None and previous.transform.kind != "identity":
            return None  # a dense layer after a flatten whose order differs between the sides
        return x
    return None


#: A's recorded layer input is the value of an earlier pair's A tap when they agree this well (the
#: same tensor of A, recorded by two runs of it)
SAME_TENSOR = 1e-6
#: how far back, in pairs, the tap that is a layer's input is looked for
_SOURCE_LOOKBACK = 16


def _checked_piece(backend_b: Backend, m: Match, source: str, own: np.ndarray, x_b: np.ndarray):
    """Pair ``m``'s B tensor computed by the piece of B's graph from tensor ``source`` fed ``x_b``:
    ``(output in A's layout, source, x_b)``, or None where the graph cannot be cut there or the
    piece fed B's own value there (``own``) does not give B's tensor back (then it is not the
    computation between the two)."""
    try:
        again = np.asarray(backend_b.call_from(m.b.name, source, own))
        if again.shape != np.shape(m.b.value) or relative_error(np.asarray(m.b.value), again) > 1e-5:
            return None
        fed = again if x_b is own else np.asarray(backend_b.call_from(m.b.name, source, x_b))
        out = np.asarray(m.transform.apply(fed))
    except Exception:  # noqa: BLE001 - a graph that cannot be cut here: fall back to growth
        return None
    return (out, source, x_b) if out.shape == tuple(m.a.shape) else None


def _piece_replay(backend_b: Backend, m: Match, x_a: np.ndarray, before: list[Match]):
    """:func:`_checked_piece` from the B tensor whose A counterpart *is* A's recorded input of this
    layer (an earlier pair's A tap holding the same values), fed that input in B's layout; None
    where no earlier pair is the input."""
    x_a = np.asarray(x_a)
    for p in reversed(before[-_SOURCE_LOOKBACK:]):
        if p.a.value is None or p.b.value is None or tuple(p.a.shape) != x_a.shape or p.b.role == "output":
            continue
        va = np.asarray(p.a.value)
        if va.dtype != x_a.dtype or relative_error(va, x_a) > SAME_TENSOR:
            continue
        x_b = to_b_layout(x_a, p, None)
        if x_b is None:
            return None
        return _checked_piece(backend_b, m, p.b.name, np.asarray(p.b.value), x_b.astype(va.dtype))
    return None


def _input_replay(backend_b: Backend, m: Match, x_a: np.ndarray, inputs_a: Any, inputs_b: Any):
    """:func:`_checked_piece` for a layer whose recorded input *is* one of A's model inputs: from
    B's matching graph input, fed what B was fed there (then the own error is the error as
    compared: the input is exact — but measured, and the piece is known)."""
    if inputs_a is None or inputs_b is None:
        return None
    arrs_a = list(inputs_a.values()) if isinstance(inputs_a, dict) else list(inputs_a)
    arrs_b = list(inputs_b.values()) if isinstance(inputs_b, dict) else list(inputs_b)
    spec = backend_b.input_spec() or ()
    x_a = np.asarray(x_a)
    for k, (xa_k, xb_k) in enumerate(zip(arrs_a, arrs_b)):
        xa_k = np.asarray(xa_k)
        if k < len(spec) and xa_k.shape == x_a.shape and xa_k.dtype == x_a.dtype and relative_error(xa_k, x_a) <= SAME_TENSOR:
            x_b = np.asarray(xb_k)
            return _checked_piece(backend_b, m, spec[k].name, x_b, x_b)
    return None


def own_errors(
    backend_a: Backend | None, backend_b: Backend | None, inputs_a: Any, alignment: Alignment, layers: tuple[LayerDiff, ...],
    recorder: InputRecorder | None = None, inputs_b: Any = None,
) -> tuple[LayerDiff, ...]:
    """The layers with ``own_err``/``own_method`` set for the first flagged ones (A's layer inputs
    through ``recorder`` when one is given, so that what it records serves the detectors too).
    ``inputs_b`` (B's inputs, in B's layout) lets a graph B's piece start at its own input for
    a layer whose input is the model's."""
    flagged = [d for d in layers if not d.ok and d.role != "output"][:REPLAYED_LAYERS]
    if not flagged:
        return layers
    ordered = sorted(alignment.matches, key=lambda m: m.a.index)
    match_of = {m.a.name: m for m in ordered}
    position = {m.a.name: i for i, m in enumerate(ordered)}
    pieces = backend_b is not None and backend_b.runs_pieces
    replayable = [d for d in flagged if _callable(backend_a, d.a_name) and (pieces or _callable(backend_b, d.b_name))]
    recorder = recorder or InputRecorder(backend_a, inputs_a)
    recorded = recorder.get([d.a_name for d in replayable]) if replayable else {}
    by_name = {d.a_name: d for d in layers}
    updates: dict[str, LayerDiff] = {}
    for d in flagged:
        m = match_of.get(d.a_name)
        i = position.get(d.a_name, 0)
        previous = ordered[i - 1] if i else None
        own = None
        if m is not None and d.a_name in recorded and not _callable(backend_b, d.b_name) and pieces:
            found = _piece_replay(backend_b, m, recorded[d.a_name], ordered[:i]) or _input_replay(
                backend_b, m, recorded[d.a_name], inputs_a, inputs_b)
            if found is not None:
                out, source, x_b = found
                own = compute_metrics(np.asarray(m.a.value), out, d.rtol, d.atol).rel_err
                recorder.replayed[d.a_name] = out
                recorder.sources[d.a_name] = (source, x_b)
        elif m is not None and d.a_name in recorded:
            x_b = to_b_layout(recorded[d.a_name], m, previous)
            if x_b is not None:
                try:
                    out_b = backend_b.call_layer(d.b_name, x_b)
                    out_a_layout = np.asarray(m.transform.apply(out_b))
                    if out_a_layout.shape == tuple(m.a.shape):
                        own = compute_metrics(np.asarray(m.a.value), out_a_layout, d.rtol, d.atol).rel_err
                        recorder.replayed[d.a_name] = out_a_layout
                except Exception:  # the layer cannot be called alone: fall back to growth
                    own = None
        if own is not None:
            updates[d.a_name] = dataclasses.replace(d, own_err=float(own), own_method="replay")
            continue
        prev_err = by_name[previous.a.name].rel_err if previous is not None and previous.a.name in by_name else 0.0
        growth = max(d.rel_err - (prev_err if np.isfinite(prev_err) else 0.0), 0.0)
        updates[d.a_name] = dataclasses.replace(d, own_err=float(growth), own_method="growth")
    return tuple(updates.get(d.a_name, d) for d in layers)
