"""Judge nobuco corpus cases inside the Keras 2 venv and print their rows as JSON.

nobuco 0.17.0 runs only on TensorFlow 2.15 / Keras 2, which cannot live beside the project's
TensorFlow 2.21 / Keras 3, so :mod:`tests.corpus.nobuco_cases` starts this script under
``.venv-keras2/bin/python`` (``make keras2``) with this checkout on ``PYTHONPATH``:

    python -m tests.corpus.nobuco_run MODEL [BUG ...]     # "none" is the faithful pair

For each variant it builds model A (a torchvision architecture, random trained-like weights),
converts it — or, for a bug, a copy of it with the bug planted — with ``nobuco.pytorch_to_keras``
(``ChannelOrder.TENSORFLOW``: the Keras model takes NHWC), runs :func:`tests.corpus.cases.judge`
and writes one JSON line per row to stdout after a ``ROWS`` marker.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tests.corpus.cases import Case, Pair, judge  # noqa: E402
from tests.corpus.nobuco_cases import MODELS, Model, bug_named  # noqa: E402
from tests.corpus._torchvision import make_importable  # noqa: E402

SEED = 0
BATCH = 2


def build_torch(model: Model):
    """The torchvision architecture with seeded random weights and trained-like BatchNorm:
    γ ∈ [0.5, 1.5], β ~ N(0.2, 0.2), running statistics = the layer's input statistics on a
    calibration batch × (1 ± 10 %), each measured after the ones before it were set."""
    import torch
    import torchvision.models as tvm
    from torch import nn

    torch.manual_seed(SEED)
    net = getattr(tvm, model.arch)(weights=None, num_classes=10, **model.kwargs).eval()
    g = torch.Generator().manual_seed(SEED + 1)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]

    def calibrate(bn, args):
        x = args[0].detach().double()
        c = bn.num_features
        with torch.no_grad():
            bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(c, generator=g) * 0.2 + 0.2)
            bn.running_mean.copy_((x.mean(dim=(0, 2, 3)) * (0.9 + 0.2 * torch.rand(c, generator=g, dtype=torch.float64))).float())
            bn.running_var.copy_((x.var(dim=(0, 2, 3)) * (0.9 + 0.2 * torch.rand(c, generator=g, dtype=torch.float64)) + 1e-3).float())

    handles = [bn.register_forward_pre_hook(calibrate) for bn in bns]
    try:
        with torch.no_grad():
            net(calibration_batch(model))
    finally:
        for h in handles:
            h.remove()
    return net


def calibration_batch(model: Model):
    import torch

    return torch.from_numpy(inputs(model, seed=SEED + 7, batch=8))


def inputs(model: Model, seed: int = SEED + 1, batch: int = BATCH):
    import numpy as np

    return np.random.default_rng(seed).standard_normal((batch, 3, model.size, model.size)).astype(np.float32)


def planted(net, bug):
    """A deep copy of ``net`` with ``bug`` in it."""
    import torch

    net = copy.deepcopy(net)
    module = net.get_submodule(bug.layer)
    with torch.no_grad():
        if bug.name == "scaled-kernel":
            module.weight.mul_(1.05)
        elif bug.name == "bn-var":
            module.running_var.mul_(4.0).add_(0.5)
        else:
            raise ValueError(f"unknown bug {bug.name!r}")
    return net


def convert(net, x):
    import nobuco
    import torch
    from nobuco import ChannelOrder

    return nobuco.pytorch_to_keras(net, args=[torch.from_numpy(x)], inputs_channel_order=ChannelOrder.TENSORFLOW,
                                   full_validation=False)


def main(argv: list[str]) -> int:
    make_importable()  # nobuco imports torchvision
    model = next(m for m in MODELS if m.name == argv[0])
    variants = argv[1:] or ["none"]
    net = build_torch(model)
    x = inputs(model)
    rows = []
    for variant in variants:
        bug = None if variant == "none" else bug_named(model, variant)

        def build(b, bug=bug):
            return Pair(net, convert(net if b is None else planted(net, b), x), x)

        case = Case(id=f"nobuco/{model.name}", source="nobuco", model=model.name, route="nobuco", build=build)
        rows.append(dataclasses.asdict(judge(case, bug)))
    sys.stdout.write("ROWS\n" + "\n".join(json.dumps(r) for r in rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
