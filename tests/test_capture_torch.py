"""PyTorch capture: hooks, names, repeated calls, nested outputs, modes, layouts."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import parity  # noqa: E402
from parity.capture.torch import TorchBackend  # noqa: E402


class Shared(nn.Module):
    """A module called twice, a functional op, a tuple and dict output, an in-place ReLU."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
        self.flat = nn.Flatten()
        self.head = nn.Linear(4 * 5 * 5, 2)

    def forward(self, x):
        y = self.conv(x)
        y = self.act(y)
        z = self.act(self.block(y))  # act called a second time
        return self.head(self.flat(z)), {"feat": z}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Shared().eval()


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype("float32")


def test_leaf_taps_in_execution_order_with_repeats_and_outputs(model, x):
    trace = parity.capture(model, x)
    assert trace.names == [
        "conv",
        "act",
        "block.0",
        "block.1",
        "act#1",
        "flat",
        "head",
        "output[0]",
        "output[1][feat]",
    ]
    assert [t.op for t in trace.taps[:4]] == ["Conv2d", "ReLU", "Conv2d", "BatchNorm2d"]
    assert [t.index for t in trace.taps] == list(range(9))
    assert trace["block.1"].attrs["eps"] == 1e-5
    with torch.no_grad():
        logits, extra = model(torch.from_numpy(x))
    np.testing.assert_array_equal(trace["output[0]"].value, logits.numpy())
    np.testing.assert_array_equal(trace["head"].value, logits.numpy())
    np.testing.assert_array_equal(trace["output[1][feat]"].value, extra["feat"].numpy())


def test_values_are_copies_despite_inplace_ops(model, x):
    trace = parity.capture(model, x)
    # the in-place ReLU overwrote conv's output tensor; the recorded value must not change
    assert trace["conv"].value.min() < 0
    assert trace["act"].value.min() == 0


def test_layouts_and_flatten(model, x):
    trace = parity.capture(model, x)
    assert trace["conv"].layout == "NCHW"
    assert trace["act"].layout == "NCHW"  # inherited from its input
    assert trace["flat"].layout == "N(CHW)"
    assert trace["flat"].attrs["flat_from"] == (4, 5, 5)
    assert trace["head"].layout == "NC"
    assert trace["conv"].dtype == "float32" and trace["conv"].shape == (2, 4, 5, 5)


def test_containers_on_request(model, x):
    names = parity.capture(model, x, containers=True).names
    assert "block" in names and names.index("block") == names.index("block.1") + 1
    assert "block" not in parity.capture(model, x).names


def test_training_mode_is_used_as_eval_said_and_restored(x):
    torch.manual_seed(0)
    m = Shared()
    m.train()
    m.block[1].running_mean.fill_(3.0)
    trace = parity.capture(m, x)
    assert m.training and all(mod.training for mod in m.modules())
    assert trace.model.was_training
    assert any("training mode" in n for n in trace.notes)
    # eval(): BatchNorm used its running mean (3.0), and the running stats were not updated
    assert float(m.block[1].running_mean[0]) == 3.0
    pre = trace["block.0"].value
    bn = m.block[1]
    expected = (pre - 3.0) / np.sqrt(bn.running_var.numpy()[None, :, None, None] + bn.eps)
    expected = expected * bn.weight.detach().numpy()[None, :, None, None] + bn.bias.detach().numpy()[None, :, None, None]
    np.testing.assert_allclose(trace["block.1"].value, expected, rtol=1e-5, atol=1e-5)


def test_mixed_modes_are_restored_exactly(x):
    m = Shared()
    m.eval()
    m.block.train()
    parity.capture(m, x)
    assert not m.training and m.block.training and m.block[0].training and not m.conv.training


def test_input_spec_inferred_from_first_conv(model):
    (spec,) = TorchBackend(model).input_spec()
    assert (spec.name, spec.shape, spec.layout, spec.source) == ("x", (None, 3, None, None), "NCHW", "inferred")


def test_failing_model_raises_capture_error_with_shapes(model):
    bad = np.zeros((2, 5, 5, 3), dtype="float32")
    with pytest.raises(parity.CaptureError) as err:
        parity.capture(model, bad)
    msg = str(err.value)
    assert "(2, 5, 5, 3)" in msg and "Shared" in msg and "(N, 3, ?, ?)" in msg
    # hooks were removed despite the failure
    assert all(not mod._forward_hooks for mod in model.modules())


