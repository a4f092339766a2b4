"""Hand conversion of the zoo's torch models to Keras 3, the way a person does it.

Weights are copied with the usual transposes (conv OIHW→HWIO, depthwise
(C,1,kh,kw)→(kh,kw,C,1), dense (out,in)→(in,out), BatchNorm weight/bias/
running stats).  Knobs reproduce the classic conversion bugs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["to_keras", "to_keras_convnet_sequential"]


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy()


def _conv_kernel(conv: Any) -> np.ndarray:
    return _np(conv.weight).transpose(2, 3, 1, 0)  # OIHW → HWIO


def _bn(keras: Any, bn: Any, name: str, bn_epsilon: str | float) -> Any:
    if bn_epsilon == "match":
        eps = float(bn.eps)
    elif bn_epsilon == "keras-default":
        eps = None
    else:
        eps = float(bn_epsilon)
    layer = keras.layers.BatchNormalization(name=name) if eps is None else keras.layers.BatchNormalization(epsilon=eps, name=name)
    return layer


def _bn_weights(bn: Any) -> list[np.ndarray]:
    return [_np(bn.weight), _np(bn.bias), _np(bn.running_mean), _np(bn.running_var)]


def _dense_kernel(fc: Any, flatten: str, chw: tuple[int, int, int]) -> np.ndarray:
    w = _np(fc.weight)  # (out, C*H*W) in torch's flatten order
    if flatten == "reorder":
        c, h, wd = chw
        w = w.reshape(-1, c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)  # → H,W,C order
    return w.T


def _convnet_layers(keras: Any, model: Any, bn_epsilon: Any, flatten: str) -> tuple[list, list]:
    conv, bn = model.layer1[0], model.layer1[1]
    body = [
        keras.layers.Conv2D(16, 3, padding="same", name="layer1_0"),
        _bn(keras, bn, "layer1_1", bn_epsilon),
        keras.layers.ReLU(name="layer1_2"),
    ]
    head = []
    if flatten == "permute":
        head.append(keras.layers.Permute((3, 1, 2), name="to_nchw"))
    head.append(keras.layers.Flatten(name="flatten"))
    head.append(keras.layers.Dense(model.fc.out_features, name="fc"))
    weights = [
        [_conv_kernel(conv), _np(conv.bias)],
        _bn_weights(bn),
        [_dense_kernel(model.fc, flatten, (16, 28, 28)), _np(model.fc.bias)],
    ]
    return body + head, weights


def _check_flatten(flatten: str) -> None:
    if flatten not in ("permute", "reorder", "naive"):
        raise ValueError(f"flatten must be 'permute', 'reorder' or 'naive', not {flatten!r}")


def _convnet(model: Any, bn_epsilon: Any, flatten: str) -> Any:
    import keras

    _check_flatten(flatten)
    layers, weights = _convnet_layers(keras, model, bn_epsilon, flatten)
    inp = keras.Input((28, 28, 1), name="image")
    x = inp
    for layer in layers:
        x = layer(x)
    km = keras.Model(inp, x, name="convnet")
    by_name = {layer.name: layer for layer in layers}
    by_name["layer1_0"].set_weights(weights[0])
    by_name["layer1_1"].set_weights(weights[1])
    by_name["fc"].set_weights(weights[2])
    return km


def to_keras_convnet_sequential(model: Any, *, bn_epsilon: Any = "match", flatten: str = "permute") -> Any:
    """The seed's own structure: a Sequential whose first layer is a nested Sequential."""
    import keras

    _check_flatten(flatten)
    layers, weights = _convnet_layers(keras, model, bn_epsilon, flatten)
    block = keras.Sequential(layers[:3], name="layer1")
    km = keras.Sequential([keras.Input((28, 28, 1), name="image"), block, *layers[3:]], name="convnet_seq")
    block.layers[0].set_weights(weights[0])
    block.layers[1].set_weights(weights[1])
    km.layers[-1].set_weights(weights[2])
    return km


