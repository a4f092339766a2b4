"""Weight parity: parameters of aligned layers compared under the pair's layout transforms,
with the classic conversion bugs named (transposed kernels, swapped BN statistics, the
flatten order of a dense layer, a missing bias)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")

import parity  # noqa: E402
from parity.align import align  # noqa: E402
from parity.errors import MappingError  # noqa: E402
from parity.weights import find_layer, weight_diagnoses, weight_parity  # noqa: E402
from parity._zoo import (  # noqa: E402
    BasicBlock,
    ConvNet,
    DeepResNet,
    MobileNetBlock,
    randomize_bn,
    to_keras,
    to_keras_convnet_sequential,
)

RNG = np.random.default_rng(0)
X_CONVNET = RNG.random((2, 1, 28, 28), dtype=np.float32)
X_MOBILE = RNG.random((2, 8, 16, 16), dtype=np.float32)
X_BLOCK = RNG.random((2, 16, 8, 8), dtype=np.float32)
X_RESNET = RNG.random((2, 3, 8, 8), dtype=np.float32)


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))


def aligned(a, b, x, *, a_torch=True, granularity="modules"):
    xa, xb = (x, nhwc(x)) if a_torch else (nhwc(x), x)
    return align(parity.capture(a, xa, granularity=granularity), parity.capture(b, xb))


def by_key(params):
    return {(p.a_layer, p.a_param or p.b_param): p for p in params}


def not_ok(params):
    return [p for p in params if p.status != "ok"]


@pytest.fixture(scope="module")
def convnet():
    torch.manual_seed(0)
    return randomize_bn(ConvNet().eval(), seed=1)


@pytest.fixture(scope="module")
def mobile():
    torch.manual_seed(1)
    return randomize_bn(MobileNetBlock().eval(), seed=2)


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(2)
    return randomize_bn(BasicBlock().eval(), seed=3)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(3)
    return randomize_bn(DeepResNet(blocks=1, num_classes=16).eval(), seed=4)  # fc is a square 16×16


# --- correct conversions --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["convnet-permute", "convnet-reorder", "mobile", "block"])
def test_a_correct_conversion_is_all_ok(name, convnet, mobile, block):
    model, x, options = {
        "convnet-permute": (convnet, X_CONVNET, {"flatten": "permute"}),
        "convnet-reorder": (convnet, X_CONVNET, {"flatten": "reorder"}),
        "mobile": (mobile, X_MOBILE, {}),
        "block": (block, X_BLOCK, {}),
    }[name]
    twin = to_keras(model, **options)
    params = weight_parity(model, twin, aligned(model, twin, x))
    assert params and not_ok(params) == []
    assert weight_diagnoses(params) == []
    # every parameter and buffer of the torch model, num_batches_tracked left out on purpose
    expected = {
        (mod, n.rsplit(".", 1)[-1])
        for full, _ in [*model.named_parameters(), *model.named_buffers()]
        for mod, n in [(full.rsplit(".", 1)[0], full)]
        if not full.endswith("num_batches_tracked")
    }
    assert set(by_key(params)) == expected


def test_bn_names_map_across_frameworks(mobile):
    twin = to_keras(mobile)
    params = by_key(weight_parity(mobile, twin, aligned(mobile, twin, X_MOBILE)))
    assert [(params["bn1", n].a_param, params["bn1", n].b_param) for n in ("weight", "bias", "running_mean", "running_var")] == [
        ("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"), ("running_var", "moving_variance"),
    ]
    assert params["dw", "weight"].b_param == "kernel" and params["dw", "weight"].status == "ok"  # depthwise layout


# --- the bugs -------------------------------------------------------------------------------


def test_conv_kernel_with_height_and_width_swapped(block):
    twin = to_keras(block)
    layer = twin.get_layer("conv2")
    (kernel,) = layer.get_weights()
    layer.set_weights([kernel.transpose(1, 0, 2, 3)])  # HWIO → WHIO: what weight.T gives
    params = weight_parity(block, twin, aligned(block, twin, X_BLOCK))
    (bad,) = not_ok(params)
    assert (bad.a_layer, bad.b_layer, bad.a_param, bad.b_param, bad.status) == ("conv2", "conv2", "weight", "kernel", "transposed")
    assert "kernel equals torch weight transposed the other way" in bad.message
    assert "height and width axes are swapped" in bad.message
    assert "weight.permute(2, 3, 1, 0)" in bad.message
    assert bad.rel_err > 0.1
    (diag,) = weight_diagnoses(params)
    assert (diag.code, diag.layer) == ("weight_transpose", "conv2")
    assert diag.evidence["rel_err_as_copied"] == pytest.approx(bad.rel_err)
    assert diag.evidence["rel_err_alternative"] == 0.0
    assert "'conv2'" in diag.message and "Copy the kernel" in diag.message


def test_square_dense_weight_copied_without_transpose(resnet):
    twin = to_keras(resnet)
    fc = twin.get_layer("fc")
    fc.set_weights([resnet.fc.weight.detach().numpy(), resnet.fc.bias.detach().numpy()])  # (out, in) as is
    params = weight_parity(resnet, twin, aligned(resnet, twin, X_RESNET))
    (bad,) = not_ok(params)
    assert (bad.a_layer, bad.a_param, bad.b_param, bad.status) == ("fc", "weight", "kernel", "transposed")
    assert "kernel equals torch weight transposed the other way" in bad.message
    assert "square (16, 16)" in bad.message and "copy weight.T" in bad.message
    assert [(d.code, d.layer) for d in weight_diagnoses(params)] == [("weight_transpose", "fc")]


def test_bn_running_statistics_swapped(mobile):
    twin = to_keras(mobile)
    bn = twin.get_layer("bn2")
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([gamma, beta, var, mean])
    params = weight_parity(mobile, twin, aligned(mobile, twin, X_MOBILE))
    bad = not_ok(params)
    assert [(p.a_layer, p.a_param, p.b_param, p.status) for p in bad] == [
        ("bn2", "running_mean", "moving_mean", "swapped"),
        ("bn2", "running_var", "moving_variance", "swapped"),
    ]
    assert all("running_mean and running_var swapped" in p.message for p in bad)
    (diag,) = weight_diagnoses(params)
    assert (diag.code, diag.layer) == ("bn_statistics", "bn2")
    assert "Copy running_mean into moving_mean and running_var into moving_variance" in diag.message
    assert diag.evidence["rel_err_alternative[running_mean]"] == 0.0
    assert diag.evidence["rel_err_as_copied[running_var]"] > 1


def test_dense_after_flatten_with_rows_not_reordered(convnet):
    twin = to_keras(convnet, flatten="naive")  # Flatten of NHWC, kernel rows still in (C,H,W) order
    alignment = aligned(convnet, twin, X_CONVNET)
    params = weight_parity(convnet, twin, alignment)
    (bad,) = not_ok(params)
    assert (bad.a_layer, bad.a_param, bad.b_param, bad.status) == ("fc", "weight", "kernel", "transposed")
    assert "permuted as NCHW→NHWC flatten order" in bad.message
    assert "B flattens its input in (H,W,C) order" in bad.message
    assert "weight.reshape(10, 16, 28, 28).transpose(0, 2, 3, 1).reshape(10, -1).T" in bad.message
    (diag,) = weight_diagnoses(params)
    assert (diag.code, diag.layer) == ("flatten_order", "fc")
    assert diag.evidence["rel_err_alternative"] == 0.0 and diag.evidence["rel_err_as_copied"] > 0.5

    # torch's own reshape recorded (granularity="ops"): the same verdict
    params_ops = weight_parity(convnet, twin, aligned(convnet, twin, X_CONVNET, granularity="ops"))
    assert [(p.a_layer, p.status) for p in not_ok(params_ops)] == [("fc", "transposed")]

    # matches alone hide B's Flatten/Permute: either order is accepted, with a note
    (fc_weight,) = [p for p in weight_parity(convnet, twin, alignment.matches) if p.a_layer == "fc" and p.a_param == "weight"]
    assert fc_weight.status == "ok" and "pass the whole Alignment" in fc_weight.message


def test_dense_rows_reordered_although_b_flattens_in_a_order(convnet):
    """The reverse bug: rows reordered to (H,W,C) while B permutes to NCHW before its Flatten."""
    twin = to_keras(convnet, flatten="permute")
    fc = twin.get_layer("fc")
    w = convnet.fc.weight.detach().numpy()
    w_hwc = w.reshape(10, 16, 28, 28).transpose(0, 2, 3, 1).reshape(10, -1)
    fc.set_weights([w_hwc.T, convnet.fc.bias.detach().numpy()])
    params = weight_parity(convnet, twin, aligned(convnet, twin, X_CONVNET))
    (bad,) = not_ok(params)
    assert (bad.a_layer, bad.status) == ("fc", "transposed")
    assert "rows permuted as NCHW→NHWC flatten order, which B's input does not need" in bad.message
    assert [d.code for d in weight_diagnoses(params)] == ["flatten_order"]


def test_missing_bias(mobile):
    twin = to_keras(mobile)  # Keras pw: use_bias=False
    with_bias = MobileNetBlock().eval()
    with_bias.load_state_dict(mobile.state_dict(), strict=False)
    with_bias.pw = torch.nn.Conv2d(8, 16, 1, bias=True)
    with torch.no_grad():
        with_bias.pw.weight.copy_(mobile.pw.weight)
        with_bias.pw.bias.copy_(torch.linspace(-1, 1, 16))
    params = weight_parity(with_bias, twin, aligned(with_bias, twin, X_MOBILE))
    (bad,) = not_ok(params)
    assert (bad.a_layer, bad.b_layer, bad.a_param, bad.b_param, bad.status) == ("pw", "pw", "bias", "", "missing")
    assert bad.message.startswith("bias missing: A's 'pw' (torch) has a bias")
    assert "B's 'pw' (keras) (Conv2D) has none; build B's layer with use_bias=True" in bad.message
    (diag,) = weight_diagnoses(params)
    assert (diag.code, diag.layer) == ("weight_mismatch", "pw")

    # a bias of zeros on one side and none on the other computes the same: ok
    with torch.no_grad():
        with_bias.pw.bias.zero_()
    params = weight_parity(with_bias, twin, aligned(with_bias, twin, X_MOBILE))
    assert not_ok(params) == [] and "the same as none" in by_key(params)["pw", "bias"].message


def test_bias_left_as_zeros(convnet):
    twin = to_keras(convnet)
    conv = twin.get_layer("layer1_0")
    kernel, bias = conv.get_weights()
    conv.set_weights([kernel, np.zeros_like(bias)])
    (bad,) = not_ok(weight_parity(convnet, twin, aligned(convnet, twin, X_CONVNET)))
    assert (bad.a_layer, bad.a_param, bad.b_param, bad.status) == ("layer1.0", "bias", "bias", "missing")
    assert "bias missing: B's 'layer1_0' (keras) has bias all zeros" in bad.message


def test_how_a_parameter_differs(block):
    twin = to_keras(block)
    conv = twin.get_layer("conv1")
    (kernel,) = conv.get_weights()
    conv.set_weights([kernel * 0.5])
    bn = twin.get_layer("bn2")
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([gamma, beta, mean, np.sqrt(var)])
    params = by_key(weight_parity(block, twin, aligned(block, twin, X_BLOCK)))
    assert params["conv1", "weight"].status == "differs"
    assert "scaled by 0.5" in params["conv1", "weight"].message
    assert params["conv1", "weight"].rel_err == pytest.approx(0.5)
    assert params["bn2", "running_var"].status == "differs"
    assert "standard deviation" in params["bn2", "running_var"].message
    diags = weight_diagnoses(params.values())
    assert sorted((d.code, d.layer) for d in diags) == [("weight_mismatch", "bn2"), ("weight_mismatch", "conv1")]


# --- directions, nesting, lookups ---------------------------------------------------------------


def test_keras_as_model_a(resnet):
    twin = to_keras(resnet)
    fc = twin.get_layer("fc")
    fc.set_weights([resnet.fc.weight.detach().numpy(), resnet.fc.bias.detach().numpy()])
    params = weight_parity(twin, resnet, aligned(twin, resnet, X_RESNET, a_torch=False))
    (bad,) = not_ok(params)
    assert (bad.a_layer, bad.a_param, bad.b_param, bad.status) == ("fc", "kernel", "weight", "transposed")
    assert "weight equals keras kernel transposed the other way" in bad.message and "copy kernel.T" in bad.message


def test_keras_to_keras_nested_and_torch_to_torch(convnet, resnet):
    seq_ok = to_keras_convnet_sequential(convnet)  # layer1_0 lives in a nested Sequential "layer1"
    seq_bad = to_keras_convnet_sequential(convnet)
    inner = seq_bad.get_layer("layer1").get_layer("layer1_1")
    gamma, beta, mean, var = inner.get_weights()
    inner.set_weights([gamma, beta, var, mean])
    x = nhwc(X_CONVNET)
    alignment = align(parity.capture(seq_ok, x), parity.capture(seq_bad, x))
    params = weight_parity(seq_ok, seq_bad, alignment)
    assert [(p.a_layer, p.a_param, p.status) for p in not_ok(params)] == [
        ("layer1_1", "moving_mean", "swapped"), ("layer1_1", "moving_variance", "swapped"),
    ]
    assert "moving_mean and moving_variance swapped" in not_ok(params)[0].message

    other = randomize_bn(DeepResNet(blocks=1, num_classes=16).eval(), seed=9)
    other.load_state_dict(resnet.state_dict())
    with torch.no_grad():
        other.blocks[0].conv1.weight.mul_(-1)
    params = weight_parity(resnet, other, align(parity.capture(resnet, X_RESNET), parity.capture(other, X_RESNET)))
    (bad,) = not_ok(params)
    assert (bad.a_layer, bad.b_layer, bad.status) == ("blocks.0.conv1", "blocks.0.conv1", "differs")
    assert "scaled by -1" in bad.message


def test_find_layer(convnet):
    seq = to_keras_convnet_sequential(convnet)
    assert find_layer(seq, "layer1_0").name == "layer1_0"
    assert find_layer(seq, "layer1/layer1_1#1").name == "layer1_1"
    assert find_layer(convnet, "layer1.0#2") is convnet.layer1[0]
    assert find_layer(convnet, "fc[0]") is convnet.fc
    with pytest.raises(MappingError, match="no layer .layer1_O.. Closest: .*layer1_0"):
        find_layer(seq, "layer1_O")
    with pytest.raises(MappingError, match="no submodule 'layer9'"):
        find_layer(convnet, "layer9")


def test_diagnoses_from_params_read_back_without_evidence(mobile, convnet):
    """A report loaded from JSON has the ParamDiffs only; the codes still come out right."""
    twin = to_keras(mobile)
    bn = twin.get_layer("bn1")
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([gamma, beta, var, mean])
    params = weight_parity(mobile, twin, aligned(mobile, twin, X_MOBILE))
    naive = to_keras(convnet, flatten="naive")
    params += weight_parity(convnet, naive, aligned(convnet, naive, X_CONVNET))
    plain = [dataclasses.replace(p) for p in params]
    assert not any(hasattr(p, "_evidence") for p in plain)
    assert [(d.code, d.layer) for d in weight_diagnoses(plain)] == [("bn_statistics", "bn1"), ("flatten_order", "fc")]
    assert dataclasses.asdict(params[0]).keys() == {f.name for f in dataclasses.fields(params[0])}


def test_resnet_depth_is_fast():
    torch.manual_seed(5)
    model = randomize_bn(DeepResNet(blocks=25).eval(), seed=5)  # 51 convolutions, 51 BatchNorms
    twin = to_keras(model)
    alignment = aligned(model, twin, X_RESNET)
    start = time.perf_counter()
    params = weight_parity(model, twin, alignment)
    elapsed = time.perf_counter() - start
    assert len(params) == 51 + 51 * 4 + 2 and not_ok(params) == []
    assert elapsed < 2.0


def test_other_model_kinds_give_nothing(convnet):
    assert weight_parity(object(), convnet, []) == ()


def _match(a_name, a_op, b_name, b_op, index):
    from parity.records import Match, Tap, Transform

    tap = lambda name, op: Tap(name=name, op=op, index=index, shape=(1,), dtype="float32", layout=None)  # noqa: E731
    return Match(a=tap(a_name, a_op), b=tap(b_name, b_op), transform=Transform(), how="mapping")


def test_other_layer_families_by_hand_made_matches():
    """Conv1d, transposed conv, depthwise with a channel multiplier, LayerNorm, Embedding."""
    torch.manual_seed(7)
    nn = torch.nn
    tm = nn.ModuleDict({
        "c1": nn.Conv1d(4, 6, 5),
        "ct": nn.ConvTranspose2d(4, 6, 3),
        "dw": nn.Conv2d(4, 8, 3, groups=4),
        "ln": nn.LayerNorm(6),
        "emb": nn.Embedding(11, 6),
    })
    with torch.no_grad():
        tm["ln"].weight.uniform_(0.5, 1.5)
        tm["ln"].bias.uniform_(-1, 1)
    layers = {
        "c1": keras.layers.Conv1D(6, 5, name="c1"),
        "ct": keras.layers.Conv2DTranspose(6, 3, name="ct"),
        "dw": keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw"),
        "ln": keras.layers.LayerNormalization(name="ln"),
        "emb": keras.layers.Embedding(11, 6, name="emb"),
    }
    for name, shape in {"c1": (None, 9, 4), "ct": (None, 5, 5, 4), "dw": (None, 5, 5, 4), "ln": (None, 6), "emb": (None, 3)}.items():
        layers[name].build(shape)
    km = keras.Sequential(list(layers.values()))

    def w(name, attr="weight"):
        return getattr(tm[name], attr).detach().numpy()

    layers["c1"].set_weights([w("c1").transpose(2, 1, 0), w("c1", "bias")])
    layers["ct"].set_weights([w("ct").transpose(2, 3, 1, 0), w("ct", "bias")])
    layers["dw"].set_weights([w("dw").reshape(4, 2, 3, 3).transpose(2, 3, 0, 1), w("dw", "bias")])
    layers["ln"].set_weights([w("ln"), w("ln", "bias")])
    layers["emb"].set_weights([w("emb")])
    ops = {"c1": ("Conv1d", "Conv1D"), "ct": ("ConvTranspose2d", "Conv2DTranspose"), "dw": ("Conv2d", "DepthwiseConv2D"),
           "ln": ("LayerNorm", "LayerNormalization"), "emb": ("Embedding", "Embedding")}
    matches = [_match(n, a, n, b, i) for i, (n, (a, b)) in enumerate(ops.items())]
    params = weight_parity(tm, km, matches)
    assert len(params) == 9 and not_ok(params) == []

    layers["ln"].set_weights([w("ln", "bias"), w("ln")])  # gamma ↔ beta
    dw_kernel = layers["dw"].get_weights()
    layers["dw"].set_weights([dw_kernel[0][:, :, :, ::-1], dw_kernel[1]])  # multiplier order reversed
    bad = by_key(not_ok(weight_parity(tm, km, matches)))
    assert set(bad) == {("ln", "weight"), ("ln", "bias"), ("dw", "weight")}
    assert bad["ln", "weight"].status == "swapped" and "weight and bias swapped" in bad["ln", "weight"].message
    assert bad["dw", "weight"].status == "differs"
    diags = {(d.code, d.layer) for d in weight_diagnoses(bad.values())}
    assert diags == {("weight_mismatch", "ln"), ("weight_mismatch", "dw")}
