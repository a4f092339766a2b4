"""keras.applications architectures carried to ONNX by tf2onnx and on to PyTorch by onnx2torch.

Each architecture is built with ``weights=None`` (nothing downloaded) at a small input size it
accepts, ten classes, a fixed seed, and every BatchNormalization given random γ, β and moving
statistics near those of its input on a calibration batch (as a trained network's are: fresh
0/1 statistics would hide every statistics bug, fully random ones kill half the channels).
It is converted once per content (:mod:`tests.artifacts`) by tf2onnx 1.17 (opset 17), then by
onnx2torch 1.5.15; two routes are compared with model A = the Keras model:

- ``tf2onnx`` — B is the ONNX file (ONNX Runtime, every intermediate value exposed);
- ``tf2onnx+onnx2torch`` — B is the ``torch.fx.GraphModule`` onnx2torch makes of that file.

A bug is planted in a copy of the Keras model *before* conversion (the converter sees a wrong
model, as when a weight was loaded wrong upstream), so both routes carry it:

- ``scaled-kernel`` — a middle Conv2D's kernel × 1.05.  tf2onnx folds the BatchNorm after a conv
  into it, so the conv has no tensor of its own on B: it may be flagged at that BatchNorm;
- ``bn-epsilon`` — that BatchNorm's epsilon set to 0.05 (a copied layer with the wrong epsilon;
  big enough to matter next to the calibrated variances, which are O(1)), diagnosed ``bn_epsilon``;
- ``bn-stats-reset`` — that BatchNorm's moving mean and variance reset to 0 and 1 (statistics
  never carried over), diagnosed ``bn_statistics``.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.corpus.cases import Bug, Case, Pair

SEED = 0
BATCH = 2
OPSET = 17
CLASSES = 10


@dataclass(frozen=True)
class Arch:
    name: str  # keras.applications' constructor
    size: int = 64  # input height = width (the smallest the architecture takes, or near)
    scale: float = 1.0  # input range: 255 for models that rescale their own input
    #: where the bugs go: a Conv2D near the middle whose only consumer is a BatchNormalization, and
    #: that BatchNormalization (what :func:`targets` finds; fixed here so collecting needs no model)
    conv: str = ""
    bn: str = ""
    sample: bool = False


ARCHS: tuple[Arch, ...] = (
    Arch("MobileNet", conv="conv_pw_7", bn="conv_pw_7_bn", sample=True),
    Arch("MobileNetV2", conv="block_8_project", bn="block_8_project_BN"),
    Arch("MobileNetV3Small", scale=255.0, conv="expanded_conv_6_expand", bn="expanded_conv_6_expand_bn", sample=True),
    Arch("MobileNetV3Large", scale=255.0, conv="expanded_conv_9_expand", bn="expanded_conv_9_expand_bn"),
    Arch("EfficientNetB0", scale=255.0, conv="block5a_expand_conv", bn="block5a_expand_bn"),
    Arch("EfficientNetV2B0", scale=255.0, conv="block5d_project_conv", bn="block5d_project_bn"),
    Arch("DenseNet121", conv="conv4_block11_1_conv", bn="conv4_block11_1_bn"),
    Arch("ResNet50", conv="conv4_block1_0_conv", bn="conv4_block1_0_bn"),
    Arch("ResNet50V2", conv="conv4_block1_2_conv", bn="conv4_block1_2_bn"),
    Arch("NASNetMobile"),
    Arch("Xception", size=71, conv="conv2d_1", bn="batch_normalization_1"),
    Arch("InceptionV3", size=75),
    Arch("ConvNeXtTiny", scale=255.0),
)


def inputs(arch: Arch) -> np.ndarray:
    rng = np.random.default_rng(SEED + 1)
    return (rng.uniform(0.0, 1.0, (BATCH, arch.size, arch.size, 3)) * arch.scale).astype(np.float32)


@functools.lru_cache(maxsize=None)
def build(name: str) -> Any:
    """Model A: the architecture with random weights and calibrated BatchNorm statistics."""
    import keras

    arch = _arch(name)
    keras.utils.clear_session()  # auto-named layers (input_layer, …) numbered as in a fresh process
    keras.utils.set_random_seed(SEED)
    kwargs: dict[str, Any] = {"input_shape": (arch.size, arch.size, 3), "weights": None, "classes": CLASSES}
    model = getattr(keras.applications, arch.name)(**kwargs)
    _calibrate_bn(model, np.random.default_rng(SEED), inputs(arch))
    return model


def _arch(name: str) -> Arch:
    return next(a for a in ARCHS if a.name == name)


def _calibrate_bn(model: Any, rng: np.random.Generator, x: np.ndarray) -> None:
    """Random γ ∈ [0.5, 1.5], β ~ N(0.2, 0.2), moving mean and variance = the layer's input batch
    statistics × (1 ± 10 %), set in one eager forward: each BatchNorm is calibrated on its
    input just before it runs, so later layers see the calibrated earlier ones."""
    import keras

    bns = [layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, keras.layers.BatchNormalization)]

    def calibrating(bn, call):
        def wrapped(inputs, *args, **kwargs):
            v = np.asarray(inputs, dtype=np.float64)
            axis = bn.axis if isinstance(bn.axis, int) else bn.axis[0]
            v = np.moveaxis(v, axis, -1).reshape(-1, v.shape[axis])
            bn.set_weights(_bn_weights(bn, rng, v))
            return call(inputs, *args, **kwargs)

        return wrapped

    for bn in bns:
        bn.call = calibrating(bn, bn.call)
    try:
        model(x, training=False)
    finally:
        for bn in bns:
            del bn.call


def _bn_weights(bn: Any, rng: np.random.Generator, v: np.ndarray) -> list:
    """γ, β (where the layer has them: ``scale``, ``center``), moving mean and variance for
    inputs ``v`` (samples × channels)."""
    c = v.shape[-1]
    out = []
    if bn.scale:
        out.append(rng.uniform(0.5, 1.5, c).astype("float32"))
    if bn.center:
        out.append(rng.normal(0.2, 0.2, c).astype("float32"))
    out += [(v.mean(axis=0) * rng.uniform(0.9, 1.1, c)).astype("float32"),
            (v.var(axis=0) * rng.uniform(0.9, 1.1, c) + 1e-3).astype("float32")]
    return out


# --- where the bugs go ----------------------------------------------------------------------


def _consumers(model: Any, layer: Any) -> list:
    """The layers that take ``layer``'s output."""
    out = []
    for other in model.layers:
        for node in getattr(other, "_inbound_nodes", []):
            if any(getattr(t, "_keras_history", (None,))[0] is layer for t in node.input_tensors):
                out.append(other)
                break
    return out