def _mobilenet(model: Any, bn_epsilon: Any, relu6: str) -> Any:
    import keras

    if relu6 not in ("relu6", "relu"):
        raise ValueError(f"relu6 must be 'relu6' or 'relu', not {relu6!r}")
    in_ch = model.dw.in_channels

    def act(name: str) -> Any:
        return keras.layers.ReLU(max_value=6.0, name=name) if relu6 == "relu6" else keras.layers.ReLU(name=name)

    inp = keras.Input((None, None, in_ch), name="input")
    x = inp
    if model.stride > 1:  # torch pads symmetrically; Keras "same" would pad bottom/right only
        x = keras.layers.ZeroPadding2D(((1, 1), (1, 1)), name="pad")(x)
        dw = keras.layers.DepthwiseConv2D(3, strides=model.stride, padding="valid", use_bias=False, name="dw")
    else:
        dw = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")
    x = dw(x)
    bn1 = _bn(keras, model.bn1, "bn1", bn_epsilon)
    x = act("relu1")(bn1(x))
    pw = keras.layers.Conv2D(model.pw.out_channels, 1, use_bias=False, name="pw")
    x = pw(x)
    bn2 = _bn(keras, model.bn2, "bn2", bn_epsilon)
    x = act("relu2")(bn2(x))
    km = keras.Model(inp, x, name="mobilenet_block")
    dw.set_weights([_np(model.dw.weight).transpose(2, 3, 0, 1)])  # (C,1,kh,kw) → (kh,kw,C,1)
    bn1.set_weights(_bn_weights(model.bn1))
    pw.set_weights([_conv_kernel(model.pw)])
    bn2.set_weights(_bn_weights(model.bn2))
    return km


def _block_layers(keras: Any, block: Any, x: Any, prefix: str, bn_epsilon: Any) -> Any:
    ch = block.conv1.in_channels
    conv1 = keras.layers.Conv2D(ch, 3, padding="same", use_bias=False, name=f"{prefix}conv1")
    bn1 = _bn(keras, block.bn1, f"{prefix}bn1", bn_epsilon)
    conv2 = keras.layers.Conv2D(ch, 3, padding="same", use_bias=False, name=f"{prefix}conv2")
    bn2 = _bn(keras, block.bn2, f"{prefix}bn2", bn_epsilon)
    y = keras.layers.ReLU(name=f"{prefix}relu")(bn1(conv1(x)))
    y = bn2(conv2(y))
    y = keras.layers.Add(name=f"{prefix}add")([y, x])
    y = keras.layers.ReLU(name=f"{prefix}relu2")(y)
    conv1.set_weights([_conv_kernel(block.conv1)])
    bn1.set_weights(_bn_weights(block.bn1))
    conv2.set_weights([_conv_kernel(block.conv2)])
    bn2.set_weights(_bn_weights(block.bn2))
    return y


def _basic_block(model: Any, bn_epsilon: Any) -> Any:
    import keras

    inp = keras.Input((None, None, model.conv1.in_channels), name="input")
    return keras.Model(inp, _block_layers(keras, model, inp, "", bn_epsilon), name="basic_block")


def _deep_resnet(model: Any, bn_epsilon: Any) -> Any:
    import keras

    inp = keras.Input((None, None, model.stem.in_channels), name="input")
    stem = keras.layers.Conv2D(model.stem.out_channels, 3, padding="same", use_bias=False, name="stem")
    stem_bn = _bn(keras, model.stem_bn, "stem_bn", bn_epsilon)
    x = keras.layers.ReLU(name="stem_relu")(stem_bn(stem(inp)))
    stem.set_weights([_conv_kernel(model.stem)])
    stem_bn.set_weights(_bn_weights(model.stem_bn))
    for i, block in enumerate(model.blocks):
        x = _block_layers(keras, block, x, f"blocks_{i}_", bn_epsilon)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    fc = keras.layers.Dense(model.fc.out_features, name="fc")
    x = fc(x)
    fc.set_weights([_np(model.fc.weight).T, _np(model.fc.bias)])
    return keras.Model(inp, x, name="deep_resnet")


def to_keras(
    model: Any,
    *,
    bn_epsilon: str | float = "match",
    flatten: str = "permute",
    relu6: str = "relu6",
) -> Any:
    """A functional Keras model computing what the zoo's torch ``model`` computes.

    ``bn_epsilon``: ``"match"`` (torch's eps, correct), ``"keras-default"``
    (1e-3, the seed's bug) or a number.  ``flatten`` (ConvNet): ``"permute"``
    (Permute to NCHW before Flatten), ``"reorder"`` (dense rows reordered to
    H,W,C) or ``"naive"`` (weights only transposed: the flatten-order bug).
    ``relu6`` (MobileNetBlock): ``"relu6"`` or ``"relu"`` (the bug).
    """
    from .torch_models import BasicBlock, ConvNet, DeepResNet, MobileNetBlock

    if isinstance(model, ConvNet):
        return _convnet(model, bn_epsilon, flatten)
    if isinstance(model, MobileNetBlock):
        return _mobilenet(model, bn_epsilon, relu6)
    if isinstance(model, BasicBlock):
        return _basic_block(model, bn_epsilon)
    if isinstance(model, DeepResNet):
        return _deep_resnet(model, bn_epsilon)
    raise TypeError(f"to_keras converts the zoo's models only, not {type(model).__name__}")
