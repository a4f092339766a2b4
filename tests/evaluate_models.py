"""Small torch-only pairs for the dataset tests, as ``package.module:factory`` specs (a Ray
worker builds them itself): the seed ConvNet with trained-looking BatchNorm statistics, and
its twin with BatchNorm epsilon 1e-3 (the Keras default).  Both are seeded, so every process
builds the same weights.

``killing_convnet_eps`` kills its process (``os._exit``) the first time it sees a sample whose
first pixel is :data:`SENTINEL`, when ``PARITY_TEST_KILL_MARKER`` names a marker file that does
not exist yet — a Ray worker dying mid-shard, once.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SENTINEL = 7.0


def _convnet(eps: float = 1e-5):
    import torch

    from parity._zoo import ConvNet

    torch.manual_seed(0)
    model = ConvNet()
    bn = model.layer1[1]
    rng = np.random.default_rng(0)
    with torch.no_grad():  # statistics of a trained net: small variances, where epsilon matters
        bn.running_var.copy_(torch.from_numpy(rng.uniform(0.002, 0.05, 16).astype(np.float32)))
        bn.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.05, 16).astype(np.float32)))
    bn.eps = eps
    return model.eval()


def convnet():
    return _convnet()


def convnet_eps():
    return _convnet(1e-3)


def killing_convnet_eps():
    import torch

    from parity._zoo import ConvNet

    class KillingConvNet(ConvNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            marker = os.environ.get("PARITY_TEST_KILL_MARKER")
            if marker and not Path(marker).exists() and bool((x[:, 0, 0, 0] == SENTINEL).any()):
                Path(marker).write_text(str(os.getpid()))
                os._exit(3)
            return super().forward(x)

    model = KillingConvNet()
    model.load_state_dict(_convnet(1e-3).state_dict())
    model.layer1[1].eps = 1e-3
    return model.eval()


def digits(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random 28×28 images (NCHW) and labels 0–9: enough for the ConvNet pair to disagree."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 1, 28, 28)).astype(np.float32)
    return x, rng.integers(0, 10, n).astype(np.int64)
