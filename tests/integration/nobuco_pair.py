"""A PyTorch CNN converted to Keras 2 by nobuco, compared with parity — run in the Keras 2 venv.

nobuco 0.17.0 runs only on Keras 2 (TensorFlow 2.15 and its bundled Keras), so this
script runs under ``.venv-keras2/bin/python`` (``make .venv-keras2``), not under the
project's own venv; ``tests/integration/test_nobuco.py`` starts it and reads what it
writes.

    python tests/integration/nobuco_pair.py OUT_DIR [--bugs none,bn_var,relu6]

It builds a small seeded CNN (conv+BN+ReLU6 stem, a depthwise-separable block, max and
global average pooling, a linear head; BatchNorm statistics randomised, eval mode),
converts it once with ``nobuco.pytorch_to_keras`` and, for each requested variant,
writes ``OUT_DIR/<variant>.json`` (``parity.diff(torch_model, keras_model, x)`` as
``Report.to_json``):

``none``
    the faithful conversion.
``bn_var``
    the Keras twin of torch's ``block.dw_bn`` gets a different ``moving_variance``
    (the bug of a converter that copies the wrong statistics).
``relu6``
    the ``tf.clip_by_value`` op layer nobuco emits for torch's ``block.dw_act``
    (``nn.ReLU6``) is made a plain ReLU (the bug of a converter that drops the clip).
``keras_file``, ``h5_file``
    the faithful conversion saved as Keras 2's ``.keras`` / legacy ``.h5`` file and handed
    to ``parity.diff`` by path (``parity.load`` reads it back under Keras 2).

Each bug is injected into the converted model and undone after its diff, so all three
variants compare the same conversion.  ``OUT_DIR/meta.json`` holds the versions, the
conversion time, nobuco's own output difference and the Keras layer each bug went into.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

VARIANTS = ("none", "bn_var", "relu6", "keras_file", "h5_file")
#: the torch layers the bugs are injected behind (the test asserts parity flags exactly these)
BN_LAYER = "block.dw_bn"
RELU6_LAYER = "block.dw_act"
SEED = 0
INPUT_SHAPE = (2, 3, 32, 32)


def _torchvision_importable() -> None:
    """nobuco imports torchvision unconditionally; PyPI's torchvision is built against a CUDA
    torch and beside torch==2.13.0+cpu dies in its meta registrations (``operator
    torchvision::nms does not exist``).  Declaring the op schemas it looks up lets its
    pure-Python part load (the same shim as tests/integration/conftest.py; this script runs
    outside pytest).  Its compiled ops stay unusable; nobuco does not call them here."""
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 - present when torchvision's own ops loaded
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    globals()["_TORCHVISION_SCHEMAS"] = lib  # keep the library (and its schemas) alive


def build_torch_model():
    import torch
    from torch import nn

    class Block(nn.Module):
        """MobileNet's depthwise-separable block: 3×3 depthwise, BN, ReLU6, 1×1 pointwise, BN, ReLU6."""

        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.dw = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
            self.dw_bn = nn.BatchNorm2d(cin)
            self.dw_act = nn.ReLU6()
            self.pw = nn.Conv2d(cin, cout, 1, bias=False)
            self.pw_bn = nn.BatchNorm2d(cout)
            self.pw_act = nn.ReLU6()

        def forward(self, x):
            x = self.dw_act(self.dw_bn(self.dw(x)))
            return self.pw_act(self.pw_bn(self.pw(x)))

    class SmallCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(16)
            self.act = nn.ReLU6()
            self.block = Block(16, 32)
            self.pool = nn.MaxPool2d(2)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = self.act(self.bn(self.conv(x)))
            x = self.pool(self.block(x))
            return self.fc(torch.flatten(self.gap(x), 1))

    torch.manual_seed(SEED)
    model = SmallCNN()
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # statistics a trained model could have, not the 0/1 defaults
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.8 + 0.2)
                m.weight.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.5)
    return model.eval()


def _layers(model) -> list:
    out, seen = [], set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if id(layer) not in seen:
            seen.add(id(layer))
            out.append(layer)
    return out


def keras_bn_for(keras_model, torch_bn):
    """The Keras BatchNormalization holding torch_bn's running mean (nobuco names layers
    generically, so the twin is found by value, not by name)."""
    import numpy as np

    mean = torch_bn.running_mean.numpy()
    for layer in _layers(keras_model):
        if type(layer).__name__ == "BatchNormalization" and np.allclose(layer.moving_mean.numpy(), mean):
            return layer
    raise LookupError(f"no Keras BatchNormalization carries the running mean of {BN_LAYER}")


