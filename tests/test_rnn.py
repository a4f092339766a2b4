"""Recurrent layers: a torch LSTM/GRU and its Keras twin pair layer by layer (the output
sequence, and the states where Keras returns them), their weights are compared with the gate
order each framework uses, and gate blocks copied in the wrong order are named
(``rnn_gate_order``) at the recurrent layer, not a layer later."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

import parity  # noqa: E402

H = 6


class Net(torch.nn.Module):
    def __init__(self, kind: str, batch_first: bool = True):
        super().__init__()
        self.batch_first = batch_first
        self.rnn = getattr(torch.nn, kind)(4, H, batch_first=batch_first)
        self.fc = torch.nn.Linear(H, 3)

    def forward(self, x):
        y, _ = self.rnn(x if self.batch_first else x.transpose(0, 1))
        return self.fc(y if self.batch_first else y.transpose(0, 1))


def _blocks(w, order):
    parts = np.split(w, len(order), axis=0)
    return np.concatenate([parts[k] for k in order], axis=0)


def _keras_twin(net, kind, *, gate_order=None, return_state=False):
    """The Keras twin; ``gate_order`` (indices into torch's gate blocks) is how the blocks are put
    into Keras' kernel: the right one for a GRU is (1, 0, 2) (torch r,z,n → Keras z,r,h)."""
    right = (1, 0, 2) if kind == "GRU" else (0, 1, 2, 3)
    order = gate_order or right
    r = net.rnn
    w_ih, w_hh, b_ih, b_hh = (p.detach().numpy() for p in (r.weight_ih_l0, r.weight_hh_l0, r.bias_ih_l0, r.bias_hh_l0))
    inp = keras.Input((5, 4))
    layer = (keras.layers.LSTM if kind == "LSTM" else keras.layers.GRU)(H, return_sequences=True, return_state=return_state,
                                                                        name="rnn")
    out = layer(inp)
    seq = out[0] if return_state else out
    model = keras.Model(inp, keras.layers.Dense(3, name="fc")(seq))
    if kind == "LSTM":
        weights = [_blocks(w_ih, order).T, _blocks(w_hh, order).T, _blocks(b_ih + b_hh, order)]
    else:
        weights = [_blocks(w_ih, order).T, _blocks(w_hh, order).T, np.stack([_blocks(b_ih, order), _blocks(b_hh, order)])]
    model.get_layer("rnn").set_weights(weights)
    model.get_layer("fc").set_weights([net.fc.weight.detach().numpy().T, net.fc.bias.detach().numpy()])
    return model


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((2, 5, 4)).astype("float32")


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_a_faithful_recurrent_twin_pairs_the_sequence_and_its_weights(kind, batch_first, x):
    torch.manual_seed(0)
    net = Net(kind, batch_first).eval()
    report = parity.diff(net, _keras_twin(net, kind), x)
    assert report.ok
    rnn = report.layer("rnn")
    assert (rnn.b_name, rnn.shape) == ("rnn", (2, 5, H))
    assert rnn.metrics.rel_err < 1e-5
    roles = {(p.a_param, p.b_param): p.status for p in report.params if p.a_layer == "rnn"}
    want = {("weight_ih_l0", "kernel"), ("weight_hh_l0", "recurrent_kernel")}
    assert want <= set(roles) and set(roles.values()) == {"ok"}
    assert not report.diagnoses


def test_the_states_pair_by_name_when_keras_returns_them(x):
    torch.manual_seed(0)
    net = Net("LSTM").eval()
    report = parity.diff(net, _keras_twin(net, "LSTM", return_state=True), x)
    assert report.ok
    assert {d.a_name: d.b_name for d in report.layers if d.a_name.startswith("rnn")} == {
        "rnn": "rnn", "rnn[h]": "rnn[h]", "rnn[c]": "rnn[c]"}


def test_gru_gates_copied_in_torchs_order_are_rnn_gate_order(x):
    torch.manual_seed(0)
    net = Net("GRU").eval()
    report = parity.diff(net, _keras_twin(net, "GRU", gate_order=(0, 1, 2)), x)  # r,z,n copied as z,r,h
    assert report.first_divergence.a_name == "rnn"
    diag = [g for g in report.diagnoses if g.code == "rnn_gate_order"]
    assert [g.layer for g in diag] == ["rnn"]
    assert "read in the order zrn (torch's is rzn)" in diag[0].message
    assert "Keras z,r,h" in diag[0].message
    bad = {p.a_param for p in report.params if p.status != "ok"}
    assert bad == {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"}


def test_lstm_forget_and_cell_gates_swapped_are_rnn_gate_order(x):
    torch.manual_seed(0)
    net = Net("LSTM").eval()
    report = parity.diff(net, _keras_twin(net, "LSTM", gate_order=(0, 2, 1, 3)), x)  # i,g,f,o
    assert report.first_divergence.a_name == "rnn"
    (diag,) = [g for g in report.diagnoses if g.code == "rnn_gate_order"]
    assert "read in the order igfo (torch's is ifgo)" in diag.message