class ToBF16(nn.Module):
    def forward(self, x):
        return x.to(torch.bfloat16) * 2


def test_bfloat16_values_keep_their_dtype_name():
    trace = parity.capture(nn.Sequential(ToBF16()), np.ones((2, 4), dtype="float32"))
    tap = trace["0"]
    assert tap.dtype == "bfloat16"  # the name of what the model computed in
    assert tap.value.dtype == np.float32 and float(tap.value[0, 0]) == 2.0  # NumPy has no bfloat16


def test_op_level_capture_names_the_residual_add_and_the_flatten():
    from parity._zoo import BasicBlock, ConvNet

    block = BasicBlock(4).eval()
    x = np.random.default_rng(0).standard_normal((2, 4, 6, 6)).astype("float32")
    trace = parity.capture(block, x, granularity="ops")
    assert [t.name for t in trace] == ["conv1", "bn1", "relu", "conv2", "bn2", ":add#0", "relu2", "output"]
    add = trace[":add#0"]
    assert (add.op, add.layout, add.shape) == ("add", "NCHW", (2, 4, 6, 6))
    np.testing.assert_allclose(add.value, trace["bn2"].value + x, rtol=1e-6)
    assert ":" not in "".join(t.name for t in parity.capture(block, x))  # modules only by default

    flat = parity.capture(ConvNet().eval(), np.zeros((1, 1, 28, 28), "float32"), granularity="ops")[":reshape#0"]
    assert (flat.op, flat.layout, flat.attrs["flat_from"]) == ("reshape", "N(CHW)", (16, 28, 28))


def test_op_level_capture_records_functional_code_but_not_inside_leaf_modules():
    class Functional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)

        def forward(self, x):
            y = torch.nn.functional.relu(self.conv(x))
            z = torch.cat([y, x], dim=1)
            return z.permute(0, 2, 3, 1) * 2

    x = np.ones((1, 3, 4, 4), "float32")
    trace = parity.capture(Functional(), x, granularity="ops")
    assert [(t.name, t.op, t.layout) for t in trace.layers] == [
        ("conv", "Conv2d", "NCHW"),
        (":relu#0", "relu", "NCHW"),
        (":cat#0", "cat", "NCHW"),
        (":permute#0", "permute", None),
        (":mul#0", "mul", None),
    ]
    with pytest.raises(parity.ParityError, match="granularity must be 'modules' or 'ops'"):
        parity.capture(Functional(), x, granularity="everything")


# --- recorded values held without copies, copied before an in-place write -----------------


