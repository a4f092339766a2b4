"""Recurrent layers, named alike in every framework.

A torch ``nn.LSTM`` returns ``(output, (h_n, c_n))`` (``nn.GRU``/``nn.RNN``: ``(output, h_n)``),
``h_n`` shaped ``(layers·directions, N, H)``, ``output`` ``(T, N, H)`` unless ``batch_first``; a Keras
``LSTM`` returns the sequence (``return_sequences``) or the last state, then the states
(``return_state``), all batch-first.  Both captures name the taps of a recurrent layer ``name`` (the
output sequence, ``(N, T, H)``), ``name[h]`` (the last hidden state, ``(N, H)``) and ``name[c]`` (an
LSTM's cell state), so that the two sides pair by name; a Keras layer's cell steps are inside the
layer, not layers of their own.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: torch.nn's recurrent modules and Keras' recurrent layers, by class name
TORCH_RNN = frozenset({"LSTM", "GRU", "RNN"})
KERAS_RNN = frozenset({"LSTM", "GRU", "SimpleRNN"})


def torch_rnn_taps(module: Any, base: str, outputs: list[tuple[str, Any]]) -> list[tuple[str, Any]] | None:
    """A torch recurrent module's outputs (tensors or arrays) as ``(name, value)`` under the shared names (batch-first,
    the states of a one-layer, one-direction module squeezed to ``(N, H)``); None for another module."""
    if type(module).__name__ not in TORCH_RNN or type(module).__module__.split(".")[0] != "torch":
        return None
    def ndim(v: Any) -> int:
        return int(v.dim()) if hasattr(v, "dim") else int(np.ndim(v))

    def time_major_to_batch_first(v: Any) -> Any:
        return v.transpose(0, 1) if hasattr(v, "dim") else np.swapaxes(v, 0, 1)

    batch_first = bool(getattr(module, "batch_first", False))
    single = int(getattr(module, "num_layers", 1)) * (2 if getattr(module, "bidirectional", False) else 1) == 1
    out: list[tuple[str, Any]] = []
    for name, value in outputs:
        suffix = name[len(base):]
        if suffix == "[0]":
            out.append((base, value if batch_first or ndim(value) != 3 else time_major_to_batch_first(value)))
        elif suffix in ("[1]", "[1][0]", "[1][1]"):
            state = "[c]" if suffix == "[1][1]" else "[h]"
            if single and ndim(value) == 3 and value.shape[0] == 1:
                value = value[0]
            out.append((base + state, value))
        else:
            out.append((name, value))
    return out


def keras_rnn_names(layer: Any, base: str, names: list[str]) -> list[str | None] | None:
    """The shared names of a Keras recurrent layer's flattened outputs (None: not recorded, the
    first output of ``return_state`` without ``return_sequences`` repeats the hidden state); None
    for another layer."""
    if type(layer).__name__ not in KERAS_RNN or not type(layer).__module__.startswith("keras"):
        return None
    sequences = bool(getattr(layer, "return_sequences", False))
    if len(names) == 1:
        return [base if sequences else base + "[h]"]
    out: list[str | None] = []
    for i, _ in enumerate(names):
        if i == 0:
            out.append(base if sequences else None)
        else:
            out.append(base + ("[h]" if i == 1 else "[c]"))
    return out


def is_keras_rnn(layer: Any) -> bool:
    return type(layer).__name__ in KERAS_RNN and type(layer).__module__.startswith("keras")


# --- parameters ------------------------------------------------------------------------------

#: gate blocks of each recurrent kind, in torch's order (the canonical one) and in Keras'
TORCH_GATES = {"LSTM": ("i", "f", "g", "o"), "GRU": ("r", "z", "n"), "RNN": ("h",), "SimpleRNN": ("h",)}
KERAS_GATES = {"LSTM": ("i", "f", "g", "o"), "GRU": ("z", "r", "n"), "SimpleRNN": ("h",)}
#: Keras' recurrent layers by their torch counterpart
TORCH_OF_KERAS = {"LSTM": "LSTM", "GRU": "GRU", "SimpleRNN": "RNN"}


def reorder_gates(value: np.ndarray, have: tuple[str, ...], want: tuple[str, ...], axis: int = 0) -> np.ndarray:
    """``value``'s gate blocks along ``axis`` from the order ``have`` to the order ``want``."""
    if have == want:
        return value
    blocks = np.split(value, len(have), axis=axis)
    return np.concatenate([blocks[have.index(g)] for g in want], axis=axis)


def torch_rnn_params(module: Any, arrays: dict[str, np.ndarray]) -> dict[str, tuple[str, np.ndarray]] | None:
    """A one-layer, one-direction torch recurrent module's parameters by role, torch's layout
    and gate order: ``kernel`` (gates·H, in), ``recurrent`` (gates·H, H), and ``bias`` — an LSTM's
    (and a plain RNN's) two biases summed, as only their sum acts and Keras keeps one; a GRU's
    input bias, its recurrent one as ``recurrent_bias`` (they act apart there).  None otherwise."""
    cls = type(module).__name__
    if cls not in TORCH_RNN or getattr(module, "num_layers", 1) != 1 or getattr(module, "bidirectional", False):
        return None
    need = ("weight_ih_l0", "weight_hh_l0")
    if any(n not in arrays for n in need):
        return None
    out = {"kernel": ("weight_ih_l0", arrays["weight_ih_l0"]), "recurrent": ("weight_hh_l0", arrays["weight_hh_l0"])}
    b_ih, b_hh = arrays.get("bias_ih_l0"), arrays.get("bias_hh_l0")
    if b_ih is not None and b_hh is not None:
        if cls == "GRU":
            out["bias"] = ("bias_ih_l0", b_ih)
            out["recurrent_bias"] = ("bias_hh_l0", b_hh)
        else:
            out["bias"] = ("bias_ih_l0+bias_hh_l0", b_ih + b_hh)
    return out


def keras_rnn_params(layer: Any, arrays: dict[str, np.ndarray]) -> dict[str, tuple[str, np.ndarray]] | None:
    """A Keras recurrent layer's parameters by role in torch's layout and gate order (see
    :func:`torch_rnn_params`); a GRU's ``reset_after`` bias ``(2, 3H)`` split into the input and
    the recurrent bias.  None for another layer."""
    cls = type(layer).__name__
    if not is_keras_rnn(layer) or "kernel" not in arrays or "recurrent_kernel" not in arrays:
        return None
    have, want = KERAS_GATES[cls], TORCH_GATES[TORCH_OF_KERAS[cls]]
    out = {"kernel": ("kernel", reorder_gates(arrays["kernel"].T, have, want)),
           "recurrent": ("recurrent_kernel", reorder_gates(arrays["recurrent_kernel"].T, have, want))}
    bias = arrays.get("bias")
    if bias is not None:
        if bias.ndim == 2 and bias.shape[0] == 2:  # GRU reset_after: input bias, recurrent bias
            out["bias"] = ("bias[0]", reorder_gates(bias[0], have, want))
            out["recurrent_bias"] = ("bias[1]", reorder_gates(bias[1], have, want))
        else:
            out["bias"] = ("bias", reorder_gates(bias, have, want))
    return out
