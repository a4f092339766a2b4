"""The ONNX backend: models exported from torch, run with onnxruntime, every value recorded."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper  # noqa: E402

import parity  # noqa: E402

from parity.baseline import fresh_twin  # noqa: E402
from parity.capture.onnx import OnnxBackend, load_onnx  # noqa: E402
from parity.errors import CaptureError, InputError, ModelError, ParityError  # noqa: E402
from parity._zoo.torch_models import BasicBlock, ConvNet, MobileNetBlock, randomize_bn  # noqa: E402


# torch.onnx's dynamo exporter takes 5–20 s a model on two cores: the slow tier
DYNAMO = [pytest.param(False, id="torchscript"), pytest.param(True, id="dynamo", marks=pytest.mark.slow)]


def _export(model, x, path, *, dynamo: bool, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=dynamo, **kwargs)
    return load_onnx(path)


_DYNAMO: dict[str, object] = {}


def _export_or_skip(model, x, path, dynamo: bool, **kwargs):
    """The dynamo exporter needs onnxscript; skip (once) if it cannot run here."""
    if not dynamo:
        return _export(model, x, path, dynamo=False, **kwargs)
    if isinstance(_DYNAMO.get("error"), BaseException):
        pytest.skip(f"torch.onnx.export(dynamo=True) unavailable: {_DYNAMO['error']}")
    try:
        return _export(model, x, path, dynamo=True, **kwargs)
    except Exception as exc:  # onnxscript missing, exporter bugs
        _DYNAMO["error"] = exc
        pytest.skip(f"torch.onnx.export(dynamo=True) unavailable: {exc}")


def _torch_model(cls, seed=0):
    torch.manual_seed(seed)
    return randomize_bn(cls()).eval()


_CASES = {
    "ConvNet": (ConvNet, (2, 1, 28, 28)),
    "MobileNetBlock": (MobileNetBlock, (2, 8, 16, 16)),
    "BasicBlock": (BasicBlock, (2, 16, 8, 8)),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(torch model, input, ModelProto) per (model, exporter), exported once per module."""
    cache: dict[tuple[str, bool], tuple] = {}
    root = tmp_path_factory.mktemp("onnx")

    def get(name: str, dynamo: bool):
        key = (name, dynamo)
        if key not in cache:
            cls, shape = _CASES[name]
            model = _torch_model(cls)
            x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
            proto = _export_or_skip(model, x, root / f"{name}_{dynamo}.onnx", dynamo)
            cache[key] = (model, x, proto)
        return cache[key]

    return get


