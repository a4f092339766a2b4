"""Real offline training data: scikit-learn's digits, upsampled to MNIST's 28×28."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

__all__ = ["load_digits_28", "train_convnet"]


def load_digits_28(seed: int = 0, test_fraction: float = 0.25):
    """``(x_train, y_train, x_test, y_test)``: 8×8 digits in [0, 1], bilinearly upsampled to
    24×24 and padded to 28×28 like MNIST's centred digits; NCHW float32, a seeded split."""
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    data = load_digits()
    images = data.images.astype(np.float32) / 16.0  # (N, 8, 8)
    up = np.stack([zoom(img, 3, order=1) for img in images]).clip(0.0, 1.0)  # (N, 24, 24)
    x = np.pad(up, ((0, 0), (2, 2), (2, 2)))[:, None].astype(np.float32)  # (N, 1, 28, 28)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def train_convnet(
    model: Any = None,
    *,
    epochs: int = 3,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: Callable[[int, int, int, float], None] | None = None,
):
    """Train the seed ConvNet on the digits; returns ``(model, held-out accuracy)``, model in eval()."""
    import torch
    import torch.nn.functional as F

    from .torch_models import ConvNet

    torch.manual_seed(seed)
    if model is None:
        model = ConvNet()
    x_train, y_train, x_test, y_test = load_digits_28(seed=seed)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    steps = (len(xt) + batch_size - 1) // batch_size
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for step in range(steps):
            idx = perm[step * batch_size : (step + 1) * batch_size]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if progress is not None:
                progress(epoch, step, steps, loss.item())
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x_test)).argmax(1).numpy()
    return model, float(np.mean(pred == y_test))