@functools.lru_cache(maxsize=None)
def targets(name: str) -> tuple[str, str]:
    """(conv, bn): the Conv2D nearest the middle of the model whose only consumer is a
    BatchNormalization, and that BatchNormalization."""
    import keras

    model = build(name)
    convs = [l for l in model.layers if type(l) is keras.layers.Conv2D]
    order = sorted(range(len(convs)), key=lambda i: abs(i - len(convs) // 2))
    for i in order:
        consumers = _consumers(model, convs[i])
        if len(consumers) == 1 and isinstance(consumers[0], keras.layers.BatchNormalization):
            return convs[i].name, consumers[0].name
    raise LookupError(f"{name}: no Conv2D followed by a BatchNormalization")


def bugs(name: str) -> tuple[Bug, ...]:
    arch = _arch(name)
    conv, bn = (arch.conv, arch.bn) if arch.conv else targets(name)
    return (
        Bug("scaled-kernel", conv, also=(bn,)),
        Bug("bn-epsilon", bn, diagnosis="bn_epsilon"),
        Bug("bn-stats-reset", bn, diagnosis="bn_statistics"),
    )


def with_bug(name: str, bug: Bug) -> Any:
    """A copy of model A (same names, same weights) with ``bug`` planted in it."""
    import keras

    model = build(name)
    conv = bn = bug.layer  # the scaled kernel's layer, or the BatchNorm the other bugs go into

    def clone(layer):
        config = layer.get_config()
        if bug.name == "bn-epsilon" and layer.name == bn:
            config["epsilon"] = 0.05
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    if bug.name == "scaled-kernel":
        layer = copy.get_layer(conv)
        weights = layer.get_weights()
        layer.set_weights([weights[0] * np.float32(1.05), *weights[1:]])
    elif bug.name == "bn-stats-reset":
        layer = copy.get_layer(bn)
        *affine, mean, var = layer.get_weights()
        layer.set_weights([*affine, np.zeros_like(mean), np.ones_like(var)])
    return copy


# --- the conversions ------------------------------------------------------------------------


def onnx_file(model: Any) -> Path:
    """tf2onnx's ONNX file for ``model``, made once per content."""
    import tf2onnx

    from tests.artifacts import cached_dir, content_key
    from parity._zoo.tf2torch import keras_fingerprint, keras_to_onnx

    key = content_key(keras_fingerprint(model), tf2onnx.__version__, f"opset{OPSET}")
    out = cached_dir(f"tf2onnx-{model.name}", key,
                     lambda d: keras_to_onnx(model, d / "model.onnx", opset=OPSET))
    return out / "model.onnx"


def _pair(name: str, route: str, bug: Bug | None) -> Pair:
    a = build(name)
    path = onnx_file(a if bug is None else with_bug(name, bug))
    if route == "tf2onnx":
        b: Any = str(path)
    else:
        import tests.integration.conftest  # noqa: F401  (makes torchvision importable for onnx2torch)
        from parity._zoo.tf2torch import onnx_to_torch

        b = onnx_to_torch(path)
    return Pair(a, b, inputs(_arch(name)))


ROUTES = {"tf2onnx": "tf2onnx 1.17 → ONNX", "tf2onnx+onnx2torch": "tf2onnx 1.17 → onnx2torch 1.5.15"}

#: architectures the converters cannot carry, with what was seen when they were run
EXCLUDED: dict[str, str] = {
    "ConvNeXtTiny": (
        "tf2onnx 1.17 leaves its depthwise convolutions as StatefulPartitionedCall nodes (measured "
        "2026-12-02): ONNX Runtime refuses the file (INVALID_GRAPH at "
        "convnext_tiny_stage_0_block_0_depthwise_conv_1/StatefulPartitionedCall) and onnx2torch fails "
        "decoding the node's binary config_proto (UnicodeDecodeError)"
    ),
}


def _case(arch: Arch, route: str) -> Case:
    return Case(
        id=f"keras.applications/{arch.name}/{route}",
        source="keras.applications",
        model=arch.name,
        route=ROUTES[route],
        build=functools.partial(_pair, arch.name, route),
        bugs=bugs(arch.name) if arch.conv else (),
        sample=arch.sample,
    )


CASES: list[Case] = [_case(arch, route) for arch in ARCHS if arch.name not in EXCLUDED for route in ROUTES]


def cases(with_bugs: bool = True) -> list[Case]:
    """The cases (``with_bugs=False``: their faithful pairs only)."""
    return CASES if with_bugs else [dataclasses.replace(c, bugs=()) for c in CASES]


def case(case_id: str) -> Case:
    return next(c for c in CASES if c.id == case_id)