def _intermediate_values(proto) -> dict[str, tuple]:
    """Every node output that depends on a graph input, with its inferred shape."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {
        vi.name: tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output)
    }
    inits = {t.name for t in proto.graph.initializer}
    live = {i.name for i in proto.graph.input if i.name not in inits}
    out = {}
    for node in proto.graph.node:
        if node.op_type in ("Constant", "Shape", "Size") or not any(i in live for i in node.input):
            continue
        for o in node.output:
            if o:
                live.add(o)
                out[o] = shapes.get(o)
    return out


@pytest.mark.parametrize("dynamo", DYNAMO)
@pytest.mark.parametrize("name", list(_CASES))
def test_every_intermediate_is_a_tap_and_outputs_match_torch(exported, name, dynamo):
    model, x, proto = exported(name, dynamo)
    before = proto.SerializeToString()
    trace = OnnxBackend(proto).capture([x.numpy()])
    assert proto.SerializeToString() == before  # the user's proto is not modified

    expected = _intermediate_values(proto)
    layers = trace.layers
    assert [t.name for t in layers] == list(expected)  # node order, ONNX names exactly
    for tap in layers:
        assert tap.shape == expected[tap.name], tap.name
        assert tap.role == "layer"
        assert tap.value is not None and tap.value.shape == tap.shape
        assert tap.layout == ("NCHW" if len(tap.shape) == 4 else tap.layout)
    node_ops = {o: n.op_type for n in proto.graph.node for o in n.output}
    assert all(t.op == node_ops[t.name] for t in layers)
    assert all(not t.op == "Constant" for t in layers)
    assert [t.index for t in trace.taps] == list(range(len(trace.taps)))

    (out,) = trace.outputs
    assert out.name == "output" and out.role == "output" and out.op == "output"
    assert trace.taps[-1] is out
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(out.value, want, rtol=1e-5, atol=1e-5)
    # the last layer tap is the graph output's value
    np.testing.assert_array_equal(trace[proto.graph.output[0].name].value, out.value)
    assert trace.input_shapes == (tuple(x.shape),)
    assert trace.inputs_digest


@pytest.mark.parametrize("dynamo", DYNAMO)
def test_residual_add_is_recorded(exported, dynamo):
    model, x, proto = exported("BasicBlock", dynamo)
    trace = OnnxBackend(proto).capture([x.numpy()])
    adds = [t for t in trace.layers if t.op == "Add"]
    assert len(adds) == 1
    with torch.no_grad():
        out = model.relu(model.bn1(model.conv1(x)))
        want = (model.bn2(model.conv2(out)) + x).numpy()
    np.testing.assert_allclose(adds[0].value, want, rtol=1e-5, atol=1e-5)
    # BatchNorm is folded into Conv by both exporters: no BatchNormalization node is left
    assert [t.op for t in trace.layers] == ["Conv", "Relu", "Conv", "Add", "Relu"]
    if dynamo:
        # the dynamo exporter says which torch module each node came from: the fused Conv
        # carries the BatchNorm's name, the functional add the block's own (top-level) scope
        assert [t.attrs.get("torch_module") for t in trace.layers] == ["bn1", "relu", "bn2", None, "relu2"]
        assert "FuseBatchNormIntoConv" in trace.layers[0].attrs["rewrites"]
        assert adds[0].attrs["torch_scope"] == ""


def test_info_and_input_spec(exported):
    model, x, proto = exported("ConvNet", False)
    backend = OnnxBackend(proto)
    info = backend.info()
    assert info.framework == "onnx"
    assert info.framework_version.startswith("onnxruntime ")
    assert info.kind.startswith("ONNX opset ")
    assert info.name == (proto.graph.name or "onnx model")
    # BatchNorm folded into the conv: the conv weights and bias plus the Linear
    assert info.param_count == 16 * 9 + 16 + 28 * 28 * 16 * 10 + 10
    (spec,) = backend.input_spec()
    assert spec.name == proto.graph.input[0].name
    assert spec.shape == (2, 1, 28, 28)
    assert spec.dtype == "float32" and spec.layout == "NCHW" and spec.source == "declared"
    assert info.input_spec == backend.input_spec()


def test_accepts_only_model_protos(exported):
    _, x, proto = exported("ConvNet", False)
    assert OnnxBackend.accepts(proto)
    assert not OnnxBackend.accepts(proto.graph)
    assert not OnnxBackend.accepts(x)
    assert not OnnxBackend.accepts("model.onnx")
    with pytest.raises(ModelError, match="onnx.ModelProto"):
        OnnxBackend(object())


def test_dynamic_batch_and_shape_bookkeeping(tmp_path):
    model = _torch_model(ConvNet)
    x = torch.randn(3, 1, 28, 28)
    proto = _export(
        model, x, tmp_path / "dyn.onnx", dynamo=False,
        input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )
    backend = OnnxBackend(proto)
    assert backend.input_spec()[0].shape == (None, 1, 28, 28)
    for batch in (1, 5):
        xb = torch.randn(batch, 1, 28, 28)
        trace = backend.capture({"image": xb.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(trace.outputs[0].value, model(xb).numpy(), rtol=1e-5, atol=1e-5)
        ops = [t.op for t in trace.layers]
        # the Shape -> Gather -> Concat arithmetic feeding Reshape is bookkeeping, not recorded
        assert "Shape" not in ops and "Gather" not in ops and "Concat" not in ops
        assert "Reshape" in ops or "Flatten" in ops
        flat = next(t for t in trace.layers if t.op in ("Reshape", "Flatten"))
        assert flat.layout == "N(CHW)" and flat.attrs["flat_from"] == (16, 28, 28)
        assert trace.outputs[0].attrs["onnx_name"] == "logits"


def _tiny_graph(outputs=1):
    """x -> Add(x, Constant) -> Relu [-> Sigmoid]: a hand-built graph with a Constant node."""
    nodes = [
        helper.make_node("Constant", [], ["c"], value=helper.make_tensor("cv", TensorProto.FLOAT, [1], [0.5])),
        helper.make_node("Add", ["x", "c"], ["shifted"], name="add0"),
        helper.make_node("Relu", ["shifted"], ["act"], name="relu0"),
    ]
    outs = [helper.make_tensor_value_info("act", TensorProto.FLOAT, ["n", 4])]
    if outputs == 2:
        nodes.append(helper.make_node("Sigmoid", ["shifted"], ["gate"]))
        outs.append(helper.make_tensor_value_info("gate", TensorProto.FLOAT, ["n", 4]))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])], outs
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_constant_nodes_are_not_taps_and_several_outputs_are_indexed():
    proto = _tiny_graph(outputs=2)
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    trace = OnnxBackend(proto).capture([x])
    assert [t.name for t in trace.taps] == ["shifted", "act", "gate", "output[0]", "output[1]"]
    assert [t.op for t in trace.layers] == ["Add", "Relu", "Sigmoid"]
    assert trace["shifted"].attrs["node"] == "add0"
    assert all(t.layout is None for t in trace.taps)  # 2-D: no layout claimed
    np.testing.assert_allclose(trace["output[0]"].value, np.maximum(x + 0.5, 0))
    np.testing.assert_allclose(trace["output[1]"].value, 1 / (1 + np.exp(-(x + 0.5))), rtol=1e-6)
    info = OnnxBackend(proto).info()
    assert info.name == "tiny" and info.kind == "ONNX opset 17" and info.param_count == 0


def test_float64_input_is_cast_with_a_note():
    trace = OnnxBackend(_tiny_graph()).capture([np.zeros((3, 4))])
    assert trace.outputs[0].dtype == "float32"
    assert any("cast" in n for n in trace.notes)


def test_bad_inputs_say_what_the_model_takes(exported):
    _, x, proto = exported("ConvNet", False)
    backend = OnnxBackend(proto)
    name = proto.graph.input[0].name
    arr = x.numpy()
    with pytest.raises(InputError) as err:
        backend.capture([arr, arr])
    assert isinstance(err.value, ParityError)
    assert "takes 1 input(s)" in str(err.value) and name in str(err.value) and "got 2" in str(err.value)
    with pytest.raises(InputError, match=r"expects input .* of shape \(2, 1, 28, 28\); got \(2, 28, 28, 1\)"):
        backend.capture([np.transpose(arr, (0, 2, 3, 1))])
    with pytest.raises(InputError, match="rank|shape"):
        backend.capture([arr[0]])
    with pytest.raises(InputError, match="unknown: \\['image'\\]"):
        backend.capture({"image": arr})
    with pytest.raises(InputError, match="as float32; got int64"):
        backend.capture([arr.astype(np.int64)])


def test_a_model_onnxruntime_cannot_run_is_a_capture_error():
    proto = _tiny_graph()
    proto.graph.node[2].op_type = "NoSuchOp"
    with pytest.raises(CaptureError, match="onnxruntime could not load"):
        OnnxBackend(proto).capture([np.zeros((1, 4), np.float32)])


def test_load_onnx_refuses_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "random.onnx"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelError, match="not a valid ONNX model") as err:
        load_onnx(bad)
    assert "torch.onnx.export" in str(err.value)
    with pytest.raises(ModelError, match="does not exist"):
        load_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ModelError, match="directory"):
        load_onnx(tmp_path)
    good = tmp_path / "tiny.onnx"
    onnx.save(_tiny_graph(), str(good))
    assert OnnxBackend(str(good)).info().name == "tiny"


def test_importing_the_backend_imports_neither_onnx_nor_onnxruntime():
    code = (
        "import sys; from parity.capture.onnx import OnnxBackend; "
        "print(' '.join(k for k in ('onnx', 'onnxruntime', 'torch') if k in sys.modules)); "
        "print(OnnxBackend.accepts(object()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["", "False"]


def test_a_graph_backend_says_it_cannot_call_layers_read_parameters_or_make_twins(exported):
    model, x, proto = exported("ConvNet", False)
    backend = OnnxBackend(proto)
    name = backend.capture([x.numpy()]).taps[0].name
    assert not backend.can_call(name)
    assert backend.layer_inputs([x.numpy()], [name]) == {}
    assert backend.layer_params(name) is None and not backend.reads_params
    assert [backend.twin(kind) for kind in ("fresh", "randomized_stats", "float64")] == [None, None, None]
    with pytest.raises(ModelError, match="can build a fresh twin of a torch.nn.Module or a keras.Model, not a ModelProto"):
        fresh_twin(proto)


def test_a_layernorm_between_transposes_keeps_the_layout_it_is_given():
    # timm's LayerNorm2d exports as Transpose(NCHW→NHWC) → LayerNormalization → Transpose back:
    # the normalised tensor is NHWC and the one after the second Transpose NCHW again
    c = 4
    nodes = [
        helper.make_node("Transpose", ["x"], ["nhwc"], perm=[0, 2, 3, 1], name="t0"),
        helper.make_node("LayerNormalization", ["nhwc", "g", "b"], ["ln"], axis=-1, epsilon=1e-6, name="ln0"),
        helper.make_node("Transpose", ["ln"], ["y"], perm=[0, 3, 1, 2], name="t1"),
    ]
    inits = [helper.make_tensor("g", TensorProto.FLOAT, [c], [1.0] * c), helper.make_tensor("b", TensorProto.FLOAT, [c], [0.0] * c)]
    graph = helper.make_graph(nodes, "ln2d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, c, 3, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, c, 3, 5])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    trace = OnnxBackend(proto).capture([np.random.default_rng(0).standard_normal((2, c, 3, 5)).astype("float32")])
    layouts = {t.op: t.layout for t in trace.layers}
    assert layouts["LayerNormalization"] == "NHWC"
    assert [t.layout for t in trace.layers if t.op == "Transpose"] == ["NHWC", "NCHW"]


class _TokenMlp(torch.nn.Module):
    """A transformer MLP on (B, T, d) tokens: torch's exporters write each Linear as MatMul + Add,
    and the exact GELU as Div, Erf, Add, Mul, Mul."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.act = torch.nn.GELU()
        self.fc2 = torch.nn.Linear(32, 16)
        with torch.no_grad():  # a small bias (timm's PiT): the MatMul alone agrees in direction
            self.fc1.bias.uniform_(-0.03, 0.03)
            self.fc2.bias.uniform_(-0.03, 0.03)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


