"""A Keras model carried to PyTorch by real converters: Keras → ONNX with tf2onnx, then
ONNX → ``torch.fx.GraphModule`` with onnx2torch.

This is the route a user takes who has a Keras model and wants it in PyTorch without
rewriting it, and so the pair the integration tests check parity on.  What the converters
make of the model (measured with tf2onnx 1.17, onnx2torch 1.5.15, Keras 3.15):

* the ONNX graph keeps TF's NHWC input and transposes it to NCHW itself, so the torch
  module takes the same ``(N, H, W, C)`` array as the Keras model, and its convolutions
  run NCHW inside;
* a Conv2D followed by BatchNormalization becomes one ``Conv`` (the BatchNorm folded into
  its kernel and bias); a DepthwiseConv2D's BatchNorm stays as ``Mul`` + ``Add``;
* the torch submodules are named after the TF ops, ``.`` replaced by ``/``
  (``mobilenet_0/25_64_1/conv_dw_1_relu_1/Relu6``), or after tf2onnx's own nodes
  (``Conv__237``) where a fold made a new one.  Those numbers come from a process-wide
  counter: the first conversion in a process numbers one higher than the later ones, so a
  layer mapping that names them holds for the converted file it was made on, not for a
  re-conversion.

>>> from parity._zoo.tf2torch import small_keras_mobilenet, keras_to_onnx, onnx_to_torch  # doctest: +SKIP
>>> model = small_keras_mobilenet()                     # doctest: +SKIP
>>> torch_model = onnx_to_torch(keras_to_onnx(model, "m.onnx"))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConversionError

__all__ = [
    "ConversionError",
    "small_keras_mobilenet",
    "keras_to_onnx",
    "onnx_to_torch",
    "keras_fingerprint",
    "TF2ONNX_INSTALL",
    "ONNX2TORCH_INSTALL",
]

TF2ONNX_INSTALL = "pip install tf2onnx==1.17.0"
ONNX2TORCH_INSTALL = "pip install --no-deps onnx2torch==1.5.15"
DEFAULT_OPSET = 17


def small_keras_mobilenet(
    *, alpha: float = 0.25, size: int = 64, classes: int = 10, seed: int = 0, randomize_bn: bool = True
) -> Any:
    """Keras' own MobileNet (v1: depthwise convolutions, BatchNorm, ReLU6) at ``alpha`` width and
    ``size``×``size``×3 input, with random weights from ``seed``.

    With ``randomize_bn`` every BatchNormalization gets random gamma and beta, and moving
    statistics near those of its input on a random calibration batch, as a trained network's
    are (fresh ones are 1, 0, 0, 1, under which a wrongly copied statistic changes nothing
    and no test could see it; fully random ones leave half the channels dead after ReLU6).

    Every layer name is fixed (Keras' own ``global_average_pooling2d_<n>`` and
    ``input_layer_<n>`` become ``global_pool`` and ``image``), so the TF op names, the ONNX
    names, a saved layer mapping and :func:`keras_fingerprint` do not depend on how many
    models the process built before."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNet(
        input_shape=(size, size, 3), alpha=alpha, weights=None, classes=classes
    )
    for layer in model.layers:  # Keras numbers auto-named layers per process: fix the two unnamed ones
        if layer.name.startswith("global_average_pooling2d"):
            layer.name = "global_pool"
        elif layer.name.startswith("input_layer"):
            layer.name = "image"
    if randomize_bn:
        _calibrate_bn(model, np.random.default_rng(seed), size)
    return model


def _calibrate_bn(model: Any, rng: np.random.Generator, size: int) -> None:
    """Random γ, β; moving mean and variance = the input's batch statistics × (1 ± 10 %)."""
    import keras

    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    probe = keras.Model(model.input, [bn.input for bn in bns])
    calibration = rng.uniform(0.0, 1.0, (8, size, size, 3)).astype("float32")
    for i, bn in enumerate(bns):  # in order: each one's input depends on the ones before
        x = np.asarray(probe.predict_on_batch(calibration)[i], dtype=np.float64)  # compiled once
        x = x.reshape(-1, x.shape[-1])
        c = x.shape[-1]
        bn.set_weights([
            rng.uniform(0.5, 1.5, c).astype("float32"),
            rng.normal(0.2, 0.2, c).astype("float32"),
            (x.mean(axis=0) * rng.uniform(0.9, 1.1, c)).astype("float32"),
            (x.var(axis=0) * rng.uniform(0.9, 1.1, c) + 1e-3).astype("float32"),
        ])