class InPlace(nn.Module):
    """A residual block written the way torchvision writes it: every write in place."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 1, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(1, 1, 1, bias=False)
        self.conv3 = nn.Conv2d(1, 1, 1, bias=False)
        with torch.no_grad():
            self.conv1.weight.fill_(2.0)
            self.conv1.bias.fill_(-1.0)
            self.conv2.weight.fill_(-3.0)
            self.conv3.weight.fill_(0.5)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        y = self.relu(self.conv1(x))  # overwrites conv1's output
        z = self.conv2(y)
        z += y  # overwrites conv2's output
        w = self.conv3(z)
        torch.relu_(w)  # overwrites conv3's output
        w.mul_(10.0)  # and again
        return w


@pytest.fixture(scope="module")
def inplace_x():
    return np.array([-1.0, 0.25, 0.5, 2.0], dtype=np.float32).reshape(1, 1, 2, 2)


def test_outputs_overwritten_in_place_later_are_recorded_as_they_were(inplace_x):
    """ReLU(inplace=True), ``+=`` and ``torch.relu_`` after a conv: each conv's tap is its own,
    pre-write output, computed here by hand."""
    x = inplace_x.reshape(-1).astype(np.float64)
    conv1 = 2 * x - 1  # [-3, -0.5, 0, 3]
    relu = np.maximum(conv1, 0)  # [0, 0, 0, 3]
    conv2 = -3 * relu  # [0, 0, 0, -9]
    conv3 = 0.5 * (conv2 + relu)  # [0, 0, 0, -3]
    out = 10 * np.maximum(conv3, 0)
    model = InPlace()
    trace = parity.capture(model, inplace_x)
    assert model.calls == 1  # each write was seen coming: no second pass was needed
    got = {name: trace[name].value.reshape(-1).tolist() for name in ("conv1", "relu", "conv2", "conv3", "output")}
    assert got == {
        "conv1": conv1.tolist(),
        "relu": relu.tolist(),
        "conv2": conv2.tolist(),
        "conv3": conv3.tolist(),
        "output": out.tolist(),
    }


def test_op_level_capture_keeps_pre_write_values_too(inplace_x):
    model = InPlace()
    trace = parity.capture(model, inplace_x, granularity="ops")
    assert model.calls == 1
    assert trace["conv2"].value.reshape(-1).tolist() == [0.0, 0.0, 0.0, -9.0]
    assert trace["conv3"].value.reshape(-1).tolist() == [0.0, 0.0, 0.0, -3.0]
    add = next(t for t in trace.taps if t.op == "add_")  # z += y, recorded as the op
    assert add.value.reshape(-1).tolist() == [0.0, 0.0, 0.0, -6.0]


def test_taps_not_written_later_share_the_tensors_memory_instead_of_copying():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.bn = nn.BatchNorm2d(8)
            self.act = nn.ReLU()  # not in place

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    trace = parity.capture(Plain().eval(), x)
    # a view of the tensor torch allocated, not a copy parity made
    assert not any(trace[name].value.flags.owndata for name in ("conv", "bn", "act"))
    assert np.shares_memory(trace["act"].value, trace["output"].value)


class SneakyWrite(nn.Module):
    """Writes into a recorded output below torch's Python API, where no ``__torch_function__``
    check sees it coming."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        y = self.conv(x)
        torch.ops.aten.add_.Tensor(y, 100.0)  # below the Python API: no __torch_function__ call
        return y * 1.0


def test_a_write_the_checks_miss_is_caught_by_the_version_check_and_the_pass_rerun(inplace_x):
    model = SneakyWrite()
    trace = parity.capture(model, inplace_x)
    assert model.calls == 2  # the first pass's conv value was spoiled: a second pass copied it
    assert trace["conv"].value.reshape(-1).tolist() == inplace_x.reshape(-1).tolist()
    assert trace["output"].value.reshape(-1).tolist() == (inplace_x.reshape(-1) + 100).tolist()


class BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d: normalises in its own forward, then runs its children."""

    def __init__(self, c):
        super().__init__(c)
        self.drop = nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        x = nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return self.act(self.drop(x))


class ConvBnAct(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = BatchNormAct(4)

    def forward(self, x):
        return self.bn(self.conv(x))


def test_a_module_computing_with_its_own_parameters_is_tapped_before_its_children(x):
    torch.manual_seed(0)
    model = ConvBnAct().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    trace = parity.capture(model, x)
    assert trace.names == ["conv", "bn", "bn.drop", "bn.act", "output"]
    bn = trace["bn"]
    assert (bn.op, bn.layout, bn.attrs["own_compute"]) == ("BatchNorm2d", "NCHW", True)
    with torch.no_grad():
        conv = model.conv(torch.from_numpy(x))
        expected = nn.functional.batch_norm(conv, model.bn.running_mean, model.bn.running_var,
                                            model.bn.weight, model.bn.bias, False, 0.0, model.bn.eps)
    # the normalised tensor, before the in-place ReLU overwrote it
    np.testing.assert_allclose(bn.value, expected.numpy(), rtol=1e-6, atol=1e-6)
    assert (bn.value < 0).any() and not (trace["bn.act"].value < 0).any()
    # Identity returned its input: a placeholder; the in-place ReLU returned its input too, but changed it
    assert trace["bn.drop"].attrs.get("passthrough") is True
    assert "passthrough" not in trace["bn.act"].attrs


# --- the door: one layer alone, twins --------------------------------------------------


def test_layer_inputs_and_call_layer_reproduce_the_captured_tap(model, x):
    backend = TorchBackend(model)
    trace = backend.capture([x])
    assert [backend.can_call(n) for n in ("conv", "block.1", "act#1", "output[0]", "nowhere")] == [
        True, True, False, False, False,
    ]
    seen = backend.layer_inputs([x], ["conv", "block.1", "act#1", "nowhere"])
    assert sorted(seen) == ["block.1", "conv"]  # a repeated call and an unknown name are left out
    np.testing.assert_array_equal(seen["conv"], x)
    np.testing.assert_array_equal(seen["block.1"], trace["block.0"].value)  # the BatchNorm's input: the 1x1 conv's output
    out = backend.call_layer("block.1", seen["block.1"])
    np.testing.assert_allclose(out, trace["block.1"].value, rtol=1e-6, atol=1e-7)
    assert not model.block[1].training  # called in eval mode, the mode it had restored


def test_call_layer_refuses_a_tap_that_is_not_one_module(model):
    with pytest.raises(parity.CaptureError, match="'act#1' is not one module of Shared"):
        TorchBackend(model).call_layer("act#1", np.zeros((1, 4, 5, 5), "float32"))


def test_fresh_and_randomized_twins_leave_the_model_alone(model, x):
    with torch.no_grad():
        model.block[1].running_var.fill_(3.0)
    try:
        fresh = TorchBackend(model).twin("fresh").model
        randomized = TorchBackend(model).twin("randomized_stats", seed=3).model
        assert fresh is not model and torch.equal(fresh.block[1].running_var, torch.ones(4))
        var = randomized.block[1].running_var.numpy()
        assert ((var >= 0.005) & (var <= 0.05)).all()
        again = TorchBackend(model).twin("randomized_stats", seed=3).model
        assert torch.equal(again.block[1].running_mean, randomized.block[1].running_mean)  # seeded
        assert torch.equal(model.block[1].running_var, torch.full((4,), 3.0))  # the original is untouched
        assert not fresh.training and not torch.equal(fresh.conv.weight, model.conv.weight)  # re-initialised
    finally:
        with torch.no_grad():
            model.block[1].running_var.fill_(1.0)


def test_float64_twin_takes_float32_inputs_and_records_float64(model, x):
    twin = TorchBackend(model).twin("float64")
    trace64, trace32 = twin.capture([x]), TorchBackend(model).capture([x])
    assert next(model.parameters()).dtype == torch.float32  # the original stays float32
    assert {t.dtype for t in trace64.taps} == {"float64"}
    for t32 in trace32.taps:
        v32, v64 = t32.value.astype(np.float64), trace64[t32.name].value
        assert np.linalg.norm(v32 - v64) <= 1e-6 * max(np.linalg.norm(v64), 1.0)  # float32 rounding only
    assert twin.layer_inputs([x], ["conv"])["conv"].dtype == np.float64


def test_an_unknown_twin_kind_is_a_model_error(model):
    with pytest.raises(parity.ModelError, match="a twin is one of 'fresh', 'randomized_stats', 'float64', not 'int8'"):
        TorchBackend(model).twin("int8")


# --- one model A shared by threads -------------------------------------------------------------------


class _Meeting:
    """A barrier that only each thread's first arrival waits at (shared, not copied, by deepcopy)."""

    def __init__(self, parties: int) -> None:
        import threading

        self.barrier = threading.Barrier(parties)
        self.seen: set[int] = set()
        self.ident = threading.get_ident

    def __deepcopy__(self, memo):
        return self

    def attend(self) -> None:
        me = self.ident()
        if me not in self.seen:
            self.seen.add(me)
            try:
                self.barrier.wait(timeout=20)
            except Exception:  # a thread arrived late: the test then checks less, it does not hang
                pass


class _Rendezvous(nn.Module):
    """Holds each thread's first forward here until all of them are inside the model, so every
    capture's hooks are registered while the others run (reruns pass straight through)."""

    def __init__(self, meeting: _Meeting | None) -> None:
        super().__init__()
        self.meeting = meeting

    def forward(self, x):
        if self.meeting is not None:
            self.meeting.attend()
        return x


def _mlp(meeting: _Meeting | None = None, width: int = 16) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i in range(4):
        layers += [nn.Linear(width, width), nn.Tanh()]
        if i == 1:
            layers.append(_Rendezvous(meeting))
    return nn.Sequential(*layers).eval()