@pytest.mark.parametrize("dynamo", DYNAMO)
def test_a_linear_written_as_matmul_and_bias_add_is_compared_at_the_add(tmp_path, dynamo):
    torch.manual_seed(0)
    model = _TokenMlp().eval()
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    proto = _export_or_skip(model, x, tmp_path / "mlp.onnx", dynamo)
    assert [n.op_type for n in proto.graph.node if n.op_type in ("MatMul", "Add")][:2] == ["MatMul", "Add"]
    report = parity.diff(model, proto, x.numpy())
    assert report.ok, report.summary()
    pairs = {d.a_name: d for d in report.layers if d.role != "output"}
    assert set(pairs) == {"fc1", "act", "fc2"}  # every layer of A compared
    assert pairs["fc1"].b_op == "Add" and pairs["fc2"].b_op == "Add"  # the sum, never the bias-less MatMul
    assert all(d.rel_err < 1e-5 for d in pairs.values())
    if dynamo:  # the dynamo exporter names each value's module: pairs by those names
        assert {d.how for d in pairs.values()} == {"name"}


class _RepBlock(torch.nn.Module):
    """MobileOne's train-time block: a conv+BN branch, a 1×1 conv+BN branch and a BN-only identity
    branch, summed, then ReLU.  torch's exporter folds the two conv BNs and keeps the identity's."""

    def __init__(self, c=8):
        super().__init__()
        self.identity = torch.nn.BatchNorm2d(c)
        self.scale_conv, self.scale_bn = torch.nn.Conv2d(c, c, 1, bias=False), torch.nn.BatchNorm2d(c)
        self.kxk_conv, self.kxk_bn = torch.nn.Conv2d(c, c, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c)
        self.act = torch.nn.ReLU()

    def forward(self, x):
        return self.act(self.identity(x) + self.scale_bn(self.scale_conv(x)) + self.kxk_bn(self.kxk_conv(x)))