def keras_fingerprint(model: Any) -> bytes:
    """What determines a conversion of ``model``: its architecture (JSON) and weight bytes."""
    parts = [model.to_json().encode()]
    for w in model.get_weights():
        w = np.ascontiguousarray(w)
        parts += [str(w.dtype).encode(), repr(w.shape).encode(), w.tobytes()]
    return b"\0".join(parts)


def keras_to_onnx(model: Any, path: str | Path, *, opset: int = DEFAULT_OPSET, input_name: str = "input") -> Path:
    """Convert a Keras model (Keras 3 or tf_keras) to ONNX with tf2onnx's ``from_keras`` and
    write it to ``path``.  The input keeps the Keras layout (NHWC for images) and a free batch
    size.  Raises :class:`ConversionError` when tf2onnx is missing or fails."""
    try:
        import tensorflow as tf
        import tf2onnx
    except ImportError as exc:
        raise ConversionError(
            f"converting a Keras model to ONNX needs tf2onnx and tensorflow, and importing them failed "
            f"({exc}). Install them with: {TF2ONNX_INSTALL}"
        ) from exc
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        raise ConversionError(
            f"keras_to_onnx expects a built Keras model with exactly one input, got "
            f"{type(model).__name__} with {len(inputs) if inputs else 0} inputs. Build the model on an "
            "Input (or call it once) first, or call tf2onnx.convert.from_keras yourself with an input_signature."
        )
    shape = tuple(inputs[0].shape)
    dtype = getattr(inputs[0], "dtype", "float32")
    spec = (tf.TensorSpec((None,) + shape[1:], tf.as_dtype(str(dtype)), name=input_name),)
    path = Path(path)
    try:
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset, output_path=str(path))
    except Exception as exc:  # the converter's own failure: say which model, which converter
        raise ConversionError(
            f"tf2onnx {tf2onnx.__version__} failed to convert Keras model {getattr(model, 'name', '?')!r} "
            f"(input {shape}, opset {opset}): {type(exc).__name__}: {exc}. Try another opset, or "
            "tf2onnx.convert.from_function on a tf.function wrapping the model."
        ) from exc
    if not path.is_file():
        raise ConversionError(f"tf2onnx reported success but wrote no file at {str(path)!r}.")
    return path


def onnx_to_torch(onnx_model: str | Path | Any) -> Any:
    """Convert an ONNX model (a path or an ``onnx.ModelProto``) to a ``torch.fx.GraphModule``
    with onnx2torch, in ``eval()`` mode.  Raises :class:`ConversionError` when onnx2torch is
    missing or cannot be imported, or fails on the model."""
    try:
        from onnx2torch import convert
    except ImportError as exc:
        raise ConversionError(
            f"converting ONNX to PyTorch needs onnx2torch, which is not importable ({exc}). "
            f"Install it with: {ONNX2TORCH_INSTALL} (its own pins ask for an old torch and torchvision)."
        ) from exc
    except RuntimeError as exc:
        if "torchvision" not in str(exc):
            raise
        raise ConversionError(
            f"onnx2torch imports torchvision, and torchvision does not load beside this torch ({exc}): "
            "PyPI's torchvision wheel is built for a CUDA torch. Install the torchvision build that "
            "matches your torch, or declare the torchvision::nms / torchvision::qnms op schemas with "
            "torch.library before importing onnx2torch (see tests/integration/conftest.py)."
        ) from exc
    if isinstance(onnx_model, (str, Path)):
        from ..capture.onnx import load_onnx

        onnx_model = load_onnx(onnx_model)
    try:
        module = convert(onnx_model)
    except Exception as exc:
        opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in getattr(onnx_model, "opset_import", ()))
        raise ConversionError(
            f"onnx2torch failed to convert the ONNX model (opsets: {opsets or '?'}): {type(exc).__name__}: "
            f"{exc}. onnx2torch covers a subset of ONNX ops and opsets; convert with another opset or "
            "replace the unsupported op."
        ) from exc
    return module.eval()

