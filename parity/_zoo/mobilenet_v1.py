"""MobileNet-v1 in PyTorch, layer for layer the ``keras.applications.MobileNet`` graph,
and a weight port from the Keras model: the MLPerf-style "TensorFlow MobileNet ported to
PyTorch" scenario.

Modules carry Keras' layer names (``conv1``, ``conv1_bn``, ``conv1_relu``, ``conv_pad_2``,
``conv_dw_2``, ``conv_dw_2_bn``, ``conv_dw_2_relu``, ``conv_pw_2``, …, ``conv_preds``,
``predictions``), so every activation is a module output and each torch name is the
name scope of its TensorFlow tensors (``…/conv_dw_2_relu_1/Relu6:0`` in a frozen graph).

TensorFlow pads ``"same"`` convolutions bottom/right first; the port reproduces that:

- ``conv1`` is Keras' ``Conv2D(strides=2, padding="same")``: ``ZeroPad2d((0, 1, 0, 1))`` then
  an unpadded conv, which is what ``"same"`` does for even input sizes (128, 160, 192, 224);
- stride-2 depthwise blocks are Keras' own ``ZeroPadding2D(((0, 1), (0, 1)))`` + ``"valid"``;
- stride-1 3×3 ``"same"`` is the symmetric ``padding=1``.

>>> keras_model = keras.applications.MobileNet(weights=None, input_shape=(128, 128, 3), alpha=0.25)  # doctest: +SKIP
>>> torch_model = port_keras_mobilenet(keras_model)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .porting import port_layers

__all__ = ["MobileNetV1", "port_keras_mobilenet", "MOBILENET_V1_BLOCKS"]

#: (pointwise filters at alpha 1, stride) of depthwise blocks 1…13, as in keras.applications
MOBILENET_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


class MobileNetV1(nn.Module):
    """``keras.applications.MobileNet(alpha=alpha, classes=num_classes)`` in PyTorch (NCHW).

    The modules run in registration order; their names are Keras' layer names.
    ``bn_eps`` is every BatchNorm's epsilon (Keras' 1e-3 by default; torch's own
    default 1e-5 is the classic porting bug).
    """

    def __init__(
        self, alpha: float = 0.25, num_classes: int = 1000, bn_eps: float = 1e-3, dropout: float = 1e-3
    ) -> None:
        super().__init__()
        self.alpha = alpha
        ch = int(32 * alpha)
        self.conv1_pad = nn.ZeroPad2d((0, 1, 0, 1))  # TF "same" at stride 2, even input size
        self.conv1 = nn.Conv2d(3, ch, 3, stride=2, bias=False)
        self.conv1_bn = nn.BatchNorm2d(ch, eps=bn_eps)
        self.conv1_relu = nn.ReLU6()
        for block_id, (filters, stride) in enumerate(MOBILENET_V1_BLOCKS, start=1):
            out = int(filters * alpha)
            if stride == 2:
                self.add_module(f"conv_pad_{block_id}", nn.ZeroPad2d((0, 1, 0, 1)))
            self.add_module(
                f"conv_dw_{block_id}",
                nn.Conv2d(ch, ch, 3, stride=stride, padding=1 if stride == 1 else 0, groups=ch, bias=False),
            )
            self.add_module(f"conv_dw_{block_id}_bn", nn.BatchNorm2d(ch, eps=bn_eps))
            self.add_module(f"conv_dw_{block_id}_relu", nn.ReLU6())
            self.add_module(f"conv_pw_{block_id}", nn.Conv2d(ch, out, 1, bias=False))
            self.add_module(f"conv_pw_{block_id}_bn", nn.BatchNorm2d(out, eps=bn_eps))
            self.add_module(f"conv_pw_{block_id}_relu", nn.ReLU6())
            ch = out
        self.global_average_pooling2d = nn.AdaptiveAvgPool2d(1)  # keepdims: (N, C, 1, 1)
        self.dropout = nn.Dropout(dropout)
        self.conv_preds = nn.Conv2d(ch, num_classes, 1, bias=True)
        self.reshape_2 = nn.Flatten()
        self.predictions = nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


def _keras_layers(keras_model: Any) -> dict[str, Any]:
    return {layer.name: layer for layer in keras_model.layers}


def port_keras_mobilenet(
    keras_model: Any, torch_model: MobileNetV1 | None = None, bn_eps: float | None = None
) -> MobileNetV1:
    """Copy the weights of a ``keras.applications.MobileNet`` into a :class:`MobileNetV1`.

    Conv kernels go HWIO → OIHW, depthwise kernels (kh, kw, C, 1) → (C, 1, kh, kw),
    BatchNorm gamma/beta/moving mean/moving variance → weight/bias/running stats,
    ``conv_preds`` kernel and bias.  ``torch_model`` defaults to a new model sized from the
    Keras one.  ``bn_eps=None`` gives each torch BatchNorm its Keras layer's epsilon (1e-3);
    a number sets them all (``1e-5``, torch's default, is the classic porting bug).
    Returns the torch model in eval mode.
    """
    layers = _keras_layers(keras_model)
    if torch_model is None:
        width = int(layers["conv1"].filters)
        classes = int(layers["conv_preds"].filters)
        torch_model = MobileNetV1(alpha=width / 32, num_classes=classes)
    return port_layers(layers, torch_model, bn_eps)