@pytest.fixture(scope="module")
def rep_blocks(tmp_path_factory):
    """(model A, input, export of A, export of A with the 1×1 branch's BN epsilon at 1e-3)."""
    torch.manual_seed(0)
    a = randomize_bn(torch.nn.Sequential(_RepBlock(), _RepBlock())).eval()
    for m in a.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.mul_(0.01)  # small variances: an epsilon of 1e-3 shows
    x = torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(1))
    root = tmp_path_factory.mktemp("rep")
    good = _export(a, x, root / "good.onnx", dynamo=False)
    import copy

    bad_model = copy.deepcopy(a)
    bad_model[1].scale_bn.eps = 1e-3
    bad = _export(bad_model, x, root / "bad.onnx", dynamo=False)
    return a, x.numpy(), good, bad


def test_a_batchnorm_the_exporter_folded_beside_one_it_kept_pairs_with_its_folded_conv(rep_blocks):
    a, x, good, bad = rep_blocks
    assert sum(n.op_type == "BatchNormalization" for n in good.graph.node) == 2  # the identity BNs stay
    report = parity.diff(a, good, x)
    assert report.ok, report.summary()
    pairs = {d.a_name: d.b_op for d in report.layers}
    assert pairs["1.scale_bn"] == "Conv" and pairs["1.identity"] == "BatchNormalization"
    assert "1.scale_conv" not in pairs  # its tensor is folded: never paired with the folded conv
    report = parity.diff(a, bad, x)
    assert report.first_divergence.a_name == "1.scale_bn"
    assert "bn_epsilon" in [g.code for g in report.first_divergence.diagnoses]