def test_four_threads_sharing_model_a_each_get_the_report_of_their_own_pair():
    """Hooks fire for every thread's forward: each report used to hold the other threads' taps
    (and a thread could find the model put back into training mode by another's capture)."""
    from concurrent.futures import ThreadPoolExecutor

    a = _mlp(_Meeting(4))
    a.train()  # handed in training: every capture must run it in eval() and say so, and leave it training
    linears = [i for i, m in enumerate(a) if isinstance(m, nn.Linear)]
    pairs = []
    for k, idx in enumerate(linears):
        b = _mlp()
        b.train()
        with torch.no_grad():
            b[idx].weight.mul_(1.5)  # B_k's bug is in A's k-th Linear
        pairs.append((str(idx), b))
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)

    def run(pair):
        return parity.diff(a, pair[1], x)

    with ThreadPoolExecutor(4) as pool:
        reports = list(pool.map(run, pairs))
    for (flagged, _), report in zip(pairs, reports):
        names = [d.a_name for d in report.layers]
        assert len(names) == len(set(names)) == 4 * 2 + 1 + 1  # 8 layers, the rendezvous, the output
        assert report.first_divergence is not None and report.first_divergence.a_name == flagged
        assert all(d.ok for d in report.layers if d.index < report.first_divergence.index)
        assert any("training mode" in n for n in report.notes)
    assert all(m.training for m in a.modules())  # the user's modes are back


# --- models that raise ---------------------------------------------------------------------------------


class _Exploder(nn.Module):
    def forward(self, x):
        raise ValueError("boom")


def test_a_model_raising_inside_a_layer_is_reported_naming_that_layer():
    model = nn.Sequential(nn.Linear(3, 3), nn.Sequential(nn.ReLU(), _Exploder()))
    with pytest.raises(parity.CaptureError) as err:
        parity.capture(model, np.ones((1, 3), np.float32))
    assert str(err.value).startswith(
        "running torch model Sequential on inputs of shape (1, 3) failed in layer '1.1' (_Exploder): ValueError: boom."
    )


class _SecondCallFails(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.act, self.head = nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("generator already exhausted")
        return self.head(self.act(self.fc(x)))


def test_a_model_that_fails_when_rerun_for_the_diagnoses_gets_its_report_saying_which_rerun_failed():
    """The reruns raised out of parity.diff (the replay's) or were silently skipped (the others)."""
    import copy

    torch.manual_seed(0)
    a = _SecondCallFails().eval()
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.fc.weight.mul_(1.5)
    report = parity.diff(a, b, np.ones((2, 4), np.float32))
    assert report.first_divergence.a_name == "fc"
    reruns = [n for n in report.notes if n.startswith("rerunning model")]
    assert reruns[0] == (
        "rerunning model A in float64 (its float32 noise floor) failed (RuntimeError: generator already "
        "exhausted); the flagged layers are judged by the tolerances given, not by A's own float32 precision. "
        "The first run succeeded and its comparison stands (a model that fails only when called again may "
        "keep state between calls)."
    )
    assert [n.split(" failed (")[0] for n in reruns] == [
        "rerunning model A in float64 (its float32 noise floor)",
        "rerunning model A to record its layers' inputs",
        "rerunning model A to check that it is deterministic",
        "rerunning model B to check that it is deterministic",
        "rerunning model A to record the input of its first layer",
    ]


class _AlwaysDropping(nn.Dropout):
    """A dropout that refuses eval(): its train() keeps it training."""

    def train(self, mode: bool = True):
        return super().train(True)


def test_a_module_that_stays_in_training_mode_under_eval_is_said_in_the_report():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), _AlwaysDropping(0.5), nn.Linear(4, 2)).eval()
    trace = parity.capture(model, np.ones((2, 4), np.float32))
    assert trace.notes == (
        "1 module(s) of torch model Sequential stay in training mode under eval() ('1'): their dropout or "
        "batch statistics were active in this run, so its values are not the model's inference.",
    )
    plain = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2)).eval()
    assert parity.capture(plain, np.ones((2, 4), np.float32)).notes == ()
