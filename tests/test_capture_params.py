"""Parameters read through the backends (capture/torch_params.py, capture/keras_params.py):
roles, the canonical (PyTorch) layout, the framework's names and raw shapes, half precision
read as float32.  The layout functions are tested on plain arrays; the readers on small live
layers (torch and Keras imported inside the tests that need them)."""

from __future__ import annotations

import numpy as np
import pytest

from parity.capture.keras_params import einsum_canonical, keras_canonical

RNG = np.random.default_rng(0)


# --- the canonical layout, on arrays ------------------------------------------------------------


def test_keras_kernels_in_torchs_layout():
    hwio = RNG.standard_normal((3, 5, 4, 8))
    np.testing.assert_array_equal(keras_canonical("conv", "kernel", hwio), hwio.transpose(3, 2, 0, 1))  # OIHW
    hwoi = RNG.standard_normal((3, 3, 6, 4))  # a transposed conv's (kh, kw, O, I)
    assert keras_canonical("convtranspose", "kernel", hwoi).shape == (4, 6, 3, 3)  # torch's (I, O, kh, kw)
    hwcm = RNG.standard_normal((3, 3, 4, 2))  # depthwise (kh, kw, C, M)
    dw = keras_canonical("depthwise", "kernel", hwcm)
    assert dw.shape == (8, 1, 3, 3)
    np.testing.assert_array_equal(dw[2 * 1 + 1, 0], hwcm[:, :, 1, 1])  # output channel c·M + m
    io = RNG.standard_normal((6, 10))
    np.testing.assert_array_equal(keras_canonical("dense", "kernel", io), io.T)
    bias = RNG.standard_normal(8)
    assert keras_canonical("conv", "bias", bias) is bias


def test_einsum_dense_kernels_as_a_torch_linear():
    qkv = RNG.standard_normal((16, 4, 8))  # btd,dnh->btnh: (d, heads, head_dim)
    w = einsum_canonical("btd,dnh->btnh", "kernel", qkv)
    assert w.shape == (32, 16)
    np.testing.assert_array_equal(w[1 * 8 + 3], qkv[:, 1, 3])  # out feature (head 1, dim 3), row-major
    out = RNG.standard_normal((4, 8, 16))  # btnh,nhd->btd: (heads, head_dim, d)
    w = einsum_canonical("btnh,nhd->btd", "kernel", out)
    assert w.shape == (16, 32)
    np.testing.assert_array_equal(w[:, 1 * 8 + 3], out[1, 3, :])
    assert einsum_canonical("btd,dnh->btnh", "bias", RNG.standard_normal((4, 8))).shape == (32,)
    odd = RNG.standard_normal((3, 3))
    assert einsum_canonical("not an equation", "kernel", odd) is odd


# --- the readers, on live layers ----------------------------------------------------------------


def test_torch_modules_by_role_in_their_own_layout():
    torch = pytest.importorskip("torch")
    from parity.capture import backend_for
    from parity.errors import MappingError

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
                                torch.nn.LazyLinear(4)).eval()
    backend = backend_for(model)
    assert backend.reads_params
    conv = backend.layer_params("0")
    assert (conv.framework, conv.kind, conv.cls) == ("torch", "conv", "Conv2d")
    assert {r: (q.name, q.raw_shape) for r, q in conv.params.items()} == {
        "kernel": ("weight", (8, 3, 3, 3)), "bias": ("bias", (8,))}
    np.testing.assert_array_equal(conv.params["kernel"].value, model[0].weight.detach().numpy())
    bn = backend.layer_params("1#1")  # a tap suffix: the same module
    assert bn.kind == "batchnorm" and list(bn.params) == ["gamma", "beta", "mean", "var"]  # no num_batches_tracked
    assert bn.params["var"].name == "running_var"
    assert backend.layer_params("3").params == {}  # a lazy Linear not yet initialised holds nothing to compare
    with pytest.raises(MappingError, match="no submodule '9'"):
        backend.layer_params("9")

    half = torch.nn.Linear(4, 2).to(torch.bfloat16)
    (kernel, bias) = backend_for(half).layer_params("").params.values()
    assert kernel.dtype == "bfloat16" and kernel.value.dtype == np.float32 and bias.value.dtype == np.float32


def test_transformers_conv1d_is_a_dense_layer_with_its_weight_transposed():
    torch = pytest.importorskip("torch")
    from parity.capture.torch_params import module_params

    class Conv1D(torch.nn.Module):  # transformers' GPT-2 projection: weight (in, out), nf = out
        def __init__(self, nf, nx):
            super().__init__()
            self.nf = nf
            self.weight = torch.nn.Parameter(torch.randn(nx, nf))
            self.bias = torch.nn.Parameter(torch.zeros(nf))

    record = module_params(Conv1D(6, 4))
    assert (record.kind, record.params["kernel"].raw_shape, record.params["kernel"].value.shape) == ("dense", (4, 6), (6, 4))


def test_keras_layers_by_role_in_torchs_layout():
    keras = pytest.importorskip("keras")
    from parity.capture import backend_for
    from parity.errors import MappingError

    inner = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Conv2D(8, 3, name="conv"),
                              keras.layers.BatchNormalization(name="bn")], name="block")
    model = keras.Sequential([keras.Input((6, 6, 3)), inner, keras.layers.Flatten(name="flat"),
                              keras.layers.Dense(4, name="fc")])
    backend = backend_for(model)
    assert backend.reads_params
    conv = backend.layer_params("conv")
    assert (conv.framework, conv.kind) == ("keras", "conv")
    assert conv.params["kernel"].raw_shape == (3, 3, 3, 8) and conv.params["kernel"].value.shape == (8, 3, 3, 3)
    np.testing.assert_array_equal(conv.params["kernel"].value, np.transpose(inner.layers[0].get_weights()[0], (3, 2, 0, 1)))
    bn = backend.layer_params("block/bn")
    assert [(r, q.name) for r, q in bn.params.items()] == [
        ("gamma", "gamma"), ("beta", "beta"), ("mean", "moving_mean"), ("var", "moving_variance")]
    fc = backend.layer_params("fc[0]")
    assert fc.kind == "dense" and fc.params["kernel"].value.shape == (4, 4 * 4 * 8)
    assert backend.layer_params("flat").params == {}
    with pytest.raises(MappingError, match="no layer 'blok/bn'"):
        backend.layer_params("blok/bn")