class _ChannelsLastMlp(torch.nn.Module):
    """EdgeNeXt's and ConvNeXt's block MLP: a conv, then a LayerNorm and two Linears on
    channels-last pixels (NCHW → NHWC → NCHW), which ONNX writes as Transpose, MatMul + Add."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.norm = torch.nn.LayerNorm(8)
        self.fc1, self.act, self.fc2 = torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)

    def forward(self, x):
        y = self.norm(self.conv(x).permute(0, 2, 3, 1))
        return x + self.fc2(self.act(self.fc1(y))).permute(0, 3, 1, 2)


def test_linears_on_channels_last_pixels_keep_their_layout_through_matmul_and_bias_add(tmp_path):
    torch.manual_seed(0)
    model = _ChannelsLastMlp().eval()
    x = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(1))
    proto = _export(model, x, tmp_path / "mlp.onnx", dynamo=False)
    report = parity.diff(model, proto, x.numpy())
    assert report.ok, report.summary()
    compared = {d.a_name: d for d in report.layers if d.role != "output"}
    assert {"conv", "norm", "fc1", "act", "fc2"} <= set(compared)
    assert all(compared[n].transform == "identity" and compared[n].rel_err < 1e-5 for n in ("fc1", "act", "fc2"))


def test_a_dynamo_module_whose_activation_differs_is_compared_at_its_last_tensor(tmp_path):
    """The dynamo exporter stamps each node with its torch module's scope; the scope's last tensor
    is the module's output even where the values disagree (an activation swapped inside it): the
    pair is that tensor, not the Sigmoid computed halfway, and the cause is named there."""

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Hardswish(), torch.nn.Conv2d(8, 4, 1)).eval()
    b = torch.nn.Sequential(a[0], torch.nn.SiLU(), a[2]).eval()  # SiLU exports as Sigmoid, then Mul
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype("float32"))
    onnx_b = _export_or_skip(b, x, tmp_path / "b.onnx", dynamo=True)
    report = parity.diff(a, onnx_b, x.numpy())
    first = report.first_divergence
    assert first.a_name == "1"
    assert first.b_op == "Mul"  # x·σ(x): the module's output, not σ(x)
    assert "activation_approximation" in [g.code for g in first.diagnoses]