def keras_clip_for(keras_model, torch_model, torch_name: str):
    """The op layer nobuco made of the ReLU6 ``torch_name``: the k-th ``tf.clip_by_value`` layer,
    k being that ReLU6's position among the torch model's ReLU6 modules (the model is a chain,
    so both orders are execution order)."""
    from torch import nn

    relu6 = [name for name, m in torch_model.named_modules() if isinstance(m, nn.ReLU6)]
    clips = [layer for layer in _layers(keras_model) if getattr(layer, "symbol", None) == "clip_by_value"]
    if len(clips) != len(relu6):
        raise LookupError(f"{len(relu6)} ReLU6 modules but {len(clips)} tf.clip_by_value layers: {[l.name for l in clips]}")
    return clips[relu6.index(torch_name)]


class inject:
    """Context managers that put one bug into the converted model and take it out again."""

    @staticmethod
    def bn_var(torch_model, keras_model):
        layer = keras_bn_for(keras_model, torch_model.get_submodule(BN_LAYER))
        original = layer.moving_variance.numpy().copy()
        return _Swap(
            layer.name,
            lambda: layer.moving_variance.assign(original * 4.0 + 0.5),
            lambda: layer.moving_variance.assign(original),
        )

    @staticmethod
    def relu6(torch_model, keras_model):
        import tensorflow as tf

        layer = keras_clip_for(keras_model, torch_model, RELU6_LAYER)
        original = layer.function

        def relu(t, *args, **kwargs):  # clip_by_value(t, 0, 6) → relu(t): the upper bound is lost
            return tf.nn.relu(t)

        def put():
            layer.function = relu

        def undo():
            layer.function = original

        return _Swap(layer.name, put, undo)


class _Swap:
    def __init__(self, name, put, undo):
        self.name, self._put, self._undo = name, put, undo

    def __enter__(self):
        self._put()
        return self

    def __exit__(self, *exc):
        self._undo()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory for <variant>.json and meta.json")
    parser.add_argument("--bugs", default=",".join(VARIANTS),
                        help=f"comma-separated variants to diff, of {', '.join(VARIANTS)} (default: all)")
    args = parser.parse_args(argv)
    variants = [v for v in args.bugs.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)

    import numpy as np
    import torch

    _torchvision_importable()
    import keras
    import nobuco
    import tensorflow as tf
    from nobuco import ChannelOrder

    import parity

    torch_model = build_torch_model()
    x = np.random.default_rng(SEED).standard_normal(INPUT_SHAPE).astype(np.float32) * 2.0

    # ChannelOrder.TENSORFLOW is nobuco's default and what its README converts with: the
    # Keras model takes NHWC, as a TF user feeds it, and parity meets it with NCHW→NHWC.
    # full_validation=False only skips nobuco's per-node output check (parity does that).
    t0 = time.perf_counter()
    keras_model = nobuco.pytorch_to_keras(
        torch_model,
        args=[torch.from_numpy(x)],
        inputs_channel_order=ChannelOrder.TENSORFLOW,
        full_validation=False,
    )
    convert_s = time.perf_counter() - t0
    with torch.no_grad():
        y_torch = torch_model(torch.from_numpy(x)).numpy()
    y_keras = keras_model(np.transpose(x, (0, 2, 3, 1))).numpy()

    meta = {
        "versions": {"torch": torch.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
                     "nobuco": importlib.metadata.version("nobuco"), "parity": parity.__version__},
        "convert_s": round(convert_s, 3),
        "output_max_abs_diff": float(np.max(np.abs(y_torch - y_keras))),
        "keras_layers": [f"{l.name}:{type(l).__name__}" for l in _layers(keras_model)],
        "injected": {},
        "diff_s": {},
    }
    for variant in variants:
        t0 = time.perf_counter()
        if variant == "none":
            report = parity.diff(torch_model, keras_model, x)
        elif variant.endswith("_file"):
            path = args.out / ("converted.keras" if variant == "keras_file" else "converted.h5")
            keras_model.save(path)
            report = parity.diff(torch_model, str(path), x)
        else:
            with getattr(inject, variant)(torch_model, keras_model) as swap:
                report = parity.diff(torch_model, keras_model, x)
            meta["injected"][variant] = swap.name
        meta["diff_s"][variant] = round(time.perf_counter() - t0, 3)
        report.to_json(args.out / f"{variant}.json")
        compared, total = report.coverage
        first = report.first_divergence
        print(f"{variant}: ok={report.ok} matched {compared}/{total} torch layers "
              f"({compared / total if total else 0:.0%}); first divergence: "
              f"{first.a_name if first else None} "
              f"{[d.code for d in first.diagnoses] if first else ''}")
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"nobuco conversion {convert_s:.2f} s; output max |diff| {meta['output_max_abs_diff']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
