"""ResNet-50 in PyTorch, layer for layer the ``keras.applications.ResNet50`` (v1) graph, a
weight port from the Keras model, and a seeded Keras/torch pair with trained-like BatchNorm
statistics: the "TensorFlow ResNet-50 ported to PyTorch" scenario, and the benchmarks' model.

Keras' v1 layout differs from torchvision's in ways a port has to keep:

- every convolution has a bias (``use_bias=True``), BatchNorm or not;
- a stage's stride sits on the first 1×1 convolution of its first block (and on the
  projection shortcut ``…_0_conv``), not on the 3×3 one;
- every BatchNorm has ``epsilon=1.001e-5`` (torch's default is 1e-5; Keras' own 1e-3);
- ``ZeroPadding2D(3)`` then an unpadded 7×7/2 ``conv1_conv``; ``ZeroPadding2D(1)`` then an
  unpadded 3×3/2 ``pool1_pool`` (zero padding before a max pool is harmless after a ReLU);
- the 3×3 ``"same"`` convolutions run at stride 1, which is symmetric ``padding=1``.

Modules are direct children named as Keras' layers (``conv1_pad``, ``conv1_conv``,
``conv1_bn``, ``conv1_relu``, ``pool1_pad``, ``pool1_pool``, ``conv2_block1_0_conv``,
``conv2_block1_1_conv`` … ``conv2_block1_add``, ``conv2_block1_out``, …, ``avg_pool``,
``predictions``); the residual sum and the global pooling are modules too (:class:`Add`,
:class:`GlobalAveragePooling2d`), so every Keras layer has a torch module whose output
parity records at the default ``granularity="modules"``.

>>> keras_model, torch_model = resnet50_pair(input_size=64)                 # doctest: +SKIP
>>> parity.diff(torch_model, keras_model, np.random.rand(2, 3, 64, 64).astype("float32")).ok  # doctest: +SKIP
True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .porting import port_layers

__all__ = [
    "ResNet50",
    "Add",
    "GlobalAveragePooling2d",
    "port_keras_resnet50",
    "resnet50_pair",
    "RESNET50_STAGES",
    "KERAS_BN_EPS",
]

#: (stage name, bottleneck filters, blocks, stride of the first block), as ``keras.applications.ResNet50``
RESNET50_STAGES: tuple[tuple[str, int, int, int], ...] = (
    ("conv2", 64, 3, 1),
    ("conv3", 128, 4, 2),
    ("conv4", 256, 6, 2),
    ("conv5", 512, 3, 2),
)

#: the epsilon of every BatchNorm in Keras' ResNet v1
KERAS_BN_EPS = 1.001e-5


class Add(nn.Module):
    """``keras.layers.Add`` for two tensors: the residual sum as a module, so it is a layer."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class GlobalAveragePooling2d(nn.Module):
    """``keras.layers.GlobalAveragePooling2D`` on NCHW: the spatial mean, (N, C, H, W) → (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class ResNet50(nn.Module):
    """``keras.applications.ResNet50(weights=None, classifier_activation=None)`` in PyTorch (NCHW).

    Outputs logits (no softmax).  ``bn_eps`` is every BatchNorm's epsilon (Keras' 1.001e-5).
    """

    def __init__(self, num_classes: int = 1000, bn_eps: float = KERAS_BN_EPS) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1_pad = nn.ZeroPad2d(3)
        self.conv1_conv = nn.Conv2d(3, 64, 7, stride=2, bias=True)
        self.conv1_bn = nn.BatchNorm2d(64, eps=bn_eps)
        self.conv1_relu = nn.ReLU()
        self.pool1_pad = nn.ZeroPad2d(1)
        self.pool1_pool = nn.MaxPool2d(3, stride=2)
        #: (block name, has a projection shortcut) in execution order
        self.block_names: list[tuple[str, bool]] = []
        ch = 64
        for stage, filters, blocks, stride1 in RESNET50_STAGES:
            for i in range(1, blocks + 1):
                name = f"{stage}_block{i}"
                stride = stride1 if i == 1 else 1
                projection = i == 1
                if projection:
                    self.add_module(f"{name}_0_conv", nn.Conv2d(ch, 4 * filters, 1, stride=stride, bias=True))
                    self.add_module(f"{name}_0_bn", nn.BatchNorm2d(4 * filters, eps=bn_eps))
                self.add_module(f"{name}_1_conv", nn.Conv2d(ch, filters, 1, stride=stride, bias=True))
                self.add_module(f"{name}_1_bn", nn.BatchNorm2d(filters, eps=bn_eps))
                self.add_module(f"{name}_1_relu", nn.ReLU())
                self.add_module(f"{name}_2_conv", nn.Conv2d(filters, filters, 3, padding=1, bias=True))
                self.add_module(f"{name}_2_bn", nn.BatchNorm2d(filters, eps=bn_eps))
                self.add_module(f"{name}_2_relu", nn.ReLU())
                self.add_module(f"{name}_3_conv", nn.Conv2d(filters, 4 * filters, 1, bias=True))
                self.add_module(f"{name}_3_bn", nn.BatchNorm2d(4 * filters, eps=bn_eps))
                self.add_module(f"{name}_add", Add())
                self.add_module(f"{name}_out", nn.ReLU())
                self.block_names.append((name, projection))
                ch = 4 * filters
        self.avg_pool = GlobalAveragePooling2d()
        self.predictions = nn.Linear(ch, num_classes)

    def _block(self, x: torch.Tensor, name: str, projection: bool) -> torch.Tensor:
        m = self._modules
        if projection:
            shortcut = m[f"{name}_0_bn"](m[f"{name}_0_conv"](x))
        else:
            shortcut = x
        y = m[f"{name}_1_relu"](m[f"{name}_1_bn"](m[f"{name}_1_conv"](x)))
        y = m[f"{name}_2_relu"](m[f"{name}_2_bn"](m[f"{name}_2_conv"](y)))
        y = m[f"{name}_3_bn"](m[f"{name}_3_conv"](y))
        return m[f"{name}_out"](m[f"{name}_add"](shortcut, y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1_relu(self.conv1_bn(self.conv1_conv(self.conv1_pad(x))))
        x = self.pool1_pool(self.pool1_pad(x))
        for name, projection in self.block_names:
            x = self._block(x, name, projection)
        return self.predictions(self.avg_pool(x))


def port_keras_resnet50(keras_model: Any, torch_model: ResNet50 | None = None, bn_eps: float | None = None) -> ResNet50:
    """Copy the weights of a ``keras.applications.ResNet50`` into a :class:`ResNet50`.

    Conv kernels go HWIO → OIHW with their biases; BatchNorm gamma/beta/moving mean/moving
    variance → weight/bias/running_mean/running_var; the ``predictions`` Dense kernel
    (in, out) → Linear weight (out, in).  ``bn_eps=None`` gives each torch BatchNorm its Keras
    layer's epsilon (1.001e-5); a number sets them all (torch's default 1e-5 is the quiet
    porting bug, 1e-3 — Keras' default — the loud one).  Returns the torch model in eval mode.
    """
    layers = {layer.name: layer for layer in keras_model.layers}
    if torch_model is None:
        torch_model = ResNet50(num_classes=int(layers["predictions"].units))
    return port_layers(layers, torch_model, bn_eps)



def _trained_like(torch_model: ResNet50, input_size: int, seed: int) -> None:
    """Give the torch model trained-like parameters, deterministically: small random conv and
    dense biases (Keras initialises them to zero, which would hide a dropped bias), BatchNorm
    gamma/beta, and running statistics from a calibration batch (each BatchNorm sees its
    input's batch mean and variance, as in training) jittered per channel so they are not
    exactly any batch's.  Calibrating keeps the activations O(1) through 50 layers; the
    variances it gives (≈1e-3…1e-1) are the range where the epsilon of a BatchNorm shows."""
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in torch_model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in torch_model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.01)
        for m in bns:
            m.weight.copy_(torch.rand(m.num_features, generator=gen) * 0.5 + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.reset_running_stats()
            m.momentum = None  # cumulative average: the calibration batch's own statistics
        x = torch.randn(4, 3, input_size, input_size, generator=gen)
        torch_model.train()
        torch_model(x)
        for m in bns:
            m.momentum = 0.1
            n = m.num_features
            m.running_var.mul_(torch.exp(torch.randn(n, generator=gen) * 0.2))
            m.running_mean.add_(torch.randn(n, generator=gen) * 0.1 * m.running_var.sqrt())
    torch_model.eval()


def _copy_to_keras(torch_model: ResNet50, keras_model: Any) -> None:
    """Write the torch model's parameters back into the Keras model (the inverse of the port)."""
    modules = dict(torch_model.named_children())
    for layer in keras_model.layers:
        if not layer.get_weights():
            continue
        m = modules[layer.name]
        kind = type(layer).__name__
        if kind == "Conv2D":
            layer.set_weights([m.weight.detach().numpy().transpose(2, 3, 1, 0), m.bias.detach().numpy()])
        elif kind == "BatchNormalization":
            layer.set_weights([t.detach().numpy() for t in (m.weight, m.bias, m.running_mean, m.running_var)])
        elif kind == "Dense":
            layer.set_weights([m.weight.detach().numpy().T, m.bias.detach().numpy()])


def resnet50_pair(input_size: int = 224, seed: int = 0, num_classes: int = 1000) -> tuple[Any, ResNet50]:
    """A seeded ``keras.applications.ResNet50(weights=None, classifier_activation=None)`` at
    ``input_size``×``input_size`` and its PyTorch port, with randomised (trained-like)
    BatchNorm statistics, conv biases and affine parameters, identical on both sides.

    Deterministic for a given ``(input_size, seed, num_classes)``.  Returns
    ``(keras_model, torch_model)``; the torch model is in eval mode and takes NCHW.
    """
    import keras

    keras.utils.set_random_seed(seed)
    keras_model = keras.applications.ResNet50(
        weights=None,
        input_shape=(input_size, input_size, 3),
        classes=num_classes,
        classifier_activation=None,
    )
    torch_model = port_keras_resnet50(keras_model)
    _trained_like(torch_model, input_size, seed)
    _copy_to_keras(torch_model, keras_model)
    return keras_model, torch_model
